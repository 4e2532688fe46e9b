"""`dtype=` / `--dtype` for annotate and embed: bfloat16 / float16 autocast agrees with float32 within the stated
tolerance (docs/scale_out.md; `benchmarks/bench_annotate_dtype.py` measures it on larger random models)."""

import anndata as ad
import numpy as np
import pytest
import torch
from test_annotation_annotate import make_adata, save_annotator

from modeling_scbert.annotation.annotate import annotate, embed
from modeling_scbert.cli import main as cli_main

# Largest absolute difference of any class probability from float32 (bfloat16 / float16, measured by the benchmark:
# at most 0.010 / 0.0015 on its tiny models and 0.024 / 0.0045 on its small ones). A label can only change where
# float32's two most likely classes are within twice this of each other.
TOLERANCE = {"bfloat16": 0.03, "float16": 0.01}
# Largest difference of an embedding entry, relative to the largest entry (measured: at most 0.005 / 0.0005).
EMBEDDING_TOLERANCE = {"bfloat16": 0.01, "float16": 0.002}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_annotator(tmp_path_factory.mktemp("annotator"), seed=5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_agrees_with_float32_within_the_stated_tolerance(model_dir, dtype):
    adata = make_adata(60, seed=2)
    reference = annotate(adata, str(model_dir), return_probabilities=True, copy=True, progress=False)
    other = annotate(adata, str(model_dir), return_probabilities=True, copy=True, progress=False, dtype=dtype)
    p, q = reference.obsm["scbert_probabilities"], other.obsm["scbert_probabilities"]
    difference = np.abs(p - q).max()
    assert 0 < difference <= TOLERANCE[dtype]  # above 0: the linear layers really ran in half precision
    top2 = np.sort(p, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * TOLERANCE[dtype]
    assert clear.sum() > 30  # most cells are clear-cut, so the label check means something
    labels, other_labels = (r.obs["scbert_cell_type"].to_numpy() for r in (reference, other))
    assert (labels[clear] == other_labels[clear]).all()
    assert other.uns["scbert"]["params"]["dtype"] == dtype
    assert reference.uns["scbert"]["params"]["dtype"] == "float32"

    e = embed(adata, str(model_dir), copy=True, progress=False).obsm["X_scbert"]
    f = embed(adata, str(model_dir), copy=True, progress=False, dtype=getattr(torch, dtype)).obsm["X_scbert"]
    assert f.dtype == np.float32
    assert 0 < np.abs(e - f).max() / np.abs(e).max() <= EMBEDDING_TOLERANCE[dtype]


def test_an_unknown_dtype_is_refused_naming_the_choices(model_dir):
    adata = make_adata(5)
    with pytest.raises(ValueError, match=r"one of \['float32', 'bfloat16', 'float16'\]; got 'float64'"):
        annotate(adata, str(model_dir), dtype="float64")
    with pytest.raises(ValueError, match="torch.float64"):
        embed(adata, str(model_dir), dtype=torch.float64)
    assert "scbert_cell_type" not in adata.obs and "X_scbert" not in adata.obsm


def test_cli_dtype(model_dir, tmp_path, capsys):
    path = tmp_path / "in.h5ad"
    make_adata(20, seed=2).write_h5ad(path)
    out = tmp_path / "out.h5ad"
    args = ["annotate", "--model", str(model_dir), "--input", str(path), "--output", str(out), "--probabilities"]
    assert cli_main([*args, "--dtype", "bfloat16"]) == 0, capsys.readouterr().err
    result = ad.read_h5ad(out)
    assert result.uns["scbert"]["params"]["dtype"] == "bfloat16"
    reference = annotate(ad.read_h5ad(path), str(model_dir), return_probabilities=True, copy=True, progress=False)
    difference = np.abs(result.obsm["scbert_probabilities"] - reference.obsm["scbert_probabilities"]).max()
    assert 0 < difference <= TOLERANCE["bfloat16"]
    with pytest.raises(SystemExit):
        cli_main([*args, "--overwrite", "--dtype", "float64"])
    assert "invalid choice: 'float64'" in capsys.readouterr().err


def test_a_model_object_loaded_in_bfloat16_annotates_within_the_tolerance_and_leaves_its_folder(model_dir):
    """Buffers (the FAVOR+ random features) may stay float32 beside bfloat16 parameters; annotate copes."""
    import hashlib
    from pathlib import Path

    from transformers import AutoModelForSequenceClassification

    from tokenization import ScBertTokenizer

    weights = Path(model_dir) / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    cells = make_adata(40, seed=5)
    reference = annotate(cells, str(model_dir), return_probabilities=True, progress=False, copy=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.bfloat16)
    assert torch.bfloat16 in {p.dtype for p in model.parameters()}
    result = annotate(
        cells,
        model,
        tokenizer=ScBertTokenizer.from_pretrained(model_dir),
        return_probabilities=True,
        progress=False,
        copy=True,
    )
    gap = np.abs(result.obsm["scbert_probabilities"] - reference.obsm["scbert_probabilities"]).max()
    assert gap <= 0.03
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest
