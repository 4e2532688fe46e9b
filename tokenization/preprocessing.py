"""Expression preprocessing: read cells in chunks, verify the input kind, normalise, log-transform and bin.

The published scBERT preprocessing, per cell, after the genes are aligned to the panel:

1. normalise to ``normalization_target`` (10,000) over the panel genes (scanpy's ``normalize_total``),
2. ``log2(1 + x)`` in float32 (scanpy's ``log1p(base=2)``),
3. clamp at ``max_bin`` (5) and truncate to an integer token.

The arithmetic below is scanpy's, step for step and in the same dtypes, so bin boundaries fall exactly where the
published pipeline put them.

Reading a matrix chunk by chunk is :mod:`tokenization.matrix_reading`'s job; what a matrix holds (counts,
normalised or log-transformed values), how that is verified and undone, is :mod:`tokenization.input_kinds`'s. Both are
re-exported here. Transformed values are turned back into counts where that is exact, then renormalised over the
panel genes, as the published pipeline normalised after alignment.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from .input_kinds import (
    INPUT_KINDS,
    InputKind,
    check_chunk,
    check_input_kind,
    detect_input_kind,
    linear_values,
    recover_counts,
)
from .matrix_reading import DETECTION_SAMPLE_CELLS, iter_row_chunks, read_rows, row_sliceable, sample_rows

__all__ = [
    "DETECTION_SAMPLE_CELLS",
    "INPUT_KINDS",
    "PUBLISHED_MIN_GENES",
    "InputKind",
    "bin_expression",
    "check_chunk",
    "check_input_kind",
    "default_min_genes",
    "detect_input_kind",
    "iter_row_chunks",
    "linear_values",
    "low_signal",
    "read_rows",
    "recover_counts",
    "row_sliceable",
    "sample_rows",
]

# The published preprocessing dropped cells with fewer than 200 detected genes, over a 16,906-gene panel.
PUBLISHED_MIN_GENES = 200
PUBLISHED_NUM_GENES = 16_906


def default_min_genes(num_genes: int) -> int:
    """Fewest detected panel genes a cell needs by default: the published 200, scaled to the panel's size.

    200 for the published 16,906-gene panel; 10 for a 765-gene panel; at least 1.
    """
    return max(1, math.ceil(PUBLISHED_MIN_GENES * num_genes / PUBLISHED_NUM_GENES))


def low_signal(detected_genes: np.ndarray, *, min_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule for cells with too little signal in the panel, shared by the tokenizer, ``annotate`` and the pipeline.

    Returns two boolean arrays over the cells: no counts in any panel gene; and some, but fewer detected panel genes
    than ``min_genes``.
    """
    empty = detected_genes == 0
    return empty, ~empty & (detected_genes < min_genes)


def _drop_entries(indptr: np.ndarray, row_of: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row pointers after dropping the entries where ``keep`` is False (counting the dropped ones is cheaper)."""
    dropped = np.bincount(row_of[~keep], minlength=len(indptr) - 1)
    return indptr - np.concatenate([[0], np.cumsum(dropped)])


def bin_expression(
    rows: sp.csr_matrix,
    *,
    data_to_panel: np.ndarray,
    num_genes: int,
    input_kind: InputKind,
    normalization_target: float,
    log_base: float,
    max_bin: int,
    merge_duplicates: bool = False,
    detected_out: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Align, normalise, log-transform and bin a chunk of cells.

    Parameters
    ----------
    rows
        Chunk in the data's gene order, shape ``(n_cells, num_data_genes)``, as :func:`read_rows` returns it.
    data_to_panel
        Panel position of every data column, ``-1`` for columns to drop. Several columns may share a position
        (duplicated gene names) when ``merge_duplicates`` is set.
    num_genes
        Panel length.
    input_kind
        One of :data:`INPUT_KINDS` (verified beforehand).
    normalization_target
        Total each cell is scaled to over the panel genes.
    log_base
        Base of the ``log(1 + x)`` transform.
    max_bin
        Highest token; larger values are clamped to it.
    merge_duplicates
        Sum the values of data columns that map to the same panel gene (on the linear scale, before normalising).
    detected_out
        When given, receives each cell's number of detected panel genes (non-zero values after alignment), shape
        ``(n_cells,)``.

    Returns
    -------
    CSR matrix of shape ``(n_cells, num_genes)`` holding the non-zero tokens (uint8), column indices sorted.

    Raises
    ------
    ValueError
        For an ``input_kind`` that is not one of :data:`INPUT_KINDS`.
    """
    n_cells = rows.shape[0]
    values = linear_values(rows, input_kind=input_kind)
    panel_pos = data_to_panel[rows.indices]
    indptr = rows.indptr
    row_of = np.repeat(np.arange(n_cells), np.diff(indptr))
    keep = (panel_pos >= 0) & (values > 0)
    if not keep.all():
        indptr = _drop_entries(indptr, row_of, keep)
        values, panel_pos, row_of = values[keep], panel_pos[keep], row_of[keep]
    if merge_duplicates:
        merged = sp.csr_matrix((values, panel_pos.astype(np.int64), indptr), shape=(n_cells, num_genes))
        merged.sum_duplicates()
        values, panel_pos, indptr = merged.data, merged.indices, merged.indptr
        row_of = np.repeat(np.arange(n_cells), np.diff(indptr))
    if detected_out is not None:
        detected_out[:] = np.diff(indptr)

    # scanpy's normalize_total: float64 running sum per cell stored as float32, divided by the target; cells
    # without counts are divided by 1 instead of 0.
    totals = np.bincount(row_of, weights=values, minlength=n_cells).astype(np.float32)
    scale = totals / normalization_target
    scale += scale == 0
    np.divide(values, scale[row_of], out=values)
    # scanpy's log1p(base=b): natural log1p in float32, then divide by ln(b) into the same float32 array.
    np.log1p(values, out=values)
    np.divide(values, np.log(log_base), out=values)
    # The binning rule: clamp at the highest bin, then truncate towards zero (values are >= 0).
    tokens = np.minimum(values, max_bin).astype(np.uint8)

    nonzero = tokens > 0
    if not nonzero.all():
        indptr = _drop_entries(indptr, row_of, nonzero)
        tokens, panel_pos = tokens[nonzero], panel_pos[nonzero]
    out = sp.csr_matrix((tokens, panel_pos.astype(np.int32), indptr), shape=(n_cells, num_genes))
    out.sort_indices()
    return out
