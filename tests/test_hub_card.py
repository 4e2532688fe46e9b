"""Label text in the model card is data, not Markdown or template: every spelling renders as written, keeps the tables'
columns, and never trips the placeholder check, which still catches the template's own placeholders."""

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from test_hub import make_annotator
from transformers import TrainingArguments

from modeling_scbert.hub.card import markdown_text, validate_model_card, write_model_card
from modeling_scbert.hub.card_data import ModelCardError

# Labels as atlases and annotators write them: hierarchies, to-do names, placeholders, HTML, Markdown, a newline.
HOSTILE = ["lymphoid|T cell|CD4 naive", "TBD", "Unknown <QC fail>", "None", "NK *bright* [CD56]", "bad\n# heading"]


def _table(card: str, heading: str) -> list[list[str]]:
    """The cells of the first table under ``## heading``, split on unescaped pipes (as a Markdown renderer does)."""
    lines = card.splitlines()
    rows = []
    for line in lines[lines.index(f"## {heading}") + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            break
    return rows


def _unescape(cell: str) -> str:
    return re.sub(r"\\(.)", r"\1", cell).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@pytest.mark.parametrize("label", HOSTILE)
def test_markdown_text_is_one_literal_line_that_reads_back_as_the_label(label):
    text = markdown_text(label)
    assert "\n" not in text and not re.search(r"(?<!\\)[|<>]", text)
    assert _unescape(text) == " ".join(label.split())


def test_a_card_over_hostile_labels_keeps_its_tables_and_shows_each_label(tmp_path):
    labels = HOSTILE[:3]
    folder = make_annotator(
        tmp_path / "model", id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)}
    )
    card = write_model_card(folder, {"license": "apache-2.0"}).read_text()
    rows = _table(card, "Labels")
    assert {len(row) for row in rows} == {3}  # header, rule and every label row: three columns each
    assert [_unescape(row[1]) for row in rows[2:]] == labels
    validate_model_card(card, folder)  # the folder's own check passes too


def test_a_newline_in_a_label_cannot_add_a_heading(tmp_path):
    labels = ["B cell", "bad\n# heading", "T cell"]
    folder = make_annotator(
        tmp_path / "model", id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)}
    )
    card = write_model_card(folder, {"license": "apache-2.0"}).read_text()
    assert "# heading" not in [line.strip() for line in card.splitlines()]


def test_the_template_s_own_placeholders_are_still_caught_beside_hostile_labels(tmp_path):
    labels = ["TBD", "None", "T cell"]
    folder = make_annotator(
        tmp_path / "model", id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)}
    )
    card = write_model_card(folder, {"license": "apache-2.0"}).read_text()
    with pytest.raises(ModelCardError, match="to-do"):
        validate_model_card(card.replace("## Labels", "## Labels\n\nTODO: describe\n"), folder)
    template = tmp_path / "todo.md.j2"
    template.write_text("# {{ model_name | text }}\n\nTODO describe the labels\n")
    with pytest.raises(ModelCardError, match="to-do"):
        write_model_card(folder, {"license": "apache-2.0"}, template=template)


def test_finetune_with_hierarchical_and_placeholder_like_labels_writes_its_card(tmp_path):
    from modeling_scbert import finetune

    rng = np.random.default_rng(0)
    genes = [f"GENE{j}" for j in range(30)]
    labels = np.array(["myeloid|monocyte|CD14+", "lymphoid|T cell|CD4 naive", "TBD", "Unknown <QC fail>"])
    cells = ad.AnnData(
        sp.csr_matrix(rng.poisson(3.0, size=(48, 30)).astype(np.float32)),
        obs=pd.DataFrame({"cell_type": labels[np.arange(48) % 4]}, index=[f"c{i}" for i in range(48)]),
        var=pd.DataFrame(index=genes),
    )
    args = TrainingArguments(
        str(tmp_path / "model"),
        num_train_epochs=1,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        warmup_steps=0.1,
    )
    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8}
    finetune(
        cells,
        label_key="cell_type",
        training_args=args,
        config_overrides={**tiny, "intermediate_size": 32, "num_random_features": 8, "classifier_hidden_sizes": [16]},
        eval_fraction=0.25,
        card_facts={"license": "cc-by-4.0"},
        encode_kwargs={"cache_dir": str(tmp_path / "cache")},
    )
    card = (tmp_path / "model" / "README.md").read_text()
    assert {len(row) for row in _table(card, "Labels")} == {3}
    assert sorted(_unescape(row[1]) for row in _table(card, "Labels")[2:]) == sorted(labels)


@pytest.mark.parametrize(
    "novelty",
    [
        {"calibration_cells": 12, "threshold": 0.95, "held_out_flagged": 0.0},  # a run too small for the rest
        {
            "calibration_cells": 2500,
            "threshold": 0.95,
            "held_out_flagged": 0.048,
            "left_out_auroc": {"TBD": 0.91, "None": 0.87},
            "left_out_auroc_mean": 0.89,
            "left_out_auroc_min": 0.87,
            "expected_calibration_error": 0.031,
            "coverage_accuracy": {
                "novelty": [[1.0, 0.9], [0.5, 0.97]],
                "one_minus_max_probability": [[1.0, 0.9], [0.5, 0.99]],
            },
        },
    ],
    ids=["few facts", "every fact"],
)
def test_the_novel_types_section_shows_the_facts_it_has_and_nothing_it_lacks(tmp_path, novelty):
    labels = ["TBD", "None", "B cell"]  # label text that looks like a placeholder is still shown as written
    folder = make_annotator(
        tmp_path / "model", id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)}
    )
    card = write_model_card(folder, {"license": "apache-2.0", "novelty": novelty}).read_text()
    assert "## Novel cell types" in card
    assert f"{novelty['calibration_cells']:,} held-out reference cells" in card
    assert ("Expected calibration error" in card) == ("expected_calibration_error" in novelty)
    if "left_out_auroc" in novelty:
        assert _table(card, "Novel cell types")[2:] == [["TBD", "0.910"], ["None", "0.870"]]
        assert "| 50% | 0.970 | 0.990 |" in card
    validate_model_card(card, folder)


def test_a_card_without_a_novelty_detector_has_no_novel_types_section(tmp_path):
    card = write_model_card(make_annotator(tmp_path / "model"), {"license": "apache-2.0"}).read_text()
    assert "Novel cell types" not in card


def test_the_card_says_when_a_class_profile_is_the_mean_of_very_few_cells(tmp_path):
    novelty = {"calibration_cells": 40, "threshold": 0.95, "held_out_flagged": 0.05}
    folder = make_annotator(tmp_path / "model")
    few = write_model_card(folder, {"license": "mit", "novelty": {**novelty, "profile_cells": {"a": 2, "b": 90}}})
    assert "(2 cells in the smallest)" in few.read_text()
    many = write_model_card(folder, {"license": "mit", "novelty": {**novelty, "profile_cells": {"a": 20, "b": 90}}})
    assert "in the smallest" not in many.read_text()
