"""Every input kind verified (and refused when the data contradicts it), and one matrix
reader for every format x dtype x backed, giving identical tokens and leaving the user's object as it was."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from tokenization import ScBertTokenizer
from tokenization.preprocessing import INPUT_KINDS, check_input_kind
from tokenization.reading import read_rows

N_CELLS, N_GENES = 40, 60
GENES = [f"GENE{i}" for i in range(N_GENES)]


def make_counts(seed: int = 0, n_cells: int = N_CELLS, n_genes: int = N_GENES) -> np.ndarray:
    """Poisson counts with a long-tailed gene profile; every cell has a count of 1 somewhere (as real cells do)."""
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(-0.5, 1.5, size=n_genes)
    size = rng.lognormal(0.0, 0.4, size=(n_cells, 1))
    counts = rng.poisson(gene_mean[None, :] * size * 3.0).astype(np.float32)
    counts[:, 0] = 1
    return counts


def reference_ids(counts: np.ndarray) -> np.ndarray:
    """The published rule via scanpy itself: normalise to 10,000, log2(1 + x), clamp at 5, truncate, append 0."""
    adata = ad.AnnData(np.array(counts, dtype=np.float32))  # a copy: scanpy works in place
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata, base=2)
    tokens = np.minimum(adata.X, 5).astype(np.int64)
    return np.concatenate([tokens, np.zeros((len(tokens), 1), np.int64)], axis=1)


def normalised(counts: np.ndarray, target) -> np.ndarray:
    totals = counts.sum(1, keepdims=True)
    if target == "median":
        target = np.median(totals)
    return counts / totals * target


def transformed(counts: np.ndarray, kind: str, target=1e4) -> np.ndarray:
    """The counts as each input kind holds them (float32, as files store them)."""
    if kind in ("counts", "corrected_counts"):
        return counts
    if kind == "proportions":
        return normalised(counts, 1.0).astype(np.float32)
    values = normalised(counts, target)
    out = {
        "normalized": values,
        "log1p": np.log1p(values),
        "log1p_base2": np.log2(1 + values),
        "log1p_base10": np.log10(1 + values),
    }[kind]
    return out.astype(np.float32)


def encode(values: np.ndarray, genes=GENES, **kwargs) -> np.ndarray:
    adata = ad.AnnData(sp.csr_matrix(values), var=pd.DataFrame(index=list(genes)))
    return ScBertTokenizer(list(genes))(adata, **kwargs)["input_ids"]


# ---------------------------------------------------------------- every kind: detected, verified, exact
TRANSFORMED = ["normalized", "proportions", "log1p", "log1p_base2", "log1p_base10"]


@pytest.mark.parametrize("target", [1e4, 1e6, "median"])
@pytest.mark.parametrize("kind", TRANSFORMED)
def test_every_transformed_kind_is_detected_and_gives_the_counts_tokens(kind, target, caplog):
    counts = make_counts()
    values = transformed(counts, kind, target)
    with caplog.at_level(logging.INFO, logger="tokenization"):
        ids = encode(values)
    np.testing.assert_array_equal(ids, reference_ids(counts))
    assert f"(input_kind={kind!r})" in caplog.text and "row sums are constant" in caplog.text
    # naming the kind verifies it and gives the same tokens
    np.testing.assert_array_equal(encode(values, input_kind=kind), ids)


@pytest.mark.parametrize("kind", TRANSFORMED)
def test_values_normalised_over_more_genes_than_the_data_holds_are_verified_by_whole_multiples(kind, caplog):
    counts = make_counts(seed=1, n_genes=N_GENES + 30)  # normalised over 90 genes, then 30 of them dropped
    values = transformed(counts, kind)[:, :N_GENES]
    with caplog.at_level(logging.INFO, logger="tokenization"):
        ids = encode(values)
    assert "whole multiples of its smallest one" in caplog.text
    np.testing.assert_array_equal(ids, reference_ids(counts[:, :N_GENES]))


def test_raw_counts_of_any_integer_dtype_are_detected(caplog):
    counts = make_counts()
    with caplog.at_level(logging.INFO, logger="tokenization"):
        ids = encode(counts.astype(np.int32))
    assert "(input_kind='counts')" in caplog.text and "integers" in caplog.text
    np.testing.assert_array_equal(ids, reference_ids(counts))


def test_corrected_counts_are_refused_by_auto_with_what_was_seen_and_accepted_when_named():
    counts = make_counts()
    corrected = (counts * np.random.default_rng(7).uniform(0.6, 0.95, counts.shape)).astype(np.float32)
    with pytest.raises(ValueError) as error:
        encode(corrected)
    message = str(error.value)
    assert "row sums range" in message and "not a constant target" in message and "expm1" in message
    assert "input_kind='corrected_counts'" in message
    expected = reference_ids(corrected)
    np.testing.assert_array_equal(encode(corrected, input_kind="corrected_counts"), expected)
    np.testing.assert_array_equal(encode(corrected, input_kind="counts"), expected)  # the old name still works


@pytest.mark.parametrize(
    ("actual", "given", "words"),
    [
        ("log1p_base2", "log1p", "log1p_base2"),
        ("log1p_base10", "log1p_base2", "log1p_base10"),
        ("log1p", "counts", "'log1p'"),
        ("log1p", "corrected_counts", "'log1p'"),
        ("log1p", "normalized", "'log1p'"),
        ("counts", "log1p", "only integers"),
        ("counts", "proportions", "only integers"),
    ],
)
def test_a_named_kind_the_data_contradicts_is_refused_naming_the_right_one(actual, given, words):
    values = transformed(make_counts(), actual)
    adata = ad.AnnData(sp.csr_matrix(values), var=pd.DataFrame(index=GENES))
    before = adata.X.copy()
    with pytest.raises(ValueError, match=f"input_kind={given!r} was passed") as error:
        ScBertTokenizer(GENES)(adata, input_kind=given)
    assert words in str(error.value)
    assert (before != adata.X).nnz == 0


def test_refusal_of_an_unverifiable_log_names_what_was_seen():
    # log1p of values that are neither normalised nor counts scaled per cell (e.g. a per-gene transform)
    rng = np.random.default_rng(3)
    values = np.log1p(rng.gamma(0.5, 40.0, size=(N_CELLS, N_GENES))).astype(np.float32)
    sample = read_rows(sp.csr_matrix(values))
    with pytest.raises(ValueError, match=r"expm1 row sums range [\d,.]+ to [\d,.]+, not a constant target"):
        check_input_kind(sample, "log1p")


def test_every_kind_is_accepted_by_name_and_unknown_names_are_refused():
    assert set(INPUT_KINDS) == {"counts", "corrected_counts", "normalized", "proportions"} | {
        "log1p",
        "log1p_base2",
        "log1p_base10",
    }
    with pytest.raises(ValueError, match="input_kind must be 'auto' or one of"):
        encode(make_counts(), input_kind="log2")


def test_real_rounded_log1p_export_pbmc68k_is_verified_and_exact():
    """scanpy's pbmc68k_reduced: .raw.X is log1p of values normalised over more genes, written with 3 decimals."""
    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.to_adata()
    dense = raw.X.toarray() if sp.issparse(raw.X) else raw.X
    counts = np.rint(np.expm1(dense.astype(np.float64)) * adata.obs["n_counts"].to_numpy()[:, None] / 1e4)
    tokenizer = ScBertTokenizer(list(raw.var_names))
    np.testing.assert_array_equal(tokenizer(raw)["input_ids"], reference_ids(counts))
    with pytest.raises(ValueError, match="input_kind='log1p_base2' was passed"):
        tokenizer(raw, input_kind="log1p_base2")


