"""finetune fits and saves the novelty detector; annotate, `scbert annotate`, the pipeline (with the package and as
the folder's remote code) read it back, score every cell alike, and call novel types; the card reports it."""

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from transformers import TrainingArguments

import modeling_scbert as scbert
from modeling_scbert.cli import main as cli_main
from modeling_scbert.training.novelty import auroc, coverage_accuracy, expected_calibration_error
from tokenization.novelty import NOVELTY_FILE, NoveltyDetector

GENES = [f"G{i}" for i in range(40)]
TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, head_dim=8, intermediate_size=32)


def _counts(rng, profile, n, prefix):
    counts = rng.poisson(profile, size=(n, len(profile))).astype(np.float32)
    return counts, [f"{prefix}-{i}" for i in range(n)]


def _cells(seed=0, *, with_new=False, n=40):
    """Three known types with their own markers; optionally a new type that looks like the first one but for its
    own markers and the first type's missing."""
    base = np.random.default_rng(12345).uniform(20.0, 60.0, len(GENES))  # the same types in every sample
    rng = np.random.default_rng(seed)
    profiles = {}
    for k, name in enumerate(["alpha", "beta", "gamma"]):
        profile = base.copy()
        profile[8 * k : 8 * k + 4] += 300.0
        profiles[name] = profile
    if with_new:
        new = profiles["alpha"].copy()
        new[30:36] += 300.0
        new[0:4] = 2.0
        profiles["new"] = new
    blocks, names, labels = [], [], []
    for name, profile in profiles.items():
        counts, ids = _counts(rng, profile, n, f"{name}{seed}")
        blocks.append(counts)
        names += ids
        labels += [name] * n
    return ad.AnnData(
        sp.csr_matrix(np.concatenate(blocks)),
        obs=pd.DataFrame({"cell_type": labels}, index=names),
        var=pd.DataFrame(index=GENES),
    )


@pytest.fixture(scope="module")
def annotator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("novelty") / "model"
    scbert.finetune(
        _cells(0),
        label_key="cell_type",
        eval_fraction=0.25,
        training_args=TrainingArguments(
            str(folder), num_train_epochs=2, learning_rate=3e-3, report_to=[], use_cpu=True, save_strategy="no"
        ),
        config_overrides=TINY,
        card_facts={"license": "mit"},
    )
    return folder


def test_finetune_saves_a_calibrated_detector_beside_the_model(annotator):
    detector = NoveltyDetector.load(annotator)
    assert detector is not None and detector.calibrated
    assert detector.class_names == ["alpha", "beta", "gamma"]
    assert detector.calibration_cells == 30  # a quarter of each class of 40 held out
    assert detector.class_counts.tolist() == [30, 30, 30]  # the profiles are the other cells'
    assert detector.facts["held_out_flagged"] <= 0.1


def test_the_card_reports_the_detector(annotator):
    card = (annotator / "README.md").read_text()
    assert "## Novel cell types" in card
    assert "30 held-out reference cells" in card
    assert "Expected calibration error" in card
    assert "| alpha |" in card  # the leave-one-type-out table


def test_annotate_scores_every_cell_and_ranks_the_new_type_first(annotator):
    query = _cells(1, with_new=True)
    out = scbert.annotate(query, str(annotator), copy=True)
    novelty = out.obs["scbert_novelty"].to_numpy()
    assert out.obs["scbert_novelty"].dtype == np.float32
    is_new = (query.obs["cell_type"] == "new").to_numpy()
    assert auroc(is_new, novelty) > 0.95
    # Without novel_types, nothing is called on novelty: the labels are the model's classes.
    assert "Unassigned" not in set(out.obs["scbert_cell_type"].astype(str))


def test_novel_types_labels_the_new_type_unassigned_with_its_reason(annotator):
    query = _cells(2, with_new=True)
    out = scbert.annotate(query, str(annotator), novel_types=True, copy=True)
    is_new = (query.obs["cell_type"] == "new").to_numpy()
    reasons = out.obs["scbert_unassigned_reason"].astype(object).to_numpy()
    assert (reasons[is_new] == "novel type").mean() > 0.9
    assert (reasons[~is_new] == "novel type").mean() <= 0.1
    assert out.uns["scbert"]["params"]["novelty_threshold"] == 0.95
    # The novel-type call never changes a known cell's label otherwise.
    plain = scbert.annotate(query, str(annotator), copy=True)
    kept = reasons != "novel type"
    assert (out.obs["scbert_cell_type"].astype(str)[kept] == plain.obs["scbert_cell_type"].astype(str)[kept]).all()


