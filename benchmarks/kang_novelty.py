"""Novel types on the Kang 2018 PBMCs: a type left out of the reference, found among the query's cells?

For each held-out type H, direction (control -> stimulated, and back) and seed, it runs what a user types::

    python -m modeling_scbert.cli finetune --train_file REF_without_H.h5ad --label_key cell_type \\
        --validation_fraction 0.1 --config_overrides <the compact size of make demo> \\
        --num_train_epochs 2 --learning_rate 1e-3 --seed S --output_dir OUT/...

then annotates the query cells with ``annotate(..., novel_types=True, return_probabilities=True)`` and scores, with
H's cells as the positives and every other query cell as the negatives:

- the area under the ROC curve of scbert's novelty (``.obs['scbert_novelty']``) and of ``1 - max probability`` (the
  published rule's score);
- the share of known-type cells and of H's cells flagged at the default threshold (novelty >= 0.95), and by the
  published rule (probability below 0.5);
- the accuracy on known-type cells of the labels without the call, with it (an ``Unassigned`` known cell counts as
  wrong), and of the known cells left assigned;
- logistic regression (L2, C=1, log-normalised, as ``make demo``'s baseline) on the same cells: its ``1 - max
  probability``; and CellTypist (its own training on the same cells, the probability of its predicted type) when
  ``celltypist`` is installed (``pip install -e ".[bench]"``; not a dependency of the package or its tests).

``--detector-only`` scores the novelty alone (it depends on the reference cells, not on the model's weights) for
every one of the eight types held out in turn, in both directions, without training: the types kept aside from the
four above check that the score is not tuned to them.

Run (one thread; about 2-3 minutes per fine-tuning on one core)::

    OMP_NUM_THREADS=1 python benchmarks/kang_novelty.py --data-dir kang_data --output-dir kang_novelty \\
        --seeds 0 1 2 --directions control_to_stimulated stimulated_to_control

``--data-dir`` gets ``ctrl_hvg.h5ad`` / ``stim_hvg.h5ad`` on first use (``benchmarks/kang_seeds.py``). Results: one
JSON line per run in ``OUTPUT/results.jsonl`` (reruns skip finished runs) and the tables of ``docs/novelty.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "examples"), str(Path(__file__).resolve().parent)]

from demo_kang import COMPACT, LABEL_KEY  # noqa: E402
from kang_seeds import write_data  # noqa: E402

CONFIG = ",".join(f"{key}={value}" for key, value in COMPACT.items())
TYPES = ("B cells", "NK cells", "CD14+ Monocytes", "Megakaryocytes")
DIRECTIONS = {
    "control_to_stimulated": ("ctrl_hvg.h5ad", "stim_hvg.h5ad"),
    "stimulated_to_control": ("stim_hvg.h5ad", "ctrl_hvg.h5ad"),
}
THRESHOLD = 0.95
PUBLISHED_THRESHOLD = 0.5


def lognormalised(adata) -> np.ndarray:
    import scanpy as sc

    normalised = adata.copy()
    sc.pp.normalize_total(normalised, target_sum=1e4)
    sc.pp.log1p(normalised)
    return normalised.X


def logistic_regression_probabilities(reference, query) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter
        classifier = LogisticRegression(C=1.0, max_iter=2000)
        classifier.fit(lognormalised(reference), reference.obs[LABEL_KEY].astype(str).to_numpy())
    return classifier.predict_proba(lognormalised(query))


def celltypist_probabilities(reference, query) -> np.ndarray | None:
    """CellTypist's probability of its predicted type per query cell, or ``None`` without celltypist."""
    try:
        import celltypist
    except ImportError:
        return None
    import anndata

    train = anndata.AnnData(lognormalised(reference), obs=reference.obs[[LABEL_KEY]].astype(str), var=reference.var)
    test = anndata.AnnData(lognormalised(query), obs=query.obs[[]], var=query.var)
    # use_SGD: CellTypist 1.7.1's default solver passes multi_class, which scikit-learn 1.8 no longer takes.
    model = celltypist.train(train, labels=LABEL_KEY, check_expression=False, n_jobs=1, use_SGD=True)
    predictions = celltypist.annotate(test, model=model, mode="prob match", p_thres=0.5)
    return predictions.probability_matrix.to_numpy()


