"""The result of one annotation: computed once, then read by the AnnData writer, the CSV table and the CLI.

:func:`~modeling_scbert.annotation.annotate.predict_cell_types` returns an :class:`AnnotationResult`;
:func:`~modeling_scbert.annotation.annotate.annotate` writes it into the AnnData (:meth:`AnnotationResult.write`) and
``scbert annotate`` also writes its table (:meth:`AnnotationResult.to_table`), so the slots, their dtypes and the CSV
columns are defined here alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from tokenization.cell_calls import UNASSIGNED, UNASSIGNED_REASONS, CellCalls


@dataclass(frozen=True, eq=False)
class AnnotationResult:
    """Every cell's call, with what was used to make it.

    Attributes
    ----------
    obs_names
        The cells, in order (the table's ``cell_id``).
    class_names
        The model's classes, in class-index order.
    calls
        Each cell's best class, confidence, label and reason for ``"Unassigned"`` (the rule of
        :func:`tokenization.cell_calls.call_cells`).
    params
        The parameters recorded in ``.uns[key_added]['params']``.
    unassigned_threshold
        The threshold of the call rule, ``None`` when unset.
    novelty_threshold
        The novelty at or above which cells are ``"novel type"``, ``None`` unless novel types are called.
    novelty
        float32 ``(n_obs,)``, each cell's calibrated novelty (:mod:`tokenization.novelty`); ``None`` when the model
        has no novelty detector.
    probabilities
        float32 ``(n_obs, num_labels)``, every class probability; only when asked for.
    majority_voting
        Each cell's over-cluster's most frequent label; only with majority voting.
    over_clustering
        The Leiden over-clusters voted in; only with majority voting over Leiden clusters (not over a given column).
    """

    obs_names: pd.Index
    class_names: list[str]
    calls: CellCalls
    params: dict[str, Any]
    unassigned_threshold: float | None = None
    novelty_threshold: float | None = None
    novelty: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    majority_voting: np.ndarray | None = None
    over_clustering: np.ndarray | None = None

    @property
    def n_obs(self) -> int:
        return len(self.obs_names)

    @property
    def categories(self) -> list[str]:
        """The label categories: the classes, then ``"Unassigned"`` when a threshold is set or a cell is unassigned."""
        categories = list(self.class_names)
        thresholds = self.unassigned_threshold is not None or self.novelty_threshold is not None
        if (thresholds or self.calls.unassigned.any()) and UNASSIGNED not in categories:
            categories.append(UNASSIGNED)
        return categories

    def obs_columns(self, key_added: str = "scbert") -> dict[str, Any]:
        """The ``.obs`` columns, by name, in the order they are written (also the first columns of the table)."""
        categories = self.categories
        columns: dict[str, Any] = {
            f"{key_added}_cell_type": pd.Categorical(self.calls.labels, categories=categories),
            f"{key_added}_confidence": self.calls.confidence.astype(np.float32),
            f"{key_added}_unassigned_reason": pd.Categorical(self.calls.reasons, categories=list(UNASSIGNED_REASONS)),
        }
        if self.novelty is not None:
            columns[f"{key_added}_novelty"] = self.novelty.astype(np.float32)
        if self.majority_voting is not None:
            columns[f"{key_added}_majority_voting"] = pd.Categorical(self.majority_voting, categories=categories)
        if self.over_clustering is not None:
            # Cluster names are numbers as text: "2" before "10".
            names = sorted(set(self.over_clustering), key=lambda name: (len(name), name))
            columns[f"{key_added}_over_clustering"] = pd.Categorical(self.over_clustering, categories=names)
        return columns

    def slots(self, key_added: str = "scbert") -> dict[str, list[str]]:
        """The slots :meth:`write` fills, as ``obs_columns``, ``obsm_keys`` and ``uns_keys`` lists (the keywords of
        :func:`modeling_scbert.h5ad_io.write_h5ad_with_slots`)."""
        return {
            "obs_columns": list(self.obs_columns(key_added)),
            "obsm_keys": [f"{key_added}_probabilities"] if self.probabilities is not None else [],
            "uns_keys": [key_added],
        }

    def write(self, adata: AnnData, *, key_added: str = "scbert") -> None:
        """Write the result into ``adata`` (which must hold the same cells, in the same order).

        Written: the columns of :meth:`obs_columns`; ``.obsm[f"{key_added}_probabilities"]`` with the
        probabilities; ``.uns[key_added]``: ``params`` and, with the probabilities, ``class_names`` (their columns).
        Nothing else is changed; see :func:`~modeling_scbert.annotation.annotate.annotate` for every slot.

        Raises
        ------
        ValueError
            When ``adata`` does not have the result's number of cells.
        """
        if adata.n_obs != self.n_obs:
            raise ValueError(f"The result is for {self.n_obs:,} cells; the AnnData has {adata.n_obs:,}.")
        for name, column in self.obs_columns(key_added).items():
            adata.obs[name] = column
        uns: dict[str, Any] = {"params": self.params}
        if self.probabilities is not None:
            adata.obsm[f"{key_added}_probabilities"] = self.probabilities
            uns["class_names"] = np.asarray(self.class_names, dtype=object)
        adata.uns[key_added] = uns

    def to_table(self, *, key_added: str = "scbert", extra: pd.DataFrame | None = None) -> pd.DataFrame:
        """One row per cell, indexed by ``cell_id``: the ``.obs`` columns, then ``extra``'s columns (e.g. known labels,
        row for row), then ``probability:<class>`` for every class when there are probabilities.

        Raises
        ------
        ValueError
            When ``extra`` does not have one row per cell.
        """
        columns = dict(self.obs_columns(key_added))
        if extra is not None:
            if len(extra) != self.n_obs:
                raise ValueError(f"extra has {len(extra):,} rows; the result has {self.n_obs:,} cells.")
            # Row for row, whatever extra's index: the cells are the result's.
            columns.update({name: extra[name].array for name in extra.columns})
        if self.probabilities is not None:
            columns.update(
                {f"probability:{name}": self.probabilities[:, i] for i, name in enumerate(self.class_names)}
            )
        return pd.DataFrame(columns, index=pd.Index(self.obs_names, name="cell_id"))

    def summary(self) -> str:
        """How many cells of each type, most frequent first: ``"annotated 1,024 cells: T 600, B 400, NK 24"``."""
        counts = pd.Series(pd.Categorical(self.calls.labels, categories=self.categories)).value_counts()
        return f"annotated {self.n_obs:,} cells: " + ", ".join(f"{name} {n:,}" for name, n in counts.items() if n)


__all__ = ["AnnotationResult"]
