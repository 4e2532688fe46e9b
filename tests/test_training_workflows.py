"""Pretraining and fine-tuning workflows through the stock Trainer: presets, losses, metrics, resume, bad input."""

import copy
import dataclasses
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from transformers import TrainerCallback, TrainingArguments

from modeling_scbert import ScBertConfig, ScBertForMaskedLM, ScBertForSequenceClassification
from modeling_scbert.cli import main as cli_main
from modeling_scbert.training.model_setup import apply_finetuning_preset, parse_config_overrides
from modeling_scbert.training.trainer import ScBertFeatureRedrawCallback, ScBertWeightedLoss, balanced_class_weights
from modeling_scbert.training.workflows import finetune, pretrain

TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "head_dim": 8,
    "intermediate_size": 32,
    "num_random_features": 8,
    "classifier_hidden_sizes": [16],
}
CELL_TYPES = ["B", "T", "NK"]


def make_cells(n_cells: int = 48, n_genes: int = 12, seed: int = 0) -> ad.AnnData:
    """Counts where each type expresses its own block of genes; types in the order B, T, NK, B, ..."""
    rng = np.random.default_rng(seed)
    types = np.array([CELL_TYPES[i % 3] for i in range(n_cells)])
    means = np.full((n_cells, n_genes), 0.05)  # mostly zero outside the type's own genes
    for k, name in enumerate(CELL_TYPES):
        means[types == name, 4 * k : 4 * k + 4] = 12.0
    counts = rng.poisson(means).astype(np.float32)
    return ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(types, categories=CELL_TYPES), "batch": "a"},
            index=[f"cell{i}" for i in range(n_cells)],
        ),
        var=pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)]),
    )


def args(tmp_path, name: str = "run", **overrides) -> TrainingArguments:
    defaults = {
        "output_dir": str(tmp_path / name),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 3e-3,
        "num_train_epochs": 2,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_pin_memory": False,
    }
    return TrainingArguments(**{**defaults, **overrides})


@pytest.fixture
def cells():
    return make_cells()


def _encode(tmp_path):
    return {"cache_dir": str(tmp_path / "cache")}


def test_published_preset_trains_exactly_layer_minus_2_final_norm_and_head():
    config = ScBertConfig(num_genes=12, num_labels=3, **{**TINY, "num_hidden_layers": 3})
    model = ScBertForSequenceClassification(config)
    trainable = apply_finetuning_preset(model, "published")
    prefixes = ("scbert.encoder.layers.1.", "scbert.final_layer_norm.", "classifier.")
    expected = [name for name, _ in model.named_parameters() if name.startswith(prefixes)]
    assert sorted(trainable) == sorted(expected)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == set(expected)
    assert any(name.startswith("scbert.encoder.layers.1.attention.") for name in trainable)
    assert not any(name.startswith(("scbert.encoder.layers.0.", "scbert.encoder.layers.2.")) for name in trainable)
    assert not any(name.startswith("scbert.embeddings.") for name in trainable)
    # Buffers (random features, frozen gene table) are not parameters, so no preset can train them.
    assert "scbert.embeddings.gene_embeddings.weight" in dict(model.named_buffers())

    assert len(apply_finetuning_preset(model, "full")) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="one of"):
        apply_finetuning_preset(model, "lora")
    one_layer = ScBertForSequenceClassification(
        ScBertConfig(num_genes=12, num_labels=3, **{**TINY, "num_hidden_layers": 1})
    )
    with pytest.raises(ValueError, match="preset='full'"):
        apply_finetuning_preset(one_layer, "published")


def test_balanced_class_weights_and_weighted_loss():
    weights = balanced_class_weights([0, 0, 0, 1], 3)
    assert torch.allclose(weights, torch.tensor([4 / 9, 4 / 3, 0.0]))
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1])
    loss = ScBertWeightedLoss(weights)({"logits": logits}, labels)
    per_cell = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(loss, (weights[labels] * per_cell).sum() / 4)
    # Normalised by the Trainer's count over the whole accumulated / all-process batch when given.
    assert torch.allclose(ScBertWeightedLoss(weights)({"logits": logits}, labels, num_items_in_batch=8), loss / 2)


