"""Label efficiency: does a pretrained backbone pay? Few labelled Kang 2018 control cells, from scratch and from it.

For each fraction of the labelled control cells (stratified: that fraction of every cell type, at least
``--min-per-type`` cells of each) and each seed (the seed draws the cells and seeds the model), it runs, in a fresh
process each, what a user types::

    python -m modeling_scbert.cli finetune --train_file SUBSET.h5ad --label_key cell_type \\
        [--config_overrides hidden_size=64,...  (scratch) | --model_name_or_path BACKBONE  (backbone)] \\
        --num_train_epochs E --per_device_train_batch_size 8 --learning_rate 1e-3 --save_strategy no \\
        --seed S --output_dir RUN/model
    python -m modeling_scbert.cli annotate --model RUN/model --input stim_hvg.h5ad --output RUN/stim.h5ad

and scores the stimulated cells (accuracy, macro-F1 over the 8 types). Logistic regression (``examples/demo_kang.py``'s
``logistic_regression``: L2, C=1, log-normalised) is trained on the same cells. Every labelled cell trains (no
held-out cells to pick an epoch: a user with 65 labels has none to spare); ``E`` is the README recipe's 2 epochs, or
more where 2 epochs are fewer than ``--min-steps`` optimiser steps (on 1% of the cells, 2 epochs are 16 steps).

``--cross-lab`` also annotates scanpy's ``pbmc68k_reduced`` (another lab, other chemistry) with the models trained on
all (fraction 1) control cells: its counts are recovered from ``.raw`` (``rint(expm1(raw.X) * n_counts / 1e4)``), its
``bulk_labels`` mapped to Kang's types (:data:`PBMC68K_TO_KANG`; ``CD34+`` dropped), scored by macro-F1 over the six
types it has. Only 202 of the 2,000 panel genes are among its 765 genes; the others are zeros for every method.

Each run writes ``RUN/result.json`` and is skipped when that exists, so the script can be stopped and started again;
``results.json`` and ``results.md`` (mean and standard deviation over seeds) are rewritten after every run.

Run (one thread; the order of ``--fractions`` is the order of the runs)::

    OMP_NUM_THREADS=1 python benchmarks/label_efficiency.py --data-dir kang_data --backbone backbone/ \\
        --output-dir label_efficiency --fractions 0.01 0.05 --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/label_efficiency.py ... --fractions 1 --seeds 0 --cross-lab

``--data-dir`` holds ``ctrl_hvg.h5ad`` / ``stim_hvg.h5ad`` (``benchmarks/kang_seeds.py`` writes them). Results:
docs/training.md ("Label efficiency: does pretraining pay?").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "examples")]

from demo_kang import COMPACT, LABEL_KEY, logistic_regression, scores  # noqa: E402

CONFIG = ",".join(f"{key}={value}" for key, value in COMPACT.items())
BATCH_SIZE = 8
# scanpy's pbmc68k_reduced bulk_labels -> Kang 2018's cell types, where they match; the rest (CD34+) is dropped.
PBMC68K_TO_KANG = {
    "CD14+ Monocyte": "CD14+ Monocytes",
    "CD19+ B": "B cells",
    "CD56+ NK": "NK cells",
    "CD4+/CD25 T Reg": "CD4 T cells",
    "CD4+/CD45RO+ Memory": "CD4 T cells",
    "CD4+/CD45RA+/CD25- Naive T": "CD4 T cells",
    "CD8+ Cytotoxic T": "CD8 T cells",
    "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T cells",
    "Dendritic": "Dendritic cells",
}


def stratified_subset(adata, *, fraction: float, seed: int, min_per_type: int):
    """``fraction`` of each cell type (rounded, at least ``min_per_type``), drawn with ``seed``; all cells at 1."""
    if fraction >= 1:
        return adata.copy()
    rng = np.random.default_rng(seed)
    labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
    chosen = []
    for name in sorted(set(labels)):
        members = np.flatnonzero(labels == name)
        count = min(len(members), max(min_per_type, round(fraction * len(members))))
        chosen.extend(rng.choice(members, size=count, replace=False))
    return adata[np.sort(chosen)].copy()


def write_pbmc68k(path: Path) -> None:
    """pbmc68k_reduced as counts over its 765 genes, with Kang's types in ``.obs['cell_type']`` (CD34+ dropped)."""
    import anndata
    import scanpy as sc
    import scipy.sparse as sp

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.X.toarray() if sp.issparse(adata.raw.X) else np.asarray(adata.raw.X)
    counts = np.rint(np.expm1(raw) * adata.obs["n_counts"].to_numpy()[:, None] / 1e4).astype(np.float32)
    labels = adata.obs["bulk_labels"].astype(str).map(PBMC68K_TO_KANG)
    keep = labels.notna().to_numpy()
    out = anndata.AnnData(
        X=sp.csr_matrix(counts[keep]), obs=adata.obs.loc[keep, ["bulk_labels"]].astype(str), var=adata.raw.var[[]]
    )
    out.obs[LABEL_KEY] = labels[keep].astype("category")
    out.write_h5ad(path)


