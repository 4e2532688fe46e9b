"""Annotate cells with a fine-tuned model from Python; `scbert annotate` does the same from the shell.

python examples/annotate.py scbert-annotator cells.h5ad annotated.h5ad
"""

import sys

import anndata as ad

from modeling_scbert.annotate import annotate, embed

if __name__ == "__main__":
    model, source, destination = sys.argv[1:4]
    adata = ad.read_h5ad(source)
    # Cells whose best class probability is below 0.5 (the paper's threshold) become "Unassigned".
    annotate(adata, model, unassigned_threshold=0.5, return_probabilities=True)
    embed(adata, model)  # .obsm["X_scbert"], e.g. for sc.pp.neighbors(adata, use_rep="X_scbert")
    print(adata.obs["scbert_cell_type"].value_counts().to_string())
    adata.write_h5ad(destination)
