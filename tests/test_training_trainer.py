"""ScBertTrainer: the stock Trainer whose card is the scBERT card, with facts captured while training.

In-process tests stay offline; the push test runs its client in a subprocess against the local Hub of
``tests/hub_server.py`` (see ``tests/test_hub.py``).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import FakeHub
from huggingface_hub import ModelCard
from test_hub import LABELS, make_annotator, run_client, tiny_config
from transformers import TrainerControl, TrainerState, TrainingArguments

from modeling_scbert import ScBertConfig, ScBertForMaskedLM, ScBertForSequenceClassification, ScBertTokenizer
from modeling_scbert.hub.card import validate_model_card, write_model_card
from modeling_scbert.hub.card_data import ModelCardError
from modeling_scbert.hub.push import push_trainer_to_hub
from modeling_scbert.training.run_card import ScBertModelCardCallback, count_parameters
from modeling_scbert.training.trainer import ScBertFeatureRedrawCallback, ScBertTrainer

FACTS = {"license": "apache-2.0", "evaluation": {"dataset_name": "toy cells", "split": "train"}}


def accuracy_metrics(prediction) -> dict[str, float]:
    predicted = np.asarray(prediction.predictions).argmax(-1)
    return {"accuracy": float(np.mean(predicted == prediction.label_ids)), "macro_f1": 0.125}


def tiny_trainer(tmp_path, card_facts=FACTS, **overrides) -> ScBertTrainer:
    torch.manual_seed(0)
    model = ScBertForSequenceClassification(tiny_config())
    ids = torch.randint(0, 6, (12, 13), generator=torch.Generator().manual_seed(0))
    ids[:, -1] = 0
    rows = [{"input_ids": ids[i], "labels": i % 3} for i in range(12)]
    values = {
        "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 4,
        "num_train_epochs": 2,
        "learning_rate": 1e-2,
        "save_strategy": "no",
        "eval_strategy": "epoch",
        "report_to": [],
        "use_cpu": True,
        "logging_strategy": "no",
        "disable_tqdm": True,
    }
    args = TrainingArguments(**{**values, **overrides})
    return ScBertTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        eval_dataset=rows,
        processing_class=ScBertTokenizer([f"GENE{i}" for i in range(12)]),
        compute_metrics=accuracy_metrics,
        card_facts=card_facts,
    )


def test_the_card_states_the_facts_captured_while_training_not_files_on_disk(tmp_path):
    trainer = tiny_trainer(tmp_path)
    trainer.train()
    out = tmp_path / "run"
    trainer.save_model()
    # Nothing the card could be read back from: no trainer state, no metrics files.
    assert not (out / "trainer_state.json").exists() and not list(out.glob("*results.json"))
    trainer.create_model_card()

    card = (out / "README.md").read_text()
    last_eval = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry][-1]
    assert f"| accuracy | {last_eval['eval_accuracy']:.3f} |" in card  # captured on_evaluate
    assert f"| optimisation steps | {trainer.state.global_step} |" in card  # captured from the run
    assert "| learning rate | 0.01 |" in card and "| epochs | 2 |" in card
    assert f"| parameters | {count_parameters(trainer.model):,} " in card
    meta = ModelCard(card).data.to_dict()
    assert meta["license"] == "apache-2.0" and meta["scbert"]["labels"] == LABELS
    validate_model_card(card, out)
    assert (out / "pipeline_scbert.py").is_file()  # save_model gave the classifier its pipeline
    assert "custom_pipelines" in json.loads((out / "config.json").read_text())
    # The facts are kept with the model: a later `scbert push` of the folder renders the same card.
    assert write_model_card(out).read_text() == card


def test_facts_given_after_training_win_and_metrics_of_predict_are_captured(tmp_path):
    trainer = tiny_trainer(tmp_path, eval_strategy="no")
    trainer.train()
    trainer.predict(trainer.eval_dataset, metric_key_prefix="test")  # on_predict
    captured = trainer.card_callback.metrics
    assert captured is not None and "test_accuracy" in captured
    trainer.save_model()
    majority = {"label": "B cell", "accuracy": 0.99, "macro_f1": 0.99}
    trainer.create_model_card({"evaluation": {"majority_class": majority, "num_cells": 12}})
    card = (tmp_path / "run" / "README.md").read_text()
    assert f"| accuracy | {captured['test_accuracy']:.3f} |" in card
    assert "On toy cells (train split), 12 cells:" in card
    assert "**Warning: this model is no better than always predicting the most frequent training label" in card


def test_a_trainer_without_license_or_tokenizer_is_refused_a_card(tmp_path):
    trainer = tiny_trainer(tmp_path, card_facts=None, eval_strategy="no", max_steps=1)
    assert isinstance(trainer.card_callback, ScBertModelCardCallback)  # added, to capture the facts
    trainer.save_model()
    with pytest.raises(ModelCardError, match="needs a license"):
        trainer.create_model_card()
    trainer.create_model_card(license="mit")  # Trainer.create_model_card's own option
    assert "license: mit" in (tmp_path / "run" / "README.md").read_text()
    trainer.processing_class = None
    with pytest.raises(ValueError, match="needs the model's ScBertTokenizer"):
        trainer.create_model_card(license="mit")
    with pytest.raises(ValueError, match="pass them to one"):
        ScBertTrainer(model=trainer.model, args=trainer.args, callbacks=[ScBertModelCardCallback()], card_facts=FACTS)


def test_push_trainer_to_hub_of_an_scbert_trainer_without_push_saves_folder_and_card(tmp_path):
    trainer = tiny_trainer(tmp_path, eval_strategy="no", max_steps=2)
    trainer.train()
    assert push_trainer_to_hub(trainer, metrics={"eval_accuracy": 0.5, "eval_macro_f1": 0.4}) is None
    out = tmp_path / "run"
    card = (out / "README.md").read_text()
    assert "| accuracy | 0.500 |" in card and "| macro-F1 | 0.400 |" in card
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == 0.5
    assert {"model.safetensors", "genes.txt", "trainer_state.json", "pipeline_scbert.py"} <= {
        p.name for p in out.iterdir()
    }


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


def test_stock_push_to_hub_of_an_scbert_trainer_carries_the_scbert_card(tmp_path, hub):
    script = f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_training_trainer import tiny_trainer
        trainer = tiny_trainer(Path({str(tmp_path)!r}), save_strategy="epoch", push_to_hub=True,
                               hub_model_id="my-lab/trained")
        trainer.train()
        trainer.push_to_hub()  # the stock method
    """
    result = run_client(script, hub, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    repo = hub.repos["my-lab/trained"]
    head = repo.resolve("main")
    card = head.files["README.md"].decode()
    assert card == (tmp_path / "run" / "README.md").read_text()  # the local folder carries the pushed card
    assert "A cell-type annotator" in card and "my-lab/trained" in card and "| accuracy |" in card
    assert {"model.safetensors", "genes.txt", "tokenizer_config.json", "pipeline_scbert.py"} <= set(head.files)
    assert "custom_pipelines" in json.loads(head.files["config.json"])
    messages = hub.commit_messages("my-lab/trained")
    assert messages[0] == "End of training" and any(m.startswith("Training in progress") for m in messages)
    for commit in repo.commits.values():
        if "README.md" in commit.files:
            assert b"A cell-type annotator" in commit.files["README.md"], commit.message
    assert not hub.unhandled, hub.unhandled


def test_push_to_hub_of_an_scbert_trainer_uploads_only_the_allow_listed_model_files(tmp_path, hub):
    # An output folder that also holds what a model repository must never get.
    run = tmp_path / "run"
    secrets = ("token", "hf_token.txt", "secrets.json", "id_rsa", "credentials", "notes.md", "wandb-metadata.json")
    for name in (*secrets, "logs/events.out", ".hidden"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("local only")
    script = f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_training_trainer import tiny_trainer
        trainer = tiny_trainer(Path({str(tmp_path)!r}), hub_model_id="my-lab/allow-listed", save_strategy="epoch",
                               push_to_hub=True)  # also a push at each save
        trainer.train()
        trainer.push_to_hub()
    """
    result = run_client(script, hub, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    from modeling_scbert.hub.model_files import plan_upload

    files = set(hub.repos["my-lab/allow-listed"].resolve("main").files) - {".gitattributes"}  # made with the repo
    assert files == set(plan_upload(run).files)  # the one allow-list, the same as scbert push's
    assert {"config.json", "model.safetensors", "genes.txt", "tokenizer_config.json", "README.md"} <= files
    assert "pipeline_scbert.py" in files and (run / "training_args.bin").is_file()
    assert not files & {*secrets, "training_args.bin", ".hidden"} and not any("/" in name for name in files)
    messages = hub.commit_messages("my-lab/allow-listed")
    assert messages[0] == "End of training" and any(m.startswith("Training in progress") for m in messages)
    for commit in hub.repos["my-lab/allow-listed"].commits.values():
        assert not set(commit.files) & {*secrets, "training_args.bin"}, commit.message
    assert not hub.unhandled, hub.unhandled


def test_push_model_folder_leaves_pickles_hidden_files_and_subfolders_local(tmp_path, hub):
    folder = make_annotator(tmp_path / "model")
    for name in ("training_args.bin", "optimizer.pt", ".secret", "_private.txt", "checkpoint-1/model.safetensors"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"local only")
    script = f"""
        from modeling_scbert.hub.push import push_model_folder
        push_model_folder({str(folder)!r}, "my-lab/model", facts={{"license": "apache-2.0"}})
    """
    result = run_client(script, hub, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    files = set(hub.repos["my-lab/model"].resolve("main").files)
    assert {"config.json", "model.safetensors", "genes.txt", "README.md", "scbert_card.json"} <= files
    assert not files & {"training_args.bin", "optimizer.pt", ".secret", "_private.txt"}
    assert not any(name.startswith("checkpoint-1") for name in files)
    assert not hub.unhandled, hub.unhandled


def _features(model):
    return [layer.attention.random_features.clone() for layer in model.scbert.encoder.layers]


def test_feature_redraw_callback_fires_at_its_interval(tmp_path):
    config = ScBertConfig(
        num_genes=10, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, head_dim=8, feature_redraw_interval=3
    )
    model = ScBertForMaskedLM(config)
    twin = ScBertForMaskedLM(config)  # a second "process": same interval and seed
    args = TrainingArguments(output_dir=str(tmp_path), seed=7, report_to=[], use_cpu=True)
    callback = ScBertFeatureRedrawCallback()
    changed_at = []
    for step in range(1, 10):
        before = _features(model)
        state = TrainerState(global_step=step)
        callback.on_step_end(args, state, TrainerControl(), model=model)
        callback.on_step_end(args, state, TrainerControl(), model=twin)
        if any(not torch.equal(a, b) for a, b in zip(before, _features(model))):
            changed_at.append(step)
            for a, b in zip(_features(model), _features(twin)):
                assert torch.equal(a, b)  # every process draws the same features
    assert changed_at == [3, 6, 9]


def test_feature_redraw_can_be_disabled(tmp_path):
    config = ScBertConfig(num_genes=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, head_dim=8)
    model = ScBertForMaskedLM(config)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    before = _features(model)
    ScBertFeatureRedrawCallback(interval=0).on_step_end(
        args, TrainerState(global_step=1000), TrainerControl(), model=model
    )
    assert all(torch.equal(a, b) for a, b in zip(before, _features(model)))
