"""The columns of an encoded dataset: their names and types, the label column's classes, one Arrow batch of cells.

Each cell is one row with

- ``gene_indices``: positions in the panel of the cell's non-zero tokens (int32, ascending),
- ``bins``: those tokens (uint8, ``1..max_bin``),
- ``cell_id``: ``adata.obs_names``,
- ``label``: a ``ClassLabel`` from an ``.obs`` column, when ``label_key`` is given.

Zero tokens, including the appended last token, are implicit; a collator (:mod:`tokenization.collators`) turns a batch
back into dense ``input_ids`` of length ``num_genes + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from anndata import AnnData

__all__ = ["BINS", "CELL_ID", "GENE_INDICES", "LABEL", "cell_labels", "dataset_features", "record_batch"]

GENE_INDICES, BINS, LABEL, CELL_ID = "gene_indices", "bins", "label", "cell_id"


def dataset_features(label_names: Sequence[str] | None):
    """The ``datasets.Features`` of an encoded dataset; with a ``ClassLabel`` column ``label`` when ``label_names``
    are given."""
    import datasets

    columns = {
        GENE_INDICES: datasets.List(datasets.Value("int32")),
        BINS: datasets.List(datasets.Value("uint8")),
        CELL_ID: datasets.Value("string"),
    }
    if label_names is not None:
        columns[LABEL] = datasets.ClassLabel(names=list(label_names))
    return datasets.Features(columns)


def cell_labels(
    adata: AnnData, *, label_key: str | None, label_names: Sequence[str] | None
) -> tuple[list[str] | None, np.ndarray | None]:
    """Class names and per-cell class ids (int64) for ``.obs[label_key]``; ``(None, None)`` without ``label_key``.

    Raises
    ------
    ValueError
        For ``label_names`` without ``label_key``, a ``label_key`` that is not an ``.obs`` column (listing the
        columns), missing labels, or labels not in ``label_names``.
    """
    if label_key is None:
        if label_names is not None:
            raise ValueError("label_names= needs label_key= (the .obs column holding the labels).")
        return None, None
    if label_key not in adata.obs.columns:
        raise ValueError(
            f"label_key={label_key!r} is not a column of adata.obs; the columns are {list(adata.obs.columns)}."
        )
    values = adata.obs[label_key]
    missing = values.isna()
    if missing.any():
        raise ValueError(
            f"adata.obs[{label_key!r}] has {int(missing.sum()):,} missing labels; drop those cells or fill them "
            "(e.g. with 'Unknown') before building a labelled dataset."
        )
    if label_names is None:
        if isinstance(values.dtype, pd.CategoricalDtype):
            # The categories that some cell has, in category order: an unused category is not a class.
            label_names = [str(c) for c in values.cat.remove_unused_categories().cat.categories]
        else:
            label_names = sorted({str(v) for v in values})
    label_names = [str(n) for n in label_names]
    index = {name: i for i, name in enumerate(label_names)}
    strings = values.astype(str).to_numpy()
    unknown = sorted(set(strings) - set(index))
    if unknown:
        raise ValueError(
            f"adata.obs[{label_key!r}] has labels not in label_names: {unknown[:10]}; add them to label_names."
        )
    return label_names, np.array([index[s] for s in strings], dtype=np.int64)


def record_batch(schema: pa.Schema, tokens: Any, cell_ids: np.ndarray, labels: np.ndarray | None) -> pa.RecordBatch:
    """One Arrow record batch of encoded cells: ``tokens`` (CSR, as ``iter_encoded`` yields it) with their ids and
    class ids, in the columns of ``schema``."""
    offsets = pa.array(tokens.indptr.astype(np.int32))
    arrays = [
        pa.ListArray.from_arrays(offsets, pa.array(tokens.indices.astype(np.int32, copy=False))),
        pa.ListArray.from_arrays(offsets, pa.array(tokens.data.astype(np.uint8, copy=False))),
        pa.array(cell_ids.astype(str), type=pa.string()),
    ]
    if labels is not None:
        arrays.append(pa.array(labels, type=pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