def run(args, direction: str, held_out: str, seed: int) -> dict:
    import anndata

    from modeling_scbert.annotation.annotate import predict_cell_types as predict
    from modeling_scbert.training.novelty import auroc

    reference_file, query_file = DIRECTIONS[direction]
    tag = f"{direction}_{held_out.replace(' ', '_').replace('+', 'p')}"
    train_file = args.output_dir / f"{tag}.h5ad"
    reference = anndata.read_h5ad(args.data_dir / reference_file)
    reference = reference[reference.obs[LABEL_KEY].astype(str) != held_out].copy()
    if not train_file.is_file():
        reference.write_h5ad(train_file)
    model_dir = args.output_dir / f"{tag}_seed{seed}"
    if not (model_dir / "model.safetensors").is_file():
        finetune = [
            sys.executable, "-m", "modeling_scbert.cli", "finetune",
            "--train_file", str(train_file), "--label_key", LABEL_KEY, "--validation_fraction", "0.1",
            "--config_overrides", CONFIG, "--num_train_epochs", "2", "--learning_rate", "1e-3",
            "--seed", str(seed), "--output_dir", str(model_dir),
        ]  # fmt: skip
        with open(args.output_dir / f"{tag}_seed{seed}.log", "w") as log:
            subprocess.run(finetune, check=True, stdout=log, stderr=subprocess.STDOUT)
    query = anndata.read_h5ad(args.data_dir / query_file)
    truth = query.obs[LABEL_KEY].astype(str).to_numpy()
    novel = truth == held_out
    result = predict(query, str(model_dir), novel_types=True, return_probabilities=True, progress=False)
    probabilities = result.probabilities
    best = np.asarray(result.class_names, dtype=object)[probabilities.argmax(axis=1)]
    labels = result.calls.labels.astype(str)
    novelty = result.novelty
    row = {
        "direction": direction,
        "held_out": held_out,
        "seed": seed,
        "novel_cells": int(novel.sum()),
        "auroc_novelty": auroc(novel, novelty),
        "auroc_max_probability": auroc(novel, 1 - probabilities.max(axis=1)),
        "known_flagged": float((novelty[~novel] >= THRESHOLD).mean()),
        "novel_flagged": float((novelty[novel] >= THRESHOLD).mean()),
        "known_flagged_published_rule": float((probabilities[~novel].max(axis=1) < PUBLISHED_THRESHOLD).mean()),
        "novel_flagged_published_rule": float((probabilities[novel].max(axis=1) < PUBLISHED_THRESHOLD).mean()),
        "known_accuracy": float((best[~novel] == truth[~novel]).mean()),
        "known_accuracy_with_call": float((labels[~novel] == truth[~novel]).mean()),
        "known_accuracy_assigned": float((labels[~novel] == truth[~novel])[labels[~novel] != "Unassigned"].mean()),
        "novel_called_as": {
            name: int(count) for name, count in zip(*np.unique(best[novel], return_counts=True), strict=True)
        },
    }
    # The baselines do not depend on scbert's seed: computed once per reference, kept beside the runs.
    baselines_file = args.output_dir / f"{tag}_baselines.json"
    if baselines_file.is_file():
        baselines = json.loads(baselines_file.read_text())
    else:
        regression = logistic_regression_probabilities(reference, query)
        typist = celltypist_probabilities(reference, query) if args.celltypist else None
        baselines = {
            "auroc_logistic_regression": auroc(novel, 1 - regression.max(axis=1)),
            "auroc_celltypist": None if typist is None else auroc(novel, 1 - typist.max(axis=1)),
        }
        baselines_file.write_text(json.dumps(baselines))
    return {**row, **baselines}


def detector_only(args) -> list[dict]:
    """The novelty score alone, for every type of the reference held out in turn and both directions: the detector
    ``finetune`` fits (``fit_novelty_detector``, the same split of 10% held out), without training a model; the score
    depends on the reference cells only, not on the model's weights."""
    import anndata
    import scipy.sparse as sp

    from modeling_scbert.training.novelty import auroc, fit_novelty_detector
    from tokenization import ScBertTokenizer

    rows = []
    for direction, (reference_file, query_file) in DIRECTIONS.items():
        reference_all = anndata.read_h5ad(args.data_dir / reference_file)
        query = anndata.read_h5ad(args.data_dir / query_file)
        truth = query.obs[LABEL_KEY].astype(str).to_numpy()
        tokenizer = ScBertTokenizer(list(reference_all.var_names))
        values = sp.vstack([v for *_, v in tokenizer.iter_encoded(query, progress=False, return_values=True)])
        for held_out in sorted(set(reference_all.obs[LABEL_KEY].astype(str))):
            reference = reference_all[reference_all.obs[LABEL_KEY].astype(str) != held_out].copy()
            classes = sorted(set(reference.obs[LABEL_KEY].astype(str)))
            detector = fit_novelty_detector(
                reference, None, tokenizer=tokenizer, label_key=LABEL_KEY, label_names=classes, label_rule={},
                eval_fraction=0.1, split_seed=0, read_options={},
            )  # fmt: skip
            novelty = detector.scores(values)
            novel = truth == held_out
            rows.append(
                {
                    "direction": direction,
                    "held_out": held_out,
                    "novel_cells": int(novel.sum()),
                    "auroc_novelty": auroc(novel, novelty),
                    "known_flagged": float((novelty[~novel] >= THRESHOLD).mean()),
                    "novel_flagged": float((novelty[novel] >= THRESHOLD).mean()),
                    "held_out_flagged": detector.facts["held_out_flagged"],
                    "left_out_auroc_mean": detector.facts.get("left_out_auroc_mean"),
                }
            )
    return rows


