"""Collators: densify a batch of sparse rows (``gene_indices``, ``bins``) into ``input_ids``, vectorised over the batch.

Only the batch is ever dense; the dataset stays sparse (:mod:`tokenization.dataset_columns`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .dataset_columns import BINS, GENE_INDICES, LABEL

__all__ = ["DataCollatorForCellClassification", "DataCollatorForMaskedExpression", "densify"]

IGNORE_INDEX = -100


def _gather(features: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate a batch's sparse rows: (cell of each entry, gene position, token)."""
    indices = [np.asarray(f[GENE_INDICES], dtype=np.int64) for f in features]
    bins = [np.asarray(f[BINS], dtype=np.int64) for f in features]
    lengths = np.fromiter((len(i) for i in indices), dtype=np.int64, count=len(indices))
    for i, (idx, b) in enumerate(zip(indices, bins, strict=True)):
        if len(idx) != len(b):
            raise ValueError(f"Cell {i} of the batch has {len(idx)} gene_indices but {len(b)} bins.")
    cells = np.repeat(np.arange(len(features)), lengths)
    if not indices:
        return cells, np.zeros(0, np.int64), np.zeros(0, np.int64)
    return cells, np.concatenate(indices), np.concatenate(bins)


def _dense(cells: np.ndarray, genes: np.ndarray, bins: np.ndarray, *, batch_size: int, num_genes: int) -> np.ndarray:
    if genes.size and (genes.min() < 0 or genes.max() >= num_genes):
        raise ValueError(
            f"gene_indices must lie in [0, {num_genes}) for a panel of {num_genes} genes; got values from "
            f"{genes.min()} to {genes.max()}. Was the dataset built with a different tokenizer?"
        )
    input_ids = np.zeros((batch_size, num_genes + 1), dtype=np.int64)
    input_ids.reshape(-1)[cells * (num_genes + 1) + genes] = bins
    return input_ids


def densify(features: Sequence[Mapping[str, Any]], *, num_genes: int) -> torch.Tensor:
    """Turn sparse rows (``gene_indices``, ``bins``) into ``input_ids`` of shape ``(len(features), num_genes + 1)``.

    Parameters
    ----------
    features
        Rows of a dataset from :func:`~tokenization.data.to_dataset`.
    num_genes
        Panel length.

    Returns
    -------
    int64 tensor; the appended last token is ``0``.

    Raises
    ------
    ValueError
        For a row whose ``gene_indices`` and ``bins`` differ in length, or gene indices outside the panel (a dataset
        built with another tokenizer).
    """
    cells, genes, bins = _gather(features)
    return torch.from_numpy(_dense(cells, genes, bins, batch_size=len(features), num_genes=num_genes))


@dataclass
class DataCollatorForMaskedExpression:
    """Densify a batch and mask it for masked-expression pretraining, with the published rule.

    Per cell, only non-zero tokens are eligible; ``ceil(mask_probability * n_nonzero)`` of them are selected
    uniformly at random; each selected token becomes ``mask_token_id`` with probability ``replace_probability`` and
    otherwise keeps its value (no random tokens). ``labels`` hold the original token at selected positions and
    ``-100`` elsewhere. The appended last token is zero and so never selected.

    Parameters
    ----------
    num_genes
        Panel length (``tokenizer.num_genes``); sequences have ``num_genes + 1`` tokens.
    mask_probability
        Fraction of each cell's non-zero tokens selected (rounded up).
    replace_probability
        Probability that a selected token is replaced by the mask token.
    mask_token_id
        The mask token (``tokenizer.mask_token_id``).
    seed
        Seed of the collator's generator, for reproducible masks; random when ``None``.
    generator
        A ``torch.Generator`` to draw from instead (``seed`` is then ignored).

    Raises
    ------
    ValueError
        When built, for probabilities out of range; when called, as :func:`densify`.
    """

    num_genes: int
    mask_probability: float = 0.15
    replace_probability: float = 0.9
    mask_token_id: int = 6
    seed: int | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.mask_probability <= 1:
            raise ValueError(f"mask_probability must lie in (0, 1]; got {self.mask_probability}.")
        if not 0 <= self.replace_probability <= 1:
            raise ValueError(f"replace_probability must lie in [0, 1]; got {self.replace_probability}.")
        if self.generator is None:
            self.generator = torch.Generator()
            if self.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.seed)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        cells, genes, bins = _gather(features)
        input_ids = _dense(cells, genes, bins, batch_size=len(features), num_genes=self.num_genes)
        nonzero = bins != 0
        if not nonzero.all():
            cells, genes, bins = cells[nonzero], genes[nonzero], bins[nonzero]
        lengths = np.bincount(cells, minlength=len(features))
        # Python float arithmetic, so a count like 0.15 * 20 rounds up exactly as math.ceil would.
        num_selected = np.ceil(self.mask_probability * lengths).astype(np.int64)

        # Sorting (cell + uniform score) shuffles each cell's entries independently while keeping cells apart;
        # the first num_selected entries of each cell are then a uniform random subset of its non-zero tokens.
        draws = torch.rand(2, len(cells), generator=self.generator, dtype=torch.float64).numpy()
        order = np.argsort(cells + draws[0])
        starts = np.cumsum(lengths) - lengths
        rank = np.arange(len(cells)) - starts[cells]
        selected = np.zeros(len(cells), dtype=bool)
        selected[order[rank < num_selected[cells]]] = True
        replace = selected & (draws[1] < self.replace_probability)

        stride = self.num_genes + 1
        labels = np.full_like(input_ids, IGNORE_INDEX)
        labels.reshape(-1)[cells[selected] * stride + genes[selected]] = bins[selected]
        input_ids.reshape(-1)[cells[replace] * stride + genes[replace]] = self.mask_token_id
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}


@dataclass
class DataCollatorForCellClassification:
    """Densify a batch for cell-type classification.

    Parameters
    ----------
    num_genes
        Panel length (``tokenizer.num_genes``).
    label_column
        Feature holding the class id; when absent from the batch (prediction), no ``labels`` are returned.

    Raises
    ------
    ValueError
        When called, as :func:`densify`.
    """

    num_genes: int
    label_column: str = LABEL

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"input_ids": densify(features, num_genes=self.num_genes)}
        if features and self.label_column in features[0]:
            batch["labels"] = torch.tensor([int(f[self.label_column]) for f in features], dtype=torch.int64)
        return batch
