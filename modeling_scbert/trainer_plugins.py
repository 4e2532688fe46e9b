"""The pieces the stock ``transformers.Trainer`` takes for scBERT: a callback, a loss, metrics and presets.

- :class:`ScBertFeatureRedrawCallback` (``callbacks=``): redraws the FAVOR+ random features as the published training did;
- :class:`ScBertWeightedLoss` with :func:`balanced_class_weights` (``compute_loss_func=``): class-weighted loss;
- :func:`compute_classification_metrics` (``compute_metrics=``): accuracy, macro-F1, weighted F1; with
  :func:`classification_report` and :func:`format_classification_report` for the per-class report;
- :func:`apply_finetuning_preset` / :func:`auto_finetuning_preset`: which parameters fine-tuning trains;
- :func:`majority_class_baseline` / :func:`warn_if_no_better`: the floor a fine-tuned classifier must beat;
- :func:`run_card_facts`: what a fine-tuning run tells its model card (for ``ScBertModelCardCallback``).

:func:`modeling_scbert.training.finetune` and :func:`~modeling_scbert.training.pretrain` wire them together; each
also works with a hand-built ``Trainer``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from transformers import EvalPrediction, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .model_resolution import builds_new_model
from .modeling_scbert import ScBertForSequenceClassification

logger = logging.getLogger(__name__)

FINETUNING_PRESETS = ("published", "full")
# "auto": "full" for a model without pretrained weights or with one layer (nothing to keep frozen), else "published".
FINETUNING_PRESET_CHOICES = ("auto", *FINETUNING_PRESETS)
CLASS_WEIGHTINGS = ("none", "balanced")


class ScBertFeatureRedrawCallback(TrainerCallback):
    """Redraw the FAVOR+ random features every ``interval`` optimisation steps, as the published training did.

    The draw uses a generator seeded from ``(seed, global_step)``, so every process of a distributed run draws the
    same features without communicating, and a resumed run draws what the uninterrupted run would have.

    Args:
        interval: Steps between redraws. ``None`` uses the model's ``config.feature_redraw_interval``; 0 or ``None``
            there never redraws.
        seed: Base seed. ``None`` uses ``TrainingArguments.seed``.
    """

    def __init__(self, interval: int | None = None, seed: int | None = None):
        self.interval = interval
        self.seed = seed

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        if model is None:
            return
        model = extract_model_from_parallel(model, keep_torch_compile=False)  # DDP, FSDP, DeepSpeed, compiled
        interval = self.interval if self.interval is not None else model.config.feature_redraw_interval
        if not interval or state.global_step % interval:
            return
        seed = self.seed if self.seed is not None else args.seed
        generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + state.global_step)
        model.redraw_random_features(generator=generator)
        logger.debug("Redrew FAVOR+ random features at step %d", state.global_step)


def balanced_class_weights(labels: Sequence[int] | np.ndarray, num_labels: int) -> torch.Tensor:
    """Per-class weights ``n_cells / (num_labels * n_cells_of_class)`` (scikit-learn's ``"balanced"``).

    A class absent from ``labels`` gets weight 0 (it cannot contribute to the loss anyway).

    Parameters
    ----------
    labels
        Class ids of the training cells.
    num_labels
        Number of classes.

    Returns
    -------
    float32 tensor of shape ``(num_labels,)``.

    Raises
    ------
    ValueError
        When ``labels`` hold a class id of ``num_labels`` or more.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_labels).astype(np.float64)
    if counts.shape[0] > num_labels:
        raise ValueError(f"labels contain class ids up to {counts.shape[0] - 1}, but num_labels is {num_labels}.")
    weights = np.divide(counts.sum(), num_labels * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class ScBertWeightedLoss:
    """Class-weighted cross-entropy for ``Trainer(compute_loss_func=...)``.

    The loss is ``sum_i w[y_i] * CE_i / num_items_in_batch``, where ``num_items_in_batch`` is the Trainer's count of
    labelled cells over the whole accumulated, all-process batch. This is how the Trainer expects a
    ``compute_loss_func`` to normalise: it then neither divides by the gradient-accumulation steps nor averages
    differently across processes, so gradients match a single-process run on the same global batch. With
    :func:`balanced_class_weights` the weights average 1 over the training cells, so the scale of the loss is that of
    the unweighted mean.

    Parameters
    ----------
    class_weights
        ``(num_labels,)`` weights.
    """

    class_weights: torch.Tensor

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weights = self.class_weights.to(device=logits.device, dtype=torch.float32)
        losses = torch.nn.functional.cross_entropy(logits.float(), labels.view(-1), weight=weights, reduction="sum")
        count = labels.numel() if num_items_in_batch is None else num_items_in_batch
        if torch.is_tensor(count):
            count = count.to(losses.device)
        return losses / count


def compute_classification_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """``compute_metrics`` for cell-type classification: accuracy, macro-F1 and weighted F1.

    Macro-F1 weighs every cell type equally, so rare types count as much as common ones; it is the default
    ``metric_for_best_model`` of :func:`~modeling_scbert.training.finetune`.
    """
    from sklearn.metrics import accuracy_score, f1_score

    logits = eval_prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    predictions = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(eval_prediction.label_ids)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
    }


