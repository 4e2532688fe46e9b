"""The main job in one command: pretrain, fine-tune and annotate real PBMCs, beside a logistic-regression baseline.

Data: scanpy's bundled ``pbmc68k_reduced`` (700 10x PBMCs from Zheng et al.'s 68k data set, 765 genes; works
offline). Its ``.raw.X`` is log-normalised over those genes; counts are recovered as
``rint(expm1(raw.X) * n_counts / 1e4)``. Labels: ``obs['bulk_labels']`` (10 types, 240 cells down to 8).

Per seed: a stratified 80/20 split (``tokenization.data.stratified_split``); a compact scBERT over the 765-gene
panel is pretrained by masked expression on the training cells, fine-tuned on them twice with different seeds (all
layers, plain cross-entropy, 30% dropout on the head's per-gene scores, a fixed number of epochs: the held-out cells
are never used for model selection; the two run side by side in worker processes), and the two annotate the held-out
cells as an ensemble (averaged probabilities; each is also scored alone). (The class-weighted loss made the
published per-gene ReLU head collapse to one class on some seeds at this size, so it is off here.) The baseline is
scikit-learn's ``LogisticRegression`` (L2, C=1, lbfgs, max_iter=2000) on the same split, on the same genes'
log-normalised expression as shipped (``adata.raw.X``: normalise_total to 1e4 + natural log1p).
``--token-baselines`` adds logistic regression on the scBERT tokens themselves; ``--model-config`` /
``--finetune-args`` / ``--class-weighting`` / ``--ensemble-size`` change the recipe for ablations (recorded in
``metrics.json``).

Writes into ``--output-dir`` (``demo_output/``): ``metrics.json``, ``annotated.h5ad`` (held-out cells of the first
seed, with the ensemble's predictions and confidences and the first member's embeddings), ``model/`` and
``model-2/`` (the fine-tuned members, each with its tokenizer and model card), ``confusion_matrix.png`` and
``umap.png`` (of the first member's embeddings).

Run: ``make demo`` or ``python examples/demo_pbmc.py [--seeds 0 1 2] [--quick] [--output-dir demo_output]
[--ensemble-size 2] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# A compact scBERT for a 765-gene panel: narrow, one layer, small heads. The per-position ("conv") head reads every
# gene's final encoding, as the published head does, which suits a small panel of informative genes.
MODEL_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "head_dim": 8,
    "intermediate_size": 128,
    "num_random_features": 16,
    "classifier_type": "conv",
    "classifier_hidden_sizes": [64],
    "classifier_dropout": 0.0,
    # Drops 30% of the per-gene scores while fine-tuning, so that the head cannot rest on a few genes: 558 cells are
    # otherwise memorised (docs/training.md).
    "classifier_input_dropout": 0.3,
    # Wider than the default 0.02: in a model this narrow, 0.02 leaves the head's signals so small that training
    # barely starts.
    "initializer_range": 0.1,
    "feature_redraw_interval": 100,
}
PRETRAIN = {"num_train_epochs": 5, "learning_rate": 1e-3, "per_device_train_batch_size": 32}
FINETUNE = {"num_train_epochs": 30, "learning_rate": 1e-3, "per_device_train_batch_size": 32}
CLASS_WEIGHTING = "none"
# Fine-tunings of the same pretrained model whose probabilities are averaged. On 558 cells, one fine-tuning's held-out
# accuracy moves by up to 0.1 with its seed alone; the average of two is steadier and better (docs/training.md).
ENSEMBLE_SIZE = 2
MEMBER_SEED_STRIDE = 1000
QUICK_STEPS = {"pretrain": 3, "finetune": 3}
# Facts for the fine-tuned model's card (the rest is read from the run: labels, counts, contract, evaluation).
CARD_FACTS = {
    "license": "apache-2.0",
    "species": "human",
    "training_data": {
        "name": "pbmc68k_reduced (scanpy)",
        "description": "700 10x Genomics PBMCs from Zheng et al. 2017 (68k PBMCs), as bundled with scanpy; "
        "labels from obs['bulk_labels']; the training 80% of a stratified split.",
    },
    "description": "A compact scBERT trained by `make demo` of the scbert package, for demonstration only: a small "
    "model on 558 cells, not a general PBMC annotator.",
}
LABEL_KEY = "bulk_labels"


def load_pbmc():
    """pbmc68k_reduced as counts (CSR, float32) over its 765 genes, with the log-normalised values kept for the
    baseline in ``.layers['log1p']``."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    source = sc.datasets.pbmc68k_reduced()
    log_normalised = source.raw.X.toarray() if sp.issparse(source.raw.X) else np.asarray(source.raw.X)
    counts = np.rint(np.expm1(log_normalised) * source.obs["n_counts"].to_numpy()[:, None] / 1e4)
    adata = ad.AnnData(
        X=sp.csr_matrix(counts.astype(np.float32)),
        obs=source.obs[[LABEL_KEY]].copy(),
        var=source.raw.var[[]].copy(),
        layers={"log1p": sp.csr_matrix(log_normalised.astype(np.float32))},
    )
    adata.obs[LABEL_KEY] = adata.obs[LABEL_KEY].astype("category")
    return adata


