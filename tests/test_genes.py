"""Gene identifier alignment: versions, identifier types, duplicates, synonym tables, the overlap report."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tokenization.genes import (
    SynonymTable,
    align_genes,
    detect_identifier_type,
    read_gene_list,
    strip_ensembl_version,
)


def test_strip_ensembl_version():
    assert strip_ensembl_version(
        ["ENSG00000141510.17", "ENSMUSG00000059552.9", "TP53", "ENSG00000182378.14_PAR_Y"]
    ) == [
        "ENSG00000141510",
        "ENSMUSG00000059552",
        "TP53",
        "ENSG00000182378",
    ]
    # a symbol with a dot is not a version
    assert strip_ensembl_version(["RP11-34P13.7"]) == ["RP11-34P13.7"]


def test_detect_identifier_type():
    assert detect_identifier_type(["TP53", "CD3E"]) == "symbol"
    assert detect_identifier_type(["ENSG00000141510.17", "ENSMUSG00000059552"]) == "ensembl"
    assert detect_identifier_type(["ENSG00000141510", "TP53"]) == "mixed"


def test_exact_alignment_map_and_report():
    alignment = align_genes(["A", "B", "C", "D"], ["C", "X", "A", "B"])
    np.testing.assert_array_equal(alignment.data_to_panel, [2, -1, 0, 1])
    report = alignment.report
    assert (report.matched, report.missing, report.extra, report.overlap) == (3, ["D"], ["X"], 0.75)
    assert "3 of 4 panel genes found" in report.summary()


def test_duplicates_map_to_one_panel_gene_to_be_summed():
    # On purpose: every copy of a duplicated name maps to the panel gene (their values are
    # summed), so an expressed copy is never hidden behind an empty first one.
    alignment = align_genes(["A", "B"], ["A", "B", "A", "ENSG00000000001.1", "ENSG00000000001.2"])
    np.testing.assert_array_equal(alignment.data_to_panel, [0, 1, 0, -1, -1])
    assert alignment.merges_columns
    assert alignment.report.duplicates == ["A", "ENSG00000000001"]
    assert alignment.report.extra == ["ENSG00000000001"]


def test_synonyms_fill_gaps_but_never_steal_an_exact_match():
    table = SynonymTable()
    table.add("NEW1", previous=["OLD1"])
    table.add("B", aliases=["ALIAS_B"])
    # panel has NEW1 and B; data has OLD1 (previous symbol of NEW1), B exactly, and ALIAS_B (alias of B)
    alignment = align_genes(["NEW1", "B"], ["ALIAS_B", "OLD1", "B"], synonyms=table)
    np.testing.assert_array_equal(alignment.data_to_panel, [-1, 0, 1])
    assert alignment.report.matched_by_synonym == 1
    # and a panel name that is an old symbol matches the data's current symbol
    alignment = align_genes(["OLD1"], ["NEW1"], synonyms=table)
    np.testing.assert_array_equal(alignment.data_to_panel, [0])


def test_ambiguous_alias_is_not_used():
    table = SynonymTable()
    table.add("GENE1", aliases=["SHARED"])
    table.add("GENE2", aliases=["SHARED"])
    assert table.canonical("SHARED") is None
    assert align_genes(["GENE1"], ["SHARED"], synonyms=table).report.matched == 0


def test_hgnc_export(tmp_path):
    path = tmp_path / "hgnc_complete_set.txt.gz"
    text = (
        "hgnc_id\tsymbol\tname\talias_symbol\tprev_symbol\tensembl_gene_id\n"
        'HGNC:11998\tTP53\ttumor protein p53\t"P53|LFS1"\t\tENSG00000141510\n'
        "HGNC:1\tSEPTIN1\tseptin 1\t\tSEPT1\tENSG00000180096\n"
    )
    with gzip.open(path, "wt") as handle:
        handle.write(text)
    table = SynonymTable.from_file(path)
    assert table.canonical("LFS1") == "TP53"
    assert table.canonical("SEPT1") == "SEPTIN1"
    assert table.canonical("ENSG00000141510") == "TP53"
    assert table.canonical("UNKNOWN") is None


def test_ncbi_gene_info(tmp_path):
    path = tmp_path / "Homo_sapiens.gene_info"
    path.write_text(
        "#tax_id\tGeneID\tSymbol\tLocusTag\tSynonyms\tdbXrefs\tchromosome\n"
        "9606\t7157\tTP53\t-\tBCC7|LFS1|P53\tMIM:191170|HGNC:HGNC:11998|Ensembl:ENSG00000141510\t17\n"
        "9606\t1\tA1BG\t-\tA1B|ABG\t-\t19\n"
    )
    table = SynonymTable.from_file(path)
    assert table.canonical("BCC7") == "TP53"
    assert table.canonical("ENSG00000141510") == "TP53"
    assert table.canonical("ABG") == "A1BG"


def test_two_column_pairs(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("alias\tsymbol\nOLD\tNEW\nENSG00000000003.15\tTSPAN6\n")
    table = SynonymTable.from_file(path)
    assert table.canonical("OLD") == "NEW" and table.canonical("ENSG00000000003") == "TSPAN6"


def test_unrecognised_synonym_file(tmp_path):
    path = tmp_path / "table.tsv"
    path.write_text("a\tb\tc\n1\t2\t3\n")
    with pytest.raises(ValueError, match="HGNC"):
        SynonymTable.from_file(path)
    with pytest.raises(FileNotFoundError):
        SynonymTable.from_file(tmp_path / "absent.tsv")


def test_read_gene_list(tmp_path):
    path = tmp_path / "genes.txt"
    path.write_text("# panel\nA\n\nB \nC\n")
    assert read_gene_list(path) == ["A", "B", "C"]


@pytest.mark.parametrize("missing", [np.nan, None, "nan", "", "None", "<NA>"])
def test_genes_without_an_identifier_are_dropped_with_their_count_never_merged(missing, caplog):
    import logging

    import anndata as ad
    import pandas as pd

    from tokenization import ScBertTokenizer

    tokenizer = ScBertTokenizer(["A", "B", "C", "nan", "None"])
    var = pd.DataFrame(
        {"symbol": ["A", missing, "B", missing, missing]}, index=[f"g{i}" for i in range(5)], dtype=object
    )
    cells = ad.AnnData(np.arange(15, dtype=np.float32).reshape(3, 5) + 1, var=var)
    with caplog.at_level(logging.WARNING, logger="tokenization.encoding"):
        ids = tokenizer(cells, gene_key="symbol", min_gene_overlap=0.1)["input_ids"]
    report = tokenizer.align(cells, gene_key="symbol")
    assert report.unnamed == 3 and report.matched == 2 and report.duplicates == []
    assert (ids[:, 3:5] == 0).all()  # the panel's 'nan' and 'None' genes get nothing from the unnamed columns
    assert "3 of 5 data genes have no identifier" in caplog.text


def test_the_warning_counts_the_columns_of_duplicated_names(caplog):
    import logging

    import anndata as ad
    import pandas as pd

    from tokenization import ScBertTokenizer

    var = pd.DataFrame(index=["A", "B", "B", "B", "C", "C"])
    cells = ad.AnnData(np.ones((2, 6), dtype=np.float32), var=var)
    with caplog.at_level(logging.WARNING, logger="tokenization.encoding"):
        ScBertTokenizer(["A", "B", "C"])(cells)
    assert "2 gene names occur more than once and their 5 columns are summed" in caplog.text