def classification_report(labels: Sequence[int], predictions: Sequence[int], *, label_names: Sequence[str]) -> dict:
    """Per-class precision, recall, F1 and support (scikit-learn's ``classification_report``) as a dict."""
    from sklearn.metrics import classification_report as sklearn_report

    return sklearn_report(
        labels,
        predictions,
        labels=list(range(len(label_names))),
        target_names=list(label_names),
        output_dict=True,
        zero_division=0,
    )


def format_classification_report(report: dict, label_names: Sequence[str]) -> str:
    """The report of :func:`classification_report` as a fixed-width table (one row per class, then the averages),
    for the log."""
    width = max(12, *(len(name) for name in label_names))
    lines = [f"{'':>{width}}  precision  recall  f1-score  support"]
    for name in [*label_names, "macro avg", "weighted avg"]:
        row = report[name]
        lines.append(
            f"{name:>{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1-score']:8.3f}  "
            f"{int(row['support']):7d}"
        )
    lines.append(f"{'accuracy':>{width}}  {report['accuracy']:.3f}")
    return "\n".join(lines)


def apply_finetuning_preset(model: ScBertForSequenceClassification, preset: str) -> list[str]:
    """Choose which parameters fine-tuning trains.

    ``"published"`` is the recipe of the scBERT paper: every parameter is frozen except those of the second-to-last
    encoder layer (``scbert.encoder.layers[-2]``), the final LayerNorm (``scbert.final_layer_norm``) and the
    classification head (``classifier``). ``"full"`` trains every parameter. Buffers (the frozen gene table, the
    random features) are never trained either way.

    Parameters
    ----------
    model
        The model, modified in place (``requires_grad``).
    preset
        ``"published"`` or ``"full"``.

    Returns
    -------
    Names of the trainable parameters.

    Raises
    ------
    ValueError
        For an unknown ``preset``, or ``"published"`` on a model with fewer than two encoder layers.
    """
    if preset not in FINETUNING_PRESETS:
        raise ValueError(f"preset must be one of {FINETUNING_PRESETS}; got {preset!r}.")
    if preset == "full":
        model.requires_grad_(True)
    else:
        layers = model.scbert.encoder.layers
        if len(layers) < 2:
            raise ValueError(
                f"The 'published' preset trains the second-to-last encoder layer, but this model has {len(layers)} "
                "layer; use preset='full'."
            )
        model.requires_grad_(False)
        for module in (layers[-2], model.scbert.final_layer_norm, model.classifier):
            module.requires_grad_(True)
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Fine-tuning preset %r: %s of %s parameters trainable.", preset, f"{count:,}", f"{total:,}")
    return trainable


