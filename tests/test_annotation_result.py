"""The result of one annotation (modeling_scbert/annotation/result.py): computed once by predict_cell_types, then
written into AnnData by annotate and into the CSV by `scbert annotate`, both from the same object."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from modeling_scbert.annotation.annotate import annotate, predict_cell_types
from modeling_scbert.annotation.result import AnnotationResult
from modeling_scbert.cli import main as cli_main
from tests.test_annotation_annotate import CLASSES, make_adata, save_annotator
from tokenization.cell_calls import UNASSIGNED, call_cells


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_annotator(tmp_path_factory.mktemp("annotator"))


def hand_made(*, unassigned_threshold=None, detected=(5, 5, 5, 5), **fields) -> AnnotationResult:
    probabilities = np.float32([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
    calls = call_cells(
        probabilities,
        CLASSES,
        detected_genes=np.array(detected),
        min_genes=2,
        unassigned_threshold=unassigned_threshold,
    )
    return AnnotationResult(
        obs_names=pd.Index(["a", "b", "c", "d"]),
        class_names=CLASSES,
        calls=calls,
        params={"model": "hand-made"},
        unassigned_threshold=unassigned_threshold,
        **fields,
    )


def test_the_label_categories_hold_unassigned_only_when_a_cell_can_be():
    assert hand_made().categories == CLASSES
    assert hand_made(unassigned_threshold=0.1).categories == [*CLASSES, UNASSIGNED]  # none below it, still a category
    low_signal = hand_made(detected=(5, 0, 5, 5))
    assert low_signal.categories == [*CLASSES, UNASSIGNED]
    assert low_signal.summary() == "annotated 4 cells: NK 2, B 1, Unassigned 1"


def test_write_fills_the_documented_slots_with_their_dtypes():
    clusters = np.array(["10", "2", "2", "10"], dtype=object)
    result = hand_made(
        unassigned_threshold=0.5,
        probabilities=np.full((4, 3), 1 / 3, dtype=np.float32),
        majority_voting=np.array(["B", "T", "T", "B"], dtype=object),
        over_clustering=clusters,
    )
    adata = ad.AnnData(obs=pd.DataFrame(index=["a", "b", "c", "d"]))
    result.write(adata, key_added="run")
    assert list(adata.obs.columns) == [
        "run_cell_type",
        "run_confidence",
        "run_unassigned_reason",
        "run_majority_voting",
        "run_over_clustering",
    ]
    assert list(adata.obs["run_cell_type"].astype(str)) == ["B", "T", UNASSIGNED, "NK"]
    assert list(adata.obs["run_cell_type"].cat.categories) == [*CLASSES, UNASSIGNED]
    assert adata.obs["run_confidence"].dtype == np.float32
    assert list(adata.obs["run_unassigned_reason"].cat.categories) == [
        "non-finite probabilities",
        "no panel counts",
        "few panel genes",
        "novel type",
        "low confidence",
    ]
    assert adata.obs["run_unassigned_reason"].isna().tolist() == [True, True, False, True]
    assert list(adata.obs["run_majority_voting"].cat.categories) == [*CLASSES, UNASSIGNED]
    assert list(adata.obs["run_over_clustering"].cat.categories) == ["2", "10"]  # as numbers
    assert adata.obsm["run_probabilities"].dtype == np.float32
    assert list(adata.uns["run"]["class_names"]) == CLASSES and adata.uns["run"]["params"] == {"model": "hand-made"}
    assert result.slots("run") == {
        "obs_columns": list(adata.obs.columns),
        "obsm_keys": ["run_probabilities"],
        "uns_keys": ["run"],
    }
    with pytest.raises(ValueError, match="for 4 cells; the AnnData has 3"):
        result.write(adata[:3].copy())


def test_the_table_is_the_obs_columns_then_extra_columns_then_the_probabilities():
    result = hand_made(probabilities=np.eye(4, 3, dtype=np.float32))
    truth = pd.DataFrame({"truth": ["B", "B", "T", "NK"]}, index=["x", "y", "z", "w"])  # another index: row for row
    table = result.to_table(key_added="k", extra=truth)
    assert table.index.name == "cell_id" and list(table.index) == ["a", "b", "c", "d"]
    assert list(table.columns) == [
        "k_cell_type",
        "k_confidence",
        "k_unassigned_reason",
        "truth",
        "probability:B",
        "probability:T",
        "probability:NK",
    ]
    assert list(table["truth"]) == ["B", "B", "T", "NK"]
    np.testing.assert_array_equal(table[["probability:B", "probability:T", "probability:NK"]], np.eye(4, 3))
    assert list(hand_made().to_table().columns) == [
        "scbert_cell_type",
        "scbert_confidence",
        "scbert_unassigned_reason",
    ]
    with pytest.raises(ValueError, match="extra has 2 rows; the result has 4 cells"):
        result.to_table(extra=truth[:2])


def test_annotate_writes_the_result_of_predict_cell_types(model_dir):
    adata = make_adata(30)
    result = predict_cell_types(adata, str(model_dir), unassigned_threshold=0.6, return_probabilities=True)
    assert "scbert_cell_type" not in adata.obs  # the result is computed, not written
    written = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names))
    result.write(written)
    annotated = annotate(adata, str(model_dir), unassigned_threshold=0.6, return_probabilities=True, copy=True)
    for column in result.obs_columns():
        pd.testing.assert_series_equal(written.obs[column], annotated.obs[column])
    np.testing.assert_array_equal(written.obsm["scbert_probabilities"], annotated.obsm["scbert_probabilities"])
    assert written.uns["scbert"]["params"] == annotated.uns["scbert"]["params"]


def test_the_csv_of_scbert_annotate_is_the_results_table(model_dir, tmp_path):
    source, csv = tmp_path / "cells.h5ad", tmp_path / "cells.csv"
    make_adata(25).write_h5ad(source)
    argv = ["annotate", "--model", str(model_dir), "--input", str(source), "--output", str(tmp_path / "out.h5ad")]
    assert cli_main([*argv, "--csv", str(csv), "--threshold", "0.6", "--probabilities", "--label-key", "truth"]) == 0
    adata = ad.read_h5ad(source)
    result = predict_cell_types(adata, str(model_dir), unassigned_threshold=0.6, return_probabilities=True)
    assert csv.read_text() == result.to_table(extra=adata.obs[["truth"]]).to_csv()
