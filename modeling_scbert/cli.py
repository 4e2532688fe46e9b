"""The ``scbert`` command line: thin wiring over the library functions."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tokenization import ScBertTokenizer

from .convert_scbert_original_checkpoint import convert_checkpoint


def _read_lines(path: str) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line]


def _convert(args: argparse.Namespace) -> int:
    labels = _read_lines(args.labels) if args.labels else None
    tokenizer = None
    if args.genes:
        tokenizer = ScBertTokenizer.from_gene_file(args.genes)
    elif args.reference_h5ad:
        import anndata

        tokenizer = ScBertTokenizer.from_adata(anndata.read_h5ad(args.reference_h5ad, backed="r"))
    report = convert_checkpoint(
        args.checkpoint,
        args.output,
        labels=labels,
        tokenizer=tokenizer,
        overwrite=args.overwrite,
        trust_checkpoint=args.trust_checkpoint,
        gene_embedding_type=args.gene_embedding_type,
        layer_norm_eps=args.layer_norm_eps,
        hidden_act=args.hidden_act,
    )
    print(report.summary())
    print(f"written: {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scbert", description="scBERT for single-cell annotation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert",
        help="convert a published scBERT .pth checkpoint to a Hugging Face folder",
        description="Convert a published scBERT checkpoint (pretraining or fine-tuned layout) to a save_pretrained "
        "folder. The architecture is read from the tensor shapes; options override it.",
    )
    convert.add_argument("--checkpoint", required=True, help="the published .pth file")
    convert.add_argument("--output", required=True, help="folder to write (must not exist unless --overwrite)")
    convert.add_argument("--labels", help="class names, one per line, in class-index order (fine-tuned checkpoints)")
    panel = convert.add_mutually_exclusive_group()
    panel.add_argument(
        "--genes", help="the model's gene panel, one name per line in panel order; writes the tokenizer"
    )
    panel.add_argument(
        "--reference-h5ad", help="the published reference .h5ad, whose var_names are the panel; writes the tokenizer"
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    convert.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling (only for files you trust; by default only tensors are read)",
    )
    convert.add_argument("--gene-embedding-type", choices=["frozen", "learned"], help="default: frozen (gene2vec)")
    convert.add_argument("--layer-norm-eps", type=float, help="default: 1e-5 (published)")
    convert.add_argument("--hidden-act", help="default: gelu (exact, published)")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"scbert {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