def test_the_command_line_calls_novel_types_and_writes_the_novelty_into_the_csv(annotator, tmp_path):
    query = _cells(3, with_new=True)
    query.write_h5ad(tmp_path / "query.h5ad")
    argv = [
        "annotate", "--model", str(annotator), "--input", str(tmp_path / "query.h5ad"),
        "--output", str(tmp_path / "out.h5ad"), "--csv", str(tmp_path / "out.csv"), "--novel-types",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    table = pd.read_csv(tmp_path / "out.csv", index_col=0)
    written = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_allclose(table["scbert_novelty"], written.obs["scbert_novelty"], rtol=1e-6)
    python = scbert.annotate(query, str(annotator), novel_types=True, copy=True)
    np.testing.assert_array_equal(written.obs["scbert_novelty"], python.obs["scbert_novelty"])
    assert (written.obs["scbert_cell_type"].astype(str) == python.obs["scbert_cell_type"].astype(str)).all()


@pytest.mark.parametrize("remote_code", [False, True], ids=["package", "remote code"])
def test_the_pipeline_gives_the_same_novelty_and_calls(annotator, remote_code):
    from transformers import pipeline

    query = _cells(4, with_new=True)
    python = scbert.annotate(query, str(annotator), novel_types=True, copy=True)
    if remote_code:
        annotate_cells = pipeline("cell-type-annotation", model=str(annotator), trust_remote_code=True)
        assert type(annotate_cells).__module__.startswith("transformers_modules")
    else:
        from tokenization.pipeline_scbert import ScBertCellTypeAnnotationPipeline

        annotate_cells = pipeline(
            "cell-type-annotation", model=str(annotator), pipeline_class=ScBertCellTypeAnnotationPipeline
        )
    results = annotate_cells(query, novel_types=True)
    np.testing.assert_allclose([r["novelty"] for r in results], python.obs["scbert_novelty"], rtol=1e-6)
    assert [r["label"] for r in results] == python.obs["scbert_cell_type"].astype(str).tolist()


def test_a_model_object_gets_the_detector_of_its_folder(annotator):
    from modeling_scbert import ScBertForSequenceClassification, ScBertTokenizer

    model = ScBertForSequenceClassification.from_pretrained(annotator)
    query = _cells(5, with_new=True)
    by_object = scbert.annotate(query, model, tokenizer=ScBertTokenizer.from_pretrained(annotator), copy=True)
    by_folder = scbert.annotate(query, str(annotator), copy=True)
    np.testing.assert_array_equal(by_object.obs["scbert_novelty"], by_folder.obs["scbert_novelty"])


def test_a_model_without_a_detector_annotates_without_novelty_and_refuses_novel_types(annotator, tmp_path, caplog):
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(annotator, folder)
    (folder / NOVELTY_FILE).unlink()
    query = _cells(6)
    with caplog.at_level(logging.INFO):
        out = scbert.annotate(query, str(folder), copy=True)
    assert "scbert_novelty" not in out.obs.columns
    assert "has no novelty detector" in caplog.text
    with pytest.raises(ValueError, match="novel_types=True needs the model's novelty detector"):
        scbert.annotate(query, str(folder), novel_types=True, copy=True)


def test_a_detector_of_another_model_is_refused(annotator, tmp_path):
    import shutil

    folder = tmp_path / "swapped"
    shutil.copytree(annotator, folder)
    detector = NoveltyDetector.load(folder)
    detector.class_names = ["alpha", "beta", "delta"]
    detector.save(folder)
    with pytest.raises(ValueError, match="belongs to another model"):
        scbert.annotate(_cells(7), str(folder), copy=True)


def test_finetune_with_evaluation_cells_calibrates_on_their_known_types(tmp_path):
    reference, evaluation = _cells(8), _cells(9, with_new=True, n=12)
    scbert.finetune(
        reference,
        label_key="cell_type",
        eval_data=evaluation,
        drop_unseen_labels=True,
        training_args=TrainingArguments(
            str(tmp_path / "m"), num_train_epochs=1, report_to=[], use_cpu=True, save_strategy="no"
        ),
        config_overrides=TINY,
    )
    detector = NoveltyDetector.load(tmp_path / "m")
    assert detector.class_counts.tolist() == [40, 40, 40]  # every training cell makes the profiles
    assert detector.calibration_cells == 36  # the evaluation cells of known types, not the 12 new ones


def test_finetune_without_held_out_cells_holds_out_its_own_for_the_detector(tmp_path):
    scbert.finetune(
        _cells(10),
        label_key="cell_type",
        training_args=TrainingArguments(
            str(tmp_path / "m"), num_train_epochs=1, report_to=[], use_cpu=True, save_strategy="no"
        ),
        config_overrides=TINY,
    )
    detector = NoveltyDetector.load(tmp_path / "m")
    assert detector.calibration_cells == 12 and detector.class_counts.tolist() == [36, 36, 36]


def test_the_card_facts_are_computed_as_their_definitions_say():
    # Expected calibration error: one bin at confidence 0.8 with accuracy 0.5.
    probabilities = np.array([[0.8, 0.2]] * 4)
    assert expected_calibration_error(probabilities, np.array([0, 0, 1, 1])) == pytest.approx(0.3)
    # AUROC: perfect, reversed, ties count half.
    assert auroc(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(np.array([0, 0, 1, 1], bool), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auroc(np.array([0, 1], bool), np.array([0.5, 0.5])) == 0.5
    # Coverage-accuracy: the least novel half holds the correct cells.
    rows = coverage_accuracy(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0], bool), coverages=(1.0, 0.5))
    assert rows == [[1.0, 0.5], [0.5, 1.0]]


def test_the_detector_file_is_among_the_files_a_push_uploads(annotator):
    from modeling_scbert.hub.model_files import plan_upload

    assert NOVELTY_FILE in plan_upload(annotator).files
    json.loads((annotator / "config.json").read_text())  # the folder is a whole model folder
