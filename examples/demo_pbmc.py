"""The quick demo: pretrain, fine-tune an ensemble and annotate real PBMCs, beside logistic regression.

A tour of the public API on scanpy's bundled ``pbmc68k_reduced`` (700 10x PBMCs from Zheng et al.'s 68k data set,
765 genes, labels in ``obs['bulk_labels']``: 10 types, 240 cells down to 8; works offline). For each seed:

1. split the cells 80/20, stratified by type (:func:`tokenization.data.stratified_split`);
2. pretrain a compact scBERT by masked expression on the training cells (:func:`modeling_scbert.pretrain`);
3. fine-tune two members from it with different seeds, side by side in worker processes
   (:func:`modeling_scbert.finetune_ensemble`): all layers, plain cross-entropy, a fixed number of epochs
   (the held-out cells never choose the model);
4. annotate the held-out cells with both members together, which averages their probabilities
   (:func:`modeling_scbert.annotate`), and with each alone;
5. score it beside scikit-learn's logistic regression on the same split and genes (log-normalised as shipped).

Writes into ``--output-dir`` (``demo_output/``): ``metrics.json``, ``annotated.h5ad`` (the first seed's held-out
cells with the ensemble's predictions and confidences and the first member's embeddings), ``model/`` and ``model-2/``
(the members, each with its tokenizer and model card), ``confusion_matrix.png`` and ``umap.png``.

Run: ``make demo-pbmc68k`` or ``python examples/demo_pbmc.py [--seeds 0 1 2] [--quick] [--output-dir demo_output]
[--jobs N]``. The ablations behind this recipe are ``benchmarks/pbmc_ablations.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

# A compact scBERT for a 765-gene panel: narrow, one layer, small heads, the per-gene ("conv") head as published.
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
# Plain cross-entropy: the class-weighted loss made this head collapse to one class on some seeds at this size.
CLASS_WEIGHTING = "none"
# On 558 cells one fine-tuning's held-out accuracy moves by up to 0.1 with its seed alone; the average of two
# members' probabilities is steadier and better (docs/training.md). Member m of a split seeded s trains with seed
# s + 1000 m.
ENSEMBLE_SIZE = 2
MEMBER_SEED_STRIDE = 1000
RECIPE = {
    "model_config": MODEL_CONFIG,
    "pretrain": PRETRAIN,
    "finetune": FINETUNE,
    "class_weighting": CLASS_WEIGHTING,
    "ensemble_size": ENSEMBLE_SIZE,
}
QUICK_STEPS = 3  # training steps of each run with --quick (the CI smoke run)
HEAD_FIELDS = ("classifier_type", "classifier_hidden_sizes", "classifier_dropout", "classifier_input_dropout")
LABEL_KEY = "bulk_labels"
# Facts for the members' model cards (the rest is read from the run: labels, counts, contract, evaluation).
CARD_FACTS = {
    "license": "apache-2.0",
    "species": "human",
    "training_data": {
        "name": "pbmc68k_reduced (scanpy)",
        "description": "700 10x Genomics PBMCs from Zheng et al. 2017 (68k PBMCs), as bundled with scanpy; "
        "labels from obs['bulk_labels']; the training 80% of a stratified split.",
    },
    "description": "A compact scBERT trained by `make demo-pbmc68k` of the scbert package, for demonstration only: a "
    "small model on 558 cells, not a general PBMC annotator.",
}


def load_pbmc():
    """pbmc68k_reduced as counts (CSR) over its 765 genes; the shipped log-normalised values in ``.layers['log1p']``.

    Its ``.raw.X`` is log-normalised (to 1e4, natural log); counts are ``rint(expm1(raw.X) * n_counts / 1e4)``.
    """
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


def training_arguments(output_dir: Path, *, seed: int, options: dict, quick: bool):
    """``TrainingArguments`` for one run: no checkpoints, no evaluation, a cosine schedule."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        disable_tqdm=True,
        max_steps=QUICK_STEPS if quick else -1,
        **{"weight_decay": 0.01, "warmup_steps": 0.1, "lr_scheduler_type": "cosine", **options},
    )


