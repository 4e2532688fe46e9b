"""Top attention genes per cell type beside canonical markers: does the model look at the genes biologists would?

For a fine-tuned model and an ``.h5ad`` with true labels, computes the attention every gene receives (last layer by
default; the FAVOR+ column means of ``modeling_scbert.gene_attention``), averaged over the cells of each true type,
and reports per type:

- the top ``--top`` genes by attention;
- which of the type's canonical markers are in the model's panel and which of them are among those top genes;
- the median rank (percentile among the panel's genes) of the type's markers by attention;
- for comparison, the same marker hits among the top genes by mean expression token in that type (a baseline any
  model-free method gets), and the number expected by chance (``top * markers_in_panel / panel_size``).

Usage::

    python benchmarks/attention_markers.py --model demo_output/model --input cells.h5ad --label-key cell_type \
        [--top 20] [--attention-layer -1] [--markers markers.json] [--output-dir attention_markers]

``--markers`` is a JSON object ``{type name: [genes]}`` matched exactly to the label names; without it, the built-in
PBMC markers are matched to the label names by pattern (``B``/``CD19`` -> B cells, ``CD14`` -> CD14 monocytes,
``FCGR3A``/``CD16`` -> FCGR3A monocytes, ``NK``/``CD56`` -> NK cells, ``Megakaryocyte``, ``CD4``, ``CD8``,
``Dendritic``/``DC``, ``CD34``). Writes ``top_genes.csv``, ``marker_hits.csv`` and ``marker_hits.md`` into
``--output-dir`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# Canonical PBMC markers (Seurat's PBMC tutorial, the Kang 2018 annotation, Zheng 2017) keyed by a pattern of the
# label name (lower case).
PBMC_MARKERS = [
    (r"megakaryo|platelet", ["PPBP", "PF4", "GP9", "ITGA2B"]),
    (r"fcgr3a|cd16", ["FCGR3A", "MS4A7", "LST1", "AIF1"]),
    (r"cd14", ["LYZ", "CD14", "S100A8", "S100A9", "FCN1"]),
    (r"\bnk\b|cd56|natural killer", ["GNLY", "NKG7", "KLRD1", "PRF1", "GZMB"]),
    (r"\bb\b|b.cell|cd19", ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1"]),
    (r"cd8", ["CD8A", "CD8B", "CD3E", "CD3D", "GZMK"]),
    (r"cd4|\bt\b|t.cell|t reg", ["CD3E", "CD3D", "IL7R", "CCR7", "LEF1"]),
    (r"dendritic|\bdc\b", ["FCER1A", "CST3", "CLEC10A", "HLA-DQA1"]),
    (r"cd34|progenitor|hsc", ["CD34", "SOX4", "PRSS57"]),
]


def markers_for(cell_type: str) -> list[str]:
    name = cell_type.lower()
    for pattern, markers in PBMC_MARKERS:
        if re.search(pattern, name):
            return markers
    return []


def mean_tokens_by_type(adata, tokenizer, labels: np.ndarray, types: list[str]) -> np.ndarray:
    """(num_genes, types) mean expression token per panel gene in each type: the model-free baseline."""
    sums = np.zeros((tokenizer.num_genes, len(types)))
    index = {name: i for i, name in enumerate(types)}
    groups = np.array([index.get(label, -1) for label in labels])
    for start, end, tokens in tokenizer.iter_encoded(adata, progress=False):
        block = groups[start:end]
        for g in np.unique(block[block >= 0]):
            sums[:, g] += np.asarray(tokens[block == g].sum(axis=0)).ravel()
    counts = np.bincount(groups[groups >= 0], minlength=len(types))
    return sums / np.maximum(counts, 1)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a fine-tuned model folder with its tokenizer")
    parser.add_argument("--input", required=True, help=".h5ad with the cells and their true labels")
    parser.add_argument("--label-key", required=True, help=".obs column of true labels")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--attention-layer", type=int, default=-1)
    parser.add_argument("--markers", help="JSON {type: [genes]} (default: built-in PBMC markers by pattern)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output-dir", default="attention_markers")
    args = parser.parse_args(argv)

    import anndata as ad

    from modeling_scbert.annotation.attention import gene_attention_scores, top_attention_genes
    from modeling_scbert.annotation.inference import load_annotator

    model, tokenizer = load_annotator(args.model)
    adata = ad.read_h5ad(args.input)
    if args.label_key not in adata.obs.columns:
        parser.error(f"--label-key {args.label_key!r} is not in .obs (columns: {list(adata.obs.columns)})")
    gene_attention_scores(
        adata,
        model,
        tokenizer=tokenizer,
        groupby=args.label_key,
        attention_layer=args.attention_layer,
        batch_size=args.batch_size,
        progress=False,
    )
    table = top_attention_genes(adata, n_genes=args.top)
    info = adata.uns["scbert_attention"]
    types = [str(name) for name in info["cell_types"]]
    custom = json.loads(Path(args.markers).read_text()) if args.markers else None

    panel = list(tokenizer.genes)
    panel_index = {gene: i for i, gene in enumerate(panel)}
    # Per panel gene attention (the .varm matrix is in .var order; re-index it by panel position).
    var_position = {str(name): j for j, name in enumerate(adata.var_names)}
    scores = np.asarray(adata.varm["scbert_attention"])
    expression = mean_tokens_by_type(adata, tokenizer, adata.obs[args.label_key].astype(str).to_numpy(), types)

    rows = []
    for column, (cell_type, n_cells) in enumerate(zip(types, info["n_cells"])):
        if n_cells == 0:
            continue
        markers = custom.get(cell_type, []) if custom is not None else markers_for(cell_type)
        in_panel = [m for m in markers if m in panel_index and m in var_position]
        top_attention = list(table.loc[table["cell_type"] == cell_type, "gene"])
        by_attention = np.nan_to_num(scores[:, column], nan=-np.inf)
        order = np.argsort(-by_attention, kind="stable")
        rank = {str(adata.var_names[j]): r for r, j in enumerate(order, start=1)}
        top_expression = [panel[i] for i in np.argsort(-expression[:, column], kind="stable")[: args.top]]
        hits = [m for m in in_panel if m in top_attention]
        rows.append(
            {
                "cell_type": cell_type,
                "n_cells": int(n_cells),
                "markers_in_panel": ", ".join(in_panel) or "-",
                "attention_hits": f"{len(hits)}/{len(in_panel)}" + (f" ({', '.join(hits)})" if hits else ""),
                "expression_hits": f"{sum(m in top_expression for m in in_panel)}/{len(in_panel)}",
                "chance_hits": round(args.top * len(in_panel) / len(panel), 2),
                "marker_median_percentile": (
                    round(100 * float(np.median([rank[m] for m in in_panel])) / len(panel), 1) if in_panel else None
                ),
                f"top_{args.top}_by_attention": ", ".join(top_attention),
            }
        )
    result = pd.DataFrame(rows)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(output_dir / "top_genes.csv", index=False)
    result.to_csv(output_dir / "marker_hits.csv", index=False)
    markdown = result.to_markdown(index=False) if _has_tabulate() else result.to_string(index=False)
    (output_dir / "marker_hits.md").write_text(markdown + "\n")
    total_hits = sum(int(r["attention_hits"].split("/")[0]) for r in rows)
    total_markers = sum(int(r["attention_hits"].split("/")[1].split(" ")[0]) for r in rows)
    total_expression = sum(int(r["expression_hits"].split("/")[0]) for r in rows)
    print(markdown)
    print(
        f"\nmarkers among the top {args.top} by attention: {total_hits}/{total_markers}; by mean expression token: "
        f"{total_expression}/{total_markers}; expected by chance: {sum(r['chance_hits'] for r in rows):.2f}"
    )
    return result


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main(sys.argv[1:])
