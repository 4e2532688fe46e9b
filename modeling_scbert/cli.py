"""The ``scbert`` command line: thin wiring over the library functions."""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import sys
from pathlib import Path

from safetensors import SafetensorError
from transformers import HfArgumentParser

from tokenization import ScBertTokenizer
from tokenization.novelty import DEFAULT_NOVELTY_THRESHOLD
from tokenization.reading import ScBertReadingArguments

from .annotation.distributed import ScBertProcessError
from .convert_scbert_original_checkpoint import convert_checkpoint


def _spellings(*names: str) -> list[str]:
    """Every long option in both spellings: ``--batch-size`` also as ``--batch_size`` (and the other way round)."""
    result = []
    for name in names:
        variants = [name]
        if name.startswith("--"):
            stem = name[2:]
            variants += [f"--{stem.replace('_', '-')}", f"--{stem.replace('-', '_')}"]
        for variant in variants:
            if variant not in result:
                result.append(variant)
    return result


# Every command's parser is an HfArgumentParser (an argparse.ArgumentParser), in argparse's plain help format: the
# commands that read cells take ScBertReadingArguments (dataclass_types=...), which gives its options the same names,
# spellings, types, defaults and help as in pretrain / finetune, whose HfArgumentParser parses them too.
_COMMAND_PARSER = functools.partial(HfArgumentParser, formatter_class=argparse.HelpFormatter)


def _reading_options(args: argparse.Namespace) -> dict:
    """The reading options (the fields of ``ScBertReadingArguments``) of a parsed command, as keyword arguments."""
    return {name: getattr(args, name) for name in ScBertReadingArguments.names()}


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