def detector_table(rows: list[dict]) -> str:
    lines = [
        "| direction | held-out type | cells | AUROC | known cells flagged | novel cells flagged |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        main = "" if row["held_out"] in TYPES else " (kept aside)"
        lines.append(
            f"| {row['direction']} | {row['held_out']}{main} | {row['novel_cells']:,} | {row['auroc_novelty']:.3f} "
            f"| {row['known_flagged']:.3f} | {row['novel_flagged']:.3f} |"
        )
    for direction in DIRECTIONS:
        mine = [row for row in rows if row["direction"] == direction]
        four = [row["auroc_novelty"] for row in mine if row["held_out"] in TYPES]
        lines.append(
            f"| {direction} | mean: the four / all {len(mine)} | | {np.mean(four):.3f} / "
            f"{np.mean([row['auroc_novelty'] for row in mine]):.3f} "
            f"| {np.mean([row['known_flagged'] for row in mine]):.3f} | |"
        )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """Per direction and held-out type: means over seeds (min-max where seeds differ)."""

    def mean(values):
        values = [v for v in values if v is not None]
        return f"{np.mean(values):.3f}" if values else "-"

    def cell(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        if max(values) - min(values) < 0.0005:
            return f"{np.mean(values):.2f}"
        return f"{np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    lines = [
        "| direction | held-out type | seeds | scbert novelty | scbert 1 - max prob. | CellTypist | logistic regr. "
        "| known flagged | novel flagged | known acc.: without the call / assigned / Unassigned as wrong |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for direction in DIRECTIONS:
        mine = [row for row in rows if row["direction"] == direction]
        for held_out in dict.fromkeys(row["held_out"] for row in mine):
            group = [row for row in mine if row["held_out"] == held_out]
            lines.append(
                f"| {direction} | {held_out} | {len(group)} | {cell([r['auroc_novelty'] for r in group])} "
                f"| {cell([r['auroc_max_probability'] for r in group])} "
                f"| {cell([r['auroc_celltypist'] for r in group])} "
                f"| {cell([r['auroc_logistic_regression'] for r in group])} "
                f"| {cell([r['known_flagged'] for r in group])} | {cell([r['novel_flagged'] for r in group])} "
                f"| {cell([r['known_accuracy'] for r in group])} / {cell([r['known_accuracy_assigned'] for r in group])} "
                f"/ {cell([r['known_accuracy_with_call'] for r in group])} |"
            )
        if mine:
            lines.append(
                f"| {direction} | **mean** | | **{np.mean([r['auroc_novelty'] for r in mine]):.3f}** "
                f"| {np.mean([r['auroc_max_probability'] for r in mine]):.3f} "
                f"| {mean([r['auroc_celltypist'] for r in mine])} "
                f"| {np.mean([r['auroc_logistic_regression'] for r in mine]):.3f} "
                f"| {np.mean([r['known_flagged'] for r in mine]):.3f} | {np.mean([r['novel_flagged'] for r in mine]):.3f} "
                f"| {np.mean([r['known_accuracy'] for r in mine]):.3f} / "
                f"{np.mean([r['known_accuracy_assigned'] for r in mine]):.3f} / "
                f"{np.mean([r['known_accuracy_with_call'] for r in mine]):.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("kang_data"))
    parser.add_argument("--output-dir", type=Path, default=Path("kang_novelty"))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--types", nargs="*", default=list(TYPES), help="held-out types")
    parser.add_argument("--directions", nargs="*", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    parser.add_argument("--no-celltypist", dest="celltypist", action="store_false", help="skip CellTypist")
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    parser.add_argument(
        "--detector-only",
        action="store_true",
        help="the novelty score alone, every type, both directions (no training)",
    )
    args = parser.parse_args(argv)
    if args.detector_only:
        write_data(args.data_dir, [])
        print(detector_table(detector_only(args)))
        return
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results = args.output_dir / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    if not args.table_only:
        write_data(args.data_dir, [])
        done = {(row["direction"], row["held_out"], row["seed"]) for row in rows}
        for direction in args.directions:
            for held_out in args.types:
                for seed in args.seeds:
                    if (direction, held_out, seed) in done:
                        continue
                    row = run(args, direction, held_out, seed)
                    rows.append(row)
                    with results.open("a") as file:
                        file.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