def run_cli(python: str, arguments: list[str], log: Path) -> None:
    with open(log, "w") as handle:
        subprocess.run(
            [python, "-m", "modeling_scbert.cli", *arguments], check=True, stdout=handle, stderr=subprocess.STDOUT
        )


def annotate(python: str, model: Path, cells: Path, output: Path, extra: list[str]) -> np.ndarray:
    import anndata

    run_cli(
        python,
        ["annotate", "--model", str(model), "--input", str(cells), "--output", str(output), "--batch-size", "64",
         "--overwrite", *extra],
        output.with_suffix(".log"),
    )  # fmt: skip
    predicted = anndata.read_h5ad(output).obs["scbert_cell_type"].astype(str).to_numpy()
    output.unlink()  # the predictions are kept in result.json
    return predicted


def epochs_for(n_train: int, min_steps: int) -> float:
    """The recipe's 2 epochs, or as many as ``min_steps`` optimiser steps take."""
    return max(2.0, math.ceil(min_steps * BATCH_SIZE / n_train * 10) / 10)


def model_run(args, start: str, subset: Path, n_train: int, seed: int, run_dir: Path, query, crosslab) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    source = ["--model_name_or_path", str(args.backbone)] if start == "backbone" else ["--config_overrides", CONFIG]
    epochs = epochs_for(n_train, args.min_steps)
    started = time.perf_counter()
    run_cli(
        args.python,
        ["finetune", "--train_file", str(subset), "--label_key", LABEL_KEY, *source, "--num_train_epochs", str(epochs),
         "--per_device_train_batch_size", str(BATCH_SIZE), "--learning_rate", "1e-3", "--save_strategy", "no",
         "--report_to", "none", "--disable_tqdm", "true", "--seed", str(seed), "--output_dir", str(run_dir / "model")],
        run_dir / "finetune.log",
    )  # fmt: skip
    trained = time.perf_counter()
    predicted = annotate(args.python, run_dir / "model", args.data_dir / args.query_file, run_dir / "stim.h5ad", [])
    result = {
        "start": start,
        "epochs": epochs,
        "training_seconds": round(trained - started, 1),
        "annotation_seconds": round(time.perf_counter() - trained, 1),
        **scores(query["truth"], predicted, query["classes"]),
    }
    if crosslab is not None:
        # Every cell gets a label (--min_genes 0), as logistic regression gives one; 202 panel genes are present.
        other = annotate(
            args.python, run_dir / "model", crosslab["path"], run_dir / "pbmc68k.h5ad",
            ["--min_gene_overlap", "0.05", "--min_genes", "0"],
        )  # fmt: skip
        result["cross_lab"] = scores(crosslab["truth"], other, crosslab["classes"])
    return result