def training_arguments(output_dir: Path, *, seed: int, recipe: dict, max_steps: int | None):
    from transformers import TrainingArguments

    defaults = {"weight_decay": 0.01, "warmup_steps": 0.1, "lr_scheduler_type": "cosine"}
    return TrainingArguments(
        output_dir=str(output_dir),
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        disable_tqdm=True,
        dataloader_drop_last=False,
        max_steps=max_steps if max_steps is not None else -1,
        **{**defaults, **recipe},
    )


def logistic_regression_baseline(adata, train_index: np.ndarray, test_index: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    features = adata.layers["log1p"]
    labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter
        classifier = LogisticRegression(C=1.0, max_iter=2000).fit(features[train_index], labels[train_index])
    return classifier.predict(features[test_index])


def scores(truth, predicted) -> dict[str, float]:
    """Accuracy and macro-F1 of predicted against true labels."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def token_baselines(train, test, num_positions: int) -> dict:
    """Logistic regression (C=1) on the scBERT tokens themselves, encoded three ways: the bin as a number
    (``linear``); one indicator per bin (``one_hot``: a free response per gene and bin, as a lookup table gives); one
    indicator per "bin >= k" (``cumulative``: the same functions, but each indicator learns from every cell at or
    above its bin)."""
    from sklearn.linear_model import LogisticRegression

    def bins(split):
        matrix = np.zeros((len(split), num_positions), dtype=np.float32)
        for row, (genes, values) in enumerate(zip(split["gene_indices"], split["bins"])):
            matrix[row, genes] = values
        return matrix

    x_train, x_test = bins(train), bins(test)
    levels = range(1, int(max(x_train.max(), x_test.max())) + 1)
    encodings = {
        "linear": lambda m: m,
        "one_hot": lambda m: np.concatenate([m == k for k in levels], axis=1),
        "cumulative": lambda m: np.concatenate([m >= k for k in levels], axis=1),
    }
    results = {}
    for name, encode in encodings.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence chatter
            classifier = LogisticRegression(C=1.0, max_iter=2000).fit(encode(x_train), train["label"])
        results[name] = scores(test["label"], classifier.predict(encode(x_test)))
    return results


def member_dir(work_dir: Path, member: int) -> Path:
    """Where ensemble member ``member`` (0-based) is saved: ``model/``, then ``model-2/``, ``model-3/``, ..."""
    return work_dir / ("model" if member == 0 else f"model-{member + 1}")


def finetune_member(train, member: int, *, work_dir: Path, seed: int, recipe: dict, quick: bool, threads: int) -> str:
    """Fine-tune one ensemble member from ``work_dir/pretrained`` and return its folder (it runs in a worker)."""
    import torch
    from transformers.utils import logging as hf_logging

    from modeling_scbert.training import finetune

    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()  # a worker process does not inherit main()'s setting
    output_dir = member_dir(work_dir, member)
    finetune(
        train,
        training_args=training_arguments(
            output_dir,
            # Members differ only in this seed: the head's initialisation, the order of the cells and the dropout.
            seed=seed + MEMBER_SEED_STRIDE * member,
            recipe=recipe["finetune"],
            max_steps=QUICK_STEPS["finetune"] if quick else None,
        ),
        model=str(work_dir / "pretrained"),
        preset="full",
        class_weighting=recipe["class_weighting"],
        config_overrides={
            k: recipe["model_config"][k]
            for k in ("classifier_type", "classifier_hidden_sizes", "classifier_dropout", "classifier_input_dropout")
        },
        card_facts=CARD_FACTS,
    )
    return str(output_dir)


def run_seed(
    adata,
    dataset,
    tokenizer,
    *,
    seed: int,
    work_dir: Path,
    recipe: dict,
    quick: bool,
    with_token_baselines: bool,
    pool,
    threads: int,
) -> tuple[dict, object]:
    from modeling_scbert.annotate import annotate
    from modeling_scbert.hub import write_model_card
    from modeling_scbert.training import pretrain
    from tokenization.data import stratified_split

    started = time.perf_counter()
    splits = stratified_split(dataset, eval_fraction=0.2, seed=seed)
    train, test = splits["train"], splits["eval"]
    names = list(adata.obs_names)
    position = {name: i for i, name in enumerate(names)}
    train_index = np.array([position[c] for c in train["cell_id"]])
    test_index = np.array([position[c] for c in test["cell_id"]])

    pretrain(
        train,
        training_args=training_arguments(
            work_dir / "pretrained",
            seed=seed,
            recipe=recipe["pretrain"],
            max_steps=QUICK_STEPS["pretrain"] if quick else None,
        ),
        model=None,
        tokenizer=tokenizer,
        config_overrides=recipe["model_config"],
    )
    fine_tune = functools.partial(
        finetune_member, train, work_dir=work_dir, seed=seed, recipe=recipe, quick=quick, threads=threads
    )
    model_dirs = list((map if pool is None else pool.map)(fine_tune, range(recipe["ensemble_size"])))

    held_out = adata[test_index].copy()
    del held_out.layers["log1p"]
    truth = held_out.obs[LABEL_KEY].astype(str).to_numpy()

    def annotated_scores(annotated) -> dict[str, float]:
        return scores(truth, annotated.obs["scbert_cell_type"].astype(str).to_numpy())

    member_scores = [annotated_scores(annotate(held_out, path, copy=True, progress=False)) for path in model_dirs]
    annotate(held_out, model_dirs, progress=False)
    ensemble = annotated_scores(held_out)
    baseline = scores(truth, logistic_regression_baseline(adata, train_index, test_index))
    result = {
        "seed": seed,
        **ensemble,
        "baseline_accuracy": baseline["accuracy"],
        "baseline_macro_f1": baseline["macro_f1"],
        "member_accuracy": [member["accuracy"] for member in member_scores],
        "member_macro_f1": [member["macro_f1"] for member in member_scores],
        "n_train": len(train_index),
        "n_test": len(test_index),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if with_token_baselines:
        result["token_baselines"] = token_baselines(train, test, tokenizer.num_genes + 1)
    for member, path in enumerate(model_dirs):
        # Each card reports its own model's figures; the ensemble's are in metrics.json.
        evaluation = {
            "dataset_name": "pbmc68k_reduced, held-out cells",
            "split": f"stratified 20% (seed {seed})",
            "num_cells": len(test_index),
            **member_scores[member],
        }
        facts = {**CARD_FACTS, "evaluation": evaluation}
        if len(model_dirs) > 1:
            facts["description"] += (
                f" Member {member + 1} of an ensemble of {len(model_dirs)} fine-tuned from the same pretrained model "
                "(`scbert annotate --model` with every member averages their probabilities)."
            )
        write_model_card(path, facts)
    return result, held_out


def plot(held_out, output_dir: Path, model_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    from sklearn.metrics import ConfusionMatrixDisplay

    from modeling_scbert.annotate import embed

    classes = list(held_out.obs[LABEL_KEY].cat.categories)
    figure, axis = plt.subplots(figsize=(9, 8))
    ConfusionMatrixDisplay.from_predictions(
        held_out.obs[LABEL_KEY].astype(str),
        held_out.obs["scbert_cell_type"].astype(str),
        labels=classes,
        xticks_rotation=90,
        ax=axis,
        colorbar=False,
    )
    axis.set_title("scBERT on held-out pbmc68k_reduced cells")
    figure.tight_layout()
    figure.savefig(output_dir / "confusion_matrix.png", dpi=120)
    plt.close(figure)

    embed(held_out, str(model_dir), progress=False)
    sc.pp.neighbors(held_out, use_rep="X_scbert", n_neighbors=10, random_state=0)
    sc.tl.umap(held_out, random_state=0)
    figure = sc.pl.umap(
        held_out, color=["scbert_cell_type", LABEL_KEY], show=False, return_fig=True, wspace=0.6, title=None
    )
    figure.savefig(output_dir / "umap.png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def parallelism(jobs: int | None, ensemble_size: int) -> tuple[int, int]:
    """How many members train at once, and torch threads for each."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if jobs is None:
        jobs = 1 if torch.cuda.is_available() else min(ensemble_size, cores)
    jobs = max(1, min(jobs, ensemble_size))
    return jobs, max(1, cores // jobs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one split and run per seed")
    parser.add_argument("--quick", action="store_true", help="a few training steps only (CI smoke run)")
    parser.add_argument("--output-dir", default="demo_output", help="where results go (replaced)")
    parser.add_argument(
        "--model-config", type=json.loads, default={}, help="JSON merged into the model config (ablations)"
    )
    parser.add_argument("--finetune-args", type=json.loads, default={}, help="JSON merged into FINETUNE (ablations)")
    parser.add_argument("--class-weighting", choices=("none", "balanced"), default=CLASS_WEIGHTING)
    parser.add_argument(
        "--token-baselines",
        action="store_true",
        help="also fit logistic regression on the scBERT tokens (as numbers, one-hot, cumulative indicators)",
    )
    parser.add_argument(
        "--ensemble-size",
        type=int,
        default=ENSEMBLE_SIZE,
        help=f"fine-tunings per seed whose probabilities are averaged (default: {ENSEMBLE_SIZE})",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="fine-tunings run at once, in worker processes (default: one per CPU core, up to the ensemble size; "
        "1 on a GPU)",
    )
    args = parser.parse_args(argv)
    if args.ensemble_size < 1:
        parser.error("--ensemble-size must be at least 1")
    recipe = {
        "model_config": {**MODEL_CONFIG, **args.model_config},
        "pretrain": PRETRAIN,
        "finetune": {**FINETUNE, **args.finetune_args},
        "class_weighting": args.class_weighting,
        "ensemble_size": args.ensemble_size,
    }

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from tokenization import ScBertTokenizer
    from tokenization.data import to_dataset

    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    adata = load_pbmc()
    tokenizer = ScBertTokenizer.from_adata(adata)
    print(
        f"pbmc68k_reduced: {adata.n_obs} cells, panel of {tokenizer.num_genes} genes, {LABEL_KEY} with "
        f"{adata.obs[LABEL_KEY].nunique()} types"
    )

    jobs, threads = parallelism(args.jobs, args.ensemble_size)
    results = []
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="scbert-demo-"))
        # This model is too small for two threads to speed up one training (its operations are short), so the
        # cores train members side by side instead. Spawned workers: a forked one would inherit torch's threads.
        pool = None
        if jobs > 1:
            pool = stack.enter_context(
                ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
            )
        dataset = to_dataset(adata, tokenizer=tokenizer, label_key=LABEL_KEY, cache_dir=scratch)
        for i, seed in enumerate(args.seeds):
            work_dir = output_dir if i == 0 else Path(scratch) / f"seed-{seed}"
            result, held_out = run_seed(
                adata,
                dataset,
                tokenizer,
                seed=seed,
                work_dir=work_dir,
                recipe=recipe,
                quick=args.quick,
                with_token_baselines=args.token_baselines,
                pool=pool,
                threads=threads,
            )
            results.append(result)
            print(
                f"seed {seed}: scBERT accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f} | "
                f"logistic regression accuracy {result['baseline_accuracy']:.3f}, macro-F1 "
                f"{result['baseline_macro_f1']:.3f} | {result['n_train']} train / {result['n_test']} test cells, "
                f"{result['seconds']:.0f} s",
                flush=True,
            )
            if len(result["member_accuracy"]) > 1:
                print(
                    "  each fine-tuning alone: "
                    + ", ".join(
                        f"accuracy {a:.3f} / macro-F1 {f:.3f}"
                        for a, f in zip(result["member_accuracy"], result["member_macro_f1"])
                    )
                )
            for name, scores in result.get("token_baselines", {}).items():
                print(
                    f"  logistic regression on the tokens ({name}): accuracy {scores['accuracy']:.3f}, macro-F1 "
                    f"{scores['macro_f1']:.3f}"
                )
            if i == 0:
                shutil.rmtree(output_dir / "pretrained", ignore_errors=True)
                first_held_out = held_out
    # Plotted once every seed is trained: scanpy's neighbours/UMAP change torch's thread count, which must not
    # change the training of later seeds.
    plot(first_held_out, output_dir, output_dir / "model")
    first_held_out.write_h5ad(output_dir / "annotated.h5ad")

    keys = ("accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1")
    metrics = {key: float(np.mean([r[key] for r in results])) for key in keys}
    metrics.update(n_train=results[0]["n_train"], n_test=results[0]["n_test"])
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["seeds"] = list(args.seeds)
    metrics["quick"] = bool(args.quick)
    metrics["recipe"] = recipe
    metrics["member_mean"] = {
        "accuracy": float(np.mean([a for r in results for a in r["member_accuracy"]])),
        "macro_f1": float(np.mean([f for r in results for f in r["member_macro_f1"]])),
    }
    if args.token_baselines:
        metrics["token_baselines"] = {
            name: {key: float(np.mean([r["token_baselines"][name][key] for r in results])) for key in scores}
            for name, scores in results[0]["token_baselines"].items()
        }
    if len(results) > 1:
        metrics["per_seed"] = results
        metrics["std"] = {key: float(np.std([r[key] for r in results])) for key in keys}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"\nmean over seeds {list(args.seeds)}:\n"
        f"  scBERT               accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}\n"
        f"  logistic regression  accuracy {metrics['baseline_accuracy']:.3f}  macro-F1 "
        f"{metrics['baseline_macro_f1']:.3f}\n"
        f"  {metrics['seconds']:.0f} s in all; results in {output_dir}/"
    )
    return metrics


if __name__ == "__main__":
    main()
    sys.exit(0)
