"""The `cell-type-annotation` pipeline: in this process, and as remote code where the package is not installed."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
from transformers import pipeline

from modeling_scbert.annotation.annotate import annotate, predict_cell_types
from tests.test_annotation_annotate import CLASSES, make_adata, save_annotator
from tokenization.cell_calls import UNASSIGNED
from tokenization.pipeline_scbert import TASK, ScBertCellTypeAnnotationPipeline, save_pipeline_code

PIPELINE_FILES = {"pipeline_scbert.py", "tokenization_scbert.py", "genes.py", "preprocessing.py"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = save_annotator(tmp_path_factory.mktemp("annotator"))
    save_pipeline_code(folder)
    return folder


def annotated(adata, model_dir, **kwargs):
    annotate(adata, str(model_dir), return_probabilities=True, progress=False, **kwargs)
    return list(adata.obs["scbert_cell_type"].astype(str)), adata.obs["scbert_confidence"].to_numpy()


def test_save_pipeline_code_records_the_task_and_copies_the_tokenizer_modules(model_dir):
    assert set(os.listdir(model_dir)) >= PIPELINE_FILES
    config = json.loads((model_dir / "config.json").read_text())
    assert config["custom_pipelines"][TASK] == {
        "impl": "pipeline_scbert.ScBertCellTypeAnnotationPipeline",
        "pt": ["AutoModelForSequenceClassification"],
    }
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_scbert.")


def test_pipeline_labels_equal_annotate(model_dir):
    adata = make_adata(40)
    labels, confidence = annotated(adata.copy(), model_dir)
    # A folder that carries the pipeline's code asks for trust_remote_code=True; with the package installed, naming the
    # class runs the installed code instead.
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline(TASK, model=str(model_dir))
    annotator = pipeline(TASK, model=str(model_dir), pipeline_class=ScBertCellTypeAnnotationPipeline, batch_size=7)
    assert type(annotator) is ScBertCellTypeAnnotationPipeline
    results = annotator(adata)
    assert len(results) == adata.n_obs
    assert [r["label"] for r in results] == labels
    np.testing.assert_allclose([r["score"] for r in results], confidence, rtol=1e-6)
    assert all(isinstance(r["score"], float) for r in results)

    threshold = float(np.median(confidence))
    labels_t, _ = annotated(adata.copy(), model_dir, unassigned_threshold=threshold)
    assert UNASSIGNED in labels_t and set(labels_t) - {UNASSIGNED}
    assert [r["label"] for r in annotator(adata, unassigned_threshold=threshold)] == labels_t


def test_pipeline_labels_cells_without_panel_signal_unassigned_as_annotate_does(model_dir):
    adata = make_adata(30)
    counts = adata.X.toarray()
    counts[:4] = 0  # no panel counts
    counts[4:8, 2:] = 0  # at most two detected panel genes
    adata.X = sp.csr_matrix(counts)
    annotator = pipeline(TASK, model=str(model_dir), pipeline_class=ScBertCellTypeAnnotationPipeline)
    for min_genes in (None, 0, 3):
        options = {} if min_genes is None else {"min_genes": min_genes}
        labels, _ = annotated(adata.copy(), model_dir, **options)
        assert labels[:4] == [UNASSIGNED] * 4
        assert [r["label"] for r in annotator(adata, **options)] == labels
    assert [r["label"] for r in annotator(adata, min_genes=3)][4:8] == [UNASSIGNED] * 4
    assert UNASSIGNED not in [r["label"] for r in annotator(adata, min_genes=0)][4:]


def test_pipeline_and_predict_cell_types_make_the_same_calls(model_dir):
    adata = make_adata(40, seed=1)
    counts = adata.X.toarray()
    counts[:3] = 0  # no panel counts
    counts[3:6, 2:] = 0  # few panel genes
    adata.X = sp.csr_matrix(counts)
    threshold = 0.6
    result = predict_cell_types(adata, str(model_dir), unassigned_threshold=threshold, min_genes=3, progress=False)
    reasons = set(result.calls.reasons) - {None}
    assert reasons == {"no panel counts", "few panel genes", "low confidence"}  # every branch of the rule
    annotator = pipeline(TASK, model=str(model_dir), pipeline_class=ScBertCellTypeAnnotationPipeline, batch_size=6)
    results = annotator(adata, unassigned_threshold=threshold, min_genes=3)
    assert [r["label"] for r in results] == list(result.calls.labels)
    np.testing.assert_allclose([r["score"] for r in results], result.calls.confidence, rtol=1e-6)
    # Probabilities alone (no detected genes): only the threshold applies.
    scores = np.float32([[0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    assert annotator.postprocess({"probabilities": scores}, unassigned_threshold=threshold) == [
        {"label": UNASSIGNED, "score": 0.5},
        {"label": "NK", "score": pytest.approx(0.7)},
    ]


def test_top_k_lists_the_most_likely_classes_in_order(model_dir):
    adata = make_adata(10)
    annotate(adata, str(model_dir), return_probabilities=True, progress=False)
    probabilities = adata.obsm["scbert_probabilities"]
    annotator = pipeline(TASK, model=str(model_dir), pipeline_class=ScBertCellTypeAnnotationPipeline)
    ranked = annotator(adata, top_k=2)
    everything = annotator(adata, top_k=None)
    for cell, (two, every) in enumerate(zip(ranked, everything)):
        order = np.argsort(-probabilities[cell], kind="stable")
        assert [r["label"] for r in two] == [CLASSES[i] for i in order[:2]]
        assert [r["label"] for r in every] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([r["score"] for r in every], probabilities[cell][order], rtol=1e-6)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        annotator(adata, top_k=0)
    with pytest.raises(ValueError, match=r"unassigned_threshold must lie in \[0, 1\]"):
        annotator(adata, unassigned_threshold=2)
    with pytest.raises(TypeError, match="takes an AnnData or the path"):
        annotator(np.zeros((2, 12)))
    with pytest.raises(TypeError, match="Unknown option"):
        annotator(adata, threshold=0.5)


REMOTE = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    '''This project's packages are not importable here, as where only torch, transformers and anndata are installed.'''
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_scbert", "tokenization", "tests"):
            raise ImportError(f"blocked: {name}")

sys.meta_path.insert(0, Block())
from transformers import pipeline
results = {}
for folder in sys.argv[2:]:
    annotator = pipeline("cell-type-annotation", model=folder, trust_remote_code=True)
    assert type(annotator).__module__.startswith("transformers_modules"), type(annotator).__module__
    assert type(annotator.model).__module__.startswith("transformers_modules"), type(annotator.model).__module__
    results[folder] = annotator(sys.argv[1], unassigned_threshold=0.4)
try:
    import tokenization
except ImportError:
    pass
else:
    raise SystemExit("tokenization is importable")
print(json.dumps(results))
"""


