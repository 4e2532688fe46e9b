"""Annotate cells with a fine-tuned model (or an ensemble of them) from Python; `scbert annotate` does the same.

python examples/annotate.py --model scbert-annotator --input cells.h5ad --output annotated.h5ad
# an ensemble (e.g. the folders finetune_ensemble wrote): their class probabilities are averaged
python examples/annotate.py --model annotator/seed_0 annotator/seed_1 --input cells.h5ad --output annotated.h5ad
"""

import argparse

import anndata as ad

from modeling_scbert.annotation.annotate import annotate, embed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", required=True, help="a model folder or Hub id; several: an ensemble")
    parser.add_argument("--input", required=True, help="the cells (.h5ad)")
    parser.add_argument("--output", required=True, help="where the annotated cells are written (.h5ad)")
    parser.add_argument(
        "--unassigned-threshold", type=float, default=0.5, help="below this confidence a cell is 'Unassigned'"
    )
    args = parser.parse_args(argv)

    adata = ad.read_h5ad(args.input)
    model = args.model[0] if len(args.model) == 1 else args.model
    # .obs['scbert_cell_type'] and ['scbert_confidence']; .obsm['scbert_probabilities'] (columns: the classes).
    annotate(adata, model, unassigned_threshold=args.unassigned_threshold, return_probabilities=True)
    # .obsm['X_scbert'] of the first model, e.g. for sc.pp.neighbors(adata, use_rep="X_scbert").
    embed(adata, args.model[0])
    print(adata.obs["scbert_cell_type"].value_counts().to_string())
    adata.write_h5ad(args.output)


if __name__ == "__main__":
    main()
