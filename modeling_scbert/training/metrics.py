"""What a fine-tuned classifier is scored by: the metrics the Trainer reports, the per-class report, and the
majority-class floor it must beat; :func:`evaluate_classifier` scores a trained classifier by all three.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import EvalPrediction, Trainer

from tokenization.atomic_files import write_text_atomically

logger = logging.getLogger(__name__)


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


# A class of the evaluation cells that the model predicts with an F1 below this has, for annotation, not been learned.
MISSED_CLASS_F1 = 0.05


def missed_classes(
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    *,
    label_names: Sequence[str],
    min_f1: float = MISSED_CLASS_F1,
) -> list[dict[str, Any]]:
    """The classes of the evaluation cells that a model never predicts, or predicts with an F1 below ``min_f1``.

    Returns
    -------
    One ``{"label", "cells", "predicted", "f1"}`` per such class (cells: evaluation cells of the class; predicted:
    cells predicted as it), in class-id order; empty when every class the evaluation cells have is learned.
    """
    from sklearn.metrics import f1_score

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = list(range(len(label_names)))
    f1 = f1_score(labels, predictions, labels=classes, average=None, zero_division=0)
    cells = np.bincount(labels, minlength=len(classes))
    predicted = np.bincount(predictions, minlength=len(classes))
    return [
        {"label": str(label_names[k]), "cells": int(cells[k]), "predicted": int(predicted[k]), "f1": float(f1[k])}
        for k in classes
        if cells[k] and (not predicted[k] or f1[k] < min_f1)
    ]


def warn_if_classes_missed(missed: Sequence[dict[str, Any]]) -> bool:
    """Log a WARNING naming the classes of :func:`missed_classes` (never predicted, or F1 near 0); returns whether
    it warned."""
    if not missed:
        return False
    never = [row for row in missed if not row["predicted"]]
    weak = [row for row in missed if row["predicted"]]
    parts = []
    if never:
        parts.append("never predicts " + ", ".join(f"{row['label']!r} ({row['cells']:,} cells)" for row in never))
    if weak:
        parts.append(
            f"predicts with F1 below {MISSED_CLASS_F1} "
            + ", ".join(f"{row['label']!r} ({row['cells']:,} cells, F1 {row['f1']:.3f})" for row in weak)
        )
    logger.warning(
        "On the evaluation cells the fine-tuned model %s: it has not learned %s, and cells of %s will be "
        "annotated as other types. Check the learning rate, the number of epochs and the seed (docs/training.md), "
        "class_weighting='balanced' for rare types, and the genes the panel keeps.",
        "; ".join(parts),
        "this class" if len(missed) == 1 else f"these {len(missed)} classes",
        "this type" if len(missed) == 1 else "these types",
    )
    return True


@dataclass(frozen=True)
class ScBertEvaluation:
    """The final evaluation of a fine-tuned classifier (what :func:`evaluate_classifier` found).

    Parameters
    ----------
    metrics
        The ``Trainer``'s metrics of the evaluation cells, prefixed ``eval_`` (``eval_accuracy``, ``eval_macro_f1``,
        ``eval_loss``, ...).
    report
        The per-class report of :func:`classification_report`.
    majority
        The scores of always predicting the most frequent training class (:func:`majority_class_baseline`).
    missed
        The classes of the evaluation cells never predicted or predicted with F1 near 0 (:func:`missed_classes`).
    logits
        ``(cells, classes)``: the model's scores of the evaluation cells, in their order (the novelty detector's
        calibration reads them).
    """

    metrics: dict[str, float]
    report: dict[str, Any]
    majority: dict[str, Any]
    missed: list[dict[str, Any]] = field(default_factory=list)
    logits: np.ndarray | None = None


def evaluate_classifier(
    trainer: Trainer,
    eval_dataset: Any,
    *,
    train_labels: Sequence[int] | np.ndarray,
    label_names: Sequence[str],
) -> ScBertEvaluation:
    """Score a trained classifier on the evaluation cells, and report it.

    Logs the ``Trainer``'s metrics, warns when the classifier is no better than always predicting the most frequent
    training class (:func:`warn_if_no_better`) and when it never predicts classes the evaluation cells have, or
    predicts them with F1 near 0 (:func:`missed_classes`), and, on the main process, logs the per-class report and writes it to
    ``output_dir/classification_report.json``.

    Parameters
    ----------
    trainer
        The ``Trainer`` after training, with ``compute_metrics=``:func:`compute_classification_metrics`.
    eval_dataset
        The evaluation cells (a dataset with a ``label`` column).
    train_labels
        Class ids of the training cells (for the majority-class floor).
    label_names
        The class names, in class-id order.

    Returns
    -------
    The metrics, the per-class report and the majority-class floor.

    Raises
    ------
    ValueError
        When the training or the evaluation cells are empty.
    """
    prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
    trainer.log_metrics("eval", prediction.metrics)
    labels = np.asarray(prediction.label_ids)
    predicted = np.asarray(prediction.predictions).argmax(-1)
    report = classification_report(labels, predicted, label_names=label_names)
    majority = majority_class_baseline(train_labels, labels, label_names=label_names)
    warn_if_no_better(prediction.metrics, majority)
    missed = missed_classes(labels, predicted, label_names=label_names)
    warn_if_classes_missed(missed)
    if trainer.is_world_process_zero():
        output_dir = Path(trainer.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output_dir / "classification_report.json", json.dumps(report, indent=2) + "\n")
        logger.info("Per-class report:\n%s", format_classification_report(report, label_names))
    logits = np.asarray(prediction.predictions)
    return ScBertEvaluation(metrics=prediction.metrics, report=report, majority=majority, missed=missed, logits=logits)


__all__ = [
    "ScBertEvaluation",
    "classification_report",
    "compute_classification_metrics",
    "evaluate_classifier",
    "format_classification_report",
    "MISSED_CLASS_F1",
    "majority_class_baseline",
    "missed_classes",
    "warn_if_classes_missed",
    "warn_if_no_better",
]
