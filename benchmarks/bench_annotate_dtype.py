"""Agreement of ``annotate`` / ``embed`` under bfloat16 / float16 autocast with float32, on small random models.

    python benchmarks/bench_annotate_dtype.py [--cells 500] [--genes 200] [--seeds 3] [--threads 1]

Prints, per model size and dtype: the largest and mean absolute difference of the class probabilities, the share of
cells whose label changes, the largest top-2 margin among those cells, and the largest relative difference of the
embeddings. Random models with spread-out weights (initializer_range 0.5), so the classes are not all alike; trained
models' probabilities are usually more peaked, which makes labels steadier.
"""

from __future__ import annotations

import argparse
import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from modeling_scbert import ScBertConfig, ScBertForSequenceClassification
from modeling_scbert.annotation.annotate import annotate, embed
from tokenization import ScBertTokenizer

SIZES = {
    "tiny (hidden 16, 1 layer)": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8},
    "small (hidden 64, 2 layers)": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "head_dim": 16,
    },
}


def cells(n_cells: int, genes: list[str], seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    means = rng.gamma(0.5, 2.0, size=(n_cells, len(genes)))
    return ad.AnnData(
        X=sp.csr_matrix(rng.poisson(means).astype(np.float32)),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=genes),
    )


def model(size: dict, genes: list[str], seed: int) -> ScBertForSequenceClassification:
    torch.manual_seed(seed)
    config = ScBertConfig(
        num_genes=len(genes),
        intermediate_size=2 * size["hidden_size"],
        num_random_features=16,
        gene_embedding_type="learned",
        classifier_type="pooled",
        classifier_hidden_sizes=[32],
        initializer_range=0.5,
        id2label={i: f"type{i}" for i in range(5)},
        label2id={f"type{i}": i for i in range(5)},
        **size,
    )
    return ScBertForSequenceClassification(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--genes", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    genes = [f"G{j}" for j in range(args.genes)]
    tokenizer = ScBertTokenizer(genes)
    print(f"torch {torch.__version__}, {args.cells} cells, {args.genes} genes, seeds 0..{args.seeds - 1}, CPU")
    print(
        "| model | dtype | max abs diff (prob.) | mean abs diff | labels changed | largest margin among them | max rel. diff (emb.) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, size in SIZES.items():
        for dtype in ("bfloat16", "float16"):
            worst, mean_diff, changed, margin, embedding = 0.0, [], 0, 0.0, 0.0
            for seed in range(args.seeds):
                adata, classifier = cells(args.cells, genes, seed), model(size, genes, seed)
                options = {"tokenizer": tokenizer, "device": "cpu", "copy": True, "progress": False}
                reference = annotate(adata, classifier, return_probabilities=True, **options)
                other = annotate(adata, classifier, return_probabilities=True, dtype=dtype, **options)
                p, q = reference.obsm["scbert_probabilities"], other.obsm["scbert_probabilities"]
                worst, mean_diff = max(worst, float(np.abs(p - q).max())), [*mean_diff, float(np.abs(p - q).mean())]
                differ = p.argmax(1) != q.argmax(1)
                changed += int(differ.sum())
                if differ.any():
                    top2 = np.sort(p[differ], axis=1)[:, -2:]
                    margin = max(margin, float((top2[:, 1] - top2[:, 0]).max()))
                e = embed(adata, classifier, **options).obsm["X_scbert"]
                f = embed(adata, classifier, dtype=dtype, **options).obsm["X_scbert"]
                embedding = max(embedding, float(np.abs(e - f).max() / np.abs(e).max()))
            total = args.cells * args.seeds
            print(
                f"| {name} | {dtype} | {worst:.4f} | {np.mean(mean_diff):.5f} | {changed} of {total} | {margin:.4f} "
                f"| {embedding:.4f} |"
            )


if __name__ == "__main__":
    main()
