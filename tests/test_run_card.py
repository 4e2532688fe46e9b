"""The model card's facts of one training run: what a run knows before training and what its final evaluation adds."""

from types import SimpleNamespace

import numpy as np

from modeling_scbert.hub.card_data import ScBertCardData
from modeling_scbert.training.metrics import classification_report, majority_class_baseline
from modeling_scbert.training.run_card import add_evaluation_facts, run_card_facts

LABELS = ["B", "T", "NK"]


def test_evaluation_facts_add_the_per_class_rows_and_the_majority_floor_to_the_run_facts():
    train_labels = np.array([0, 0, 0, 1, 2])
    model = SimpleNamespace(config=SimpleNamespace(_name_or_path=""))
    given = {"license": "mit", "evaluation": {"dataset_name": "toy cells"}}
    facts = run_card_facts(given, train_labels, LABELS, num_eval_cells=4, model=model, preset="full")
    before = {**facts, "evaluation": dict(facts["evaluation"])}
    eval_labels, predictions = [0, 0, 1, 2], [0, 0, 0, 2]
    report = classification_report(eval_labels, predictions, label_names=LABELS)
    majority = majority_class_baseline(train_labels, eval_labels, label_names=LABELS)

    found = add_evaluation_facts(facts, report, majority, LABELS)

    assert facts == before  # the run's facts are not changed
    evaluation = found["evaluation"]
    assert evaluation["dataset_name"] == "toy cells" and evaluation["num_cells"] == 4  # kept
    assert evaluation["majority_class"] == {"label": "B", "accuracy": 0.5, "macro_f1": majority["macro_f1"]}
    assert evaluation["accuracy"] == 0.75
    assert evaluation["per_class"]["T"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert evaluation["per_class"]["NK"]["f1"] == 1.0
    assert {key: value for key, value in found.items() if key != "evaluation"} == {
        key: value for key, value in facts.items() if key != "evaluation"
    }
    assert ScBertCardData().merged(found).evaluation == evaluation  # facts the card knows, by the card's names


def test_a_card_that_cannot_be_rendered_stops_finetune_before_the_first_step(tmp_path, monkeypatch):
    import pytest
    from test_training_workflows import TINY, args, make_cells
    from transformers import Trainer

    from modeling_scbert import finetune
    from modeling_scbert.hub import card

    trained = []
    monkeypatch.setattr(Trainer, "train", lambda self, *a, **k: trained.append(True))

    def broken(*arguments, **keywords):
        raise card.ModelCardError("the card cannot be rendered")

    monkeypatch.setattr("modeling_scbert.training.run_card.render_model_card", broken)
    with pytest.raises(card.ModelCardError, match="cannot be rendered"):
        finetune(
            make_cells(),
            label_key="cell_type",
            training_args=args(tmp_path),
            config_overrides=TINY,
            card_facts={"license": "mit"},
            encode_kwargs={"cache_dir": str(tmp_path / "cache")},
        )
    assert trained == []
