"""ScBertTokenizer: golden parity with the published preprocessing, input handling, errors, save/load/push."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

from tokenization import ScBertTokenizer


@pytest.fixture(scope="module")
def golden(golden_dir):
    counts = np.load(golden_dir / "tokenizer_counts.npy")
    genes = (golden_dir / "tokenizer_genes.txt").read_text().splitlines()
    input_ids = np.load(golden_dir / "tokenizer_input_ids.npy")
    return counts, genes, input_ids


def make_adata(counts, genes, **kwargs) -> ad.AnnData:
    adata = ad.AnnData(counts, **kwargs)
    adata.var_names = list(genes)
    adata.obs_names = [f"cell{i}" for i in range(adata.n_obs)]
    return adata


def log1p_normalised(adata: ad.AnnData) -> ad.AnnData:
    """What a typical user holds: scanpy normalize_total (to 10,000) then natural log1p, over all genes."""
    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def reference_ids(counts: np.ndarray) -> np.ndarray:
    """The published rule via scanpy itself: normalise, log2(1 + x), clamp at 5, truncate, append a 0 token."""
    adata = ad.AnnData(np.asarray(counts, dtype=np.float32))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata, base=2)
    tokens = np.minimum(adata.X, 5).astype(np.int64)
    return np.concatenate([tokens, np.zeros((len(tokens), 1), np.int64)], axis=1)


def snapshot(adata: ad.AnnData) -> dict:
    def dense(m):
        return m.toarray() if sp.issparse(m) else np.array(m)

    return {
        "X": dense(adata.X),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": copy.deepcopy(dict(adata.uns)),
        "layers": {k: dense(v) for k, v in adata.layers.items()},
    }


def assert_unchanged(adata: ad.AnnData, before: dict) -> None:
    after = snapshot(adata)
    np.testing.assert_array_equal(after["X"], before["X"])
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    pd.testing.assert_frame_equal(after["var"], before["var"])
    assert after["uns"].keys() == before["uns"].keys()
    assert after["layers"].keys() == before["layers"].keys()
    for key in before["layers"]:
        np.testing.assert_array_equal(after["layers"][key], before["layers"][key])


# ---------------------------------------------------------------- golden parity
@pytest.mark.parametrize("layout", ["dense", "csr", "csc"])
def test_golden_from_counts(golden, layout):
    counts, genes, expected = golden
    matrix = {"dense": counts.copy(), "csr": sp.csr_matrix(counts), "csc": sp.csc_matrix(counts)}[layout]
    adata = make_adata(matrix, genes)
    before = snapshot(adata)
    input_ids = ScBertTokenizer(genes)(adata)["input_ids"]
    assert input_ids.dtype == np.int64 and input_ids.shape == (20, 2001)
    np.testing.assert_array_equal(input_ids, expected)
    assert_unchanged(adata, before)


def test_golden_from_scanpy_log1p(golden, caplog):
    counts, genes, expected = golden
    adata = log1p_normalised(make_adata(counts.copy(), genes))
    before = snapshot(adata)
    with caplog.at_level(logging.INFO, logger="tokenization"):
        input_ids = ScBertTokenizer(genes)(adata)["input_ids"]
    np.testing.assert_array_equal(input_ids, expected)
    assert "log1p-normalised" in caplog.text
    assert_unchanged(adata, before)


def test_golden_from_backed_file(golden, tmp_path):
    counts, genes, expected = golden
    path = tmp_path / "cells.h5ad"
    make_adata(sp.csr_matrix(counts), genes).write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    input_ids = ScBertTokenizer(genes)(adata, batch_size=7)["input_ids"]
    np.testing.assert_array_equal(input_ids, expected)


def test_golden_from_plain_matrix_and_torch(golden):
    counts, genes, expected = golden
    encoding = ScBertTokenizer(genes)(sp.csr_matrix(counts), gene_names=genes, return_tensors="pt")
    assert encoding["input_ids"].dtype == torch.int64
    np.testing.assert_array_equal(encoding["input_ids"].numpy(), expected)


def test_batch_size_does_not_change_tokens(golden):
    counts, genes, expected = golden
    tokenizer = ScBertTokenizer(genes)
    for batch_size in (1, 3, 1000):
        np.testing.assert_array_equal(
            tokenizer(counts, gene_names=genes, batch_size=batch_size)["input_ids"], expected
        )


# ---------------------------------------------------------------- gene alignment through the tokenizer
def test_shuffled_gene_order_gives_the_same_tokens(golden):
    counts, genes, expected = golden
    perm = np.random.default_rng(0).permutation(len(genes))
    adata = make_adata(counts[:, perm], np.asarray(genes)[perm])
    np.testing.assert_array_equal(ScBertTokenizer(genes)(adata)["input_ids"], expected)


def test_extra_genes_are_dropped_and_do_not_change_normalisation(golden):
    counts, genes, expected = golden
    rng = np.random.default_rng(0)
    extra = rng.poisson(5.0, size=(counts.shape[0], 50)).astype(np.float32)
    adata = make_adata(np.hstack([extra, counts]), [f"EXTRA{i}" for i in range(50)] + genes)
    report = ScBertTokenizer(genes).align(adata)
    assert report.matched == 2000 and len(report.extra) == 50
    np.testing.assert_array_equal(ScBertTokenizer(genes)(adata)["input_ids"], expected)


def test_missing_gene_is_zero_and_cells_renormalise_over_the_rest(golden):
    counts, genes, _ = golden
    missing = int(np.argmax((counts > 0).sum(0)))  # a gene expressed in many cells, so renormalisation matters
    keep = [j for j in range(len(genes)) if j != missing]
    adata = make_adata(counts[:, keep], [genes[j] for j in keep])
    input_ids = ScBertTokenizer(genes)(adata)["input_ids"]
    assert (input_ids[:, missing] == 0).all()
    expected = reference_ids(counts[:, keep])
    np.testing.assert_array_equal(np.delete(input_ids, missing, axis=1), expected)
    # and the log1p route (normalised over all data genes) renormalises over the panel genes the same way
    log_input = log1p_normalised(make_adata(counts.copy(), genes))[:, keep].copy()
    log_ids = ScBertTokenizer(genes + ["NOT_IN_DATA"])(log_input)["input_ids"]
    np.testing.assert_array_equal(np.delete(log_ids[:, :-2], missing, axis=1), expected[:, :-1])


def test_ensembl_ids_with_versions_through_a_synonym_file(golden, tmp_path):
    counts, genes, expected = golden
    ensembl = [f"ENSG{i:011d}" for i in range(len(genes))]
    table = tmp_path / "hgnc_complete_set.txt"
    lines = ["hgnc_id\tsymbol\tname\talias_symbol\tprev_symbol\tensembl_gene_id"]
    lines += [f"HGNC:{i}\t{g}\tgene {i}\t\t\t{e}" for i, (g, e) in enumerate(zip(genes, ensembl, strict=True))]
    table.write_text("\n".join(lines) + "\n")
    adata = make_adata(counts.copy(), [f"{e}.{i % 7 + 1}" for i, e in enumerate(ensembl)])
    tokenizer = ScBertTokenizer(genes)
    with pytest.raises(ValueError, match="synonym"):
        tokenizer(adata)
    report = tokenizer.align(adata, synonyms=table)
    assert report.matched_by_synonym == 2000 and report.identifier_type == "ensembl"
    np.testing.assert_array_equal(tokenizer(adata, synonyms=table)["input_ids"], expected)


def test_gene_key_reads_identifiers_from_a_var_column(golden):
    counts, genes, expected = golden
    adata = make_adata(counts.copy(), [f"id{i}" for i in range(len(genes))])
    adata.var["symbol"] = genes
    np.testing.assert_array_equal(ScBertTokenizer(genes)(adata, gene_key="symbol")["input_ids"], expected)


def test_layer_is_read_instead_of_x(golden):
    counts, genes, expected = golden
    adata = log1p_normalised(make_adata(counts.copy(), genes))
    adata.layers["counts"] = counts.copy()
    np.testing.assert_array_equal(ScBertTokenizer(genes)(adata, layer="counts")["input_ids"], expected)


def test_alignment_and_input_kind_are_logged(golden, caplog):
    counts, genes, _ = golden
    with caplog.at_level(logging.INFO, logger="tokenization"):
        ScBertTokenizer(genes)(make_adata(counts.copy(), genes))
    assert "2,000 of 2,000 panel genes found" in caplog.text
    assert "raw counts" in caplog.text


# ---------------------------------------------------------------- bad input
@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(30, 40)).astype(np.float32)
    genes = [f"G{i}" for i in range(40)]
    return make_adata(counts, genes), genes


def test_negative_values_are_refused(small):
    adata, genes = small
    adata.X[3, 5] = -1.0
    before = snapshot(adata)
    with pytest.raises(ValueError, match="negative values"):
        ScBertTokenizer(genes)(adata)
    assert_unchanged(adata, before)


def test_negative_values_outside_the_detection_sample_are_refused(small):
    adata, genes = small
    adata.X[29, 0] = -2.0
    with pytest.raises(ValueError, match="negative"):
        ScBertTokenizer(genes)(adata, input_kind="counts", batch_size=10)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_are_refused(small, bad):
    adata, genes = small
    adata.X[0, 0] = bad
    before = snapshot(adata)
    with pytest.raises(ValueError, match="NaN or infinite"):
        ScBertTokenizer(genes)(adata)
    assert_unchanged(adata, before)


def test_scaled_data_is_refused_and_points_to_the_counts_layer(small):
    adata, genes = small
    adata.layers["counts"] = adata.X.copy()
    sc.pp.log1p(adata)
    sc.pp.scale(adata)
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"scaled \(z-scored.*layer='counts'"):
        ScBertTokenizer(genes)(adata)
    assert_unchanged(adata, before)


def test_scaled_data_points_to_adata_raw(small):
    adata, genes = small
    adata.raw = adata.copy()
    sc.pp.log1p(adata)
    sc.pp.scale(adata)
    with pytest.raises(ValueError, match=r"adata\.raw"):
        ScBertTokenizer(genes)(adata)


def test_missing_gene_key_lists_var_columns(small):
    adata, genes = small
    adata.var["feature_name"] = genes
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"gene_key='symbols'.*\['feature_name'\]"):
        ScBertTokenizer(genes)(adata, gene_key="symbols")
    assert_unchanged(adata, before)


def test_low_overlap_is_refused_with_advice(small):
    adata, genes = small
    adata.var["symbol"] = genes
    before = snapshot(adata)
    tokenizer = ScBertTokenizer([f"OTHER{i}" for i in range(30)] + genes[:10])
    with pytest.raises(ValueError) as error:
        tokenizer(adata)
    message = str(error.value)
    assert "Only 10 of 40 panel genes" in message
    assert "gene_key=" in message and "['symbol']" in message and "synonyms=" in message
    assert "G10" in message  # an example unmatched data name
    assert_unchanged(adata, before)
    # the threshold is configurable
    assert tokenizer(adata, min_gene_overlap=0.2)["input_ids"].shape == (30, 41)


def test_missing_layer_and_bad_options(small):
    adata, genes = small
    tokenizer = ScBertTokenizer(genes)
    with pytest.raises(ValueError, match="layers are"):
        tokenizer(adata, layer="counts")
    with pytest.raises(ValueError, match="input_kind"):
        tokenizer(adata, input_kind="normalised")
    with pytest.raises(TypeError, match="gene_names"):
        tokenizer(adata.X)
    with pytest.raises(ValueError, match="return_tensors"):
        tokenizer(adata, return_tensors="tf")


def test_panel_validation():
    with pytest.raises(ValueError, match="repeat"):
        ScBertTokenizer(["A", "B", "A"])
    with pytest.raises(ValueError, match="mask_token_id"):
        ScBertTokenizer(["A"], mask_token_id=5)
    with pytest.raises(TypeError, match="from_gene_file"):
        ScBertTokenizer("genes.txt")


# ---------------------------------------------------------------- panel, save / load / push
def test_from_adata_strips_versions_and_keeps_first_duplicate():
    adata = make_adata(np.ones((2, 4), np.float32), ["ENSG00000141510.17", "B", "ENSG00000141510.2", "C"])
    tokenizer = ScBertTokenizer.from_adata(adata)
    assert tokenizer.genes == ("ENSG00000141510", "B", "C")
    assert tokenizer.sequence_length == 4 and tokenizer.vocab_size == 7


def test_save_and_load_round_trip(tmp_path):
    tokenizer = ScBertTokenizer(["TP53", "CD3E", "MS4A1"], min_gene_overlap=0.3)
    tokenizer.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "genes.txt").read_text() == "TP53\nCD3E\nMS4A1\n"
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "ScBertTokenizer"
    assert config["normalization_target"] == 1e4 and config["log_base"] == 2 and config["max_bin"] == 5
    assert config["mask_token_id"] == 6 and config["num_genes"] == 3
    assert config["panel_hash"] == hashlib.sha256(b"TP53\nCD3E\nMS4A1").hexdigest() == tokenizer.panel_hash
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["genes.txt", "tokenizer_config.json"]
    assert ScBertTokenizer.from_pretrained(tmp_path / "tok") == tokenizer


def test_edited_gene_file_is_detected(tmp_path):
    ScBertTokenizer(["A", "B", "C"]).save_pretrained(tmp_path)
    (tmp_path / "genes.txt").write_text("A\nB\n")
    with pytest.raises(ValueError, match="panel_hash"):
        ScBertTokenizer.from_pretrained(tmp_path)


def test_from_pretrained_hub_id_downloads_both_files(tmp_path, monkeypatch):
    import huggingface_hub

    ScBertTokenizer(["A", "B"]).save_pretrained(tmp_path)
    calls = []

    def fake_download(*, repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["revision"], kwargs["cache_dir"]))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    tokenizer = ScBertTokenizer.from_pretrained("user/scbert", revision="v1", cache_dir="cache")
    assert tokenizer.genes == ("A", "B")
    assert calls == [
        ("user/scbert", "tokenizer_config.json", "v1", "cache"),
        ("user/scbert", "genes.txt", "v1", "cache"),
    ]


def test_from_pretrained_offline_without_cache_fails_clearly(tmp_path, monkeypatch):
    with pytest.raises(Exception, match=r"(?i)offline|local|cache|connect"):
        ScBertTokenizer.from_pretrained("user/does-not-exist", cache_dir=tmp_path, local_files_only=True)


def test_push_to_hub_uploads_the_saved_files(monkeypatch):
    import huggingface_hub

    uploaded = {}
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kwargs: repo_id)

    def fake_upload(*, repo_id, folder_path, **kwargs):
        uploaded.update({p.name: p.read_text() for p in Path(folder_path).iterdir()}, repo_id=repo_id)
        return "https://hub/commit/1"

    monkeypatch.setattr(huggingface_hub, "upload_folder", fake_upload)
    ScBertTokenizer(["A", "B"]).push_to_hub("user/scbert")
    assert uploaded["repo_id"] == "user/scbert"
    assert uploaded["genes.txt"] == "A\nB\n"
    assert json.loads(uploaded["tokenizer_config.json"])["tokenizer_class"] == "ScBertTokenizer"
