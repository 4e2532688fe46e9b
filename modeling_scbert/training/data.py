"""The cells a training run learns from and is evaluated on: AnnData encoded into ``datasets``, classes checked.

:func:`encode_options` gathers the keyword arguments of :func:`tokenization.data.to_dataset` (the reading options and
the others); :func:`encode` encodes an AnnData (a dataset passes through). For fine-tuning, :func:`check_labels`
checks the class list and the evaluation labels before anything is encoded, and :func:`finetuning_datasets` encodes
the training and evaluation cells over one class list (or holds out a stratified fraction of the training cells).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from anndata import AnnData

from tokenization import ScBertTokenizer
from tokenization.corpus import is_corpus
from tokenization.data import LABEL, stratified_split, to_dataset
from tokenization.reading import ScBertReadingArguments

from .labels import class_names_from_labels, describe_data, unseen_labels

logger = logging.getLogger(__name__)

# The column of the class ids is tokenization.data.LABEL ("label", a ClassLabel), the one name for it; LABEL_COLUMN is
# what modeling_scbert.training_data called it before 0.2, kept for that old path and gone with it.
LABEL_COLUMN = LABEL


def encode_options(encode_kwargs: dict[str, Any] | None, read_options: dict[str, Any], *, caller: str) -> dict:
    """The keyword arguments of ``to_dataset``: the reading options (given by name, or, as before, inside
    ``encode_kwargs``) plus the other ``encode_kwargs`` (``cache_dir``, ``batch_size``, ...).

    Raises
    ------
    ValueError
        For a reading option given both by name and in ``encode_kwargs``.
    TypeError
        For a name in ``read_options`` that is not a reading option of ``caller``.
    """
    encode_kwargs = dict(encode_kwargs or {})
    both = sorted(set(encode_kwargs) & set(read_options))
    if both:
        raise ValueError(f"{both} given both as keywords of {caller}() and in encode_kwargs; pass them once.")
    reading = {name: encode_kwargs.pop(name) for name in ScBertReadingArguments.names() if name in encode_kwargs}
    reading = ScBertReadingArguments.from_kwargs({**reading, **read_options}, caller=caller)
    return {**encode_kwargs, **reading.tokenizer_kwargs()}


def encode(
    data: Any,
    *,
    tokenizer: ScBertTokenizer,
    encode_kwargs: dict[str, Any],
    label_key: str | None = None,
    label_names: Sequence[str] | None = None,
    label_rule: dict[str, bool] | None = None,
):
    """AnnData or a corpus of them -> ``datasets.Dataset`` (with :func:`tokenization.data.to_dataset`); a dataset or
    ``None`` passes through.

    Parameters
    ----------
    data
        The cells: an AnnData, a corpus (:mod:`tokenization.corpus`: ``.h5ad`` files, a folder, a glob, a list), a
        dataset, or ``None``.
    tokenizer
        The panel to encode over.
    encode_kwargs
        The keyword arguments of ``to_dataset`` (from :func:`encode_options`).
    label_key, label_names
        The ``.obs`` column of the cell types and the class list, for labelled cells (``to_dataset``'s).
    label_rule
        The options of the label rule (``drop_missing_labels``, ``merge_label_variants``), for labelled cells.

    Returns
    -------
    The dataset, or ``data`` itself when it is not an AnnData.

    Raises
    ------
    ValueError
        As ``to_dataset`` raises it, for cells that cannot be read.
    """
    if data is None or not (isinstance(data, AnnData) or is_corpus(data)):
        return data
    labelled = {"label_key": label_key, "label_names": label_names, **(label_rule or {} if label_key else {})}
    return to_dataset(data, tokenizer=tokenizer, **labelled, **encode_kwargs)


def _unseen(
    eval_data: Any, *, label_key: str | None, class_names: list[str], drop: bool, label_rule: dict[str, bool]
) -> list[str]:
    if not isinstance(eval_data, AnnData):
        return []
    what = describe_data(eval_data, role="evaluation", argument="eval_data")
    return unseen_labels(eval_data, label_key=label_key, class_names=class_names, what=what, drop=drop, **label_rule)


def check_labels(
    train_data: Any, eval_data: Any, *, label_key: str | None, drop: bool, label_rule: dict[str, bool] | None = None
) -> tuple[list[str] | None, list[str] | None]:
    """Before anything is encoded: the classes of AnnData training cells, and the evaluation types they lack.

    Returns
    -------
    ``(class names, unseen evaluation types)``; both ``None`` for a dataset of training cells, whose classes are
    known only from the dataset (see :func:`finetuning_datasets`). ``label_rule`` holds the options of the label
    rule (``drop_missing_labels``, ``merge_label_variants``; :mod:`tokenization.label_rules`).

    Raises
    ------
    ValueError
        For a missing label column, cells without a label, or (unless ``drop``) evaluation cells of types no
        training cell has (see :mod:`modeling_scbert.training.labels`).
    """
    if not isinstance(train_data, AnnData):
        return None, None
    what = describe_data(train_data, role="training", argument="train_data")
    label_rule = label_rule or {}
    label_names = class_names_from_labels(train_data, label_key=label_key, what=what, **label_rule)
    return label_names, _unseen(
        eval_data, label_key=label_key, class_names=label_names, drop=drop, label_rule=label_rule
    )


def finetuning_datasets(
    train_data: Any,
    eval_data: Any,
    *,
    tokenizer: ScBertTokenizer,
    label_key: str | None,
    label_names: list[str] | None,
    unseen: list[str] | None,
    eval_fraction: float | None,
    split_seed: int,
    drop: bool,
    encode_kwargs: dict[str, Any],
    label_rule: dict[str, bool] | None = None,
) -> tuple[Any, Any, list[str]]:
    """The training and evaluation datasets of a fine-tuning run, over one class list.

    Parameters
    ----------
    train_data, eval_data
        AnnData or datasets (``eval_data`` may be ``None``).
    label_names, unseen
        What :func:`check_labels` returned.
    eval_fraction, split_seed
        Without ``eval_data``: hold out this fraction of each class of the training cells, seeded.
    drop
        Leave out evaluation cells of types no training cell has (``finetune``'s ``drop_unseen_labels``).
    label_rule
        The options of the label rule (``drop_missing_labels``, ``merge_label_variants``): cells left out by it are
        not in the datasets.

    Returns
    -------
    ``(train_dataset, eval_dataset or None, class names)``.

    Raises
    ------
    ValueError
        For a training dataset without a ``label`` column, evaluation labels the training classes lack, or an
        evaluation dataset whose classes differ from the training data's.
    """
    label_rule = label_rule or {}
    train_dataset = encode(
        train_data,
        tokenizer=tokenizer,
        label_key=label_key,
        label_names=label_names,
        label_rule=label_rule,
        encode_kwargs=encode_kwargs,
    )
    if LABEL not in train_dataset.column_names:
        raise ValueError(
            f"The training dataset has no {LABEL!r} column (columns: {train_dataset.column_names}); build it "
            "with to_dataset(..., label_key=...)."
        )
    if label_names is not None:  # a dataset's classes in the run's order (the starting model's, when kept)
        train_dataset = _in_class_order(train_dataset, label_names)
    label_names = list(train_dataset.features[LABEL].names)
    if not isinstance(train_data, AnnData):
        counts = np.bincount(np.asarray(train_dataset[LABEL]), minlength=len(label_names))
        if not counts.all():
            logger.warning(
                "Classes of the training dataset without a training cell: %s. The model gets an output for each, "
                "which can only take probability from the others; build the dataset with to_dataset(..., "
                "label_names=...) listing the classes that have cells.",
                [name for name, count in zip(label_names, counts) if not count],
            )
    if unseen is None:  # a dataset of training cells: its class list is known only now
        unseen = _unseen(eval_data, label_key=label_key, class_names=label_names, drop=drop, label_rule=label_rule)
    eval_dataset = encode(
        eval_data,
        tokenizer=tokenizer,
        label_key=label_key,
        label_names=[*label_names, *unseen],
        label_rule=label_rule,
        encode_kwargs=encode_kwargs,
    )
    if unseen:
        eval_dataset = _drop_classes_from(eval_dataset, label_names)
    if eval_dataset is None and eval_fraction:
        splits = stratified_split(train_dataset, eval_fraction=eval_fraction, seed=split_seed)
        train_dataset, eval_dataset = splits["train"], splits["eval"]
    if eval_dataset is not None:
        eval_dataset = _in_class_order(eval_dataset, label_names)
        eval_names = list(eval_dataset.features[LABEL].names)
        if eval_names != label_names:
            raise ValueError(
                f"The evaluation dataset's classes {eval_names} differ from the training data's {label_names}; "
                f"build it with to_dataset(..., label_names=...) given the training classes."
            )
    return train_dataset, eval_dataset, label_names


def _in_class_order(dataset: Any, label_names: Sequence[str]) -> Any:
    """``dataset`` with its class ids mapped onto ``label_names`` when its own classes are among them in another
    order (or fewer); otherwise unchanged (a dataset with other classes is refused by the caller)."""
    import datasets

    names = list(dataset.features[LABEL].names)
    if names == list(label_names) or not set(names) <= set(label_names):
        return dataset
    table = np.array([list(label_names).index(name) for name in names], dtype=np.int64)
    features = dataset.features.copy()
    features[LABEL] = datasets.ClassLabel(names=list(label_names))
    return dataset.map(
        lambda labels: {LABEL: table[np.asarray(labels, dtype=np.int64)]},
        input_columns=LABEL,
        batched=True,
        features=features,
    )


def _drop_classes_from(dataset: Any, label_names: Sequence[str]) -> Any:
    """Keep the rows whose class id is one of the first ``len(label_names)``, with a ``ClassLabel`` of those names."""
    import datasets

    keep = len(label_names)
    dataset = dataset.filter(lambda labels: [label < keep for label in labels], input_columns=LABEL, batched=True)
    return dataset.cast_column(LABEL, datasets.ClassLabel(names=list(label_names)))


__all__ = ["check_labels", "encode", "encode_options", "finetuning_datasets"]
