"""examples/run_pretrain.py and examples/run_finetune.py: the run_*.py scripts, on tiny data for a few steps, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
TINY = "hidden_size=16,num_hidden_layers=2,num_attention_heads=2,head_dim=8,intermediate_size=32,num_random_features=8"
CELL_TYPES = ["B", "T", "NK"]
COMMON = ["--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--report_to", "none", "--use_cpu"]
COMMON += ["--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--seed", "0"]


def write_cells(path: Path, n_cells: int = 48, n_genes: int = 12) -> Path:
    """Counts where each type expresses its own block of genes, as a .h5ad file."""
    rng = np.random.default_rng(0)
    types = np.array([CELL_TYPES[i % 3] for i in range(n_cells)])
    means = np.full((n_cells, n_genes), 0.05)
    for k, name in enumerate(CELL_TYPES):
        means[types == name, 4 * k : 4 * k + 4] = 12.0
    ad.AnnData(
        X=sp.csr_matrix(rng.poisson(means).astype(np.float32)),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(types, categories=CELL_TYPES)}, index=[f"cell{i}" for i in range(n_cells)]
        ),
        var=pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)]),
    ).write_h5ad(path)
    return path


def run(script: str, options: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "examples" / script), *options]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.slow
def test_run_pretrain_then_run_finetune_from_it(tmp_path):
    cells = write_cells(tmp_path / "cells.h5ad")
    pretrained = tmp_path / "pretrained"
    options = ["--train_file", str(cells), "--output_dir", str(pretrained), "--config_overrides", TINY]
    options += ["--validation_fraction", "0.25", "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "2"]
    options += ["--dataset_cache_dir", str(tmp_path / "cache"), *COMMON]
    run("run_pretrain.py", options, tmp_path)
    config = json.loads((pretrained / "config.json").read_text())
    assert config["architectures"] == ["ScBertForMaskedLM"]
    assert (config["num_genes"], config["hidden_size"], config["num_hidden_layers"]) == (12, 16, 2)
    assert (pretrained / "genes.txt").read_text().split() == [f"GENE{j}" for j in range(12)]
    assert "eval_loss" in json.loads((pretrained / "eval_results.json").read_text())
    assert json.loads((pretrained / "train_results.json").read_text())["train_samples"] == 36
    assert (pretrained / "checkpoint-2").is_dir()

    # The last checkpoint of a folder is found and training resumes from it.
    resumed = run("run_pretrain.py", options, tmp_path)
    assert "resuming from" in resumed.stdout + resumed.stderr

    annotator = tmp_path / "annotator"
    options = ["--model_name_or_path", str(pretrained), "--train_file", str(cells), "--label_key", "cell_type"]
    options += ["--validation_fraction", "0.25", "--output_dir", str(annotator), "--num_train_epochs", "2"]
    options += ["--dataset_cache_dir", str(tmp_path / "cache"), *COMMON]
    run("run_finetune.py", options, tmp_path)
    config = json.loads((annotator / "config.json").read_text())
    assert config["architectures"] == ["ScBertForSequenceClassification"]
    assert config["id2label"] == {"0": "B", "1": "T", "2": "NK"}
    evaluation = json.loads((annotator / "eval_results.json").read_text())
    assert {"eval_accuracy", "eval_macro_f1", "eval_samples"} <= set(evaluation)
    assert evaluation["eval_samples"] == 12  # a quarter of each type held out
    state = json.loads((annotator / "trainer_state.json").read_text())
    assert state["best_metric"] is not None  # the best epoch by macro-F1 was kept
    # The folder annotates (model, tokenizer and pipeline code saved together).
    from modeling_scbert.annotation.annotate import annotate

    annotated = annotate(ad.read_h5ad(cells), str(annotator), copy=True, progress=False)
    assert set(annotated.obs["scbert_cell_type"].astype(str)) <= set(CELL_TYPES)
    assert (annotator / "pipeline_scbert.py").is_file()


@pytest.mark.slow
def test_run_finetune_from_a_json_file_with_a_new_model_and_no_evaluation(tmp_path):
    cells = write_cells(tmp_path / "cells.h5ad")
    annotator = tmp_path / "annotator"
    options = {
        "train_file": str(cells),
        "label_key": "cell_type",
        "output_dir": str(annotator),
        "config_overrides": TINY + ",classifier_hidden_sizes=[16]",
        "class_weighting": "balanced",
        "max_steps": 2,
        "dataset_cache_dir": str(tmp_path / "cache"),
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
    }
    (tmp_path / "options.json").write_text(json.dumps(options))
    run("run_finetune.py", [str(tmp_path / "options.json")], tmp_path)
    config = json.loads((annotator / "config.json").read_text())
    assert config["num_genes"] == 12 and config["classifier_hidden_sizes"] == [16]
    assert config["classifier_type"] == "conv"  # the package's defaults for a new model
    assert not (annotator / "eval_results.json").exists()  # no evaluation cells: evaluation was turned off
    assert json.loads((annotator / "train_results.json").read_text())["train_samples"] == 48


def test_annotate_script_with_an_ensemble(tmp_path):
    from conftest import save_tiny_annotator

    cells = write_cells(tmp_path / "cells.h5ad")
    genes = [f"GENE{j}" for j in range(12)]
    members = [str(save_tiny_annotator(tmp_path / f"m{seed}", genes, seed=seed)) for seed in (0, 1)]
    output = tmp_path / "annotated.h5ad"
    run("annotate.py", ["--model", *members, "--input", str(cells), "--output", str(output)], tmp_path)
    annotated = ad.read_h5ad(output)
    assert list(annotated.uns["scbert"]["params"]["model"]) == members
    assert annotated.obsm["scbert_probabilities"].shape == (48, 2)
    assert annotated.obsm["X_scbert"].shape == (48, 16)
    assert set(annotated.obs["scbert_cell_type"].astype(str)) <= {"B", "T", "Unassigned"}
