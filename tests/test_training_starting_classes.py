"""The classes of the model a fine-tuning run starts from are kept, extended or replaced, never reused by shape
(issue 21, kind 1; case 20): an annotator folder, a model object and a checkpoint, with label columns in other
orders; classes that differ refused with both lists, or a new head / extended head on request; damaged starting
weights refused before any cell is encoded (kind 3)."""

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments

from modeling_scbert import ScBertConfig, ScBertForSequenceClassification, annotate
from modeling_scbert.cli import main as cli_main
from modeling_scbert.training.workflows import finetune
from tokenization import ScBertTokenizer
from tokenization.saved_weights import DamagedWeightsError

GENES = [f"GENE{j}" for j in range(16)]
MODEL_ORDER = ["T cell", "B cell", "NK cell", "Monocyte"]  # the annotator's id2label: not sorted
TINY = {
    "num_genes": len(GENES),
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "head_dim": 8,
    "intermediate_size": 32,
    "num_random_features": 8,
    "gene_embedding_type": "learned",
    "classifier_hidden_sizes": [16],
    "initializer_range": 0.5,  # wide enough that the untrained head's outputs differ from class to class
}


def make_cells(n_cells: int, *, seed: int, classes=MODEL_ORDER) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(0.0, 1.0, size=len(GENES))
    counts = rng.poisson(gene_mean * rng.lognormal(0.0, 0.4, size=(n_cells, 1))).astype(np.float32)
    labels = np.array([classes[i % len(classes)] for i in range(n_cells)], dtype=object)
    return ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"cell_type": labels}, index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=GENES),
    )


def save_annotator(path, *, classes=MODEL_ORDER, classifier_type: str = "pooled") -> str:
    torch.manual_seed(0)
    config = ScBertConfig(
        **TINY,
        classifier_type=classifier_type,
        id2label=dict(enumerate(classes)),
        label2id={name: i for i, name in enumerate(classes)},
    )
    ScBertForSequenceClassification(config).save_pretrained(path)
    ScBertTokenizer(GENES).save_pretrained(path)
    return str(path)