def test_parse_config_overrides():
    assert parse_config_overrides("hidden_size=64,classifier_hidden_sizes=[32,16],hidden_act=gelu") == {
        "hidden_size": 64,
        "classifier_hidden_sizes": [32, 16],
        "hidden_act": "gelu",
    }
    assert parse_config_overrides('{"num_hidden_layers": 2}') == {"num_hidden_layers": 2}
    with pytest.raises(ValueError, match="key=value"):
        parse_config_overrides("hidden_size")


def test_finetune_from_scratch_keeps_labels_in_config_and_best_model_by_macro_f1(tmp_path, cells):
    training_args = args(
        tmp_path,
        num_train_epochs=6,
        learning_rate=1e-2,
        per_device_train_batch_size=4,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
    )
    trainer = finetune(
        cells,
        training_args=training_args,
        label_key="cell_type",
        eval_fraction=0.25,
        preset="full",
        class_weighting="balanced",
        early_stopping_patience=5,
        # A new model's head is the per-gene "conv" head. At width 16 and learning rate 1e-2 its per-gene
        # ReLU scores die within a few steps from the default initialiser_range 0.02 (the model then predicts one
        # class: 0.333 here), as the demo's compact model does; a wider initialisation learns the toy data.
        config_overrides={**TINY, "initializer_range": 0.1},
        encode_kwargs=_encode(tmp_path),
    )
    out = tmp_path / "run"
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "B", "1": "T", "2": "NK"}
    assert (out / "tokenizer_config.json").is_file() and (out / "genes.txt").is_file()
    assert trainer.args.metric_for_best_model == "macro_f1"
    assert trainer.state.best_metric is not None
    assert any(isinstance(c, ScBertFeatureRedrawCallback) for c in trainer.callback_handler.callbacks)
    report = json.loads((out / "classification_report.json").read_text())
    assert set(CELL_TYPES) <= set(report) and "macro avg" in report
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_accuracy", "eval_macro_f1"} <= set(results)
    # The separable toy data is learned.
    assert results["eval_accuracy"] > 0.5


def test_pretrain_then_finetune_published_preset_from_the_folder(tmp_path, cells):
    pretrain(
        cells,
        training_args=args(tmp_path, "pretrained", num_train_epochs=1),
        config_overrides=TINY,
        encode_kwargs=_encode(tmp_path),
    )
    pretrained = ScBertForMaskedLM.from_pretrained(tmp_path / "pretrained")
    finetune(
        cells,
        training_args=args(tmp_path, "finetuned", num_train_epochs=1),
        model=str(tmp_path / "pretrained"),
        label_key="cell_type",
        preset="published",
        encode_kwargs=_encode(tmp_path),
    )
    finetuned = ScBertForSequenceClassification.from_pretrained(tmp_path / "finetuned")
    before, after = pretrained.state_dict(), finetuned.state_dict()
    frozen = "scbert.encoder.layers.1.attention.query.weight"  # the last layer: frozen by the published recipe
    trained = "scbert.encoder.layers.0.attention.query.weight"  # the second-to-last layer: trained
    assert torch.equal(before[frozen], after[frozen])
    assert not torch.equal(before[trained], after[trained])
    assert torch.equal(
        before["scbert.embeddings.gene_embeddings.weight"], after["scbert.embeddings.gene_embeddings.weight"]
    )