def scores(truth, predicted) -> dict[str, float]:
    """Accuracy and macro-F1 of predicted against true labels."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def logistic_regression(adata, train_index: np.ndarray, test_index: np.ndarray) -> np.ndarray:
    """The baseline: logistic regression (L2, C=1, lbfgs) on the log-normalised values as shipped."""
    from sklearn.linear_model import LogisticRegression

    features, labels = adata.layers["log1p"], adata.obs[LABEL_KEY].astype(str).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter
        classifier = LogisticRegression(C=1.0, max_iter=2000).fit(features[train_index], labels[train_index])
    return classifier.predict(features[test_index])


def run_seed(adata, dataset, tokenizer, *, seed: int, work_dir: Path, recipe: dict, quick: bool, jobs: int | None):
    """Steps 1-5 for one seed; returns its figures, the annotated held-out cells and the training and test splits."""
    from modeling_scbert import finetune_ensemble, pretrain
    from modeling_scbert.annotation.annotate import annotate
    from modeling_scbert.hub.card import write_model_card
    from tokenization.data import stratified_split

    started = time.perf_counter()
    # 1. A stratified 80/20 split of the encoded cells.
    splits = stratified_split(dataset, eval_fraction=0.2, seed=seed)
    train, test = splits["train"], splits["eval"]
    position = {name: i for i, name in enumerate(adata.obs_names)}
    train_index = np.array([position[cell] for cell in train["cell_id"]])
    test_index = np.array([position[cell] for cell in test["cell_id"]])

    # 2. Masked-expression pretraining of a new compact model on the training cells (their labels unused).
    pretrained = work_dir / "pretrained"
    pretrain(
        train,
        training_args=training_arguments(pretrained, seed=seed, options=recipe["pretrain"], quick=quick),
        tokenizer=tokenizer,
        config_overrides=recipe["model_config"],
    )

    # 3. The ensemble: members differ only in their seed (the head's initialisation, the cells' order, the dropout).
    member_seeds = [seed + MEMBER_SEED_STRIDE * member for member in range(recipe["ensemble_size"])]
    trained = finetune_ensemble(
        train,
        seeds=member_seeds,
        output_dir=work_dir / "members",
        training_args=training_arguments(work_dir / "members", seed=seed, options=recipe["finetune"], quick=quick),
        processes=jobs,
        model=str(pretrained),
        preset="full",
        class_weighting=recipe["class_weighting"],
        config_overrides={key: recipe["model_config"][key] for key in HEAD_FIELDS},
        card_facts=CARD_FACTS,
    )
    model_dirs = [work_dir / ("model" if m == 0 else f"model-{m + 1}") for m in range(len(trained))]
    for source, destination in zip(trained, model_dirs):
        os.replace(source, destination)
    shutil.rmtree(work_dir / "members")
    shutil.rmtree(pretrained)

    # 4. Annotation of the held-out cells: by each member, then by both (averaged probabilities).
    held_out = adata[test_index].copy()
    del held_out.layers["log1p"]
    truth = held_out.obs[LABEL_KEY].astype(str).to_numpy()
    member_scores = []
    for path in model_dirs:
        alone = annotate(held_out, str(path), copy=True, progress=False)
        member_scores.append(scores(truth, alone.obs["scbert_cell_type"].astype(str)))
    annotate(held_out, [str(path) for path in model_dirs], progress=False)
    ensemble = scores(truth, held_out.obs["scbert_cell_type"].astype(str))

    # 5. The baseline on the same split.
    baseline = scores(truth, logistic_regression(adata, train_index, test_index))
    for member, path in enumerate(model_dirs):  # each card reports its own model; the ensemble's figures are below
        evaluation = {"dataset_name": "pbmc68k_reduced, held-out cells", "split": f"stratified 20% (seed {seed})"}
        facts = {**CARD_FACTS, "evaluation": {**evaluation, "num_cells": len(test_index), **member_scores[member]}}
        if len(model_dirs) > 1:
            facts["description"] += (
                f" Member {member + 1} of an ensemble of {len(model_dirs)} fine-tuned from the same pretrained model "
                "(`scbert annotate --model` with every member averages their probabilities)."
            )
        write_model_card(path, facts)
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
    return result, held_out, train, test


def plot(held_out, output_dir: Path, model_dir: Path) -> None:
    """``confusion_matrix.png``, and ``umap.png`` of the member's embeddings by prediction and by truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    from sklearn.metrics import ConfusionMatrixDisplay

    from modeling_scbert.annotation.annotate import embed

    figure, axis = plt.subplots(figsize=(9, 8))
    ConfusionMatrixDisplay.from_predictions(
        held_out.obs[LABEL_KEY].astype(str),
        held_out.obs["scbert_cell_type"].astype(str),
        labels=list(held_out.obs[LABEL_KEY].cat.categories),
        xticks_rotation=90,
        ax=axis,
        colorbar=False,
    )
    axis.set_title("scBERT on held-out pbmc68k_reduced cells")
    figure.tight_layout()
    figure.savefig(output_dir / "confusion_matrix.png", dpi=120)
    plt.close(figure)

    embed(held_out, str(model_dir), progress=False)  # .obsm['X_scbert']
    sc.pp.neighbors(held_out, use_rep="X_scbert", n_neighbors=10, random_state=0)
    sc.tl.umap(held_out, random_state=0)
    figure = sc.pl.umap(held_out, color=["scbert_cell_type", LABEL_KEY], show=False, return_fig=True, wspace=0.6)
    figure.savefig(output_dir / "umap.png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def summarise(results: list[dict], *, seeds: list[int], recipe: dict, quick: bool, seconds: float) -> dict:
    """``metrics.json``: the means over the seeds (and each seed with the spread when there are several)."""
    keys = ("accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1")
    metrics = {key: float(np.mean([r[key] for r in results])) for key in keys}
    metrics.update(n_train=results[0]["n_train"], n_test=results[0]["n_test"], seconds=seconds)
    metrics.update(seeds=seeds, quick=quick, recipe=recipe)
    metrics["member_mean"] = {
        key: float(np.mean([value for r in results for value in r[f"member_{key}"]]))
        for key in ("accuracy", "macro_f1")
    }
    if len(results) > 1:
        metrics["per_seed"] = results
        metrics["std"] = {key: float(np.std([r[key] for r in results])) for key in keys}
    return metrics


def main(argv: list[str] | None = None, *, recipe: dict | None = None, on_seed=None) -> dict:
    """Run the demo; returns ``metrics.json``'s content.

    ``recipe`` replaces :data:`RECIPE` and ``on_seed(result, train, test, tokenizer)`` may add to each seed's
    figures: both are for ``benchmarks/pbmc_ablations.py``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one split and run per seed")
    parser.add_argument("--quick", action="store_true", help="a few training steps only (CI smoke run)")
    parser.add_argument("--output-dir", default="demo_output", help="where results go (replaced)")
    parser.add_argument("--jobs", type=int, help="members fine-tuned at once (default: one per core; 1 on a GPU)")
    args = parser.parse_args(argv)
    recipe = recipe or RECIPE

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    from tokenization import ScBertTokenizer
    from tokenization.atomic_files import write_text_atomically
    from tokenization.data import to_dataset

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)

    # The cells, and a tokenizer whose panel is their 765 genes.
    adata = load_pbmc()
    tokenizer = ScBertTokenizer.from_adata(adata)
    print(
        f"pbmc68k_reduced: {adata.n_obs} cells, panel of {tokenizer.num_genes} genes, {LABEL_KEY} with "
        f"{adata.obs[LABEL_KEY].nunique()} types"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="scbert-demo-") as scratch:
        # Encoded once (sparse, in Arrow) and split per seed.
        dataset = to_dataset(adata, tokenizer=tokenizer, label_key=LABEL_KEY, cache_dir=scratch)
        for i, seed in enumerate(args.seeds):
            work_dir = output_dir if i == 0 else Path(scratch) / f"seed-{seed}"
            result, held_out, train, test = run_seed(
                adata,
                dataset,
                tokenizer,
                seed=seed,
                work_dir=work_dir,
                recipe=recipe,
                quick=args.quick,
                jobs=args.jobs,
            )
            if on_seed is not None:
                on_seed(result, train, test, tokenizer)
            results.append(result)
            if i == 0:
                first_held_out = held_out
            print(
                f"seed {seed}: scBERT accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f} | "
                f"logistic regression accuracy {result['baseline_accuracy']:.3f}, macro-F1 "
                f"{result['baseline_macro_f1']:.3f} | {result['n_train']} train / {result['n_test']} test cells, "
                f"{result['seconds']:.0f} s",
                flush=True,
            )
            if len(result["member_accuracy"]) > 1:
                alone = zip(result["member_accuracy"], result["member_macro_f1"])
                print("  each member alone: " + ", ".join(f"accuracy {a:.3f} / macro-F1 {f:.3f}" for a, f in alone))
    # Plotted once every seed is trained: scanpy's neighbours/UMAP change torch's thread count.
    plot(first_held_out, output_dir, output_dir / "model")
    first_held_out.write_h5ad(output_dir / "annotated.h5ad")
    metrics = summarise(
        results,
        seeds=list(args.seeds),
        recipe=recipe,
        quick=args.quick,
        seconds=round(time.perf_counter() - started, 1),
    )
    write_text_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
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
