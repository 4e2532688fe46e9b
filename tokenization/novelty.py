"""The novelty score: how unlike every reference type a cell is, calibrated so that a threshold means a flag rate.

**The score.** A fine-tuned model keeps a summary of its training cells over the panel: each class's mean
log-normalised expression of every panel gene (``mu_k``, the class's pseudobulk profile) and the pooled within-class
variance of every gene (``s2``). A cell's raw score is its distance to the nearest class profile, every gene weighed by
how tightly the classes hold it::

    raw(x) = min_k  (1 / G) sum_g (x_g - mu_kg)^2 / (s2_g + floor)

(nearest-centroid distance under the diagonal of the shared within-class covariance, as in diagonal linear
discriminant analysis; ``floor`` keeps a gene that never varies within a class from weighing without bound). Genes that
every reference type holds at a steady level and the new cell does not (``CD3D`` for a natural-killer cell next to
CD8 T cells; ``S100A8`` for a classical monocyte next to non-classical ones) move the score, whatever the classifier
learned to look at. The choice among the scores tried (the model's confidence, its energy, Mahalanobis distances in
its own embeddings, k-nearest neighbours) is measured in ``docs/novelty.md``.

**Calibration.** ``finetune`` scores the held-out reference cells and keeps the distribution of their raw scores
(up to :data:`CALIBRATION_QUANTILES` quantiles, no cell's expression). The novelty of a cell is one minus its conformal
p-value against those known-type cells (Bates et al., *Ann. Statist.* 2023, "Testing for outliers with conformal
p-values")::

    novelty(x) = 1 - (1 + #{calibration scores >= raw(x)}) / (n + 1)

so for cells like the held-out ones, ``novelty >= 1 - alpha`` happens with probability at most ``alpha`` (plus
``1 / (n + 1)``: the score is interpolated between the calibration scores so that it orders every cell, see
:meth:`NoveltyDetector.novelty_of`): the default threshold :data:`DEFAULT_NOVELTY_THRESHOLD` flags about 5% of
known-type cells. The promise holds for cells drawn
like the reference; a query shifted for other reasons (a stimulation, another batch or chemistry) is flagged more
(measured in ``docs/novelty.md``).

The detector travels in the model folder as :data:`NOVELTY_FILE` (safetensors: the tensors, and the facts as its
metadata); this module needs only numpy, scipy and safetensors, so the pipeline, shipped as remote code, reads it too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

NOVELTY_FILE = "novelty_detector.safetensors"
# Flag a cell as a novel type at or above this novelty: at most 5% of known-type cells, by the calibration.
DEFAULT_NOVELTY_THRESHOLD = 0.95
# Added to each gene's within-class variance (log-normalised units squared); chosen on the Kang 2018 protocol
# (docs/novelty.md: 1e-3 and 3e-3 flag 3-6% of known stimulated cells, 1e-2 up to 8%, 1e-1 up to 12%).
SPREAD_FLOOR = 1e-3
# The calibration distribution kept with a model: every held-out cell's raw score up to this many, else quantiles.
CALIBRATION_QUANTILES = 1000
FORMAT_VERSION = 1


@dataclass
class ClassStatistics:
    """Per-class sums of a reference's log-normalised values, accumulated chunk by chunk (bounded memory).

    ``sums`` and ``squares`` are ``(num_classes, num_genes)`` float64, ``counts`` ``(num_classes,)`` int64.
    """

    sums: np.ndarray
    squares: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls, num_classes: int, num_genes: int) -> ClassStatistics:
        return cls(
            np.zeros((num_classes, num_genes)), np.zeros((num_classes, num_genes)), np.zeros(num_classes, np.int64)
        )

    def add(self, values: sp.csr_matrix | np.ndarray, labels: np.ndarray) -> None:
        """Add cells: ``values`` ``(cells, num_genes)`` log-normalised, ``labels`` ``(cells,)`` class ids (-1: skip)."""
        labels = np.asarray(labels)
        values = sp.csr_matrix(values, dtype=np.float64)
        for label in np.unique(labels[labels >= 0]):
            rows = values[labels == label]
            self.sums[label] += np.asarray(rows.sum(axis=0)).ravel()
            self.squares[label] += np.asarray(rows.multiply(rows).sum(axis=0)).ravel()
            self.counts[label] += rows.shape[0]

    def detector(self, class_names: Sequence[str], *, keep: np.ndarray | None = None) -> NoveltyDetector:
        """The (uncalibrated) detector of these classes, or of the classes where ``keep`` is true. A class without
        cells (a model's class that this run's cells lack, as ``class_change="extend"`` keeps) gets no profile: no
        cell is near it.

        Raises
        ------
        ValueError
            With fewer than two cells in all.
        """
        keep = np.ones(len(self.counts), bool) if keep is None else np.asarray(keep, bool)
        counts = self.counts[keep]
        names = [str(name) for name, kept in zip(class_names, keep) if kept]
        if counts.sum() < 2:
            raise ValueError(f"The novelty detector needs at least two training cells; got {int(counts.sum())}.")
        sums, squares = self.sums[keep], self.squares[keep]
        means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
        within = (squares - sums * means).sum(axis=0) / counts.sum()
        return NoveltyDetector(
            class_names=names,
            class_means=means.astype(np.float32),
            inverse_spread=(1.0 / (np.maximum(within, 0.0) + SPREAD_FLOOR)).astype(np.float32),
            class_counts=counts.copy(),
        )


@dataclass
class NoveltyDetector:
    """A model's novelty score: the class profiles of its reference and the calibration of their distances.

    Attributes
    ----------
    class_names
        The classes, in the model's class-id order.
    class_means
        ``(num_classes, num_genes)`` float32: each class's mean log-normalised expression of each panel gene.
    inverse_spread
        ``(num_genes,)`` float32: ``1 / (s2_g + floor)``, ``s2_g`` the pooled within-class variance.
    class_counts
        ``(num_classes,)``: the training cells each profile is the mean of; a class with none has no profile (its
        row of ``class_means`` is zero and never the nearest).
    calibration
        Sorted raw scores of held-out known-type cells (or quantiles of them), ``(n,)`` float64; empty when not
        calibrated.
    calibration_cells
        How many held-out cells the calibration was drawn from.
    facts
        What was measured when it was fitted (the card shows them), JSON-serialisable.
    """

    class_names: list[str]
    class_means: np.ndarray
    inverse_spread: np.ndarray
    class_counts: np.ndarray
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0))
    calibration_cells: int = 0
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def num_genes(self) -> int:
        return int(self.class_means.shape[1])

    @property
    def calibrated(self) -> bool:
        return self.calibration.size > 0

    def distances(self, values: sp.csr_matrix | np.ndarray) -> np.ndarray:
        """Each cell's distance to each class profile, ``(cells, num_classes)`` float64 (the formula above).

        ``values``: ``(cells, num_genes)`` log-normalised panel values (dense or sparse; the appended token not
        included). Computed as ``sum w x^2 - 2 x . (w mu_k) + sum w mu_k^2`` so that a sparse cell costs its non-zero
        genes only.

        Raises
        ------
        ValueError
            When ``values`` does not have the detector's number of genes.
        """
        if values.shape[1] != self.num_genes:
            raise ValueError(
                f"The novelty detector covers {self.num_genes} panel genes; the values have {values.shape[1]}."
            )
        weights = self.inverse_spread.astype(np.float64)
        means = self.class_means.astype(np.float64)
        values = sp.csr_matrix(values, dtype=np.float64)
        own = np.asarray(values.multiply(values) @ weights).ravel()
        cross = np.asarray(values @ (means * weights).T)
        constant = (means * means * weights).sum(axis=1)
        distances = np.maximum(own[:, None] - 2.0 * cross + constant[None, :], 0.0) / self.num_genes
        distances[:, np.asarray(self.class_counts) == 0] = np.inf  # classes without a profile
        return distances

    def raw_scores(self, values: sp.csr_matrix | np.ndarray) -> np.ndarray:
        """The distance to the nearest class profile, ``(cells,)`` float64."""
        return self.distances(values).min(axis=1)

    def calibrate(self, raw_scores: np.ndarray) -> None:
        """Keep the distribution of held-out known-type cells' raw scores (all of them, or quantiles)."""
        raw_scores = np.sort(np.asarray(raw_scores, dtype=np.float64))
        self.calibration_cells = int(raw_scores.size)
        if raw_scores.size > CALIBRATION_QUANTILES:
            raw_scores = np.quantile(raw_scores, np.linspace(0.0, 1.0, CALIBRATION_QUANTILES))
        self.calibration = raw_scores

    def scores(self, values: sp.csr_matrix | np.ndarray) -> np.ndarray:
        """The calibrated novelty of each cell, ``(cells,)`` float32 in ``[0, 1)``: one minus its conformal p-value.

        Raises
        ------
        ValueError
            When the detector is not calibrated, or for values of another panel.
        """
        return self.novelty_of(self.raw_scores(values))

    def novelty_of(self, raw_scores: np.ndarray) -> np.ndarray:
        """Raw scores -> calibrated novelty (see :meth:`scores`).

        At each calibration score ``c_(i)`` (sorted, ``i = 1..n``) the novelty is one minus its conformal p-value,
        ``(i - 1) / (n + 1)``; between them it is interpolated linearly, and above the largest it rises from
        ``(n - 1) / (n + 1)`` towards 1 as ``1 - 2 exp(-excess / spread) / (n + 1)`` (``spread``: the largest minus the median
        calibration score). So cells are ordered by their distance everywhere (no ties at the top), and a threshold
        ``1 - alpha`` flags at most a share ``alpha + 1 / (n + 1)`` of cells like the calibration ones.
        """
        if not self.calibrated:
            raise ValueError("This novelty detector is not calibrated: fit it with held-out known-type cells first.")
        calibration = self.calibration
        n = calibration.size
        raw_scores = np.asarray(raw_scores, dtype=np.float64)
        novelty = np.interp(raw_scores, calibration, np.arange(n) / (n + 1.0), left=0.0)
        above = raw_scores > calibration[-1]
        if above.any():
            spread = max(float(calibration[-1] - np.median(calibration)), 1e-12)
            excess = (raw_scores[above] - calibration[-1]) / spread
            novelty[above] = 1.0 - 2.0 * np.exp(-excess) / (n + 1.0)
        return novelty.astype(np.float32)

    # --- Saving and loading ------------------------------------------------------------------------------------------

    def save(self, folder: str | PathLike) -> Path:
        """Write :data:`NOVELTY_FILE` into ``folder`` (all-or-nothing); returns its path."""
        from safetensors.numpy import save_file

        from .atomic_files import atomic_path

        tensors = {
            "class_means": np.ascontiguousarray(self.class_means, dtype=np.float32),
            "inverse_spread": np.ascontiguousarray(self.inverse_spread, dtype=np.float32),
            "class_counts": np.ascontiguousarray(self.class_counts, dtype=np.int64),
            "calibration": np.ascontiguousarray(self.calibration, dtype=np.float64),
        }
        metadata = {
            "format_version": str(FORMAT_VERSION),
            "class_names": json.dumps(self.class_names),
            "calibration_cells": str(self.calibration_cells),
            "spread_floor": repr(SPREAD_FLOOR),
            "facts": json.dumps(self.facts),
        }
        path = Path(folder) / NOVELTY_FILE
        with atomic_path(path) as staging:
            save_file(tensors, str(staging), metadata=metadata)
        return path

    @classmethod
    def load(cls, name_or_path: str | PathLike, **hub_kwargs: Any) -> NoveltyDetector | None:
        """The detector saved with a model (a folder or a Hub id), or ``None`` when it has none (a model fine-tuned
        before novelty scores existed).

        Raises
        ------
        ValueError
            When the file is there but damaged or of an unknown format.
        """
        path = Path(name_or_path) / NOVELTY_FILE
        if not path.is_file():
            if Path(name_or_path).is_dir():
                return None
            from transformers.utils import cached_file

            found = cached_file(
                str(name_or_path), NOVELTY_FILE, _raise_exceptions_for_missing_entries=False, **hub_kwargs
            )
            if found is None:
                return None
            path = Path(found)
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: str | PathLike) -> NoveltyDetector:
        """Read a :data:`NOVELTY_FILE`.

        Raises
        ------
        ValueError
            For a damaged file, an unknown format version, or tensors that do not fit together.
        """
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as file:
                metadata = file.metadata() or {}
                names = list(file.keys())
                tensors = {name: file.get_tensor(name) for name in names}
        except (SafetensorError, OSError) as error:
            raise ValueError(f"The novelty detector {str(path)!r} cannot be read: {error}") from error
        if metadata.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(
                f"The novelty detector {str(path)!r} has format {metadata.get('format_version')!r}; this scbert "
                f"reads format {FORMAT_VERSION}. Upgrade scbert."
            )
        names = json.loads(metadata.get("class_names", "[]"))
        means, spread = tensors.get("class_means"), tensors.get("inverse_spread")
        if means is None or spread is None or means.shape != (len(names), spread.shape[0]):
            raise ValueError(f"The novelty detector {str(path)!r} is damaged: its tensors do not fit together.")
        detector = cls(
            class_names=names,
            class_means=means,
            inverse_spread=spread,
            class_counts=tensors.get("class_counts", np.zeros(len(names), np.int64)),
            calibration=tensors.get("calibration", np.zeros(0)),
            calibration_cells=int(metadata.get("calibration_cells", 0)),
            facts=json.loads(metadata.get("facts", "{}")),
        )
        if not (np.isfinite(detector.class_means).all() and np.isfinite(detector.inverse_spread).all()):
            raise ValueError(f"The novelty detector {str(path)!r} is damaged: it holds values that are not finite.")
        return detector

    def check_classes(self, class_names: Sequence[str], *, source: str) -> None:
        """Refuse a detector fitted for other classes than the model's (a folder whose model was replaced).

        Raises
        ------
        ValueError
            When the class lists differ.
        """
        if list(map(str, class_names)) != self.class_names:
            raise ValueError(
                f"The novelty detector in {source!r} was fitted for the classes {self.class_names}, the model has "
                f"{list(class_names)}: it belongs to another model. Remove {NOVELTY_FILE} from the folder, or "
                "fine-tune again."
            )


def accumulate(batches: Iterable[tuple[sp.csr_matrix, np.ndarray]], *, num_classes: int, num_genes: int):
    """:class:`ClassStatistics` of ``(values, labels)`` batches."""
    statistics = ClassStatistics.empty(num_classes, num_genes)
    for values, labels in batches:
        statistics.add(values, labels)
    return statistics


__all__ = [
    "CALIBRATION_QUANTILES",
    "DEFAULT_NOVELTY_THRESHOLD",
    "NOVELTY_FILE",
    "SPREAD_FLOOR",
    "ClassStatistics",
    "NoveltyDetector",
    "accumulate",
]