def arguments(output_dir, **overrides) -> TrainingArguments:
    defaults = {"max_steps": 1, "learning_rate": 0.0, "per_device_train_batch_size": 8, "report_to": []}
    defaults.update(use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    return TrainingArguments(str(output_dir), **{**defaults, **overrides})


def probabilities(model, query: ad.AnnData) -> pd.DataFrame:
    """The probability of each class, by class name (columns sorted), for every query cell."""
    annotated = query.copy()
    annotate(annotated, model, return_probabilities=True, progress=False)
    names = list(annotated.uns["scbert"]["class_names"])
    return pd.DataFrame(annotated.obsm["scbert_probabilities"], columns=names)[sorted(names)]


LABEL_FORMS = {
    "plain strings": lambda labels: labels.astype(str),
    "categorical in sorted order": lambda labels: pd.Categorical(labels, categories=sorted(MODEL_ORDER)),
    "categorical in reverse order": lambda labels: pd.Categorical(labels, categories=MODEL_ORDER[::-1]),
    "categorical in the model's order": lambda labels: pd.Categorical(labels, categories=MODEL_ORDER),
}


@pytest.mark.parametrize("start", ["folder", "model object", "checkpoint"])
@pytest.mark.parametrize("label_form", list(LABEL_FORMS))
def test_one_step_at_learning_rate_0_changes_no_prediction(tmp_path, start, label_form):
    folder = save_annotator(tmp_path / "published")
    query = make_cells(40, seed=5)
    before = probabilities(folder, query)
    cells = make_cells(24, seed=4)
    cells.obs["cell_type"] = LABEL_FORMS[label_form](cells.obs["cell_type"].to_numpy())
    run = {"label_key": "cell_type", "encode_kwargs": {"cache_dir": str(tmp_path / "cache")}}
    output_dir = tmp_path / "continued"
    if start == "folder":
        finetune(cells, model=folder, training_args=arguments(output_dir), **run)
    elif start == "model object":
        model = ScBertForSequenceClassification.from_pretrained(folder)
        finetune(cells, model=model, training_args=arguments(output_dir), **run)
    else:
        # A first run from the folder leaves checkpoint-1 (classes in the model's order); the second starts from a
        # config without classes, so only the checkpoint knows their order.
        finetune(cells, model=folder, training_args=arguments(output_dir, save_strategy="steps", save_steps=1), **run)
        config = ScBertConfig.from_pretrained(folder)
        config.id2label, config.label2id = {0: "LABEL_0", 1: "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
        finetune(
            cells,
            model=config,
            tokenizer=folder,
            training_args=arguments(output_dir, max_steps=2),
            resume_from_checkpoint=True,
            **run,
        )
    saved = json.loads((output_dir / "config.json").read_text())["id2label"]
    assert [saved[str(i)] for i in range(4)] == MODEL_ORDER
    after = probabilities(str(output_dir), query)
    np.testing.assert_allclose(after.to_numpy(), before.to_numpy(), atol=1e-5)


def test_a_dataset_of_training_cells_in_another_order_is_mapped_onto_the_models_classes(tmp_path):
    from tokenization.data import to_dataset

    folder = save_annotator(tmp_path / "published")
    query = make_cells(20, seed=5)
    dataset = to_dataset(
        make_cells(24, seed=4), tokenizer=ScBertTokenizer(GENES), label_key="cell_type", cache_dir=tmp_path / "c"
    )
    assert dataset.features["label"].names == sorted(MODEL_ORDER)
    trainer = finetune(dataset, model=folder, training_args=arguments(tmp_path / "run"))
    assert trainer.train_dataset.features["label"].names == MODEL_ORDER
    assert trainer.train_dataset["cell_id"] == dataset["cell_id"]
    assert [MODEL_ORDER[i] for i in trainer.train_dataset["label"]] == [
        sorted(MODEL_ORDER)[i] for i in dataset["label"]
    ]
    np.testing.assert_allclose(probabilities(str(tmp_path / "run"), query), probabilities(folder, query), atol=1e-5)


def _no_encoding(monkeypatch):
    def encoding(*args, **kwargs):
        raise AssertionError("cells were encoded before the classes were checked")

    monkeypatch.setattr("modeling_scbert.training.data.to_dataset", encoding)


@pytest.mark.parametrize("start", ["folder", "model object"])
def test_other_classes_are_refused_with_both_lists_and_the_way_out(tmp_path, monkeypatch, start):
    folder = save_annotator(tmp_path / "published")
    model = folder if start == "folder" else ScBertForSequenceClassification.from_pretrained(folder)
    cells = make_cells(24, seed=4, classes=["T cell", "B cell", "NK cell", "Platelet"])
    _no_encoding(monkeypatch)
    with pytest.raises(ValueError, match="differ from those of the starting model") as error:
        finetune(cells, model=model, label_key="cell_type", training_args=arguments(tmp_path / "run"))
    message = str(error.value)
    assert str(MODEL_ORDER) in message and "['B cell', 'NK cell', 'Platelet', 'T cell']" in message
    assert "only in the model: ['Monocyte']" in message and "only in the data: ['Platelet']" in message
    assert "class_change='new_head'" in message and "--class_change extend" in message
    with pytest.raises(ValueError, match="class_change must be one of"):
        finetune(cells, model=model, label_key="cell_type", training_args=arguments(tmp_path), class_change="x")


def test_new_head_starts_over_the_datas_classes_logged_and_in_the_card(tmp_path, caplog):
    folder = save_annotator(tmp_path / "published")
    renamed = ["T cell", "B cell", "NK cell", "CD14 monocyte"]  # the same number of classes: the shapes fit
    cells = make_cells(24, seed=4, classes=renamed)
    with caplog.at_level(logging.WARNING, logger="modeling_scbert.training"):
        trainer = finetune(
            cells,
            model=folder,
            label_key="cell_type",
            training_args=arguments(tmp_path / "run"),
            class_change="new_head",
            card_facts={"license": "apache-2.0"},
            encode_kwargs={"cache_dir": str(tmp_path / "cache")},
        )
    assert "class_change='new_head'" in caplog.text and "Monocyte" in caplog.text
    assert trainer.model.config.id2label == dict(enumerate(sorted(renamed)))
    saved, old = load_file(tmp_path / "run" / "model.safetensors"), load_file(f"{folder}/model.safetensors")
    assert not torch.equal(saved["classifier.out_proj.weight"], old["classifier.out_proj.weight"])
    assert torch.equal(saved["scbert.final_layer_norm.weight"], old["scbert.final_layer_norm.weight"])
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| classes of the starting model | replaced by a new head (class\\_change='new\\_head')" in card


@pytest.mark.parametrize("classifier_type", ["pooled", "conv"])
def test_extend_keeps_the_models_rows_in_their_order_and_appends_the_new_classes(tmp_path, classifier_type):
    folder = save_annotator(tmp_path / "published", classifier_type=classifier_type)
    cells = make_cells(24, seed=4, classes=["Platelet", "B cell", "T cell", "Monocyte", "pDC"])
    trainer = finetune(
        cells,
        model=folder,
        label_key="cell_type",
        training_args=arguments(tmp_path / "run"),
        class_change="extend",
        card_facts={"license": "apache-2.0"},
        encode_kwargs={"cache_dir": str(tmp_path / "cache")},
    )
    classes = [*MODEL_ORDER, "Platelet", "pDC"]
    assert trainer.model.config.id2label == dict(enumerate(classes))
    saved, old = load_file(tmp_path / "run" / "model.safetensors"), load_file(f"{folder}/model.safetensors")
    for name in ("weight", "bias"):
        assert saved[f"classifier.out_proj.{name}"].shape[0] == 6
        assert torch.equal(saved[f"classifier.out_proj.{name}"][:4], old[f"classifier.out_proj.{name}"])
    assert torch.equal(saved["classifier.out_proj.bias"][4:], torch.zeros(2))  # as _init_weights leaves a bias
    labels = np.asarray(trainer.train_dataset["label"])
    assert sorted({classes[i] for i in labels}) == sorted({"Platelet", "B cell", "T cell", "Monocyte", "pDC"})
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| classes of the starting model | kept, with Platelet, pDC appended (class\\_change='extend') |" in card


@pytest.mark.parametrize(
    "relabel", [{"Monocyte": "CD14 monocyte"}, {"NK cell": "T cell"}], ids=["renamed type", "merged types"]
)
def test_a_checkpoint_with_other_classes_is_refused_naming_it(tmp_path, monkeypatch, relabel):
    cells = make_cells(24, seed=4)
    overrides = {key: value for key, value in TINY.items() if key != "num_genes"}
    run = {"label_key": "cell_type", "tokenizer": ScBertTokenizer(GENES), "config_overrides": overrides}
    run["encode_kwargs"] = {"cache_dir": str(tmp_path / "cache")}
    output_dir = tmp_path / "run"
    finetune(cells, training_args=arguments(output_dir, save_strategy="steps", save_steps=1), **run)
    corrected = cells.copy()
    corrected.obs["cell_type"] = corrected.obs["cell_type"].replace(relabel)
    _no_encoding(monkeypatch)
    with pytest.raises(ValueError, match="differ from those of this run") as error:
        finetune(corrected, training_args=arguments(output_dir, max_steps=2), resume_from_checkpoint=True, **run)
    assert str(output_dir / "checkpoint-1") in str(error.value)


def test_the_command_line_takes_class_change(tmp_path):
    folder = save_annotator(tmp_path / "published")
    path = tmp_path / "cells.h5ad"
    make_cells(24, seed=4, classes=["T cell", "B cell", "Platelet"]).write_h5ad(path)
    argv = ["finetune", "--train_file", str(path), "--label_key", "cell_type", "--model_name_or_path", folder]
    argv += ["--output_dir", str(tmp_path / "out"), "--use_cpu", "--report_to", "none", "--max_steps", "1"]
    argv += ["--dataset_cache_dir", str(tmp_path / "cache"), "--learning_rate", "0"]
    assert cli_main(argv) == 2
    assert cli_main([*argv, "--class_change", "extend"]) == 0
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["id2label"]
    assert [saved[str(i)] for i in range(5)] == [*MODEL_ORDER, "Platelet"]


@pytest.mark.parametrize("damage", ["missing", "mistyped", "non-finite"])
def test_damaged_starting_weights_are_refused_before_any_cell_is_encoded(tmp_path, monkeypatch, damage):
    folder = save_annotator(tmp_path / "published")
    weights = load_file(f"{folder}/model.safetensors")
    if damage == "missing":
        del weights["scbert.final_layer_norm.weight"]
    elif damage == "mistyped":
        weights["scbert.final_layer_norm.weight"] = weights["scbert.final_layer_norm.weight"].long()
    else:
        weights["scbert.final_layer_norm.weight"][0] = float("nan")
    save_file(weights, f"{folder}/model.safetensors", metadata={"format": "pt"})
    _no_encoding(monkeypatch)
    with pytest.raises(DamagedWeightsError, match="final_layer_norm.weight|NaN or infinite"):
        finetune(make_cells(24, seed=4), model=folder, label_key="cell_type", training_args=arguments(tmp_path / "r"))


def test_a_masked_lm_backbone_may_lack_the_classifier_but_not_the_encoder(tmp_path, monkeypatch):
    from modeling_scbert import ScBertForMaskedLM

    torch.manual_seed(0)
    backbone = ScBertForMaskedLM(ScBertConfig(**TINY))
    backbone.save_pretrained(tmp_path / "pretrained")
    ScBertTokenizer(GENES).save_pretrained(tmp_path / "pretrained")
    run = {"label_key": "cell_type", "encode_kwargs": {"cache_dir": str(tmp_path / "cache")}}
    trainer = finetune(
        make_cells(24, seed=4), model=str(tmp_path / "pretrained"), training_args=arguments(tmp_path / "a"), **run
    )
    assert trainer.model.config.id2label == dict(enumerate(sorted(MODEL_ORDER)))
    weights = load_file(tmp_path / "pretrained" / "model.safetensors")
    del weights[next(key for key in weights if "final_layer_norm.bias" in key)]
    save_file(weights, tmp_path / "pretrained" / "model.safetensors", metadata={"format": "pt"})
    _no_encoding(monkeypatch)
    with pytest.raises(DamagedWeightsError, match="final_layer_norm.bias"):
        finetune(
            make_cells(24, seed=4), model=str(tmp_path / "pretrained"), training_args=arguments(tmp_path / "b"), **run
        )
