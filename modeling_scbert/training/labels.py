"""The class list of a fine-tuning run, taken from the labels of the training cells.

- The classes are the labels that the training cells carry: a category of a categorical column that no training
  cell has is not a class (a model cannot learn a type it never saw; it would only take probability from the
  others), and it is reported with a WARNING.
- Their order is natural: the column's category order for a categorical column, otherwise the sorted values
  (numbers by value, text alphabetically).
- Cells without a label (NaN / None) are refused, with their count: a missing label is usually a mapping that
  failed, and guessing it would train on wrong labels. Fill or drop them first.
- Evaluation cells of a type that no training cell has are refused with a message naming the data that holds them
  and how many of each type; ``drop_unseen_labels=True`` (``--drop_unseen_labels``) evaluates without them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

logger = logging.getLogger(__name__)


def describe_data(adata: AnnData, *, role: str, argument: str) -> str:
    """How to name a dataset in a message: its file when it was read from one, else the argument that passed it."""
    filename = getattr(adata, "filename", None) if adata.isbacked else None
    if filename is not None:
        return f"the {role} file {str(filename)!r}"
    return f"the {role} data ({argument})"


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _labels(adata: AnnData, *, label_key: str, what: str) -> pd.Series:
    if label_key not in adata.obs.columns:
        raise ValueError(
            f"label_key={label_key!r} is not a column of the .obs of {what}; the columns are "
            f"{list(adata.obs.columns)}."
        )
    values = adata.obs[label_key]
    missing = values.isna()
    if missing.any():
        raise ValueError(
            f"{_capitalized(what)} has {int(missing.sum()):,} of {len(values):,} cells without a label (NaN) in "
            f".obs[{label_key!r}]. Fill them (e.g. with 'Unknown', which then becomes a class of its own) or drop "
            f"those cells (adata[adata.obs[{label_key!r}].notna()]) and save the data again."
        )
    return values


def class_names_from_labels(adata: AnnData, *, label_key: str, what: str) -> list[str]:
    """The classes of a fine-tuning run: the labels present in the training cells, in natural order.

    Parameters
    ----------
    adata
        The training cells.
    label_key
        The ``.obs`` column holding the cell types.
    what
        How messages name the data (see :func:`describe_data`).

    Returns
    -------
    The class names: for a categorical column, its categories that at least one cell has, in category order
    (the unused ones are logged at WARNING); otherwise the distinct values, sorted.

    Raises
    ------
    ValueError
        When the column is missing, or some cells have no label (NaN).
    """
    values = _labels(adata, label_key=label_key, what=what)
    if isinstance(values.dtype, pd.CategoricalDtype):
        used = set(pd.unique(values.cat.codes))
        categories = list(values.cat.categories)
        unused = [str(c) for i, c in enumerate(categories) if i not in used]
        names = [str(c) for i, c in enumerate(categories) if i in used]
        if unused:
            logger.warning(
                "%d of the %d categories of .obs[%r] have no cell in %s and are not classes of the model: %s.",
                len(unused),
                len(categories),
                label_key,
                what,
                unused,
            )
    else:
        distinct = list(pd.unique(values.to_numpy()))
        try:
            distinct = sorted(distinct)
        except TypeError:  # mixed types: sort by their text
            distinct = sorted(distinct, key=str)
        names = [str(v) for v in distinct]
    if len(set(names)) != len(names):
        raise ValueError(f".obs[{label_key!r}] of {what} has distinct labels that read the same as text: {names}.")
    logger.info("%d classes, from the labels of %s: %s", len(names), what, names)
    return names


def unseen_labels(adata: AnnData, *, label_key: str, class_names: Sequence[str], what: str, drop: bool) -> list[str]:
    """Check the labels of evaluation cells against the training classes.

    Parameters
    ----------
    adata
        The evaluation cells.
    label_key
        The ``.obs`` column holding the cell types.
    class_names
        The classes (from the training cells).
    what
        How messages name the evaluation data (see :func:`describe_data`).
    drop
        Return the unseen types (their cells are then left out, with a WARNING) instead of refusing them.

    Returns
    -------
    The labels of the evaluation cells that are not classes, sorted (empty when every cell has a class).

    Raises
    ------
    ValueError
        When the column is missing, some cells have no label, or (without ``drop``) some cells have a type that no
        training cell has; the message counts the cells of each such type.
    """
    values = _labels(adata, label_key=label_key, what=what).astype(str)
    counts = values[~values.isin(list(class_names))].value_counts()
    if counts.empty:
        return []
    listing = ", ".join(f"{int(n):,} of {name!r}" for name, n in counts.items())
    if not drop:
        raise ValueError(
            f"Some cells in {what} are of types absent from the training cells: {listing} (the classes are "
            f"{list(class_names)}). A model cannot be scored on types it has no class for: pass "
            "drop_unseen_labels=True (--drop_unseen_labels) to evaluate without those cells, or add training cells "
            "of those types."
        )
    if int(counts.sum()) == adata.n_obs:
        raise ValueError(
            f"No cell of {what} has a type of the training cells ({listing}; the classes are {list(class_names)}): "
            "nothing is left to evaluate."
        )
    logger.warning(
        "Leaving %s evaluation cells out of %s: their types are absent from the training cells (%s).",
        f"{int(counts.sum()):,}",
        what,
        listing,
    )
    return sorted(np.asarray(counts.index, dtype=str).tolist())


__all__ = ["class_names_from_labels", "describe_data", "unseen_labels"]