def baseline_run(reference, query, crosslab) -> dict:
    import anndata

    result = {"start": "logistic regression", **scores(query["truth"], logistic_regression(reference, query["adata"]), query["classes"])}  # fmt: skip
    if crosslab is not None:
        other = crosslab["adata"]
        # On the 2,000 panel genes (those pbmc68k lacks are zeros, as the models see them) and, fairer to it, retrained
        # on the genes both share.
        shared_genes = reference.var_names[reference.var_names.isin(other.var_names)]
        on_panel = np.zeros((other.n_obs, reference.n_vars), dtype=np.float32)
        on_panel[:, reference.var_names.get_indexer(shared_genes)] = other[:, shared_genes].X.toarray()
        on_panel = anndata.AnnData(X=on_panel, obs=other.obs, var=reference.var[[]])
        result["cross_lab"] = scores(crosslab["truth"], logistic_regression(reference, on_panel), crosslab["classes"])
        result["cross_lab_shared_genes"] = {
            "n_genes": len(shared_genes),
            **scores(
                crosslab["truth"],
                logistic_regression(reference[:, shared_genes].copy(), other[:, shared_genes].copy()),
                crosslab["classes"],
            ),
        }
    return result


def summarise(output_dir: Path) -> dict:
    """Every finished run's result, and per fraction and start the mean and standard deviation over seeds."""
    runs = [json.loads(path.read_text()) for path in sorted(output_dir.glob("runs/*/result.json"))]
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault((run["fraction"], run["start"]), []).append(run)
    order = {"scratch": 0, "backbone": 1, "logistic regression": 2}
    summary = []
    for (fraction, start), members in sorted(groups.items(), key=lambda item: (item[0][0], order[item[0][1]])):
        row = {"fraction": fraction, "start": start, "n_train": [m["n_train"] for m in members]}
        row["seeds"] = [m["seed"] for m in members]
        for key in ("accuracy", "macro_f1"):
            values = [m[key] for m in members]
            row[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
        for key in ("cross_lab", "cross_lab_shared_genes"):
            if all(key in m for m in members):
                row[key] = {
                    metric: {"mean": float(np.mean([m[key][metric] for m in members])), "values": [m[key][metric] for m in members]}
                    for metric in ("accuracy", "macro_f1")
                }  # fmt: skip
        summary.append(row)
    (output_dir / "results.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1) + "\n")
    lines = [
        "| labelled control cells | start | seeds | accuracy (mean ± sd) | macro-F1 (mean ± sd) | macro-F1 per seed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary:
        cells = sorted(set(row["n_train"]))
        lines.append(
            f"| {row['fraction']:.0%} ({'/'.join(str(c) for c in cells)}) | {row['start']} | {len(row['seeds'])} | "
            f"{row['accuracy']['mean']:.3f} ± {row['accuracy']['std']:.3f} | "
            f"{row['macro_f1']['mean']:.3f} ± {row['macro_f1']['std']:.3f} | "
            f"{', '.join(f'{v:.3f}' for v in row['macro_f1']['values'])} |"
        )
    crosslab = [row for row in summary if "cross_lab" in row]
    if crosslab:
        lines += ["", "| all control cells -> pbmc68k_reduced | seeds | accuracy | macro-F1 (per seed) |", "| --- | --- | --- | --- |"]  # fmt: skip
        for row in crosslab:
            for key, name in (
                ("cross_lab", row["start"]),
                ("cross_lab_shared_genes", f"{row['start']}, shared genes"),
            ):
                if key in row:
                    lines.append(
                        f"| {name} | {len(row['seeds'])} | {row[key]['accuracy']['mean']:.3f} | "
                        f"{row[key]['macro_f1']['mean']:.3f} ({', '.join(f'{v:.3f}' for v in row[key]['macro_f1']['values'])}) |"
                    )  # fmt: skip
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    plot(summary, output_dir / "results.png")
    return {"summary": summary}


def plot(summary: list[dict], path: Path) -> None:
    """Macro-F1 on the stimulated cells against the labelled fraction: each seed as a dot, the mean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for start, colour in (("scratch", "tab:blue"), ("backbone", "tab:orange"), ("logistic regression", "tab:gray")):
        rows = [row for row in summary if row["start"] == start]
        if not rows:
            continue
        fractions = [row["fraction"] * 100 for row in rows]
        axis.plot(fractions, [row["macro_f1"]["mean"] for row in rows], "-", color=colour, label=start)
        for fraction, row in zip(fractions, rows):
            values = row["macro_f1"]["values"]
            axis.plot([fraction] * len(values), values, "o", color=colour, alpha=0.5, ms=4)
    axis.set_xscale("log")
    axis.set_xticks([1, 5, 20, 100], ["1", "5", "20", "100"])
    axis.set_xlabel("labelled control cells (%)")
    axis.set_ylabel("macro-F1 on the stimulated cells")
    axis.set_title("Kang 2018, control -> stimulated")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("kang_data"))
    parser.add_argument("--query-file", default="stim_hvg.h5ad", help="in --data-dir")
    parser.add_argument("--backbone", type=Path, required=True, help="the pretrained model folder")
    parser.add_argument("--output-dir", type=Path, default=Path("label_efficiency"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.2, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--starts", nargs="+", default=["scratch", "backbone"], choices=("scratch", "backbone"))
    parser.add_argument("--min-per-type", type=int, default=2, help="labelled cells of each type, at least")
    parser.add_argument("--min-steps", type=int, default=300, help="optimiser steps, at least (batch 8)")
    parser.add_argument("--cross-lab", action="store_true", help="also annotate pbmc68k_reduced (fraction 1 only)")
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args(argv)
    args.python = sys.executable
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.summarise_only:
        print((summarise(args.output_dir), (args.output_dir / "results.md").read_text())[1])
        return
    import anndata

    control = anndata.read_h5ad(args.data_dir / "ctrl_hvg.h5ad")
    stimulated = anndata.read_h5ad(args.data_dir / args.query_file)
    truth = stimulated.obs[LABEL_KEY].astype(str).to_numpy()
    query = {"adata": stimulated, "truth": truth, "classes": sorted(set(truth))}
    crosslab = None
    if args.cross_lab:
        path = args.output_dir / "pbmc68k_kang_types.h5ad"
        if not path.is_file():
            write_pbmc68k(path)
        other = anndata.read_h5ad(path)
        labels = other.obs[LABEL_KEY].astype(str).to_numpy()
        crosslab = {"path": path, "adata": other, "truth": labels, "classes": sorted(set(labels))}
    subsets = args.output_dir / "subsets"
    subsets.mkdir(exist_ok=True)
    for fraction in args.fractions:
        for seed in args.seeds:
            reference = stratified_subset(control, fraction=fraction, seed=seed, min_per_type=args.min_per_type)
            subset = subsets / f"ctrl_{fraction:g}_seed{seed}.h5ad"
            if not subset.is_file():
                reference.write_h5ad(subset)
            with_crosslab = crosslab if fraction >= 1 else None
            common = {"fraction": fraction, "seed": seed, "n_train": int(reference.n_obs)}
            for start in ["logistic regression", *args.starts]:
                run_dir = args.output_dir / "runs" / f"{fraction:g}_{start.replace(' ', '_')}_seed{seed}"
                if (run_dir / "result.json").is_file():
                    continue
                if start == "logistic regression":
                    run_dir.mkdir(parents=True, exist_ok=True)
                    result = baseline_run(reference, query, with_crosslab)
                else:
                    result = model_run(args, start, subset, reference.n_obs, seed, run_dir, query, with_crosslab)
                result = {**common, **result, "threads": os.environ.get("OMP_NUM_THREADS")}
                (run_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
                extra = f", pbmc68k macro-F1 {result['cross_lab']['macro_f1']:.3f}" if "cross_lab" in result else ""
                print(
                    f"{fraction:g} seed {seed} {start} ({reference.n_obs} cells): accuracy {result['accuracy']:.3f}, "
                    f"macro-F1 {result['macro_f1']:.3f}{extra}",
                    flush=True,
                )
                summarise(args.output_dir)
    print((args.output_dir / "results.md").read_text())


if __name__ == "__main__":
    main()
