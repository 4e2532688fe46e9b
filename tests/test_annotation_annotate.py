"""Annotation and embeddings into AnnData, and the `scbert annotate` / `scbert embed` commands."""

import hashlib
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import save_tiny_annotator

from modeling_scbert import ScBertForSequenceClassification
from modeling_scbert.annotation.annotate import annotate, embed
from modeling_scbert.cli import main as cli_main
from tokenization import ScBertTokenizer
from tokenization.cell_calls import UNASSIGNED

GENES = [f"GENE{j}" for j in range(12)]
CLASSES = ["B", "T", "NK"]


def make_adata(n_cells: int = 20, genes=GENES, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(n_cells, len(genes))).astype(np.float32)
    return ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"truth": rng.choice(CLASSES, n_cells)}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=list(genes)),
        uns={"note": "kept"},
    )


def save_annotator(path, *, seed: int = 0, classes=CLASSES, **tokenizer_kwargs):
    # Spread-out probabilities (a wide initialisation), so thresholds split the cells.
    return save_tiny_annotator(path, GENES, classes, seed=seed, initializer_range=0.5, **tokenizer_kwargs)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_annotator(tmp_path_factory.mktemp("annotator"))


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory):
    """Another member for an ensemble: same classes and panel, other weights."""
    return save_annotator(tmp_path_factory.mktemp("annotator-2"), seed=1)


def _slots(adata):
    return {
        "obs": set(adata.obs.columns),
        "obsm": set(adata.obsm),
        "uns": set(adata.uns),
        "layers": set(adata.layers),
        "var": set(adata.var.columns),
        "varm": set(adata.varm),
        "obsp": set(adata.obsp),
    }


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_annotate_writes_exactly_the_documented_slots(model_dir):
    adata = make_adata()
    before, x_before = _slots(adata), adata.X.copy()
    assert annotate(adata, str(model_dir), progress=False) is None  # copy=False: in place, returns None
    after = _slots(adata)
    # The reason column is part of the output on purpose (cells without signal in the panel are "Unassigned").
    assert after["obs"] - before["obs"] == {"scbert_cell_type", "scbert_confidence", "scbert_unassigned_reason"}
    assert after["uns"] - before["uns"] == {"scbert"}
    assert {k: v for k, v in after.items() if k not in ("obs", "uns")} == {
        k: v for k, v in before.items() if k not in ("obs", "uns")
    }
    assert abs(adata.X - x_before).sum() == 0
    assert isinstance(adata.obs["scbert_cell_type"].dtype, pd.CategoricalDtype)
    assert list(adata.obs["scbert_cell_type"].cat.categories) == CLASSES
    assert adata.obs["scbert_confidence"].dtype == np.float32
    assert set(adata.uns["scbert"]) == {"params"}
    assert adata.uns["scbert"]["params"]["model"] == str(model_dir)

    annotate(adata, str(model_dir), key_added="run2", return_probabilities=True, progress=False)
    probabilities = adata.obsm["run2_probabilities"]
    assert probabilities.shape == (adata.n_obs, 3)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    assert list(adata.uns["run2"]["class_names"]) == CLASSES
    np.testing.assert_allclose(adata.obs["run2_confidence"], probabilities.max(1))
    assert list(adata.obs["run2_cell_type"]) == [CLASSES[i] for i in probabilities.argmax(1)]


def test_annotate_copy_returns_a_new_anndata_and_leaves_the_input(model_dir):
    adata = make_adata()
    before = _slots(adata)
    result = annotate(adata, str(model_dir), copy=True, progress=False)
    assert result is not adata and "scbert_cell_type" in result.obs
    assert _slots(adata) == before


