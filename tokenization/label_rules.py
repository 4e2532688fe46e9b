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

:func:`read_cell_labels` applies the rule to a column; :func:`cell_labels` gives an AnnData's class ids by it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["MISSING_LABEL_TEXTS", "CellLabels", "cell_labels", "read_cell_labels", "variant_key"]

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


def cell_labels(
    adata: AnnData,
    *,
    label_key: str | None,
    label_names: Sequence[str] | None,
    drop_missing_labels: bool = False,
    merge_label_variants: bool = False,
) -> tuple[list[str] | None, np.ndarray | None]:
    """Class names and per-cell class ids (int64) for ``.obs[label_key]``, read by the one label rule
    (:func:`tokenization.label_rules.read_cell_labels`); ``(None, None)`` without ``label_key``.

    A cell left out by ``drop_missing_labels`` gets the class id ``-1``: the dataset builders skip it.

    Raises
    ------
    ValueError
        For ``label_names`` without ``label_key``, a ``label_key`` that is not an ``.obs`` column (listing the
        columns), missing labels (without ``drop_missing_labels``), spellings of one label (without
        ``merge_label_variants``), or labels not in ``label_names``.
    """
    if label_key is None:
        if label_names is not None:
            raise ValueError("label_names= needs label_key= (the .obs column holding the labels).")
        return None, None
    if label_key not in adata.obs.columns:
        raise ValueError(
            f"label_key={label_key!r} is not a column of adata.obs; the columns are {list(adata.obs.columns)}."
        )
    read = read_cell_labels(
        adata.obs[label_key],
        where=f"adata.obs[{label_key!r}]",
        drop_missing_labels=drop_missing_labels,
        merge_label_variants=merge_label_variants,
    )
    # By default the classes are the labels some kept cell has, in natural order (an unused category is no class).
    label_names = read.class_names if label_names is None else [str(n) for n in label_names]
    index = {name: i for i, name in enumerate(label_names)}
    labels = read.labels
    if merge_label_variants:  # a merged spelling of a given class is that class (e.g. the training cells' spelling)
        spelling = {variant_key(name): name for name in label_names}
        labels = np.array([spelling.get(variant_key(s), s) for s in labels], dtype=object)
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(
            f"adata.obs[{label_key!r}] has labels not in label_names: {unknown[:10]}; add them to label_names."
        )
    ids = np.full(adata.n_obs, -1, dtype=np.int64)
    ids[read.keep] = [index[s] for s in labels]
    return label_names, ids