def _push(args: argparse.Namespace) -> int:
    from .hub.push import HubAuthenticationError, push_model_folder

    facts = {"license": args.license} if args.license else None
    try:
        result = push_model_folder(
            args.model,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            token=args.token,
            commit_message=args.commit_message,
            facts=facts,
            dry_run=args.dry_run,
        )
    except HubAuthenticationError as error:
        print(f"scbert push: error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"would upload to {args.repo_id} (dry run, nothing sent):")
        print("".join(f"  {name}\n" for name in result.files), end="")
        print(f"left out: {', '.join(result.left_out) or 'nothing'}")
        return 0
    print(f"pushed {args.model} to {args.repo_id} at commit {result.oid} (pin it with revision={result.oid!r})")
    return 0


TRAINING_COMMANDS = ("pretrain", "finetune")


def _training(command: str, argv: list[str]) -> int:
    from .training.workflows import finetune_main, pretrain_main

    run = pretrain_main if command == "pretrain" else finetune_main
    trainer = run(argv, prog=f"scbert {command}")
    print(f"written: {trainer.args.output_dir}")
    return 0


def _annotate(args: argparse.Namespace) -> int:

    from tokenization.reading import read_h5ad

    from .annotation.annotate import predict_cell_types
    from .annotation.distributed import inference_processes
    from .h5ad_io import check_output_path, plan_h5ad_output, write_h5ad_with_slots

    # What only the command line can check (its output files, the input file, --label-key) runs before any work, so a
    # bad call leaves no file behind; predict_cell_types checks everything else before the model runs. Under torchrun
    # every process checks; only the main process (which alone writes) checks the outputs; a failure anywhere stops
    # all.
    processes = inference_processes()
    with processes.all_or_none("Checking the inputs"):
        if processes.is_main:
            output = check_output_path(args.output, overwrite=args.overwrite, inputs=(args.input,))
            if args.csv:
                check_output_path(args.csv, overwrite=args.overwrite, inputs=(args.input,), outputs=(args.output,))
        adata = read_h5ad(args.input, backed="r")
        if args.label_key is not None and args.label_key not in adata.obs.columns:
            raise ValueError(
                f"--label-key {args.label_key!r} is not a column of .obs; the columns are {list(adata.obs.columns)}."
            )
        layout = plan_h5ad_output(args.input)
    result = predict_cell_types(
        adata,
        args.model,
        unassigned_threshold=args.threshold,
        novel_types=args.novel_types,
        novelty_threshold=args.novelty_threshold,
        return_probabilities=args.probabilities,
        majority_voting=args.majority_voting or args.over_clustering is not None,
        over_clustering=args.over_clustering,
        **_inference_options(args),
    )
    if result is None:
        return 0  # not the main process: its cells were gathered to the main process, which writes
    result.write(adata, key_added=args.key_added)
    also = {}
    if args.csv:  # published with the .h5ad as one result: a failure leaves neither
        extra = adata.obs[[args.label_key]] if args.label_key else None
        also[args.csv] = result.to_table(key_added=args.key_added, extra=extra).to_csv()
    write_h5ad_with_slots(
        args.input, output, adata, **result.slots(args.key_added), layout=layout, overwrite=args.overwrite, also=also
    )
    if args.csv:
        print(f"written: {args.csv}")
    print(result.summary())
    print(f"written: {args.output}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from tokenization.reading import read_h5ad

    from .annotation.annotate import embed
    from .annotation.distributed import inference_processes
    from .h5ad_io import check_output_path, plan_h5ad_output, write_h5ad_with_slots

    processes = inference_processes()
    with processes.all_or_none("Checking the inputs"):
        if processes.is_main:
            output = check_output_path(args.output, overwrite=args.overwrite, inputs=(args.input,))
        adata = read_h5ad(args.input, backed="r")
        layout = plan_h5ad_output(args.input)
    embed(adata, args.model, key_added=args.key_added, **_inference_options(args))
    if not processes.is_main:
        return 0  # its cells were gathered to the main process, which writes
    key = args.key_added
    write_h5ad_with_slots(
        args.input,
        output,
        adata,
        obsm_keys=[f"X_{key}"],
        uns_keys=[f"{key}_embedding"],
        layout=layout,
        overwrite=args.overwrite,
    )
    print(f"embedded {adata.n_obs:,} cells into .obsm['X_{key}'] {adata.obsm[f'X_{key}'].shape}")
    print(f"written: {args.output}")
    return 0


def _attention(args: argparse.Namespace) -> int:
    from tokenization.atomic_files import write_text_atomically
    from tokenization.reading import read_h5ad

    from .annotation.attention import _saved_class, gene_attention_scores, top_attention_genes
    from .annotation.inference import load_annotator
    from .h5ad_io import check_output_path, plan_h5ad_output, write_h5ad_with_slots

    output = check_output_path(args.output, overwrite=args.overwrite, inputs=(args.input,))
    if args.csv:
        check_output_path(args.csv, overwrite=args.overwrite, inputs=(args.input,), outputs=(args.output,))
    if args.top < 1:
        raise ValueError(f"--top must be at least 1; got {args.top}.")
    layout = plan_h5ad_output(args.input)
    model, tokenizer = load_annotator(args.model, model_class=_saved_class(args.model))
    adata = read_h5ad(args.input, backed="r")
    gene_attention_scores(
        adata,
        model,
        tokenizer=tokenizer,
        groupby=args.groupby,
        attention_layer=args.attention_layer,
        key_added=args.key_added,
        **_inference_options(args),
    )
    key = args.key_added
    write_h5ad_with_slots(
        args.input, output, adata, varm_keys=[key], uns_keys=[key], layout=layout, overwrite=args.overwrite
    )
    table = top_attention_genes(adata, key=key, n_genes=args.top, gene_key=args.gene_key)
    if args.csv:
        write_text_atomically(args.csv, table.to_csv(index=False), replace=args.overwrite)
        print(f"written: {args.csv}")
    for cell_type, rows in table.groupby("cell_type", sort=False):
        print(f"{cell_type} ({rows['n_cells'].iloc[0]:,} cells): " + ", ".join(rows["gene"].head(10)))
    print(f"written: {args.output}")
    return 0


def _inference_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``annotate`` / ``embed`` that the command's options set."""
    options = {"batch_size": args.batch_size, "device": args.device, "progress": True, **_reading_options(args)}
    if "dtype" in args:
        options["dtype"] = args.dtype
    return options


def _add_inference_options(
    command: argparse.ArgumentParser, *, ensemble: bool = False, precision: bool = True
) -> None:
    if ensemble:
        command.add_argument(
            "--model",
            required=True,
            nargs="+",
            help="a model folder or Hub id that also holds the tokenizer; several: an ensemble, whose class "
            "probabilities are averaged",
        )
    else:
        command.add_argument("--model", required=True, help="a model folder or Hub id that also holds the tokenizer")
    command.add_argument("--input", required=True, help="the cells (.h5ad; read backed, never modified)")
    command.add_argument("--output", required=True, help="the .h5ad to write (written atomically)")
    command.add_argument("--overwrite", action="store_true", help="replace existing output files")
    command.add_argument(
        *_spellings("--batch-size"), type=int, default=32, help="cells per forward pass (default: 32)"
    )
    command.add_argument(
        "--device",
        help="cpu, cuda, cuda:1, mps (default: the first available accelerator; under torchrun: cuda:LOCAL_RANK, or "
        "the CPU without CUDA)",
    )
    if precision:
        command.add_argument(
            "--dtype",
            choices=["float32", "bfloat16", "float16"],
            default="float32",
            help="compute precision: bfloat16 / float16 autocast the linear layers, the attention kernel stays "
            "float32 (default: float32)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scbert", description="scBERT for single-cell annotation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_COMMAND_PARSER)

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
        *_spellings("--reference-h5ad"),
        help="the published reference .h5ad, whose var_names are the panel; writes the tokenizer",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    convert.add_argument(
        *_spellings("--trust-checkpoint"),
        action="store_true",
        help="allow full unpickling (only for files you trust; by default only tensors are read)",
    )
    convert.add_argument(
        *_spellings("--gene-embedding-type"), choices=["frozen", "learned"], help="default: frozen (gene2vec)"
    )
    convert.add_argument(*_spellings("--layer-norm-eps"), type=float, help="default: 1e-5 (published)")
    convert.add_argument(*_spellings("--hidden-act"), help="default: gelu (exact, published)")
    convert.set_defaults(handler=_convert)

    push = commands.add_parser(
        "push",
        help="push a model folder (weights, tokenizer, rendered model card) to the Hugging Face Hub in one commit",
        description="Render the model card from the folder's facts, check it against the model, and upload model, "
        "tokenizer and card in one commit. Needs a token: `hf auth login` or HF_TOKEN.",
    )
    push.add_argument("--model", required=True, help="a save_pretrained folder that also holds the tokenizer")
    push.add_argument(*_spellings("--repo-id"), required=True, help="ORG/NAME on the Hub (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--revision", help="branch to commit to (created from main if missing); default: main")
    push.add_argument("--license", help="license of the weights for the card, e.g. apache-2.0 (else scbert_card.json)")
    push.add_argument("--token", help="Hub token (default: from `hf auth login` or HF_TOKEN)")
    push.add_argument(*_spellings("--commit-message"), default="Upload scBERT model, tokenizer and model card")
    push.add_argument(
        *_spellings("--dry-run"),
        action="store_true",
        help="list the files that would be uploaded (and those left out), then stop: nothing is written or sent",
    )
    push.set_defaults(handler=_push)

    for name in TRAINING_COMMANDS:
        what = "masked-expression pretraining" if name == "pretrain" else "cell-type fine-tuning"
        commands.add_parser(
            name,
            add_help=False,
            help=f"{what} with the Trainer (options: `scbert {name} --help`; every TrainingArguments option works)",
        )

    annotate = commands.add_parser(
        "annotate",
        dataclass_types=ScBertReadingArguments,
        help="predict cell types into a copy of an .h5ad (and optionally a CSV)",
        description="Predict a cell type and confidence for every cell of --input and write --output with "
        ".obs['scbert_cell_type'] and .obs['scbert_confidence'] added.",
    )
    _add_inference_options(annotate, ensemble=True)
    annotate.add_argument(
        *_spellings("--threshold", "--unassigned-threshold"),
        type=float,
        help="label cells below this confidence 'Unassigned' (paper: 0.5)",
    )
    annotate.add_argument(
        *_spellings("--novel-types"),
        action="store_true",
        help="label cells unlike every reference type 'Unassigned' (reason 'novel type'): novelty at or above "
        "--novelty-threshold; needs a model fine-tuned with its novelty detector (docs/novelty.md)",
    )
    annotate.add_argument(
        *_spellings("--novelty-threshold"),
        type=float,
        default=DEFAULT_NOVELTY_THRESHOLD,
        help=f"with --novel-types: 1 - the share of known-type cells flagged (default: {DEFAULT_NOVELTY_THRESHOLD})",
    )
    annotate.add_argument("--csv", help="also write the predictions as CSV (cell_id, type, confidence, novelty)")
    annotate.add_argument(
        *_spellings("--probabilities", "--return-probabilities"),
        action="store_true",
        help="also write every class probability",
    )
    annotate.add_argument(*_spellings("--label-key"), help="an .obs column of known labels to copy into the CSV")
    annotate.add_argument(
        *_spellings("--key-added"), default="scbert", help="prefix of the slots written (default: scbert)"
    )
    annotate.add_argument(
        *_spellings("--majority-voting"),
        action="store_true",
        help="also write <key>_majority_voting: each over-cluster's most frequent label (as CellTypist)",
    )
    annotate.add_argument(
        *_spellings("--over-clustering"),
        help="an .obs column of clusters to vote in (implies --majority-voting; default: Leiden over-clusters)",
    )
    annotate.set_defaults(handler=_annotate)

    embed = commands.add_parser(
        "embed",
        dataclass_types=ScBertReadingArguments,
        help="write cell embeddings (.obsm['X_scbert']) into a copy of an .h5ad",
        description="Embed every cell of --input (mean of the final encodings) and write --output with "
        ".obsm['X_scbert'] added.",
    )
    _add_inference_options(embed)
    embed.add_argument(*_spellings("--key-added"), default="scbert", help="writes .obsm['X_<key>'] (default: scbert)")
    embed.set_defaults(handler=_embed)

    attention = commands.add_parser(
        "attention",
        dataclass_types=ScBertReadingArguments,
        help="which genes the model attends to, per cell type: .varm['scbert_attention'] and a top-genes CSV",
        description="Compute the attention every gene receives in a layer (FAVOR+ column means, linear time) for "
        "every cell of --input, average it per cell type (predicted, or --groupby), and write --output with "
        ".varm['scbert_attention'] (genes x types) and .uns['scbert_attention'] added.",
    )
    _add_inference_options(attention, precision=False)
    attention.add_argument(
        *_spellings("--groupby"), help="an .obs column of cell types (default: the model's predicted type)"
    )
    attention.add_argument(
        *_spellings("--attention-layer"),
        type=int,
        default=-1,
        help="which layer's attention, 0-based (default: -1, the last)",
    )
    attention.add_argument(*_spellings("--csv"), help="also write the top genes per type as CSV")
    attention.add_argument(
        *_spellings("--top"), type=int, default=20, help="genes per type in the table (default: 20)"
    )
    attention.add_argument(
        *_spellings("--key-added"), default="scbert_attention", help="the .varm / .uns key (default: scbert_attention)"
    )
    attention.set_defaults(handler=_attention)
    return parser


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of one ``scbert`` command (for pretrain / finetune, their ``HfArgumentParser``).

    Raises
    ------
    ValueError
        ``command`` is not an ``scbert`` command.
    """
    if command in TRAINING_COMMANDS:
        from .training.arguments import argument_parser

        return argument_parser(command)
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if command not in subparsers.choices:
        raise ValueError(f"scbert has no command {command!r}; the commands are {sorted(subparsers.choices)}.")
    return subparsers.choices[command]


COMMANDS = ("convert", "push", *TRAINING_COMMANDS, "annotate", "embed", "attention")


def main(argv: list[str] | None = None) -> int:
    """Run the ``scbert`` command line; annotate and embed also run under ``torchrun`` / ``accelerate launch``."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # pretrain / finetune hand their options to HfArgumentParser (our dataclasses + TrainingArguments).
    position = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    training_argv = None
    if position is not None and argv[position] in TRAINING_COMMANDS:
        argv, training_argv = argv[: position + 1], argv[position + 1 :]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if training_argv is not None:
            return _training(args.command, training_argv)
        return args.handler(args)
    except (ValueError, FileExistsError, FileNotFoundError, IsADirectoryError, ScBertProcessError) as error:
        print(f"scbert {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a read-only or forbidden path: one line naming the path and the cause
        print(f"scbert {args.command}: error: {_describe_os_error(error)}", file=sys.stderr)
        return 2
    except SafetensorError as error:
        print(
            f"scbert {args.command}: error: a weights file could not be read ({error}); it is damaged or not a "
            "safetensors file. Save or download the model again.",
            file=sys.stderr,
        )
        return 2


# What the operating system says, in words a user can act on: (cause, what to do).
_FULL = "free space there (or pick another place); the package writes nothing half-way under the output's name"
_FORBIDDEN = "pick a place you can write to, or change its permissions"
_OS_CAUSES = {
    errno.ENOSPC: ("no space left on the device", _FULL),
    errno.EDQUOT: ("the disk quota is exhausted", _FULL),
    errno.EFBIG: ("the file is larger than the file system (or the file-size limit) allows", _FULL),
    errno.EROFS: ("the file system is read-only", _FORBIDDEN),
    errno.EACCES: ("permission denied", _FORBIDDEN),
    errno.EPERM: ("operation not permitted", _FORBIDDEN),
}


def _describe_os_error(error: OSError) -> str:
    """One line for an ``OSError``: the cause, the path, and what to do where there is something to do."""
    cause, advice = _OS_CAUSES.get(error.errno, (error.strerror or str(error), None))
    where = f": {str(error.filename)!r}" if error.filename is not None else ""
    return f"{cause}{where}" + (f"; {advice}." if advice else ".")


if __name__ == "__main__":
    sys.exit(main())