def test_annotate_labels_unassigned_below_the_threshold(model_dir):
    adata = make_adata(40)
    annotate(adata, str(model_dir), return_probabilities=True, progress=False)
    confidence = adata.obs["scbert_confidence"].to_numpy()
    threshold = float(np.median(confidence))
    annotate(adata, str(model_dir), unassigned_threshold=threshold, key_added="novel", progress=False)
    labels = adata.obs["novel_cell_type"].astype(str).to_numpy()
    below = confidence < threshold
    assert 0 < below.sum() < adata.n_obs
    assert (labels[below] == UNASSIGNED).all()
    assert (labels[~below] == adata.obs["scbert_cell_type"].astype(str).to_numpy()[~below]).all()
    assert list(adata.obs["novel_cell_type"].cat.categories) == [*CLASSES, UNASSIGNED]
    assert adata.uns["novel"]["params"]["unassigned_threshold"] == pytest.approx(threshold)
    with pytest.raises(ValueError, match="probability"):
        annotate(adata, str(model_dir), unassigned_threshold=1.5)


def test_annotate_ensemble_averages_the_members_probabilities(model_dir, second_model_dir):
    adata = make_adata(30)
    members = []
    for key, path in (("a", model_dir), ("b", second_model_dir)):
        annotate(adata, str(path), key_added=key, return_probabilities=True, progress=False)
        members.append(adata.obsm[f"{key}_probabilities"])
    assert np.abs(members[0] - members[1]).max() > 0.05  # the members differ, so the average is a real test
    annotate(adata, [str(model_dir), str(second_model_dir)], return_probabilities=True, progress=False)
    mean = (members[0] + members[1]) / 2
    np.testing.assert_allclose(adata.obsm["scbert_probabilities"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adata.obs["scbert_confidence"], mean.max(1), rtol=1e-5)
    assert list(adata.obs["scbert_cell_type"]) == [CLASSES[i] for i in mean.argmax(1)]
    assert list(adata.uns["scbert"]["params"]["model"]) == [str(model_dir), str(second_model_dir)]
    # Model objects with their shared tokenizer give the same result; one member alone is that member.
    objects = [ScBertForSequenceClassification.from_pretrained(p) for p in (model_dir, second_model_dir)]
    result = annotate(adata, objects, tokenizer=ScBertTokenizer(GENES), copy=True, progress=False)
    np.testing.assert_allclose(result.obs["scbert_confidence"], mean.max(1), rtol=1e-5)
    result = annotate(adata, [str(model_dir)], return_probabilities=True, copy=True, progress=False)
    np.testing.assert_allclose(result.obsm["scbert_probabilities"], members[0], rtol=1e-6)
    assert result.uns["scbert"]["params"]["model"] == str(model_dir)


def test_annotate_ensemble_refuses_members_that_disagree(model_dir, tmp_path):
    adata = make_adata()
    before = _slots(adata)
    reordered = save_annotator(tmp_path / "reordered", classes=CLASSES[::-1])
    with pytest.raises(ValueError, match="different classes"):
        annotate(adata, [str(model_dir), str(reordered)], progress=False)
    other_binning = save_annotator(tmp_path / "binning", max_bin=3)
    with pytest.raises(ValueError, match="read the cells differently"):
        annotate(adata, [str(model_dir), str(other_binning)], progress=False)
    with pytest.raises(ValueError, match="empty list"):
        annotate(adata, [], progress=False)
    assert _slots(adata) == before


def test_annotate_view_batching_and_backed_file_agree(model_dir, tmp_path):
    adata = make_adata(30)
    reference = annotate(adata, str(model_dir), copy=True, batch_size=30, progress=False)
    small_batches = annotate(adata, str(model_dir), copy=True, batch_size=4, chunk_size=7, progress=False)
    np.testing.assert_allclose(small_batches.obs["scbert_confidence"], reference.obs["scbert_confidence"], rtol=1e-5)

    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    annotate(backed, str(model_dir), batch_size=8, chunk_size=10, progress=False)
    np.testing.assert_allclose(backed.obs["scbert_confidence"], reference.obs["scbert_confidence"], rtol=1e-5)
    with pytest.raises(ValueError, match="to_memory"):
        annotate(backed, str(model_dir), copy=True)

    view = adata[:10]
    with pytest.warns(UserWarning, match="view"):
        annotate(view, str(model_dir), progress=False)
    assert not view.is_view and "scbert_cell_type" in view.obs


def test_a_view_of_a_backed_file_is_annotated_from_its_rows_only(tmp_path):
    """Case 19: `annotate(backed[mask], model)` (and embed, gene attention, predict) annotates the view's cells and
    writes into the object passed, made actual from the view's rows (scverse: a view is made actual with a warning);
    the file is not changed."""
    from modeling_scbert.annotation.annotate import predict_cell_types
    from modeling_scbert.annotation.attention import gene_attention_scores

    genes = ["CD3E", "CD3D", "CD2", "CD7", "IL7R", "MS4A1", "CD79A", "LYZ", "CD14", "NKG7", "GNLY", "ACTB"] + [
        f"ZNF{i}" for i in range(101, 189)
    ]
    model_dir = save_tiny_annotator(
        tmp_path / "model", genes, ["B cell", "T cell", "NK cell", "Monocyte"], seed=0, initializer_range=0.5
    )
    rng = np.random.default_rng(1)
    gene_mean = rng.lognormal(-1.0, 1.5, size=len(genes))
    counts = rng.poisson(gene_mean[None, :] * rng.lognormal(0.0, 0.4, size=(60, 1)) * 3.0).astype(np.float32)
    cells = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"sample": ["A"] * 30 + ["B"] * 30}, index=[f"cell_{i}" for i in range(60)]),
        var=pd.DataFrame(index=genes),
    )
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    reference = cells[cells.obs["sample"] == "A"].copy()
    annotate(reference, str(model_dir), progress=False)
    embed(reference, str(model_dir), progress=False)

    backed = ad.read_h5ad(path, backed="r")
    subset = backed[backed.obs["sample"] == "A"]
    result = predict_cell_types(subset, str(model_dir), progress=False)
    assert list(result.calls.labels) == reference.obs["scbert_cell_type"].astype(str).tolist()
    copied = annotate(subset, str(model_dir), copy=True, progress=False)  # the view's rows, in memory
    assert subset.is_view and not copied.isbacked and copied.n_obs == 30
    with pytest.warns(UserWarning, match="view of a backed AnnData.*to_memory"):
        annotate(subset, str(model_dir), progress=False)
    assert not subset.is_view and subset.n_obs == 30 and list(subset.obs_names) == list(reference.obs_names)
    assert (
        subset.obs["scbert_cell_type"].astype(str).tolist() == reference.obs["scbert_cell_type"].astype(str).tolist()
    )
    np.testing.assert_allclose(subset.obs["scbert_confidence"], reference.obs["scbert_confidence"], rtol=1e-5)
    np.testing.assert_allclose(subset.X.toarray(), counts[:30])

    backed = ad.read_h5ad(path, backed="r")
    subset = backed[backed.obs["sample"] == "A"]
    with pytest.warns(UserWarning, match="view of a backed"):
        embed(subset, str(model_dir), progress=False)
    np.testing.assert_allclose(subset.obsm["X_scbert"], reference.obsm["X_scbert"], rtol=1e-5, atol=1e-6)
    backed = ad.read_h5ad(path, backed="r")
    subset = backed[backed.obs["sample"] == "B"]
    with pytest.warns(UserWarning, match="view of a backed"):
        gene_attention_scores(subset, str(model_dir), progress=False)
    assert subset.varm["scbert_attention"].shape[0] == len(genes) and subset.n_obs == 30
    backed.file.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the file is not changed


