"""The one-command demo (`make demo`), shortened to a few training steps so that CI runs its whole path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_quick_writes_every_output(tmp_path):
    out = tmp_path / "demo_output"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "demo_pbmc.py"),
            "--quick",
            "--seeds",
            "0",
            "1",
            "--output-dir",
            str(out),
            "--token-baselines",
            "--jobs",
            "2",
            "--model-config",
            '{"classifier_input_dropout": 0.1}',
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "logistic regression" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1", "n_train", "n_test", "seconds"}
    assert keys <= set(metrics)
    assert metrics["n_train"] + metrics["n_test"] == 700
    assert [entry["seed"] for entry in metrics["per_seed"]] == [0, 1]
    assert 0.7 < metrics["baseline_accuracy"] <= 1.0  # the baseline does not depend on the shortened training
    # The recipe override reaches the fine-tuned model and is recorded.
    assert metrics["recipe"]["model_config"]["classifier_input_dropout"] == 0.1
    assert json.loads((out / "model" / "config.json").read_text())["classifier_input_dropout"] == 0.1
    # Logistic regression on the tokens: the bins as numbers carry about what the log-normalised values carry.
    assert set(metrics["token_baselines"]) == {"linear", "one_hot", "cumulative"}
    assert abs(metrics["token_baselines"]["linear"]["accuracy"] - metrics["baseline_accuracy"]) < 0.1
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
