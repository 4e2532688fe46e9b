"""Preprocessing: input-kind detection, validation, and the binning arithmetic against scanpy itself."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from tokenization.preprocessing import bin_expression, check_chunk, check_input_kind, detect_input_kind, recover_counts
from tokenization.reading import sample_rows

CONTRACT = {"normalization_target": 1e4, "log_base": 2.0, "max_bin": 5}


def scanpy_tokens(counts: np.ndarray) -> np.ndarray:
    adata = ad.AnnData(counts.astype(np.float32))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata, base=2)
    return np.minimum(adata.X, 5).astype(np.int64)


def scanpy_log1p(counts: np.ndarray) -> np.ndarray:
    adata = ad.AnnData(counts.astype(np.float32))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata.X


def encode(matrix: np.ndarray, *, kind: str) -> np.ndarray:
    n_genes = matrix.shape[1]
    tokens = bin_expression(
        sp.csr_matrix(matrix.astype(np.float32)),
        data_to_panel=np.arange(n_genes),
        num_genes=n_genes,
        input_kind=kind,
        **CONTRACT,
    )
    return tokens.toarray().astype(np.int64)


def boundary_counts(rng: np.random.Generator, n_cells: int = 400, n_genes: int = 60) -> np.ndarray:
    """Cells whose totals are multiples of 10,000, so normalised values land exactly on bin boundaries."""
    counts = rng.poisson(rng.gamma(0.3, 3.0, size=(n_cells, n_genes))).astype(np.float32)
    multiple = rng.choice([1, 2, 4, 5, 8], size=n_cells)
    counts[:, :5] = multiple[:, None] * np.array([1, 3, 7, 15, 31])
    counts[:, -1] += np.maximum(0, 1e4 * multiple - counts.sum(1))
    return counts


def test_counts_match_scanpy_bit_for_bit_including_boundaries():
    counts = boundary_counts(np.random.default_rng(0))
    expected = scanpy_tokens(counts)
    assert np.isin(expected[:, :5], [1, 2, 3, 4, 5]).all()
    np.testing.assert_array_equal(encode(counts, kind="counts"), expected)


def test_log1p_input_recovers_the_counts_tokens_on_bin_boundaries():
    counts = boundary_counts(np.random.default_rng(1))
    np.testing.assert_array_equal(encode(scanpy_log1p(counts), kind="log1p"), scanpy_tokens(counts))


def test_recover_counts_falls_back_to_expm1_for_non_count_data():
    rng = np.random.default_rng(0)
    values = rng.gamma(0.5, 3.0, size=(5, 30)).astype(np.float32)
    log_values = np.log1p(values)
    recovered = recover_counts(sp.csr_matrix(log_values))
    np.testing.assert_allclose(recovered, values.ravel(), rtol=1e-5)


def test_empty_cells_stay_zero():
    counts = np.zeros((3, 10), np.float32)
    counts[1, 2] = 4
    tokens = encode(counts, kind="counts")
    assert tokens[0].sum() == 0 and tokens[2].sum() == 0 and tokens[1, 2] == 5


def test_extra_genes_are_dropped_before_normalising():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(20, 12)).astype(np.float32)
    tokens = bin_expression(
        sp.csr_matrix(counts),
        data_to_panel=np.array([0, 1, 2, 3, 4, 5, 6, 7, -1, -1, -1, -1]),
        num_genes=8,
        input_kind="counts",
        **CONTRACT,
    )
    np.testing.assert_array_equal(tokens.toarray(), scanpy_tokens(counts[:, :8]))


def test_detect_counts_and_log1p():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(50, 30)).astype(np.float32)
    assert detect_input_kind(sp.csr_matrix(counts)) == "counts"
    assert detect_input_kind(sp.csr_matrix(scanpy_log1p(counts))) == "log1p"


def test_normalised_but_not_logged_is_detected_and_verified():
    # On purpose: normalised (not logged) values are a verified kind now, not a refusal.
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2.0, size=(50, 30)).astype(np.float32))
    sc.pp.normalize_total(adata, target_sum=1e4)
    kind, evidence = check_input_kind(sp.csr_matrix(adata.X))
    assert kind == "normalized" and "row sums are constant at 10,000" in evidence


def test_check_chunk_messages():
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_chunk(np.array([1.0, np.nan]), source="adata.X")
    with pytest.raises(ValueError, match=r"negative values \(minimum -1\).*layer='counts'"):
        check_chunk(np.r_[np.ones(99), -1.0], source="adata.X", hint=" pass layer='counts'")
    with pytest.raises(ValueError, match="z-scored"):
        check_chunk(np.array([-0.5, 0.7, -1.2, 2.0]), source="adata.X")


def test_sample_rows_is_bounded_and_spread():
    matrix = sp.csr_matrix(np.arange(10_000, dtype=np.float32)[:, None] + 1)
    sample = sample_rows(matrix, max_cells=100)
    assert sample.shape == (100, 1)
    values = sample.toarray().ravel()
    assert values.min() == 1 and values.max() == 10_000  # first and last blocks included


def test_the_values_returned_beside_the_tokens_are_what_the_tokens_truncate():
    rng = np.random.default_rng(7)
    counts = rng.poisson(rng.gamma(0.5, 4.0, size=(30, 25))).astype(np.float32)
    counts[3] = 0  # a cell without counts
    tokens, values = bin_expression(
        sp.csr_matrix(counts), data_to_panel=np.arange(25), num_genes=25, input_kind="counts", return_values=True,
        **CONTRACT,
    )  # fmt: skip
    assert values.dtype == np.float32 and values.shape == tokens.shape
    dense = values.toarray()
    # scanpy's normalize_total + log1p in base 2, as the binning contract says.
    expected = np.log1p(counts / np.where(counts.sum(1) > 0, counts.sum(1), 1)[:, None] * 1e4) / np.log(2)
    np.testing.assert_allclose(dense, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tokens.toarray(), np.minimum(dense, CONTRACT["max_bin"]).astype(np.uint8))
    # Asking for the values changes no token.
    np.testing.assert_array_equal(tokens.toarray(), encode(counts, kind="counts"))
