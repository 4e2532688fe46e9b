"""The class list of a fine-tuning run, taken from the labels of the training cells.

- The classes are the labels that the training cells carry: a category of a categorical column that no training
  cell has is not a class (a model cannot learn a type it never saw; it would only take probability from the
  others), and it is reported with a WARNING.
- Their order is natural: the column's category order for a categorical column, otherwise the sorted values
  (numbers by value, text alphabetically).
- The labels are read by the one label rule of :mod:`tokenization.label_rules` (the same for ``to_dataset``, the
  ensemble and the evaluation cells): cells without a label (NaN / None, or the texts ``'nan'``, ``'None'``, ``''``,
  ... that ``.astype(str)`` makes of one) are refused with their count, or left out with ``drop_missing_labels=True``
  (``--drop_missing_labels``): a missing label is usually a mapping that failed, and guessing it would train on
  wrong labels. Spellings of one label that differ only by whitespace or case are refused with the groups listed,
  or merged into the most frequent one with ``merge_label_variants=True`` (``--merge_label_variants``).
- Evaluation cells of a type that no training cell has are refused with a message naming the data that holds them
  and how many of each type; ``drop_unseen_labels=True`` (``--drop_unseen_labels``) evaluates without them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from tokenization.label_rules import MISSING_LABEL_TEXTS, CellLabels, read_cell_labels, variant_key

from .model_setup import ScBertStartingClasses

logger = logging.getLogger(__name__)


def describe_data(adata: AnnData, *, role: str, argument: str) -> str:
    """How to name a dataset in a message: its file when it was read from one, else the argument that passed it."""
    filename = getattr(adata, "filename", None) if adata.isbacked else None
    if filename is not None:
        return f"the {role} file {str(filename)!r}"
    return f"the {role} data ({argument})"


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _labels(
    adata: AnnData,
    *,
    label_key: str,
    what: str,
    drop_missing_labels: bool = False,
    merge_label_variants: bool = False,
) -> CellLabels:
    """The labels of ``adata`` by the one label rule (:func:`tokenization.label_rules.read_cell_labels`)."""
    if label_key not in adata.obs.columns:
        raise ValueError(
            f"label_key={label_key!r} is not a column of the .obs of {what}; the columns are "
            f"{list(adata.obs.columns)}."
        )
    values = adata.obs[label_key]
    if not drop_missing_labels and values.isna().any() and not values.isna().all():
        # Real NaN / None: said as before, with the placeholder texts counted in.
        text = values.astype(object).where(values.notna(), None)
        placeholders = int(
            text.map(lambda v: v is not None and str(v).strip().casefold() in MISSING_LABEL_TEXTS).sum()
        )
        also = f", or texts such as 'nan' that stand for one ({placeholders:,})" if placeholders else ""
        raise ValueError(
            f"{_capitalized(what)} has {int(values.isna().sum()) + placeholders:,} of {len(values):,} cells without a "
            f"label (NaN{also}) in .obs[{label_key!r}]. Fill them (e.g. with 'Unknown', which then becomes a class of "
            f"its own), drop those cells (adata[adata.obs[{label_key!r}].notna()]) and save the data again, or pass "
            "drop_missing_labels=True (--drop_missing_labels) to leave them out."
        )
    return read_cell_labels(
        values,
        where=f".obs[{label_key!r}] of {what}",
        drop_missing_labels=drop_missing_labels,
        merge_label_variants=merge_label_variants,
    )


def class_names_from_labels(
    adata: AnnData,
    *,
    label_key: str,
    what: str,
    drop_missing_labels: bool = False,
    merge_label_variants: bool = False,
) -> list[str]:
    """The classes of a fine-tuning run: the labels present in the training cells, in natural order.

    Parameters
    ----------
    adata
        The training cells.
    label_key
        The ``.obs`` column holding the cell types.
    what
        How messages name the data (see :func:`describe_data`).
    drop_missing_labels, merge_label_variants
        The options of the label rule (:func:`tokenization.label_rules.read_cell_labels`): leave out cells without
        a label, merge spellings of one label that differ by whitespace or case.

    Returns
    -------
    The class names: for a categorical column, its categories that at least one cell has, in category order
    (the unused ones are logged at WARNING); otherwise the distinct values, sorted.

    Raises
    ------
    ValueError
        When the column is missing, some cells have no label (NaN, or a text such as ``'nan'``; unless
        ``drop_missing_labels``), or labels differ only by whitespace or case (unless ``merge_label_variants``).
    """
    read = _labels(
        adata,
        label_key=label_key,
        what=what,
        drop_missing_labels=drop_missing_labels,
        merge_label_variants=merge_label_variants,
    )
    values = adata.obs[label_key]
    names = read.class_names
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories = list(values.cat.categories)
        used = set(pd.unique(values.cat.codes))
        unused = [str(c) for i, c in enumerate(categories) if i not in used]
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
        distinct = pd.unique(values[read.keep].to_numpy())
        if len({str(v) for v in distinct}) != len(distinct):
            raise ValueError(
                f".obs[{label_key!r}] of {what} has distinct labels that read the same as text: "
                f"{sorted(map(repr, distinct))}."
            )
    logger.info("%d classes, from the labels of %s: %s", len(names), what, names)
    return names


def unseen_labels(
    adata: AnnData,
    *,
    label_key: str,
    class_names: Sequence[str],
    what: str,
    drop: bool,
    drop_missing_labels: bool = False,
    merge_label_variants: bool = False,
) -> list[str]:
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
    drop_missing_labels, merge_label_variants
        The options of the label rule, as for the training cells.

    Returns
    -------
    The labels of the evaluation cells that are not classes, sorted (empty when every cell has a class).

    Raises
    ------
    ValueError
        When the column is missing, some cells have no label, labels differ only by whitespace or case (as
        :func:`class_names_from_labels`), or (without ``drop``) some cells have a type that no training cell has;
        the message counts the cells of each such type.
    """
    read = _labels(
        adata,
        label_key=label_key,
        what=what,
        drop_missing_labels=drop_missing_labels,
        merge_label_variants=merge_label_variants,
    )
    values = pd.Series(read.labels, dtype=object)
    if merge_label_variants:  # a merged spelling of a training class is that class
        spelling = {variant_key(name): name for name in class_names}
        values = values.map(lambda label: spelling.get(variant_key(label), label))
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
    if int(counts.sum()) == len(values):
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


