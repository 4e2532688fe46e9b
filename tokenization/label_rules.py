"""The one rule for the cell-type labels a model learns from or is scored on.

Used by every path that reads labels (``finetune`` and ``scbert finetune``, ``to_dataset``, the ensemble, the
evaluation cells), so that one label column gives the same classes everywhere:

- **Missing labels** are NaN, None, and the texts that stand for them once a column has been through
  ``.astype(str)`` or a spreadsheet: ``''``, ``'nan'``, ``'NaN'``, ``'None'``, ``'<NA>'``, ``'NA'``, ``'N/A'``,
  ``'null'`` (any case, any surrounding whitespace). They are refused with their count, or the cells are left out
  with ``drop_missing_labels=True``: a missing label is usually a mapping that failed, and a class called ``'nan'``
  would be trained on it.
- **Spellings of one label** that differ only by surrounding or repeated whitespace or by case (``'T cell'``,
  ``'T cell '``, ``'t cell'``) are refused with the groups listed, or merged into the most frequent spelling with
  ``merge_label_variants=True`` (logged): left alone they would split one type into classes that compete for its
  probability.
- **The classes** are the labels the kept cells carry, in natural order: a categorical column's category order,
  otherwise sorted (numbers by value, text alphabetically).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["MISSING_LABEL_TEXTS", "CellLabels", "read_cell_labels", "variant_key"]

# Texts that mean "no label" (compared after stripping whitespace, case-insensitively).
MISSING_LABEL_TEXTS = frozenset({"", "nan", "none", "<na>", "na", "n/a", "null", "nat"})


def variant_key(label: str) -> str:
    """What two spellings of one label share: the text with whitespace runs collapsed and case folded."""
    return " ".join(label.split()).casefold()


@dataclass(frozen=True)
class CellLabels:
    """The labels of a set of cells after the rule.

    Attributes
    ----------
    keep
        ``(n_cells,)`` bool: the cells that have a label (all ``True`` unless missing labels were dropped).
    labels
        ``(n_kept,)`` object array of ``str``: the label of each kept cell (merged spellings already merged).
    class_names
        The distinct labels, in natural order.
    """

    keep: np.ndarray
    labels: np.ndarray
    class_names: list[str]


def read_cell_labels(
    values: pd.Series | Sequence,
    *,
    where: str,
    drop_missing_labels: bool = False,
    merge_label_variants: bool = False,
) -> CellLabels:
    """Apply the label rule (module docstring) to one label column.

    Parameters
    ----------
    values
        The labels, one per cell (e.g. ``adata.obs["cell_type"]``), in any dtype.
    where
        How messages name the column, e.g. ``".obs['cell_type'] of the training data (train_data)"``.
    drop_missing_labels
        Leave out the cells without a label (logged at WARNING with their count) instead of refusing them.
    merge_label_variants
        Merge spellings of one label into its most frequent spelling (logged at WARNING) instead of refusing them.

    Returns
    -------
    The kept cells, their labels and the classes.

    Raises
    ------
    ValueError
        For missing labels (counted by spelling) without ``drop_missing_labels``; when every label is missing; for
        spellings of one label (the groups listed, with counts) without ``merge_label_variants``.
    """
    series = values if isinstance(values, pd.Series) else pd.Series(list(values))
    text = series.astype(object).where(series.notna(), None).map(lambda v: None if v is None else str(v))
    placeholder = text.map(lambda v: v is not None and v.strip().casefold() in MISSING_LABEL_TEXTS)
    missing = (text.isna() | placeholder).to_numpy(dtype=bool)
    if missing.any():
        spellings = Counter("NaN / None (no value)" if v is None else repr(v) for v in text[missing])
        listing = ", ".join(f"{n:,} {spelling}" for spelling, n in spellings.most_common())
        if missing.all():
            raise ValueError(f"No cell has a label in {where}: {listing}.")
        if not drop_missing_labels:
            raise ValueError(
                f"{int(missing.sum()):,} of {len(text):,} cells have no label in {where}: {listing} (texts such as "
                "'nan' or 'None' are what .astype(str) makes of missing values). Pass drop_missing_labels=True "
                "(--drop_missing_labels) to leave those cells out, or fill them with a real label."
            )
        logger.warning("Leaving out %s cells without a label in %s: %s.", f"{int(missing.sum()):,}", where, listing)
    keep = ~missing
    kept = text[keep]
    counts = Counter(kept)
    groups: dict[str, list[str]] = {}
    for label in counts:
        groups.setdefault(variant_key(label), []).append(label)
    variants = {key: sorted(spellings, key=lambda s: (-counts[s], s)) for key, spellings in groups.items()}
    variants = {key: spellings for key, spellings in variants.items() if len(spellings) > 1}
    if variants:
        listing = "; ".join(
            " / ".join(f"{s!r} ({counts[s]:,} cells)" for s in spellings) for spellings in variants.values()
        )
        if not merge_label_variants:
            raise ValueError(
                f"Some labels in {where} differ only by whitespace or case: {listing}. They would become separate "
                "classes of one type. Fix the spellings, or pass merge_label_variants=True (--merge_label_variants) "
                "to merge each group into its most frequent spelling."
            )
        logger.warning("Merging spellings of one label in %s into the most frequent one: %s.", where, listing)
        canonical = {s: spellings[0] for spellings in variants.values() for s in spellings}
        kept = kept.map(lambda s: canonical.get(s, s))
    labels = kept.to_numpy(dtype=object)
    present = set(labels)
    if isinstance(series.dtype, pd.CategoricalDtype):
        ordered = [str(c) for c in series.cat.categories]
        class_names = list(dict.fromkeys(name for name in ordered if name in present))
    else:
        originals = list(pd.unique(series[keep].to_numpy()))
        try:
            originals = sorted(originals)
        except TypeError:  # mixed types: sort by their text
            originals = sorted(originals, key=str)
        class_names = list(dict.fromkeys(str(v) for v in originals if str(v) in present))
    return CellLabels(keep=keep, labels=labels, class_names=class_names)
