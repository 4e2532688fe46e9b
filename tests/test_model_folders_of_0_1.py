"""A model folder saved by scbert 0.1 (tests/fixtures/saved_0_1) loads and annotates as 0.1 did: with the package,
through `scbert annotate`, and through the pipeline as the remote code saved in the folder."""

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import modeling_scbert as scbert
from modeling_scbert.cli import main as cli_main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "saved_0_1"


@pytest.fixture()
def saved(tmp_path):
    """A copy of the fixture, so that no run can change it."""
    shutil.copytree(FIXTURE, tmp_path / "saved_0_1")
    return tmp_path / "saved_0_1"


def _expected(saved):
    return json.loads((saved / "expected_annotation.json").read_text())


def test_annotate_gives_what_0_1_gave(saved):
    expected = _expected(saved)
    cells = ad.read_h5ad(saved / "cells.h5ad")
    out = scbert.annotate(
        cells,
        str(saved / "model"),
        unassigned_threshold=expected["unassigned_threshold"],
        return_probabilities=True,
        copy=True,
    )
    assert out.obs["scbert_cell_type"].astype(str).tolist() == expected["cell_type"]
    np.testing.assert_allclose(out.obs["scbert_confidence"], expected["confidence"], atol=1e-6)
    np.testing.assert_allclose(out.obsm["scbert_probabilities"], expected["probabilities"], atol=1e-6)
    assert len(set(expected["cell_type"])) >= 2  # the fixture is not a constant answer


def test_the_command_line_annotates_the_0_1_folder(saved, tmp_path):
    expected = _expected(saved)
    output = tmp_path / "annotated.h5ad"
    argv = ["annotate", "--model", str(saved / "model"), "--input", str(saved / "cells.h5ad"), "--output", str(output)]
    assert cli_main([*argv, "--threshold", str(expected["unassigned_threshold"])]) == 0
    assert ad.read_h5ad(output).obs["scbert_cell_type"].astype(str).tolist() == expected["cell_type"]


def test_the_pipeline_saved_in_the_0_1_folder_runs_as_remote_code(saved):
    from transformers import pipeline

    expected = _expected(saved)
    annotator = pipeline("cell-type-annotation", model=str(saved / "model"), trust_remote_code=True)
    assert type(annotator).__module__.startswith("transformers_modules")  # the folder's own 0.1 code, not ours
    results = annotator(str(saved / "cells.h5ad"), unassigned_threshold=expected["unassigned_threshold"])
    assert [r["label"] for r in results] == expected["cell_type"]
    np.testing.assert_allclose([r["score"] for r in results], expected["confidence"], atol=1e-6)


def test_the_0_1_folder_annotates_without_a_novelty_score_and_refuses_novel_types(saved):
    cells = ad.read_h5ad(saved / "cells.h5ad")
    out = scbert.annotate(cells, str(saved / "model"), copy=True)
    assert "scbert_novelty" not in out.obs.columns  # absent, never made up
    with pytest.raises(ValueError, match="has none"):
        scbert.annotate(cells, str(saved / "model"), novel_types=True, copy=True)