# What finetune does when the starting model's classes differ from the data's (class_change=, --class_change).
CLASS_CHANGES = ("refuse", "new_head", "extend")


def reconcile_classes(
    run_classes: list[str],
    *,
    start: ScBertStartingClasses | None,
    checkpoint: ScBertStartingClasses | None,
    class_change: str,
) -> tuple[list[str], str]:
    """The classes a fine-tuning run trains, reconciled with those of the classifier it starts from.

    Parameters
    ----------
    run_classes
        The classes of the training cells, in natural order.
    start
        The starting model's classes (:func:`~modeling_scbert.training.model_setup.starting_classes`), or ``None``
        when it is not a classifier with real labels.
    checkpoint
        The classes of the checkpoint the run resumes from, or ``None``.
    class_change
        What to do when the starting model's classes differ from the data's: ``"refuse"``, ``"new_head"`` (a new
        head over the data's classes) or ``"extend"`` (the model's classes kept in their order, the data's new ones
        appended).

    Returns
    -------
    ``(classes, head)``: the classes in the order of the head's outputs, and what happens to the head: ``"new"``
    (no classes to keep: a new model, or a masked-expression / unlabelled one), ``"keep"`` (the same classes: the
    model's order is kept, and the labels are mapped through its ``label2id``), ``"new_head"`` or ``"extend"``.

    Raises
    ------
    ValueError
        For classes that differ from the starting model's without ``class_change``, naming both lists and the
        options; for a checkpoint whose classes differ from those of the run, naming the checkpoint.
    """
    head = "new"
    classes = list(run_classes)
    if start is not None:
        if set(start.names) == set(run_classes):
            head, classes = "keep", list(start.names)
            if start.names != list(run_classes):
                logger.info(
                    "The classes of the data are those of %s: its order is kept (%s), and the labels are mapped "
                    "through its label2id.",
                    start.source,
                    start.names,
                )
        elif class_change == "new_head":
            head = "new_head"
            logger.warning(
                "class_change='new_head': %s has the classes %s; the data has %s. A new head over the data's classes "
                "replaces the model's (its outputs start untrained); the encoder is kept.",
                start.source,
                start.names,
                list(run_classes),
            )
        elif class_change == "extend":
            head = "extend"
            added = [name for name in run_classes if name not in set(start.names)]
            classes = [*start.names, *added]
            without_cells = [name for name in start.names if name not in set(run_classes)]
            logger.warning(
                "class_change='extend': the classes of %s are kept in their order %s and new ones appended: %s.%s",
                start.source,
                start.names,
                added,
                f" Classes without a training cell stay outputs of the model: {without_cells}."
                if without_cells
                else "",
            )
        else:
            raise ValueError(
                f"The classes of the data differ from those of {start.source}: the model has {start.names}, the data "
                f"has {list(run_classes)} (only in the model: {sorted(set(start.names) - set(run_classes))}; only in "
                f"the data: {sorted(set(run_classes) - set(start.names))}). Its head's outputs mean the model's "
                "classes, so it cannot be reused as it is. Pass class_change='new_head' (--class_change new_head) to "
                "start a new head over the data's classes, or class_change='extend' (--class_change extend) to keep "
                "the model's classes and add the new ones; or fix the labels."
            )
    if checkpoint is not None and checkpoint.names != classes:
        if set(checkpoint.names) != set(classes):
            raise ValueError(
                f"The classes of {checkpoint.source} differ from those of this run: the checkpoint has "
                f"{checkpoint.names}, the run has {classes}. Its head's outputs mean the checkpoint's classes; "
                "resuming would train them on other labels. Resume with the labels the checkpoint was trained on, "
                "or start afresh (without resume_from_checkpoint, in another output_dir)."
            )
        classes = list(checkpoint.names)  # the same classes: the checkpoint's order
    return classes, head


__all__ = ["CLASS_CHANGES", "class_names_from_labels", "describe_data", "reconcile_classes", "unseen_labels"]
