"""Fitting a fine-tuned model's novelty detector (:mod:`tokenization.novelty`) and what the card says about it.

``finetune`` calls :func:`fit_novelty_detector` once training is done: the class profiles come from the training cells
and the calibration from the held-out ones (the evaluation cells, or the ``eval_fraction`` split, the same cells the
final evaluation scores). On those held-out cells it also measures what the card reports
(:func:`novelty_facts`): the flag rate at the default threshold, the area under the ROC curve of finding each type
when that type is left out of the profiles, the expected calibration error of the probabilities, and the
coverage-accuracy curve.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from tokenization import ScBertTokenizer
from tokenization.data import stratified_eval_mask
from tokenization.label_rules import cell_labels
from tokenization.novelty import DEFAULT_NOVELTY_THRESHOLD, ClassStatistics, NoveltyDetector

logger = logging.getLogger(__name__)

# Cells held out to calibrate the detector when the run has no evaluation cells.
CALIBRATION_FRACTION = 0.1
# A left-out type is scored (leave-one-type-out AUROC) when the held-out cells hold at least this many of it.
MIN_LEFT_OUT_CELLS = 5
ECE_BINS = 15
COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def _values(adata: AnnData, rows: np.ndarray, tokenizer: ScBertTokenizer, read_options: dict[str, Any]):
    """The log-normalised panel values of ``adata``'s rows where ``rows`` is true, chunk by chunk, with their row
    indices."""
    for start, end, _, values in tokenizer.iter_encoded(adata, progress=False, return_values=True, **read_options):
        chosen = np.flatnonzero(rows[start:end])
        if chosen.size:
            yield values[chosen], start + chosen


def fit_novelty_detector(
    train_data: Any,
    eval_data: Any,
    *,
    tokenizer: ScBertTokenizer,
    label_key: str | None,
    label_names: Sequence[str],
    label_rule: dict[str, bool],
    eval_fraction: float | None,
    split_seed: int,
    read_options: dict[str, Any],
    eval_logits: np.ndarray | None = None,
) -> NoveltyDetector | None:
    """The calibrated novelty detector of a fine-tuning run, or ``None`` when its cells are not AnnData objects.

    Parameters
    ----------
    train_data, eval_data
        ``finetune``'s cells. The profiles are the training cells' (less the ``eval_fraction`` split when there is
        no ``eval_data``); the calibration is the held-out cells' of the run's classes (``eval_data``, the split, or
        else a :data:`CALIBRATION_FRACTION` split made for the detector alone).
    tokenizer, label_key, label_names, label_rule, read_options
        As the run read its cells: the same panel, classes in class-id order, label rule and reading options.
    eval_fraction, split_seed
        The run's split (:func:`tokenization.data.stratified_eval_mask`, the rule of ``stratified_split``).
    eval_logits
        ``(held-out cells, classes)``: the model's scores of the held-out cells in their order, for the
        calibration error and the coverage-accuracy curve of the facts.

    Returns
    -------
    The detector, calibrated, with :func:`novelty_facts` in ``facts``; ``None`` for dataset or corpus inputs (the
    values the profiles need are not in an encoded dataset).

    Raises
    ------
    ValueError
        When a class has no training cell left for its profile.
    """
    if not isinstance(train_data, AnnData) or not (eval_data is None or isinstance(eval_data, AnnData)):
        logger.info(
            "No novelty detector: it is fitted from AnnData training cells, and this run's are %s.",
            type(train_data).__name__,
        )
        return None
    label_names = [str(name) for name in label_names]
    _, labels = cell_labels(train_data, label_key=label_key, label_names=label_names, **label_rule)
    labelled = labels >= 0
    held_out = np.zeros(len(labels), bool)
    if eval_data is None:
        fraction = eval_fraction or CALIBRATION_FRACTION
        held_out[np.flatnonzero(labelled)] = stratified_eval_mask(labels[labelled], fraction, seed=split_seed)
    profile_rows = labelled & ~held_out
    statistics = ClassStatistics.empty(len(label_names), tokenizer.num_genes)
    for values, rows in _values(train_data, profile_rows, tokenizer, read_options):
        statistics.add(values, labels[rows])
    detector = statistics.detector(label_names)
    unprofiled = [name for name, count in zip(label_names, statistics.counts) if count == 0]
    if unprofiled:
        logger.warning(
            "The novelty detector has no profile for %s: this run has no training cells of them (the model's classes "
            "kept from its start). Their cells will score as novel.",
            unprofiled,
        )

    if eval_data is None:
        calibration_data, calibration_rows, calibration_labels = train_data, held_out, labels
    else:
        calibration_labels = _known_labels(eval_data, label_key, label_names)
        calibration_data, calibration_rows = eval_data, calibration_labels >= 0
    blocks, truth = [], []
    for values, rows in _values(calibration_data, calibration_rows, tokenizer, read_options):
        blocks.append(values)
        truth.append(calibration_labels[rows])
    if sum(len(rows) for rows in truth) < 2:
        logger.warning("No novelty detector: fewer than 2 held-out cells of the run's classes to calibrate it.")
        return None
    # The held-out cells are read once: the calibration and every left-out type of the facts score them.
    values, truth = sp.vstack(blocks).tocsr(), np.concatenate(truth)
    distances = detector.distances(values)
    detector.calibrate(distances.min(axis=1))
    # The final evaluation's logits are of the same cells in the same order (its held-out cells of known types).
    logits = eval_logits if eval_logits is not None and len(eval_logits) == len(truth) else None
    detector.facts = novelty_facts(detector, statistics, values, distances, truth, logits=logits)
    logger.info(
        "Novelty detector calibrated on %d held-out cells: %.1f%% of them at or above the threshold %.2f; "
        "leave-one-type-out AUROC %s.",
        detector.calibration_cells,
        100 * detector.facts["held_out_flagged"],
        DEFAULT_NOVELTY_THRESHOLD,
        detector.facts.get("left_out_auroc_mean"),
    )
    return detector


def _known_labels(adata: AnnData, label_key: str | None, label_names: Sequence[str]) -> np.ndarray:
    """Class ids of evaluation cells; ``-1`` for cells without a label or of a type the model lacks (not
    calibration cells: the calibration is of known-type cells)."""
    from tokenization.label_rules import MISSING_LABEL_TEXTS

    index = {name: i for i, name in enumerate(label_names)}
    texts = adata.obs[label_key].astype(str).str.strip()
    return np.array([-1 if text in MISSING_LABEL_TEXTS else index.get(text, -1) for text in texts], dtype=np.int64)


def auroc(novel: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling ``novel`` (bool) cells from the others (ties count half):
    the Mann-Whitney statistic over the ranks."""
    from scipy.stats import rankdata

    novel = np.asarray(novel, bool)
    n_novel, n_known = int(novel.sum()), int((~novel).sum())
    if not n_novel or not n_known:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[novel].sum() - n_novel * (n_novel + 1) / 2) / (n_novel * n_known))


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class's probability (Guo et al., ICML 2017): the mean over ``bins``
    equal-width confidence bins, weighted by their cells, of ``|accuracy - mean confidence|``."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def coverage_accuracy(order_scores: np.ndarray, correct: np.ndarray, coverages: Sequence[float] = COVERAGES):
    """Accuracy of the cells kept when only the ``coverage`` fraction with the lowest ``order_scores`` is kept:
    ``[[coverage, accuracy], ...]``."""
    order = np.argsort(order_scores, kind="stable")
    rows = []
    for coverage in coverages:
        kept = order[: max(1, int(round(coverage * len(order))))]
        rows.append([float(coverage), float(correct[kept].mean())])
    return rows


