"""The model card of one training run: the facts a run knows (labels, hyperparameters, parameter counts,
evaluation), gathered while it trains and written with the final model.

The one place that knows what a run tells its card, in the order a run learns it: :func:`run_card_facts` before
training (labels, cell numbers, the fine-tuning choices, under the caller's facts), :class:`ScBertModelCardCallback`
while training (settings, length, the latest metrics), :func:`add_evaluation_facts` after the final evaluation
(per-class rows, the majority-class floor). :class:`~modeling_scbert.training.trainer.ScBertTrainer` renders the card
from them (``create_model_card``, ``push_to_hub``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import extract_model_from_parallel
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tokenization import ScBertTokenizer
from tokenization.atomic_files import write_text_atomically

from ..hub.card import README_NAME, render_model_card
from ..hub.card_data import ScBertCardData, metrics_to_evaluation, report_to_evaluation, state_hyperparameters
from ..modeling_scbert import ScBertForSequenceClassification

logger = logging.getLogger(__name__)


def run_card_facts(
    given: dict[str, Any] | None,
    train_labels: np.ndarray,
    label_names: Sequence[str],
    *,
    num_eval_cells: int | None,
    model: ScBertForSequenceClassification,
    preset: str,
    class_change: str | None = None,
) -> dict[str, Any]:
    """The model-card facts a fine-tuning run knows (label counts, cell numbers, the fine-tuning choices), under the
    caller's ``given`` facts (which win; dicts are merged key by key).

    Parameters
    ----------
    given
        The caller's facts (``finetune``'s ``card_facts``).
    train_labels
        Class ids of the training cells.
    label_names
        The class names, in class-id order.
    num_eval_cells
        Number of evaluation cells, or ``None`` without evaluation.
    model
        The model being fine-tuned (its ``_name_or_path``, when a Hub id, is the base model).
    preset
        The fine-tuning preset used.
    class_change
        What became of the starting model's classes when they differed from the data's (``class_change=``):
        recorded as the hyperparameter ``classes of the starting model``.

    Returns
    -------
    The facts, as :class:`~modeling_scbert.hub.card_data.ScBertCardData` names them (``label_counts``,
    ``training_data``, ``hyperparameters``, ``base_model``, ``evaluation``, and the caller's).
    """
    counts = np.bincount(train_labels, minlength=len(label_names))
    facts: dict[str, Any] = {
        "label_counts": {name: int(count) for name, count in zip(label_names, counts, strict=True)},
        "training_data": {"num_cells": int(counts.sum())},
        "hyperparameters": {"fine-tuning preset": preset},
    }
    if class_change:
        facts["hyperparameters"]["classes of the starting model"] = class_change
    base = getattr(model.config, "_name_or_path", "")
    if base and not os.path.isdir(base) and "/" in base:
        facts["base_model"] = base  # a Hub id; local folders are not citable
    if num_eval_cells is not None:
        facts["evaluation"] = {"dataset_name": "held-out labelled cells", "num_cells": num_eval_cells}
    for key, value in (given or {}).items():
        if isinstance(value, dict) and isinstance(facts.get(key), dict):
            facts[key] = {**facts[key], **value}
        else:
            facts[key] = value
    return facts


def check_card_renders(
    model: ScBertForSequenceClassification, tokenizer: ScBertTokenizer, facts: dict[str, Any]
) -> None:
    """Render the run's card once before training, so that what would stop it after training stops it now.

    The card is rendered from the model's config, the tokenizer and ``facts`` (the labels, the caller's facts) in a
    temporary folder, exactly as it will be at the end; a fact, a label or a template that cannot be rendered raises
    here, before any step is trained. Nothing is kept.

    Raises
    ------
    modeling_scbert.hub.card_data.ModelCardError
        When the card cannot be rendered (see :func:`~modeling_scbert.hub.card.render_model_card`).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scbert-card-") as folder:
        model.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        render_model_card(ScBertCardData.from_model_folder(folder, facts), local_name=Path(folder).name)


