"""Inputs as users really have them (modelled on public bug reports; ../shared/cases/case_01, 02, 03, 05, 06, 15, 16, 17), each with the right value: the
right tokens or labels, or an error that can be acted on, with the input unchanged and no partial file."""

from __future__ import annotations

import contextlib
import io
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from conftest import save_tiny_annotator

from modeling_scbert.annotation.annotate import annotate, embed
from modeling_scbert.cli import main as cli_main
from tokenization import ScBertTokenizer
from tokenization.cell_calls import UNASSIGNED
from tokenization.preprocessing import default_min_genes

MARKERS = [
    "CD3E",
    "CD3D",
    "CD2",
    "CD7",
    "IL7R",
    "CCR7",
    "LEF1",
    "TCF7",
    "CD8A",
    "CD8B",
    "GZMK",
    "GZMB",
    "PRF1",
    "NKG7",
    "GNLY",
    "KLRD1",
    "KLRF1",
    "FCGR3A",
    "MS4A1",
    "CD79A",
    "CD79B",
    "CD19",
    "BANK1",
    "PAX5",
    "LYZ",
    "CD14",
    "S100A8",
    "S100A9",
    "FCN1",
    "VCAN",
    "CST3",
    "LST1",
    "AIF1",
    "FCER1A",
    "CLEC10A",
    "HLA-DRA",
    "HLA-DRB1",
    "CD74",
    "PPBP",
    "PF4",
    "GP9",
    "ITGA2B",
    "HBB",
    "HBA1",
    "MKI67",
    "TOP2A",
    "ACTB",
    "GAPDH",
    "MALAT1",
    "B2M",
    "RPL13",
    "RPS27",
]
GENES = MARKERS + [f"ZNF{i}" for i in range(101, 549)]  # 500 real-looking symbols
CLASSES = ["B cell", "T cell", "NK cell", "Monocyte"]


