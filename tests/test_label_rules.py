"""The one label rule (tokenization.label_rules): missing labels in every spelling, spellings of one label that
differ by whitespace or case, and the natural order of the classes."""

import logging

import numpy as np
import pandas as pd
import pytest

from tokenization.label_rules import MISSING_LABEL_TEXTS, read_cell_labels

WHERE = ".obs['cell_type'] of the test cells"
PLACEHOLDERS = ["", " ", "nan", "NaN", "None", "none", "<NA>", "NA", "N/A", "null", " nan "]


@pytest.mark.parametrize("missing", [np.nan, None, pd.NA, *PLACEHOLDERS])
@pytest.mark.parametrize("categorical", [False, True])
def test_every_spelling_of_a_missing_label_is_refused_with_its_count(missing, categorical):
    values = pd.Series(["B", "T", missing, "T", missing], dtype=object)
    if categorical:
        values = values.astype("category")
    with pytest.raises(ValueError, match=r"2 of 5 cells have no label") as error:
        read_cell_labels(values, where=WHERE)
    assert "drop_missing_labels=True" in str(error.value)


def test_missing_labels_are_dropped_when_asked_and_never_become_a_class(caplog):
    values = pd.Series(["B", "nan", "T", None, "None", "T"])
    with caplog.at_level(logging.WARNING, logger="tokenization.label_rules"):
        result = read_cell_labels(values, where=WHERE, drop_missing_labels=True)
    assert result.keep.tolist() == [True, False, True, False, False, True]
    assert result.labels.tolist() == ["B", "T", "T"] and result.class_names == ["B", "T"]
    assert "Leaving out 3 cells" in caplog.text


def test_a_column_without_any_label_is_refused_even_when_dropping():
    with pytest.raises(ValueError, match="No cell has a label"):
        read_cell_labels(pd.Series(["nan", None]), where=WHERE, drop_missing_labels=True)


@pytest.mark.parametrize("variant", ["T cell ", " T cell", "t cell", "T  cell", "T\tcell", "T CELL"])
def test_spellings_that_differ_by_whitespace_or_case_are_refused_with_the_group(variant):
    values = pd.Series(["T cell", "T cell", variant, "B cell"])
    with pytest.raises(ValueError, match="differ only by whitespace or case") as error:
        read_cell_labels(values, where=WHERE)
    assert repr(variant) in str(error.value) and "'T cell' (2 cells)" in str(error.value)
    assert "'B cell'" not in str(error.value)


def test_spellings_merge_into_the_most_frequent_when_asked():
    values = pd.Series(["T cell", "T cell ", "t cell", "T cell", "B cell"]).astype("category")
    result = read_cell_labels(values, where=WHERE, merge_label_variants=True)
    assert result.labels.tolist() == ["T cell", "T cell", "T cell", "T cell", "B cell"]
    assert result.class_names == ["B cell", "T cell"]  # category order, merged spellings gone


def test_classes_are_in_natural_order():
    assert read_cell_labels(pd.Series([10, 2, 2, 1]), where=WHERE).class_names == ["1", "2", "10"]
    categorical = pd.Categorical(["T", "B", "T"], categories=["T", "NK", "B"])
    assert read_cell_labels(pd.Series(categorical), where=WHERE).class_names == ["T", "B"]


def test_the_placeholder_texts_are_the_documented_ones():
    assert {"", "nan", "none", "<na>", "na", "n/a", "null"} <= MISSING_LABEL_TEXTS
    assert read_cell_labels(pd.Series(["NaNa", "Nano", "B"]), where=WHERE).class_names == ["B", "NaNa", "Nano"]