def test_pipeline_runs_as_remote_code_without_the_package(model_dir, tmp_path):
    adata = make_adata(25, seed=3)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    labels, confidence = annotated(adata, model_dir, unassigned_threshold=0.4)
    # The other way to save it: Pipeline.save_pretrained, from a folder that has no pipeline code yet.
    plain = save_annotator(tmp_path / "plain")
    assert not (plain / "pipeline_scbert.py").exists()
    pipeline(TASK, model=str(plain)).save_pretrained(tmp_path / "resaved")
    assert set(os.listdir(tmp_path / "resaved")) >= PIPELINE_FILES
    assert (tmp_path / "resaved" / "genes.txt").exists()

    script = tmp_path / "remote.py"
    script.write_text(textwrap.dedent(REMOTE))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    folders = [str(model_dir), str(tmp_path / "resaved")]
    result = subprocess.run(
        [sys.executable, str(script), str(path), *folders],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    for folder in folders:
        assert [r["label"] for r in outputs[folder]] == labels
        np.testing.assert_allclose([r["score"] for r in outputs[folder]], confidence, rtol=1e-6)


def test_batching_and_lists_of_anndata_give_one_result_per_cell_as_annotate_does(model_dir):
    annotator = pipeline("cell-type-annotation", model=str(model_dir), trust_remote_code=True, device="cpu")
    first, second = make_adata(30, seed=5), make_adata(20, seed=6)
    labels, confidence = annotated(first.copy(), model_dir)
    plain = annotator(first)
    batched = annotator(first, batch_size=7)
    both = annotator([first, second], batch_size=4)
    top2 = annotator(first, top_k=2)
    assert [r["label"] for r in plain] == [r["label"] for r in batched] == labels
    np.testing.assert_allclose([r["score"] for r in batched], confidence, atol=1e-5)
    assert [len(result) for result in both] == [30, 20]
    assert [r["label"] for r in both[0]] == labels
    np.testing.assert_allclose([r["score"] for r in both[0]], confidence, atol=1e-5)
    assert all(
        len(r) == 2 and r[0]["score"] >= r[1]["score"] and r[0]["label"] == p["label"] for r, p in zip(top2, plain)
    )
