"""Real-world options, class lists and output files, as users meet them (modelled on public bug reports; the inputs
are built as ../shared/cases/case_07, 08, 09, 11, 12 and 13 build them; case 14 is in test_h5ad_io.py), each with
its right value. Cases 11, 12 and 13 are regression guards."""

import contextlib
import hashlib
import io
import json
import logging
import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from transformers import TrainingArguments

from modeling_scbert import ScBertConfig, ScBertForSequenceClassification
from modeling_scbert.annotation.annotate import annotate
from modeling_scbert.cli import main as cli_main
from modeling_scbert.training.workflows import finetune
from tokenization import ScBertTokenizer

MARKERS = (  # noqa: SIM905 (written as the case scripts write it)
    "CD3E CD3D CD2 CD7 IL7R CCR7 LEF1 TCF7 CD8A CD8B GZMK GZMB PRF1 NKG7 GNLY KLRD1 KLRF1 FCGR3A MS4A1 CD79A "
    "CD79B CD19 BANK1 PAX5 LYZ CD14 S100A8 S100A9 FCN1 VCAN CST3 LST1 AIF1 FCER1A CLEC10A HLA-DRA HLA-DRB1 CD74 "
    "PPBP PF4 GP9 ITGA2B HBB HBA1 MKI67 TOP2A ACTB GAPDH MALAT1 B2M RPL13 RPS27"
).split()
GENES = MARKERS + [f"ZNF{i}" for i in range(101, 549)]  # 500 genes
CLASSES = ["B cell", "T cell", "NK cell", "Monocyte"]
TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "head_dim": 8,
    "intermediate_size": 32,
    "num_random_features": 8,
    "classifier_hidden_sizes": [16],
}


def make_counts(n_cells, genes=GENES, seed=0, depth=3.0):
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(-1.0, 1.5, size=len(genes))
    size = rng.lognormal(0.0, 0.4, size=(n_cells, 1))
    return rng.poisson(gene_mean[None, :] * size * depth).astype(np.float32)


def make_adata(n_cells=60, genes=GENES, seed=0, labels=True):
    obs = pd.DataFrame(index=[f"cell_{i}" for i in range(n_cells)])
    if labels:
        obs["cell_type"] = np.random.default_rng(seed).choice(CLASSES, n_cells)
    return ad.AnnData(X=sp.csr_matrix(make_counts(n_cells, genes, seed)), obs=obs, var=pd.DataFrame(index=list(genes)))