def add_evaluation_facts(
    facts: dict[str, Any],
    report: dict[str, Any],
    majority: dict[str, Any],
    label_names: Sequence[str],
    missed: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A run's card facts with what its final evaluation found: the per-class rows (with accuracy and macro-F1) and
    the majority-class floor, added to ``facts["evaluation"]``.

    Parameters
    ----------
    facts
        The run's facts (from :func:`run_card_facts`); not changed.
    report
        The per-class report of :func:`~modeling_scbert.training.metrics.classification_report`.
    majority
        What :func:`~modeling_scbert.training.metrics.majority_class_baseline` returned for the same evaluation
        cells (the card warns when the model does not beat it).
    label_names
        The class names, in class-id order.
    missed
        The classes the model never predicts or predicts with F1 near 0
        (:func:`~modeling_scbert.training.metrics.missed_classes`): the card names them in a warning.

    Returns
    -------
    A new dict of facts; its ``evaluation`` keeps the facts already there but those the report gives again.
    """
    evaluation = {**(facts.get("evaluation") or {}), "majority_class": majority}
    if missed:
        evaluation["missed_classes"] = [dict(row) for row in missed]
    evaluation.update(report_to_evaluation(report, list(label_names)))
    return {**facts, "evaluation": evaluation}


def hyperparameters_from_args(args: Any) -> dict[str, Any]:
    """The training settings of a ``TrainingArguments`` that a card states, named for the card."""
    values = {
        "learning rate": args.learning_rate,
        "batch size per device": args.per_device_train_batch_size,
        "gradient accumulation steps": args.gradient_accumulation_steps,
        "processes": args.world_size,
        "epochs": args.num_train_epochs if args.max_steps is None or args.max_steps <= 0 else None,
        "max steps": args.max_steps if args.max_steps and args.max_steps > 0 else None,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "learning-rate schedule": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup steps": args.warmup_steps or None,
        "weight decay": args.weight_decay,
        "seed": args.seed,
        "mixed precision": "bf16" if args.bf16 else "fp16" if args.fp16 else None,
    }
    return {key: value for key, value in values.items() if value is not None}


def count_parameters(model: Any) -> int:
    """Numbers a model saves (parameters and buffers, each shared tensor once), without the FAVOR+ random features:
    the count :meth:`ScBertCardData.from_model_folder` reads from the saved weights."""
    seen, total = set(), 0
    for name, tensor in model.state_dict().items():
        if name.endswith("random_features") or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel()
    return total


class ScBertModelCardCallback(TrainerCallback):
    """Capture the facts of a training run for the scBERT model card, and keep the card in ``output_dir``.

    While training it records the latest evaluation metrics (``on_evaluate``, ``on_predict``) and the run's settings
    and length (``on_train_end``, and before every push). Before every checkpoint push the ``Trainer`` makes
    (``push_to_hub=True``) and at the end of training, the card is rendered from the model's config, the tokenizer,
    the facts given here and those captured, and written to ``output_dir/README.md``, so that checkpoint pushes carry
    it. :class:`ScBertTrainer` renders the final card from the same facts when it pushes.

    Parameters
    ----------
    tokenizer
        The model's tokenizer; by default the ``Trainer``'s ``processing_class``.
    facts
        Card facts: training data, ``label_counts``, ``base_model``, ``license``, evaluation dataset, ...

    Raises
    ------
    ModelCardError
        When ``facts`` names a fact that does not exist.
    """

    def __init__(self, tokenizer: ScBertTokenizer | None = None, facts: ScBertCardData | dict[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.facts = ScBertCardData().merged(facts)
        self.metrics: dict[str, Any] | None = None
        self.run: dict[str, Any] = {}

    def record_run(self, args: TrainingArguments, state: TrainerState) -> None:
        """Record the run's settings and length (hyperparameters of the card)."""
        self.run = {
            **state_hyperparameters(state),
            **hyperparameters_from_args(args),
            "optimisation steps": state.global_step,
        }

    def record_metrics(self, metrics: dict[str, Any] | None) -> None:
        """Record evaluation metrics (``Trainer.evaluate`` / ``predict``'s); the latest ones are the card's."""
        if metrics:
            self.metrics = dict(metrics)

    def card_data(self, model: Any, tokenizer: ScBertTokenizer | None) -> ScBertCardData:
        """The card facts of ``model``: captured while training, under the facts given to the callback.

        Raises
        ------
        ModelCardError
            When the tokenizer's panel does not fit the model's config.
        """
        model = extract_model_from_parallel(model, keep_torch_compile=False)
        labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
        evaluation = metrics_to_evaluation(self.metrics, labels) if self.metrics else None
        found = ScBertCardData(hyperparameters=self.run or None, evaluation=evaluation or None)
        return ScBertCardData.from_objects(
            model.config, tokenizer, found.merged(self.facts), num_parameters=count_parameters(model)
        )

    def _write(self, args: TrainingArguments, state: TrainerState, model: Any, processing_class: Any, why: str):
        if not state.is_world_process_zero or model is None:
            return
        self.record_run(args, state)
        tokenizer = self.tokenizer or (processing_class if isinstance(processing_class, ScBertTokenizer) else None)
        if tokenizer is None:
            logger.warning("No ScBertTokenizer given to ScBertModelCardCallback or the Trainer; no card written.")
            return
        data = self.card_data(model, tokenizer)
        if data.license is None:
            log = logger.warning if why == "push" else logger.info
            log("No license given to the model card (facts={'license': ...}); no card written.")
            return
        hub_id = args.hub_model_id if args.push_to_hub else None
        text = render_model_card(data, repo_id=hub_id, local_name=Path(args.output_dir).resolve().name)
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output_dir / README_NAME, text)
        if self.facts.facts():
            self.facts.save(output_dir)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        self.record_metrics(metrics)

    def on_predict(self, args, state, control, metrics=None, **kwargs) -> None:
        self.record_metrics(metrics)

    def on_push_begin(self, args, state, control, model=None, processing_class=None, **kwargs) -> None:
        self._write(args, state, model, processing_class, "push")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self._write(args, state, kwargs.get("model"), kwargs.get("processing_class"), "end")


__all__ = [
    "ScBertModelCardCallback",
    "add_evaluation_facts",
    "count_parameters",
    "hyperparameters_from_args",
    "run_card_facts",
]
