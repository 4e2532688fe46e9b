"""The one-command demo (`make demo`), shortened to a few training steps so that CI runs its whole path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, options: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / script), *options]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_quick_writes_every_output(tmp_path):
    out = tmp_path / "demo_output"
    options = ["--quick", "--seeds", "0", "1", "--output-dir", str(out), "--jobs", "2"]
    result = run_script("examples/demo_pbmc.py", options, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "logistic regression" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1", "n_train", "n_test", "seconds"}
    assert keys <= set(metrics)
    assert metrics["n_train"] + metrics["n_test"] == 700
    assert [entry["seed"] for entry in metrics["per_seed"]] == [0, 1]
    assert 0.7 < metrics["baseline_accuracy"] <= 1.0  # the baseline does not depend on the shortened training
    for name in (
        "confusion_matrix.png",
        "umap.png",
        "model/config.json",
        "model/model.safetensors",
        "model/genes.txt",
        "model-2/model.safetensors",
        "model-2/genes.txt",
    ):
        assert (out / name).is_file(), name
    # Two ensemble members per seed, trained in worker processes, each scored alone as well.
    assert metrics["recipe"]["ensemble_size"] == 2
    assert all(len(entry["member_accuracy"]) == 2 for entry in metrics["per_seed"])
    annotated = ad.read_h5ad(out / "annotated.h5ad")
    assert [Path(p).name for p in annotated.uns["scbert"]["params"]["model"]] == ["model", "model-2"]
    assert annotated.n_obs == metrics["n_test"]
    assert {"scbert_cell_type", "scbert_confidence", "bulk_labels"} <= set(annotated.obs.columns)
    assert annotated.obsm["X_scbert"].shape[0] == annotated.n_obs


@pytest.mark.slow
def test_pbmc_ablations_quick_change_the_recipe_and_add_token_baselines(tmp_path):
    """The demo's experiment switches live in benchmarks/pbmc_ablations.py."""
    out = tmp_path / "demo_output"
    options = ["--quick", "--seeds", "0", "--output-dir", str(out), "--token-baselines", "--ensemble-size", "1"]
    options += ["--model-config", '{"classifier_input_dropout": 0.1}']
    result = run_script("benchmarks/pbmc_ablations.py", options, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # The recipe override reaches the fine-tuned model and is recorded.
    assert metrics["recipe"]["model_config"]["classifier_input_dropout"] == 0.1
    assert json.loads((out / "model" / "config.json").read_text())["classifier_input_dropout"] == 0.1
    assert metrics["recipe"]["ensemble_size"] == 1 and not (out / "model-2").exists()
    # Logistic regression on the tokens: the bins as numbers carry about what the log-normalised values carry.
    assert set(metrics["token_baselines"]) == {"linear", "one_hot", "cumulative"}
    assert abs(metrics["token_baselines"]["linear"]["accuracy"] - metrics["baseline_accuracy"]) < 0.1


def write_kang_like_sources(folder: Path, *, n_cells: int = 90, n_genes: int = 60) -> None:
    """Small files shaped like the Kang 2018 sources: pbmc_ctrl / pbmc_stim (counts, ``.1`` names) and PBMC (labels,
    ``-1`` names, a gene subset with the same counts)."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    types = ["B cells", "CD4 T cells", "Megakaryocytes"]
    genes = [f"GENE{j}" for j in range(n_genes)]
    rows = []
    for condition, sample in (("ctrl", "control"), ("stim", "stimul")):
        labels = np.array([types[i % 3] for i in range(n_cells)])
        means = np.full((n_cells, n_genes), 0.3)
        for k, name in enumerate(types):
            means[labels == name, 10 * k : 10 * k + 10] = 8.0
        barcodes = [f"CELL{condition.upper()}{i:04d}" for i in range(n_cells)]
        counts = ad.AnnData(
            X=sp.csr_matrix(rng.poisson(means).astype(np.float32)),
            obs=pd.DataFrame(index=[f"{b}.1" for b in barcodes]),
            var=pd.DataFrame(index=genes),
        )
        counts.write_h5ad(folder / f"pbmc_{condition}.h5ad")
        rows.append((counts, sample, labels, barcodes))
    subset = genes[::2]
    labelled = ad.concat(
        [
            ad.AnnData(
                X=counts[:, subset].X.toarray(),
                obs=pd.DataFrame({"sample": sample, "celltype": labels}, index=[f"{b}-1" for b in barcodes]),
                var=pd.DataFrame(index=subset),
            )
            for counts, sample, labels, barcodes in rows
        ]
    )
    labelled.write_h5ad(folder / "PBMC.h5ad")


@pytest.mark.slow
def test_kang_demo_quick_on_files_shaped_like_the_sources(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_kang_like_sources(data)
    out = tmp_path / "demo_output"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "examples" / "demo_kang.py"), "--quick", "--data-dir", str(data)]
    command += ["--output-dir", str(out), "--seeds", "0", "1", "--jobs", "2", "--n-top-genes", "40"]
    command += ["--pretrain-epochs", "1"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "logistic regression" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1", "n_train", "n_test", "seconds"}
    assert keys <= set(metrics)
    assert (metrics["n_train"], metrics["n_test"]) == (90, 90)
    assert set(metrics["per_class_f1"]) == {"B cells", "CD4 T cells", "Megakaryocytes"}
    assert [entry["seed"] for entry in metrics["per_seed"]] == [0, 1]
    assert metrics["baseline_accuracy"] > 0.9  # the synthetic types are separable by their genes
    for name in (
        "confusion_matrix.png",
        "novelty.png",
        "umap.png",
        "model/model.safetensors",
        "model/genes.txt",
        "model/README.md",
        "model/novelty_detector.safetensors",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("model/checkpoint-*"))
    annotated = ad.read_h5ad(out / "annotated.h5ad")
    assert annotated.n_obs == 90 and annotated.n_vars == 40
    assert {"scbert_cell_type", "scbert_confidence", "scbert_novelty", "cell_type"} <= set(annotated.obs.columns)
    assert 0 <= metrics["novelty_flagged"] <= 1
    assert {"X_scbert", "X_umap"} <= set(annotated.obsm)