def save_annotator(path, classes=CLASSES, seed=0):
    torch.manual_seed(seed)
    config = ScBertConfig(
        num_genes=len(GENES),
        gene_embedding_type="learned",
        classifier_type="pooled",
        initializer_range=0.5,
        id2label=dict(enumerate(classes)),
        label2id={name: i for i, name in enumerate(classes)},
        **TINY,
    )
    ScBertForSequenceClassification(config).save_pretrained(path)
    ScBertTokenizer(list(GENES)).save_pretrained(path)
    return str(path)


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli_main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue().strip(), err.getvalue().strip()


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_args(tmp_path, **overrides):
    defaults = {"num_train_epochs": 1, "per_device_train_batch_size": 8, "report_to": [], "use_cpu": True}
    defaults.update(save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    return TrainingArguments(str(tmp_path / "annotator"), **{**defaults, **overrides})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_annotator(tmp_path_factory.mktemp("model"))


def test_case_07_corrected_counts_and_partial_panels_through_the_command_line(model_dir, tmp_path):
    """The refusals name input_kind and min_gene_overlap; `scbert annotate|embed` now have both options."""
    adata = make_adata(50, labels=False)
    adata.X.data = (adata.X.data * np.random.default_rng(7).uniform(0.6, 0.95, adata.X.nnz)).astype(np.float32)
    path = tmp_path / "soupx_corrected.h5ad"
    adata.write_h5ad(path)
    before = digest(path)

    with pytest.raises(ValueError, match="input_kind='corrected_counts'"):
        annotate(ad.read_h5ad(path), model_dir, progress=False)
    expected = ad.read_h5ad(path)
    annotate(expected, model_dir, input_kind="counts", progress=False)

    out = tmp_path / "annotated.h5ad"
    code, _, err = run_cli(["annotate", "--model", model_dir, "--input", str(path), "--output", str(out)])
    assert code == 2 and "input_kind='corrected_counts'" in err and not out.exists()
    for spelling, kind in (("--input-kind", "corrected_counts"), ("--input_kind", "counts")):
        code, _, err = run_cli(
            ["annotate", "--model", model_dir, "--input", str(path), "--output", str(out), spelling, kind]
            + ["--overwrite"]
        )
        assert code == 0, err
        result = ad.read_h5ad(out)
        assert list(result.obs["scbert_cell_type"]) == list(expected.obs["scbert_cell_type"])
        assert result.uns["scbert"]["params"]["input_kind"] == kind
    code, _, err = run_cli(
        ["embed", "--model", model_dir, "--input", str(path), "--output", str(tmp_path / "e.h5ad"), "--input-kind"]
        + ["counts"]
    )
    assert code == 0, err

    partial = tmp_path / "partial_panel.h5ad"
    make_adata(50, labels=False)[:, :200].copy().write_h5ad(partial)  # 40% of the panel
    out2 = tmp_path / "partial_annotated.h5ad"
    code, _, err = run_cli(["annotate", "--model", model_dir, "--input", str(partial), "--output", str(out2)])
    assert code == 2 and "min_gene_overlap" in err and not out2.exists()
    code, _, err = run_cli(
        ["annotate", "--model", model_dir, "--input", str(partial), "--output", str(out2), "--min-gene-overlap", "0.3"]
    )
    assert code == 0, err
    assert ad.read_h5ad(out2).uns["scbert"]["params"]["min_gene_overlap"] == pytest.approx(0.3)
    assert digest(path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_case_08_evaluation_cells_of_types_absent_from_training(tmp_path):
    train = make_adata(48, seed=1)
    train.obs["cell_type"] = np.random.default_rng(1).choice(["B cell", "T cell", "NK cell"], train.n_obs)
    evaluation = make_adata(24, seed=2)
    evaluation.obs["cell_type"] = np.random.default_rng(2).choice(
        ["B cell", "T cell", "NK cell", "Plasma cell", "pDC"], evaluation.n_obs
    )
    unseen = evaluation.obs["cell_type"].isin(["Plasma cell", "pDC"])
    counts = evaluation.obs["cell_type"][unseen].value_counts()
    obs_before = evaluation.obs.copy()
    run = {"label_key": "cell_type", "eval_data": evaluation, "preset": "full", "config_overrides": TINY}
    run["encode_kwargs"] = {"cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ValueError) as error:
        finetune(train, training_args=training_args(tmp_path, eval_strategy="epoch"), **run)
    message = str(error.value)
    assert "the evaluation data (eval_data)" in message
    for name, n in counts.items():
        assert f"{n} of {name!r}" in message
    assert "drop_unseen_labels=True" in message and "label_names" not in message
    assert evaluation.obs.equals(obs_before) and not (tmp_path / "annotator").exists()

    trainer = finetune(
        train, training_args=training_args(tmp_path, eval_strategy="epoch"), drop_unseen_labels=True, **run
    )
    assert len(trainer.eval_dataset) == int((~unseen).sum())
    assert evaluation.obs.equals(obs_before)


def test_case_09_unused_label_categories_are_not_classes(tmp_path, caplog):
    all_types = ["B cell", "T cell", "NK cell", "Hepatocyte", "Kupffer cell", "Cholangiocyte"]
    pbmc = make_adata(60, seed=3)
    pbmc.obs["cell_type"] = pd.Categorical(
        np.random.default_rng(3).choice(all_types[:3], pbmc.n_obs), categories=all_types
    )
    with caplog.at_level(logging.WARNING):
        finetune(
            pbmc,
            label_key="cell_type",
            training_args=training_args(tmp_path),
            preset="full",
            config_overrides=TINY,
            class_weighting="balanced",
            encode_kwargs={"cache_dir": str(tmp_path / "cache")},
        )
    config = json.loads((tmp_path / "annotator" / "config.json").read_text())
    classes = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert classes == ["B cell", "T cell", "NK cell"]  # the present categories, in category order
    warned = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "categories" in r.getMessage()
    ]
    assert len(warned) == 1 and all(name in warned[0] for name in all_types[3:])
    query = make_adata(200, seed=11, labels=False)
    annotate(query, str(tmp_path / "annotator"), progress=False)
    assert set(query.obs["scbert_cell_type"].cat.categories) == set(all_types[:3])


def test_case_11_duplicated_obs_names_and_a_wrong_label_column(model_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = ad.concat([make_adata(30, seed=1), make_adata(30, seed=2)])  # obs_names duplicated
        path = tmp_path / "merged.h5ad"
        both.write_h5ad(path)
    before = digest(path)
    out, csv = tmp_path / "annotated.h5ad", tmp_path / "predictions.csv"
    argv = ["annotate", "--model", model_dir, "--input", str(path), "--output", str(out), "--csv", str(csv)]
    code, _, err = run_cli([*argv, "--label-key", "celltype"])
    assert code == 2 and "'cell_type'" in err and not out.exists() and not csv.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, _, err = run_cli([*argv, "--label_key", "cell_type"])
        assert code == 0, err
        result = ad.read_h5ad(out)
    table = pd.read_csv(csv)
    assert list(result.obs_names) == list(both.obs_names)
    assert list(table["cell_id"]) == list(both.obs_names) and list(table["cell_type"]) == list(both.obs["cell_type"])
    assert digest(path) == before


def test_case_12_prediction_without_labels_with_the_novel_type_threshold(model_dir, tmp_path):
    query = make_adata(80, seed=9, labels=False)
    query.obs["sample"] = "donor_A"
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    before = digest(path)
    probe = query.copy()
    annotate(probe, model_dir, progress=False)
    threshold = round(float(np.median(probe.obs["scbert_confidence"])), 3)
    out, csv = tmp_path / "annotated.h5ad", tmp_path / "predictions.csv"
    code, _, err = run_cli(
        ["annotate", "--model", model_dir, "--input", str(path), "--output", str(out), "--csv", str(csv)]
        + ["--threshold", str(threshold), "--probabilities"]
    )
    assert code == 0, err
    result = ad.read_h5ad(out)
    below = int((result.obs["scbert_confidence"] < threshold).sum())
    assert 0 < below == int((result.obs["scbert_cell_type"] == "Unassigned").sum())
    assert len(pd.read_csv(csv)) == 80 and digest(path) == before
    first, second = query.copy(), query.copy()
    annotate(first, model_dir, batch_size=1, return_probabilities=True, progress=False)
    annotate(second, model_dir, batch_size=32, return_probabilities=True, progress=False)
    np.testing.assert_allclose(first.obsm["scbert_probabilities"], second.obsm["scbert_probabilities"], atol=1e-5)
    assert (first.obs["scbert_cell_type"] == second.obs["scbert_cell_type"]).all()


CHILD = r"""
import importlib.abc, sys
import numpy as np, torch

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_scbert", "tokenization"):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
from transformers import AutoModelForSequenceClassification
folder, ids_path = sys.argv[1], sys.argv[2]
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.inference_mode():
    np.save(ids_path.replace(".npy", "_logits.npy"), model(torch.from_numpy(np.load(ids_path))).logits.numpy())
print(type(model).__module__)
"""


def test_case_13_trust_remote_code_without_the_package(model_dir, tmp_path):
    ids = ScBertTokenizer.from_pretrained(model_dir)(make_adata(10, labels=False))["input_ids"]
    ids_path = tmp_path / "ids.npy"
    np.save(ids_path, ids)
    model = ScBertForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(ids)).logits.numpy()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    import os

    done = subprocess.run(
        [sys.executable, str(script), model_dir, str(ids_path)],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **env},
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "transformers_modules" in done.stdout
    np.testing.assert_allclose(np.load(tmp_path / "ids_logits.npy"), expected, atol=1e-5)