# ---------------------------------------------------------------- one reader: formats x dtypes x backed
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.uint16, np.int64]
FORMATS = ["dense", "csr", "csc", "coo", "csr_duplicates"]


def split_entries(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The same matrix stored non-canonically: every value >= 2 as two entries that sum to it, unsorted."""
    coo = sp.coo_matrix(matrix)
    big = coo.data >= 2
    half = np.floor(coo.data[big] / 2)
    rows = np.concatenate([coo.row, coo.row[big]])
    cols = np.concatenate([coo.col, coo.col[big]])
    vals = np.concatenate([np.where(big, np.floor(coo.data / 2), coo.data), coo.data[big] - half])
    order = np.lexsort((-cols, rows))  # columns in descending order: unsorted indices too
    indptr = np.searchsorted(rows[order], np.arange(matrix.shape[0] + 1))
    return sp.csr_matrix((vals[order].astype(matrix.dtype), cols[order], indptr), shape=matrix.shape)


def as_format(counts: np.ndarray, layout: str, dtype) -> object:
    dense = counts.astype(dtype)
    if layout == "dense":
        return dense
    csr = sp.csr_matrix(dense)
    return {
        "csr": csr,
        "csc": sp.csc_matrix(dense),
        "coo": sp.coo_matrix(dense),
        "csr_duplicates": split_entries(csr),
    }[layout]


# scipy.sparse cannot hold float16; anndata stores COO as CSR on disk.
COMBINATIONS = [
    pytest.param(layout, dtype, backed, id=f"{layout}-{np.dtype(dtype).name}-{'backed' if backed else 'memory'}")
    for layout in FORMATS
    for dtype in DTYPES
    for backed in (False, True)
    if not (dtype == np.float16 and layout != "dense") and not (backed and layout == "coo")
]


@pytest.mark.parametrize(("layout", "dtype", "backed"), COMBINATIONS)
def test_every_format_dtype_and_backing_gives_identical_tokens(layout, dtype, backed, tmp_path):
    counts = make_counts()
    expected = reference_ids(counts)
    matrix = as_format(counts, layout, dtype)
    tokenizer = ScBertTokenizer(GENES)
    if not backed:
        kept = matrix.copy()
        ids = tokenizer(matrix, gene_names=GENES, batch_size=16)["input_ids"]
        np.testing.assert_array_equal(ids, expected)
        # the user's object is left exactly as it was: dtype, stored entries and their order
        assert type(matrix) is type(kept) and matrix.dtype == kept.dtype
        if sp.issparse(matrix):
            np.testing.assert_array_equal(matrix.data, kept.data)
            assert matrix.nnz == kept.nnz
        else:
            np.testing.assert_array_equal(matrix, kept)
        if layout in ("dense", "csr", "csc", "csr_duplicates"):
            adata = ad.AnnData(matrix, var=pd.DataFrame(index=GENES))
            np.testing.assert_array_equal(tokenizer(adata, batch_size=16)["input_ids"], expected)
        return
    path = tmp_path / "cells.h5ad"
    ad.AnnData(matrix, var=pd.DataFrame(index=GENES)).write_h5ad(path)
    adata = ad.read_h5ad(path, backed="r")
    np.testing.assert_array_equal(tokenizer(adata, batch_size=16)["input_ids"], expected)


def test_read_rows_canonicalises_a_copy():
    counts = make_counts()
    matrix = split_entries(sp.csr_matrix(counts))
    assert not matrix.has_canonical_format
    data_before = matrix.data.copy()
    rows = read_rows(matrix)
    assert rows.has_canonical_format and rows.dtype == np.float32
    np.testing.assert_array_equal(rows.toarray(), counts)
    np.testing.assert_array_equal(matrix.data, data_before)
    assert read_rows(counts.astype(np.float64)).dtype == np.float64
    assert read_rows(counts.astype(np.int64)).dtype == np.float64
    assert read_rows(counts.astype(np.float16)).dtype == np.float32
    with pytest.raises(TypeError, match="complex"):
        read_rows(counts.astype(np.complex64))