class StopAt(TrainerCallback):
    """Simulate an interruption: stop (after saving) once the run reaches ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_interrupted_finetuning_resumes_from_its_last_checkpoint_and_finishes(tmp_path, cells):
    common = {"max_steps": 6, "save_strategy": "steps", "save_steps": 2, "per_device_train_batch_size": 8}
    run = {"label_key": "cell_type", "preset": "full", "config_overrides": TINY, "encode_kwargs": _encode(tmp_path)}
    interrupted = finetune(cells, training_args=args(tmp_path, "run", **common), callbacks=[StopAt(4)], **run)
    assert interrupted.state.global_step == 4
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    resumed = finetune(cells, training_args=args(tmp_path, "run", **common), resume_from_checkpoint=True, **run)
    assert resumed.state.global_step == 6
    assert (tmp_path / "run" / "checkpoint-6").is_dir()

    straight = finetune(cells, training_args=args(tmp_path, "straight", **common), **run)
    assert straight.state.global_step == 6
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs between the resumed and the uninterrupted run")


def test_resume_skips_an_incomplete_checkpoint_and_resumes_from_the_last_complete_one(tmp_path, cells, caplog):
    from modeling_scbert.training.checkpoints import checkpoint_problems

    common = {"max_steps": 6, "save_strategy": "steps", "save_steps": 2, "per_device_train_batch_size": 8}
    run = {"label_key": "cell_type", "preset": "full", "config_overrides": TINY, "encode_kwargs": _encode(tmp_path)}
    finetune(cells, training_args=args(tmp_path, "run", **common), callbacks=[StopAt(4)], **run)
    assert checkpoint_problems(str(tmp_path / "run" / "checkpoint-4")) == []
    # A run killed while it wrote checkpoint-4: its weights cut short.
    weights = tmp_path / "run" / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert checkpoint_problems(str(weights.parent)) == ["model.safetensors is truncated or damaged"]

    with caplog.at_level("INFO", logger="modeling_scbert"):
        resumed = finetune(cells, training_args=args(tmp_path, "run", **common), resume_from_checkpoint=True, **run)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "incomplete" in r.getMessage()]
    assert len(warnings) == 1 and "checkpoint-4" in warnings[0] and "model.safetensors" in warnings[0]
    assert any(r.getMessage().endswith("checkpoint-2") for r in caplog.records if "Resuming from" in r.getMessage())
    assert resumed.state.global_step == 6
    straight = finetune(cells, training_args=args(tmp_path, "straight", **common), **run)
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs between the resumed and the uninterrupted run")

    # Killed before trainer_state.json (written last): incomplete too; with none complete, the error names them all.
    for step in (2, 4, 6):
        (tmp_path / "run" / f"checkpoint-{step}" / "trainer_state.json").unlink()
    assert checkpoint_problems(str(tmp_path / "run" / "checkpoint-2")) == ["no trainer_state.json"]
    with pytest.raises(
        FileNotFoundError, match=r"no checkpoint .* is complete: checkpoint-6 .*checkpoint-4.*checkpoint-2"
    ):
        finetune(cells, training_args=args(tmp_path, "run", **common), resume_from_checkpoint=True, **run)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, cells):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        finetune(
            cells,
            training_args=args(tmp_path, "empty", max_steps=1),
            label_key="cell_type",
            config_overrides=TINY,
            preset="full",
            resume_from_checkpoint=True,
            encode_kwargs=_encode(tmp_path),
        )


def test_missing_label_column_lists_obs_columns_and_writes_nothing(tmp_path, cells):
    with pytest.raises(ValueError, match=r"'cell_type', 'batch'"):
        finetune(
            cells,
            training_args=args(tmp_path, "bad"),
            label_key="celltype",
            config_overrides=TINY,
            encode_kwargs=_encode(tmp_path),
        )
    assert not (tmp_path / "bad").exists()


def test_cli_finetune_and_pretrain(tmp_path, cells, capsys):
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    before = path.read_bytes()
    common = ["--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--dataset_cache_dir", str(tmp_path / "c")]
    overrides = "hidden_size=16,num_hidden_layers=2,num_attention_heads=2,head_dim=8,intermediate_size=32"

    code = cli_main(
        [
            "finetune",
            "--train_file",
            str(path),
            "--label_key",
            "celltype",
            "--output_dir",
            str(tmp_path / "x"),
            *common,
        ]
    )
    assert code == 2
    assert "'cell_type', 'batch'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    code = cli_main(
        ["pretrain", "--train_file", str(path), "--output_dir", str(tmp_path / "pre"), "--max_steps", "2"]
        + ["--config_overrides", overrides, *common]
    )
    assert code == 0 and (tmp_path / "pre" / "model.safetensors").is_file()
    code = cli_main(
        ["finetune", "--train_file", str(path), "--label_key", "cell_type", "--validation_fraction", "0.25"]
        + ["--model_name_or_path", str(tmp_path / "pre"), "--output_dir", str(tmp_path / "ft")]
        + ["--num_train_epochs", "1", "--class_weighting", "balanced", *common]
    )
    assert code == 0
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["id2label"]["2"] == "NK"
    assert (tmp_path / "ft" / "classification_report.json").is_file()
    assert path.read_bytes() == before  # the input is never modified


def test_default_preset_is_full_for_a_new_model_and_published_for_a_pretrained_one(tmp_path, cells, caplog):
    one_layer = {**TINY, "num_hidden_layers": 1}
    run = {"label_key": "cell_type", "encode_kwargs": _encode(tmp_path)}
    # A new one-layer model: "published" (train layer -2) would refuse it; the default trains everything.
    with caplog.at_level("WARNING", logger="modeling_scbert.training"):
        trainer = finetune(cells, training_args=args(tmp_path, "new", max_steps=1), config_overrides=one_layer, **run)
    assert all(p.requires_grad for p in trainer.model.parameters())
    # Trained from scratch without warmup: warned, with the option that fixes it.
    assert [r for r in caplog.records if "warmup_steps=0.1" in r.getMessage()]
    caplog.clear()
    assert json.loads((tmp_path / "new" / "config.json").read_text())["classifier_type"] == "conv"
    pretrain(
        cells, training_args=args(tmp_path, "pre", max_steps=1), config_overrides=TINY, encode_kwargs=_encode(tmp_path)
    )
    with caplog.at_level("WARNING", logger="modeling_scbert.training"):
        trainer = finetune(cells, training_args=args(tmp_path, "ft", max_steps=1), model=str(tmp_path / "pre"), **run)
    assert not [r for r in caplog.records if "warmup" in r.getMessage()]  # a pretrained start is not at risk
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert any(name.startswith("scbert.encoder.layers.0.") for name in trainable)
    assert not any(name.startswith("scbert.encoder.layers.1.") for name in trainable)
    with pytest.raises(ValueError, match="preset must be one of"):
        finetune(cells, training_args=args(tmp_path, "bad", max_steps=1), preset="frozen", **run)


def test_options_that_need_no_cell_are_refused_before_any_cell_is_encoded(tmp_path, cells, monkeypatch):
    def encoding(*args, **kwargs):
        raise AssertionError("cells were encoded before the options were checked")

    monkeypatch.setattr("modeling_scbert.training.data.to_dataset", encoding)
    run = {"label_key": "cell_type", "config_overrides": TINY}
    refused = {
        "needs evaluation cells": {"early_stopping_patience": 2},
        "load_best_model_at_end=True": {"eval_fraction": 0.25, "early_stopping_patience": 2},
        "license": {"training_args": args(tmp_path, push_to_hub=True, hub_model_id="lab/model")},
        "no checkpoint": {"resume_from_checkpoint": True},
        "not key=value": {"config_overrides": "hidden_size"},
    }
    for message, options in refused.items():
        with pytest.raises(ValueError if message != "no checkpoint" else FileNotFoundError, match=message):
            finetune(cells, **{"training_args": args(tmp_path), **run, **options})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain(cells, training_args=args(tmp_path), config_overrides=TINY, resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="not key=value"):
        pretrain(cells, training_args=args(tmp_path), config_overrides="hidden_size")


def test_majority_class_baseline_and_when_it_warns(caplog):
    from modeling_scbert.training.metrics import majority_class_baseline
    from modeling_scbert.training.metrics import warn_if_no_better as _warn_if_no_better

    majority = majority_class_baseline([0, 0, 0, 1, 2], [0, 0, 1, 2], label_names=["B", "T", "NK"])
    assert majority["label"] == "B"
    assert majority["accuracy"] == 0.5
    assert majority["macro_f1"] == pytest.approx((2 * 0.5 / 1.5) / 3)
    with caplog.at_level("WARNING", logger="modeling_scbert.training"):
        assert not _warn_if_no_better({"eval_accuracy": 0.9, "eval_macro_f1": 0.8}, majority)
        assert not caplog.records
        assert _warn_if_no_better({"eval_accuracy": 0.5, "eval_macro_f1": 0.8}, majority)  # accuracy: a tie
        assert _warn_if_no_better({"eval_accuracy": 0.9, "eval_macro_f1": 0.1}, majority)
    assert len(caplog.records) == 2
    assert "no better than always predicting the most frequent training class 'B'" in caplog.records[0].message
    with pytest.raises(ValueError, match="empty"):
        majority_class_baseline([], [0], label_names=["B"])


def test_finetune_that_learns_nothing_warns_in_the_log_and_the_card(tmp_path, caplog):
    cells = make_cells(n_cells=64)
    rng = np.random.default_rng(1)
    # Labels unrelated to the expression, three quarters "B"; an untrained model (learning rate 0) cannot beat
    # always answering "B".
    cells.obs["cell_type"] = pd.Categorical(rng.choice(CELL_TYPES, size=64, p=[0.75, 0.125, 0.125]))
    with caplog.at_level("WARNING", logger="modeling_scbert.training"):
        finetune(
            cells,
            training_args=args(tmp_path, "flat", max_steps=2, learning_rate=0.0),
            label_key="cell_type",
            eval_fraction=0.25,
            config_overrides=TINY,
            card_facts={"license": "apache-2.0"},
            encode_kwargs=_encode(tmp_path),
        )
    assert any("no better than always predicting" in record.message for record in caplog.records)
    card = (tmp_path / "flat" / "README.md").read_text()
    assert "**Warning: this model is no better than always predicting the most frequent training label (B).**" in card
    assert "| accuracy of always predicting B (the most frequent training label) |" in card


def _fields(training_args: TrainingArguments) -> dict:
    """Every field of a TrainingArguments, deep-copied (so a change inside a list or dict would show too)."""
    return copy.deepcopy({f.name: getattr(training_args, f.name) for f in dataclasses.fields(training_args)})


def test_pretrain_and_finetune_never_change_the_callers_training_arguments(tmp_path, cells):
    # The defaults the workflows must not keep (remove_unused_columns=True drops the sparse token columns) and, with
    # load_best_model_at_end, the metric TrainingArguments picks by itself ("loss", which finetune replaces).
    common = {"remove_unused_columns": True, "save_strategy": "epoch", "num_train_epochs": 1}
    pretrain_args = args(tmp_path, "pre", **common)
    finetune_args = args(tmp_path, "ft", eval_strategy="epoch", load_best_model_at_end=True, **common)
    assert finetune_args.metric_for_best_model == "loss"
    before = {"pretrain": _fields(pretrain_args), "finetune": _fields(finetune_args)}

    trainers = {
        "pretrain": pretrain(
            cells, training_args=pretrain_args, config_overrides=TINY, encode_kwargs=_encode(tmp_path)
        ),
        "finetune": finetune(
            cells,
            training_args=finetune_args,
            label_key="cell_type",
            eval_fraction=0.25,
            config_overrides=TINY,
            encode_kwargs=_encode(tmp_path),
        ),
    }
    for name, given in (("pretrain", pretrain_args), ("finetune", finetune_args)):
        assert _fields(given) == before[name], name
        used = trainers[name].args
        assert used is not given and used.remove_unused_columns is False, name
        assert used.output_dir == given.output_dir and used.seed == given.seed, name
    assert trainers["finetune"].args.metric_for_best_model == "macro_f1"
    assert trainers["finetune"].args.greater_is_better is True


def test_evaluation_options_that_cannot_work_are_refused_before_any_cell_is_encoded(tmp_path, cells, monkeypatch):
    def encoding(*args, **kwargs):
        raise AssertionError("cells were encoded before the options were checked")

    monkeypatch.setattr("modeling_scbert.training.data.to_dataset", encoding)
    run = {"label_key": "cell_type", "config_overrides": TINY}
    with pytest.raises(ValueError, match="eval_strategy='epoch'") as error:
        finetune(cells, training_args=args(tmp_path, eval_strategy="epoch"), **run)
    assert "eval_data=" in str(error.value) and "eval_fraction=" in str(error.value)
    assert "--validation_fraction" in str(error.value)
    best = {"eval_strategy": "epoch", "save_strategy": "epoch", "load_best_model_at_end": True}
    with pytest.raises(ValueError, match="metric_for_best_model='f1' is not a metric"):
        finetune(cells, training_args=args(tmp_path, metric_for_best_model="f1", **best), eval_fraction=0.25, **run)


def test_missed_classes_never_predicted_or_with_f1_near_0():
    from modeling_scbert.training.metrics import missed_classes

    labels = np.array([0] * 10 + [1] * 100 + [2] * 20)
    predictions = np.array([0] * 10 + [1] + [0] * 99 + [0] * 20)  # 'T' right once in 100; 'NK' never predicted
    missed = missed_classes(labels, predictions, label_names=["B", "T", "NK"])
    assert [row["label"] for row in missed] == ["T", "NK"]
    assert missed[0]["predicted"] == 1 and missed[0]["f1"] == pytest.approx(2 / 101)
    assert missed[1] == {"label": "NK", "cells": 20, "predicted": 0, "f1": 0.0}
    assert missed_classes(labels, labels, label_names=["B", "T", "NK"]) == []
    # a class the evaluation cells lack is not missed, even when never predicted
    assert missed_classes(np.array([0, 1]), np.array([0, 1]), label_names=["B", "T", "NK"]) == []


def test_classes_the_model_never_predicts_are_named_in_the_log_and_the_card(tmp_path, cells, caplog):
    config = ScBertConfig(num_genes=12, **TINY, id2label=dict(enumerate(CELL_TYPES)))
    model = ScBertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.out_proj.bias[0] = 100.0  # always "B"; at learning rate 0 it stays so
    with caplog.at_level("WARNING", logger="modeling_scbert.training"):
        finetune(
            cells,
            model=model,
            training_args=args(tmp_path, "blind", max_steps=1, learning_rate=0.0),
            label_key="cell_type",
            eval_fraction=0.25,
            card_facts={"license": "apache-2.0"},
            encode_kwargs=_encode(tmp_path),
        )
    warning = next(record.message for record in caplog.records if "never predicts" in record.message)
    assert "never predicts 'T' (4 cells), 'NK' (4 cells)" in warning and "these 2 classes" in warning
    card = (tmp_path / "blind" / "README.md").read_text()
    assert "**Warning: this model has not learned 2 of the cell types its evaluation cells have:**" in card
    assert "T (4 cells, never predicted), NK (4 cells, never predicted)" in card


def test_pretrain_and_finetune_document_their_shared_parameters_once_and_the_same():
    import re

    from modeling_scbert.training.workflows import _SHARED_PARAMETERS

    def entry(doc, name):
        return re.search(rf"^    {name}\n((?:        .*\n)+)", doc, re.M).group(1)

    for name in [*_SHARED_PARAMETERS, "layer", "gene_key", "min_genes"]:
        assert entry(pretrain.__doc__, name) == entry(finetune.__doc__, name)
    assert not re.search(r"^\s*\{\w+\}\s*$", pretrain.__doc__ + finetune.__doc__, re.M)  # no placeholder left
