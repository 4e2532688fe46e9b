"""The per-cell call rule of annotation: from class probabilities to a label, a confidence and, when there is one,
the reason a cell is left ``"Unassigned"``.

One rule for every annotator: ``modeling_scbert``'s ``annotate`` (and so ``scbert annotate``) and the
``cell-type-annotation`` pipeline both call :func:`call_cells`. It lives in ``tokenization`` because the pipeline
travels as remote code and can import only the files saved beside it.

The rule, per cell:

1. the label is the most likely class (the first one on a tie), the confidence its probability;
2. the label becomes ``"Unassigned"`` when the cell's probabilities are not all finite (NaN or infinite: the model
   or its arithmetic failed, and no class is more likely than another; its confidence is NaN), when the cell has no
   counts in any panel gene, or fewer detected panel genes than ``min_genes`` (too little signal for any call), or
   when the cell's novelty (:mod:`tokenization.novelty`) is at or above ``novelty_threshold`` (a type the
   reference lacks: asked for with ``novel_types``), or when the confidence is below ``unassigned_threshold`` (the
   published rule for a candidate novel type); the confidence is kept;
3. the reason recorded is the first that applies, in the order of :data:`UNASSIGNED_REASONS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .preprocessing import low_signal

UNASSIGNED = "Unassigned"
# Why a cell is labelled UNASSIGNED, most fundamental first: a cell without signal is "no panel counts" even when its
# confidence is low too.
UNASSIGNED_REASONS = ("non-finite probabilities", "no panel counts", "few panel genes", "novel type", "low confidence")


@dataclass(frozen=True, eq=False)
class CellCalls:
    """The calls of ``n`` cells, as :func:`call_cells` makes them.

    Attributes
    ----------
    best
        int64 ``(n,)``: the most likely class, an index into the class names.
    confidence
        float32 ``(n,)``: the probability of that class (kept for ``"Unassigned"`` cells).
    reasons
        object ``(n,)``: one of :data:`UNASSIGNED_REASONS`, or ``None`` for a cell that is assigned.
    labels
        object ``(n,)``: the class name of ``best``, or :data:`UNASSIGNED`.
    """

    best: np.ndarray
    confidence: np.ndarray
    reasons: np.ndarray
    labels: np.ndarray

    @property
    def unassigned(self) -> np.ndarray:
        """bool ``(n,)``: which cells are labelled :data:`UNASSIGNED`."""
        return np.not_equal(self.reasons, None)

    def count(self, reason: str) -> int:
        """How many cells are ``"Unassigned"`` for ``reason`` (one of :data:`UNASSIGNED_REASONS`)."""
        return int(np.equal(self.reasons, reason).sum())


def call_cells(
    probabilities: np.ndarray,
    class_names: Sequence[str],
    *,
    detected_genes: np.ndarray,
    min_genes: int,
    unassigned_threshold: float | None = None,
    novelty: np.ndarray | None = None,
    novelty_threshold: float | None = None,
) -> CellCalls:
    """Apply the call rule (see the module docstring) to every cell.

    Parameters
    ----------
    probabilities
        ``(n, k)`` class probabilities, one row per cell, columns in ``class_names`` order.
    class_names
        The ``k`` class names, in class-index order.
    detected_genes
        ``(n,)`` each cell's number of detected panel genes (as the tokenizer's ``iter_encoded`` yields them).
    min_genes
        Cells with some but fewer detected panel genes than this are ``"few panel genes"``.
    unassigned_threshold
        Cells whose confidence is below this are ``"low confidence"``; ``None`` leaves every cell with signal
        assigned.
    novelty
        ``(n,)`` each cell's calibrated novelty (:meth:`tokenization.novelty.NoveltyDetector.scores`); needed with
        ``novelty_threshold``.
    novelty_threshold
        Cells whose novelty is at or above this are ``"novel type"``; ``None`` calls no novel type.

    Returns
    -------
    The calls, one per row of ``probabilities``.

    Raises
    ------
    ValueError
        When the shapes do not fit: ``probabilities`` not ``(n, len(class_names))``, or ``detected_genes`` not
        ``(n,)``, or ``novelty`` not ``(n,)``; ``novelty_threshold`` without ``novelty``.
    """
    probabilities = np.asarray(probabilities)
    detected_genes = np.asarray(detected_genes)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities must have shape (cells, {len(class_names)}) for {len(class_names)} classes; got "
            f"{probabilities.shape}."
        )
    if detected_genes.shape != (probabilities.shape[0],):
        raise ValueError(
            f"detected_genes must have one entry per cell, shape ({probabilities.shape[0]},); got "
            f"{detected_genes.shape}."
        )
    if novelty_threshold is not None:
        if novelty is None:
            raise ValueError("novelty_threshold needs each cell's novelty; the model has no novelty detector.")
        novelty = np.asarray(novelty)
        if novelty.shape != (probabilities.shape[0],):
            raise ValueError(
                f"novelty must have one entry per cell, shape ({probabilities.shape[0]},); got {novelty.shape}."
            )
    # A NaN compares false with everything, so argmax and the threshold would make it a confident first class.
    non_finite = ~np.isfinite(probabilities).all(axis=1)
    finite = np.where(non_finite[:, None], 0.0, probabilities) if non_finite.any() else probabilities
    best = finite.argmax(axis=1).astype(np.int64)
    confidence = probabilities[np.arange(len(best)), best].astype(np.float32)
    confidence[non_finite] = np.nan
    reasons = np.full(len(best), None, dtype=object)
    # Assigned from the least to the most fundamental reason, so the most fundamental one wins.
    if unassigned_threshold is not None:
        reasons[confidence < unassigned_threshold] = "low confidence"
    if novelty_threshold is not None:
        reasons[novelty >= novelty_threshold] = "novel type"
    empty, few = low_signal(detected_genes, min_genes=min_genes)
    reasons[few] = "few panel genes"
    reasons[empty] = "no panel counts"
    reasons[non_finite] = "non-finite probabilities"
    labels = np.asarray(list(class_names), dtype=object)[best]
    labels[np.not_equal(reasons, None)] = UNASSIGNED
    return CellCalls(best=best, confidence=confidence, reasons=reasons, labels=labels)


__all__ = ["UNASSIGNED", "UNASSIGNED_REASONS", "CellCalls", "call_cells"]