def novelty_facts(
    detector: NoveltyDetector,
    statistics: ClassStatistics,
    values: sp.csr_matrix,
    distances: np.ndarray,
    truth: np.ndarray,
    *,
    logits: np.ndarray | None,
) -> dict[str, Any]:
    """What the card says about a detector, measured on its held-out calibration cells.

    ``values`` ``(cells, num_genes)`` are those cells' log-normalised values, ``distances`` ``(cells, classes)`` and
    ``truth`` ``(cells,)`` their distances to the class profiles
    and their class ids. The leave-one-type-out AUROC refits the profiles (and the within-class spread) without one
    type and asks how well the score finds that type's held-out cells among the others; it is the honest estimate a
    run can make of finding a type its reference lacks (``docs/novelty.md`` measures the real thing).
    """
    raw = distances.min(axis=1)
    novelty = detector.novelty_of(raw)
    facts: dict[str, Any] = {
        "method": "nearest class profile, standardised by the within-class spread (tokenization.novelty)",
        "calibration_cells": int(detector.calibration_cells),
        "threshold": DEFAULT_NOVELTY_THRESHOLD,
        "held_out_flagged": float((novelty >= DEFAULT_NOVELTY_THRESHOLD).mean()),
        "profile_cells": {name: int(n) for name, n in zip(detector.class_names, detector.class_counts)},
    }
    left_out = {}
    present = np.bincount(truth, minlength=len(detector.class_names))
    if len(detector.class_names) >= 3:
        for c, name in enumerate(detector.class_names):
            if present[c] < MIN_LEFT_OUT_CELLS or statistics.counts[c] == 0:
                continue
            keep = np.arange(len(detector.class_names)) != c
            reduced = statistics.detector(detector.class_names, keep=keep)
            left_out[name] = auroc(truth == c, reduced.raw_scores(values))
    if left_out:
        facts["left_out_auroc"] = left_out
        facts["left_out_auroc_mean"] = float(np.mean(list(left_out.values())))
        facts["left_out_auroc_min"] = float(np.min(list(left_out.values())))
    if logits is not None:
        shifted = logits - logits.max(axis=1, keepdims=True)
        probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        correct = probabilities.argmax(axis=1) == truth
        facts["expected_calibration_error"] = expected_calibration_error(probabilities, truth)
        facts["coverage_accuracy"] = {
            "novelty": coverage_accuracy(raw, correct),
            "one_minus_max_probability": coverage_accuracy(1.0 - probabilities.max(axis=1), correct),
        }
    return facts


__all__ = [
    "auroc",
    "coverage_accuracy",
    "expected_calibration_error",
    "fit_novelty_detector",
    "novelty_facts",
]