def test_embed_writes_mean_encodings(model_dir):
    adata = make_adata()
    before = _slots(adata)
    embed(adata, str(model_dir), progress=False)
    assert adata.obsm["X_scbert"].shape == (adata.n_obs, 16)
    assert adata.obsm["X_scbert"].dtype == np.float32
    assert _slots(adata)["obsm"] - before["obsm"] == {"X_scbert"}
    assert _slots(adata)["uns"] - before["uns"] == {"scbert_embedding"}
    assert _slots(adata)["obs"] == before["obs"]

    model = ScBertForSequenceClassification.from_pretrained(model_dir).eval()
    input_ids = ScBertTokenizer.from_pretrained(model_dir)(adata[:2], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.scbert(input_ids).last_hidden_state.mean(1)
    np.testing.assert_allclose(adata.obsm["X_scbert"][:2], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_model_object_needs_a_tokenizer_and_panels_must_match(model_dir):
    model = ScBertForSequenceClassification.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="tokenizer="):
        annotate(make_adata(), model)
    with pytest.raises(ValueError, match="12 genes but the tokenizer's has 3"):
        annotate(make_adata(), model, tokenizer=ScBertTokenizer(GENES[:3]))


# ---------------------------------------------------------------------------------------------------------------------
# The command line: atomic outputs, input never modified, clear errors that change no file
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def h5ad(tmp_path):
    path = tmp_path / "in.h5ad"
    make_adata(25).write_h5ad(path)
    return path


def test_cli_annotate_writes_output_and_csv_and_never_touches_the_input(model_dir, h5ad, tmp_path, capsys):
    digest = _digest(h5ad)
    out, csv = tmp_path / "out.h5ad", tmp_path / "preds.csv"
    code = cli_main(
        ["annotate", "--model", str(model_dir), "--input", str(h5ad), "--output", str(out), "--csv", str(csv)]
        + ["--threshold", "0.5", "--probabilities", "--label-key", "truth"]
    )
    assert code == 0, capsys.readouterr().err
    assert _digest(h5ad) == digest
    result, source = ad.read_h5ad(out), ad.read_h5ad(h5ad)
    assert (result.X != source.X).nnz == 0
    # The reason column is part of the output on purpose.
    assert set(result.obs.columns) == {"truth", "scbert_cell_type", "scbert_confidence", "scbert_unassigned_reason"}
    assert result.obsm["scbert_probabilities"].shape == (25, 3)
    assert result.uns["note"] == "kept" and result.uns["scbert"]["params"]["unassigned_threshold"] == 0.5
    table = pd.read_csv(csv, index_col="cell_id")
    assert list(table.index) == list(source.obs_names)
    assert {"scbert_cell_type", "scbert_confidence", "truth", "probability:NK"} <= set(table.columns)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left

    # An existing output is refused, unchanged, unless --overwrite.
    digest_out = _digest(out)
    assert cli_main(["annotate", "--model", str(model_dir), "--input", str(h5ad), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _digest(out) == digest_out
    args = ["annotate", "--model", str(model_dir), "--input", str(h5ad), "--output", str(out), "--overwrite"]
    assert cli_main(args) == 0
    assert "scbert_probabilities" not in ad.read_h5ad(out).obsm
    # The input is never the output, even with --overwrite.
    assert (
        cli_main(["annotate", "--model", str(model_dir), "--input", str(h5ad), "--output", str(h5ad), "--overwrite"])
        == 2
    )
    assert _digest(h5ad) == digest


def test_cli_annotate_with_an_ensemble(model_dir, second_model_dir, h5ad, tmp_path, capsys):
    out = tmp_path / "out.h5ad"
    args = ["annotate", "--model", str(model_dir), str(second_model_dir), "--input", str(h5ad), "--output", str(out)]
    assert cli_main([*args, "--probabilities"]) == 0, capsys.readouterr().err
    result = ad.read_h5ad(out)
    expected = annotate(ad.read_h5ad(h5ad), [str(model_dir), str(second_model_dir)], copy=True, progress=False)
    np.testing.assert_allclose(result.obs["scbert_confidence"], expected.obs["scbert_confidence"], rtol=1e-6)
    assert list(result.uns["scbert"]["params"]["model"]) == [str(model_dir), str(second_model_dir)]
    reordered = save_annotator(tmp_path / "reordered", classes=CLASSES[::-1])
    args = ["annotate", "--model", str(model_dir), str(reordered), "--input", str(h5ad), "--output", str(out)]
    assert cli_main([*args, "--overwrite"]) == 2
    assert "different classes" in capsys.readouterr().err


def test_cli_embed(model_dir, h5ad, tmp_path):
    out = tmp_path / "embedded.h5ad"
    assert cli_main(["embed", "--model", str(model_dir), "--input", str(h5ad), "--output", str(out)]) == 0
    result = ad.read_h5ad(out)
    assert result.obsm["X_scbert"].shape == (25, 16)
    assert "scbert_embedding" in result.uns


def _run_refused(capsys, tmp_path, args, match):
    before = {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()}
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()} == before  # no file changed or added
    return err


def test_cli_refuses_an_unreadable_file(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(b"this is not an HDF5 file")
    out = str(tmp_path / "out.h5ad")
    _run_refused(
        capsys,
        tmp_path,
        ["annotate", "--model", str(model_dir), "--input", str(broken), "--output", out],
        "Could not read",
    )
    missing = str(tmp_path / "missing.h5ad")
    _run_refused(
        capsys,
        tmp_path,
        ["annotate", "--model", str(model_dir), "--input", missing, "--output", out],
        "does not exist",
    )


def test_cli_refuses_a_barely_overlapping_panel_with_the_overlap_report(model_dir, tmp_path, capsys):
    other = make_adata(10, genes=[*GENES[:2], *(f"OTHER{j}" for j in range(10))])
    path = tmp_path / "other.h5ad"
    other.write_h5ad(path)
    err = _run_refused(
        capsys,
        tmp_path,
        ["annotate", "--model", str(model_dir), "--input", str(path), "--output", str(tmp_path / "out.h5ad")],
        "Only 2 of 12 panel genes",
    )
    assert "OTHER" in err  # the report names unmatched data genes


def test_cli_refuses_a_model_folder_without_tokenizer(model_dir, h5ad, tmp_path, capsys):
    bare = tmp_path / "bare"
    ScBertForSequenceClassification.from_pretrained(model_dir).save_pretrained(bare)
    args = ["annotate", "--model", str(bare), "--input", str(h5ad), "--output", str(tmp_path / "out.h5ad")]
    err = _run_refused(capsys, tmp_path, args, "No scBERT tokenizer found")
    assert "genes.txt" in err


def test_cli_refuses_a_missing_label_column_listing_obs_columns(model_dir, h5ad, tmp_path, capsys):
    args = ["annotate", "--model", str(model_dir), "--input", str(h5ad), "--output", str(tmp_path / "out.h5ad")]
    err = _run_refused(
        capsys, tmp_path, [*args, "--csv", str(tmp_path / "p.csv"), "--label-key", "celltype"], "'truth'"
    )
    assert "celltype" in err


def test_the_gene_alignment_is_planned_and_reported_once_per_call(model_dir, caplog):
    adata = make_adata(30)
    calls = {
        "annotate": lambda: annotate(adata, str(model_dir), copy=True, progress=False),
        "annotate with majority voting": lambda: annotate(
            adata, str(model_dir), majority_voting=True, copy=True, progress=False
        ),
        "an ensemble": lambda: annotate(adata, [str(model_dir)] * 2, copy=True, progress=False),
        "embed": lambda: embed(adata, str(model_dir), copy=True, progress=False),
    }
    for name, call in calls.items():
        caplog.clear()
        with caplog.at_level(logging.INFO):
            call()
        reports = [r for r in caplog.records if r.getMessage().startswith("Gene alignment:")]
        assert len(reports) == 1, (name, [r.getMessage() for r in reports])