def auto_finetuning_preset(model: ScBertForSequenceClassification, start: Any) -> str:
    """The preset ``"auto"`` stands for: ``"full"`` for a model without pretrained weights or with fewer than two
    layers (the published recipe trains the second-to-last), else ``"published"``.

    Parameters
    ----------
    model
        The model to fine-tune.
    start
        What the model was built from (the ``model`` argument of :func:`~modeling_scbert.training.finetune`):
        ``None`` or a config means a new model without pretrained weights.
    """
    if builds_new_model(start):
        preset, why = "full", "a new model has no pretrained layers to keep frozen"
    elif model.config.num_hidden_layers < 2:
        preset, why = "full", "the published recipe trains the second-to-last layer, and this model has one"
    else:
        preset, why = "published", "the model is pretrained"
    logger.info("Fine-tuning preset 'auto': %r (%s).", preset, why)
    return preset


def majority_class_baseline(
    train_labels: Sequence[int] | np.ndarray, eval_labels: Sequence[int] | np.ndarray, *, label_names: Sequence[str]
) -> dict[str, Any]:
    """Scores of the predictor that always answers the most frequent training class, on the evaluation labels.

    A classifier that does not beat it has learned nothing usable (it may still have a fine-looking accuracy on an
    imbalanced reference).

    Returns
    -------
    ``{"label": name, "accuracy": float, "macro_f1": float}``; macro-F1 over the classes present in
    ``eval_labels`` or predicted, as :func:`compute_classification_metrics` computes it.

    Raises
    ------
    ValueError
        When ``train_labels`` or ``eval_labels`` is empty.
    """
    from sklearn.metrics import f1_score

    train_labels, eval_labels = np.asarray(train_labels), np.asarray(eval_labels)
    if train_labels.size == 0 or eval_labels.size == 0:
        raise ValueError("The majority-class baseline needs training and evaluation labels; one of them is empty.")
    majority = int(np.bincount(train_labels, minlength=len(label_names)).argmax())
    constant = np.full_like(eval_labels, majority)
    return {
        "label": str(label_names[majority]),
        "accuracy": float(np.mean(eval_labels == majority)),
        "macro_f1": float(f1_score(eval_labels, constant, average="macro", zero_division=0)),
    }


def warn_if_no_better(metrics: dict[str, Any], majority: dict[str, Any]) -> bool:
    """Log a warning when the final evaluation does not beat the majority-class predictor on accuracy or on
    macro-F1; returns whether it warned.

    Parameters
    ----------
    metrics
        The final evaluation's metrics (``eval_accuracy``, ``eval_macro_f1``); without them nothing is checked.
    majority
        What :func:`majority_class_baseline` returned for the same evaluation cells.
    """
    accuracy, macro_f1 = metrics.get("eval_accuracy"), metrics.get("eval_macro_f1")
    if accuracy is None or macro_f1 is None:
        return False
    if accuracy > majority["accuracy"] and macro_f1 > majority["macro_f1"]:
        return False
    logger.warning(
        "The fine-tuned model is no better than always predicting the most frequent training class %r on the "
        "evaluation cells: accuracy %.3f against %.3f, macro-F1 %.3f against %.3f. It has not learned to tell the "
        "cell types apart; do not annotate with it. Check the learning rate and the number of epochs, the head "
        "(config classifier_type), and the genes the panel keeps.",
        majority["label"],
        accuracy,
        majority["accuracy"],
        macro_f1,
        majority["macro_f1"],
    )
    return True


def run_card_facts(
    given: dict[str, Any] | None,
    train_labels: np.ndarray,
    label_names: Sequence[str],
    *,
    num_eval_cells: int | None,
    model: ScBertForSequenceClassification,
    preset: str,
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
    """
    counts = np.bincount(train_labels, minlength=len(label_names))
    facts: dict[str, Any] = {
        "label_counts": {name: int(count) for name, count in zip(label_names, counts, strict=True)},
        "training_data": {"num_cells": int(counts.sum())},
        "hyperparameters": {"fine-tuning preset": preset},
    }
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


__all__ = [
    "CLASS_WEIGHTINGS",
    "FINETUNING_PRESETS",
    "FINETUNING_PRESET_CHOICES",
    "ScBertFeatureRedrawCallback",
    "ScBertWeightedLoss",
    "apply_finetuning_preset",
    "auto_finetuning_preset",
    "balanced_class_weights",
    "classification_report",
    "compute_classification_metrics",
    "format_classification_report",
    "majority_class_baseline",
    "run_card_facts",
    "warn_if_no_better",
]