def make_counts(n_cells: int, genes=GENES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(-1.0, 1.5, size=len(genes))
    size = rng.lognormal(0.0, 0.4, size=(n_cells, 1))
    return rng.poisson(gene_mean[None, :] * size * 3.0).astype(np.float32)


def make_adata(n_cells: int, genes=GENES, seed: int = 0) -> ad.AnnData:
    return ad.AnnData(
        X=sp.csr_matrix(make_counts(n_cells, genes, seed)),
        obs=pd.DataFrame(index=[f"cell_{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=list(genes)),
    )


def save_annotator(path, genes=GENES) -> str:
    return str(save_tiny_annotator(path, genes, CLASSES, initializer_range=0.5))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_annotator(tmp_path_factory.mktemp("human_model"))


def run_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(argv)
    return code, err.getvalue()


def counts_ids(counts: np.ndarray, genes=GENES) -> np.ndarray:
    return ScBertTokenizer(list(genes))(np.array(counts, dtype=np.float32), gene_names=list(genes))["input_ids"]


# ---------------------------------------------------------------- case 01 (regression)
def test_case_01_versioned_ensembl_ids_and_symbols_in_a_var_column(model_dir):
    rng = np.random.default_rng(1)
    ens = [f"ENSG{rng.integers(10**10, 10**11):011d}" for _ in GENES]
    versioned = [f"{e}.{rng.integers(1, 20)}" for e in ens]
    versioned[-1] += "_PAR_Y"
    adata = make_adata(40)
    adata.var_names = versioned
    adata.var["feature_name"] = pd.Categorical(GENES)
    x_before = adata.X.copy()
    with pytest.raises(
        ValueError,
        match=r"adata\.var\['feature_name'\] holds 500 of the panel genes: pass "
        r"gene_key='feature_name'",
    ):
        annotate(adata, model_dir, progress=False)
    assert "scbert_cell_type" not in adata.obs
    annotate(adata, model_dir, gene_key="feature_name", progress=False)
    assert adata.obs["scbert_cell_type"].notna().all()
    plain = adata.copy()
    plain.var_names = ens
    tokenizer = ScBertTokenizer(ens)
    assert tokenizer.align(adata).matched == 500
    np.testing.assert_array_equal(tokenizer(adata)["input_ids"], tokenizer(plain)["input_ids"])
    assert (x_before != adata.X).nnz == 0


# ---------------------------------------------------------------- case 02
def test_case_02_mouse_cased_symbols_are_refused_as_a_species_mismatch_whatever_min_gene_overlap(model_dir):
    mouse = [g if g.startswith("HLA") else g[0] + g[1:].lower() for g in GENES]
    adata = make_adata(40, genes=mouse)
    for options in ({}, {"min_gene_overlap": 0.0}):
        with pytest.raises(ValueError) as error:
            annotate(adata, model_dir, progress=False, **options)
        message = str(error.value)
        assert "500 of 500 panel genes match when case is ignored" in message
        assert "species" in message and "'Cd3e' for 'CD3E'" in message
        assert "scbert_cell_type" not in adata.obs
    with pytest.raises(ValueError, match="case is ignored"):
        ScBertTokenizer(GENES)(adata, min_gene_overlap=0.0)
    # the advice works: corrected names in a .var column
    adata.var["human_symbol"] = [g.upper() for g in mouse]
    annotate(adata, model_dir, gene_key="human_symbol", progress=False)
    assert adata.obs["scbert_cell_type"].notna().all()


# ---------------------------------------------------------------- case 03
@pytest.mark.parametrize(
    ("transform", "kind"),
    [(np.log1p, "log1p"), (lambda x: np.log2(1 + x), "log1p_base2"), (lambda x: np.log10(1 + x), "log1p_base10")],
)
def test_case_03_log2_and_log10_of_normalised_values_give_the_counts_tokens(transform, kind, caplog):
    counts = make_counts(60)
    cp10k = counts / counts.sum(1, keepdims=True) * 1e4
    adata = ad.AnnData(sp.csr_matrix(transform(cp10k).astype(np.float32)), var=pd.DataFrame(index=GENES))
    before = adata.X.copy()
    with caplog.at_level(logging.INFO, logger="tokenization"):
        ids = ScBertTokenizer(GENES)(adata)["input_ids"]
    np.testing.assert_array_equal(ids, counts_ids(counts))
    assert "Detected" in caplog.text and f"(input_kind={kind!r})" in caplog.text
    assert (before != adata.X).nnz == 0


# ---------------------------------------------------------------- case 05
def split_entries(matrix):
    coo = sp.coo_matrix(matrix)
    rows, cols, vals = coo.row, coo.col, coo.data
    big = vals >= 2
    half = np.floor(vals[big] / 2)
    rows2, cols2 = np.concatenate([rows, rows[big]]), np.concatenate([cols, cols[big]])
    vals2 = np.concatenate([np.where(big, np.floor(vals / 2), vals), vals[big] - half])
    order = np.lexsort((cols2, rows2))
    indptr = np.searchsorted(rows2[order], np.arange(matrix.shape[0] + 1))
    return sp.csr_matrix((vals2[order].astype(np.float32), cols2[order], indptr), shape=matrix.shape)


def test_case_05_duplicate_entries_in_a_csr_matrix_are_summed_in_memory_and_backed(model_dir, tmp_path):
    canonical = make_adata(60)
    duplicated = ad.AnnData(split_entries(canonical.X), obs=canonical.obs.copy(), var=canonical.var.copy())
    assert not duplicated.X.has_canonical_format
    nnz = duplicated.X.nnz
    tokenizer = ScBertTokenizer(GENES)
    np.testing.assert_array_equal(tokenizer(duplicated)["input_ids"], tokenizer(canonical)["input_ids"])
    path = tmp_path / "noncanonical.h5ad"
    duplicated.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    annotate(backed, model_dir, return_probabilities=True, progress=False)
    annotate(canonical, model_dir, return_probabilities=True, progress=False)
    np.testing.assert_array_equal(backed.obsm["scbert_probabilities"], canonical.obsm["scbert_probabilities"])
    assert not duplicated.X.has_canonical_format and duplicated.X.nnz == nnz  # the user's matrix as it was


# ---------------------------------------------------------------- case 06
def test_case_06_genes_in_raw_are_found_and_use_raw_reads_them(model_dir):
    full = make_adata(60)
    dense = full.X.toarray()
    full.X = sp.csr_matrix(np.log1p(dense / dense.sum(1, keepdims=True) * 1e4).astype(np.float32))
    hvg = full[:, 300:].copy()
    hvg.raw = full
    scaled = hvg.X.toarray()
    hvg.X = np.clip((scaled - scaled.mean(0)) / (scaled.std(0) + 1e-6), -10, 10).astype(np.float32)
    with pytest.raises(ValueError) as error:
        annotate(hvg, model_dir, progress=False)
    message = str(error.value)
    assert "adata.raw holds 500 of the panel genes: pass use_raw=True" in message
    assert "[]" not in message and "e.g.: ." not in message and "missing panel genes, e.g.: CD3E" in message
    annotate(hvg, model_dir, use_raw=True, return_probabilities=True, progress=False)
    reference = hvg.raw.to_adata()
    annotate(reference, model_dir, return_probabilities=True, progress=False)
    np.testing.assert_array_equal(hvg.obsm["scbert_probabilities"], reference.obsm["scbert_probabilities"])
    assert hvg.uns["scbert"]["params"]["use_raw"] is True


# ---------------------------------------------------------------- case 15 and kind 5
def test_case_15_cells_without_panel_counts_are_unassigned_with_the_reason(model_dir, caplog):
    extra = ["MT-CO1", "MT-ND1", "ERCC-00002"]
    counts = np.concatenate([make_counts(45, seed=15), np.zeros((45, len(extra)), np.float32)], axis=1)
    counts[40:45] = 0
    counts[43:45, -3:] = [[120, 80, 5], [60, 40, 2]]
    adata = ad.AnnData(
        sp.csr_matrix(counts),
        obs=pd.DataFrame(index=[f"cell_{i}" for i in range(45)]),
        var=pd.DataFrame(index=GENES + extra),
    )
    with caplog.at_level(logging.WARNING):
        annotate(adata, model_dir, unassigned_threshold=0.5, progress=False)
    assert (adata.obs["scbert_cell_type"].iloc[40:] == UNASSIGNED).all()
    assert (adata.obs["scbert_unassigned_reason"].iloc[40:] == "no panel counts").all()
    reasons = adata.obs["scbert_unassigned_reason"].iloc[:40]
    assert reasons.isin(["low confidence"]).sum() + reasons.isna().sum() == 40
    assert "5 with no panel counts" in caplog.text
    assert "3 of 503 data genes are not in the panel" in caplog.text  # genes lost in alignment, counted


def test_few_panel_genes_are_unassigned_below_min_genes_and_embed_warns(model_dir, caplog):
    adata = make_adata(20, seed=3)
    dense = adata.X.toarray()
    dense[0] = 0
    dense[0, :3] = [4, 1, 2]  # 3 detected panel genes
    adata.X = sp.csr_matrix(dense)
    annotate(adata, model_dir, min_genes=5, progress=False)
    assert adata.obs["scbert_cell_type"].iloc[0] == UNASSIGNED
    assert adata.obs["scbert_unassigned_reason"].iloc[0] == "few panel genes"
    assert adata.obs["scbert_unassigned_reason"].iloc[1:].isna().all()
    assert adata.uns["scbert"]["params"]["min_genes"] == 5
    annotate(adata, model_dir, min_genes=0, progress=False)  # 0: only cells without panel counts
    assert adata.obs["scbert_unassigned_reason"].isna().all()
    with caplog.at_level(logging.WARNING):
        embed(adata, model_dir, min_genes=5, progress=False)
    assert "fewer than min_genes=5 detected panel genes" in caplog.text


def test_default_min_genes_keeps_the_published_200_and_flags_no_pbmc68k_cell():
    assert default_min_genes(16_906) == 200
    raw = sc.datasets.pbmc68k_reduced().raw.to_adata()
    tokenizer = ScBertTokenizer(list(raw.var_names))
    detected = np.concatenate([d for *_, d in tokenizer.iter_encoded(raw, return_detected_genes=True)])
    assert default_min_genes(765) == 10 and (detected < 10).sum() == 0
    assert (detected < 200).sum() > 0  # a flat 200 would drop real cells of this 765-gene panel


# ---------------------------------------------------------------- case 16 (regression)
def test_case_16_nan_and_inf_outside_the_detection_sample_of_a_backed_file(tmp_path):
    genes = GENES[:100]
    adata = make_adata(3000, genes=genes, seed=16)
    lil = adata.X.tolil()
    lil[2500, 3] = np.inf  # outside the 4 sampled blocks of 256 cells, in the second 2,048-cell chunk
    lil[2600, 7] = np.nan
    adata.X = lil.tocsr()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(ValueError, match=r"NaN or infinite values \(e\.g\. inf in the chunk starting at cell 2,048\)"):
        ScBertTokenizer(genes)(ad.read_h5ad(path, backed="r"))
    # Through the command line (a smaller file, so no model runs before the bad chunk): exit 2, no file left.
    small = make_adata(1100, genes=genes, seed=16)
    lil = small.X.tolil()
    lil[270, 3] = np.inf  # between the first two sampled blocks ([0, 256) and [281, 537))
    small.X = lil.tocsr()
    small.write_h5ad(path)
    model = save_annotator(tmp_path / "model", genes=genes)
    out, csv = tmp_path / "annotated.h5ad", tmp_path / "predictions.csv"
    code, err = run_cli(["annotate", "--model", model, "--input", str(path), "--output", str(out), "--csv", str(csv)])
    last = err.strip().splitlines()[-1]
    assert code == 2 and "NaN or infinite" in last
    assert not out.exists() and not csv.exists() and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- case 17
def test_case_17_dense_float16_matrix_in_memory_and_from_a_file(model_dir, tmp_path):
    counts = make_adata(12)
    half = ad.AnnData(counts.X.toarray().astype(np.float16), obs=counts.obs.copy(), var=counts.var.copy())
    tokenizer = ScBertTokenizer(GENES)
    np.testing.assert_array_equal(tokenizer(half)["input_ids"], tokenizer(counts)["input_ids"])
    assert half.X.dtype == np.float16
    path = tmp_path / "float16.h5ad"
    half.write_h5ad(path)
    out = tmp_path / "annotated.h5ad"
    code, err = run_cli(["annotate", "--model", model_dir, "--input", str(path), "--output", str(out)])
    assert code == 0, err
    result = ad.read_h5ad(out)
    annotate(counts, model_dir, progress=False)
    np.testing.assert_array_equal(
        result.obs["scbert_cell_type"].astype(str), counts.obs["scbert_cell_type"].astype(str)
    )
