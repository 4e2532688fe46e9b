"""Expression preprocessing: read cells in chunks, detect the input kind, normalise, log-transform and bin.

The published scBERT preprocessing, per cell, after the genes are aligned to the panel:

1. normalise to ``normalization_target`` (10,000) over the panel genes (scanpy's ``normalize_total``),
2. ``log2(1 + x)`` in float32 (scanpy's ``log1p(base=2)``),
3. clamp at ``max_bin`` (5) and truncate to an integer token.

The arithmetic below is scanpy's, step for step and in the same dtypes, so bin boundaries fall exactly where the
published pipeline put them. Input kinds:

- ``"counts"``: non-negative integers (UMI or read counts), normalised directly;
- ``"log1p"``: scanpy's ``normalize_total`` + ``log1p`` (natural log) output; ``expm1`` recovers the normalised
  values, which are then renormalised over the panel genes, as the published pipeline normalised after alignment.

Detection looks at a bounded sample of cells (at most ``DETECTION_SAMPLE_CELLS`` in a few contiguous blocks spread
over the matrix), so it costs the same on a 1,000-cell matrix and on a 10-million-cell backed file; every chunk
is still checked for negative and non-finite values while it is encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = [
    "DETECTION_SAMPLE_CELLS",
    "InputKind",
    "bin_expression",
    "check_chunk",
    "detect_input_kind",
    "iter_row_chunks",
    "recover_counts",
    "sample_rows",
]

InputKind = Literal["counts", "log1p"]

DETECTION_SAMPLE_CELLS = 1024
_DETECTION_BLOCKS = 4
# log1p of anything a normaliser produces stays far below this; larger non-integers are not log1p data.
_MAX_LOG1P_VALUE = 30.0
# Among the non-zero entries of scaled (z-scored) data, roughly half are negative.
_SCALED_NEGATIVE_FRACTION = 0.1


def _to_csr(block: Any) -> sp.csr_matrix:
    """Turn one block of rows (dense, any scipy sparse format) into a float32 CSR matrix."""
    block = sp.csr_matrix(block)
    if block.dtype != np.float32:
        # Integer counts become float32, as scanpy's normalize_total does; the contract is float32 arithmetic.
        block = block.astype(np.float32)
    return block


def iter_row_chunks(matrix: Any, *, batch_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, end, rows)`` with ``rows`` a float32 CSR matrix of at most ``batch_size`` cells.

    Parameters
    ----------
    matrix
        A numpy array, a scipy sparse matrix (CSR, CSC, ...), an h5py dataset or an anndata backed sparse dataset.
        Only one chunk of rows is ever held in memory in CSR form; a backed CSC matrix has to be read column by
        column for every chunk, which is slow: convert it to CSR on disk for large files.
    batch_size
        Cells per chunk.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of cells; got {batch_size}.")
    n_obs = matrix.shape[0]
    for start in range(0, n_obs, batch_size):
        end = min(start + batch_size, n_obs)
        yield start, end, _to_csr(matrix[start:end])


def sample_rows(matrix: Any, *, max_cells: int = DETECTION_SAMPLE_CELLS) -> sp.csr_matrix:
    """Read a bounded sample of cells from a few contiguous blocks spread over the matrix.

    Contiguous blocks keep the cost of reading a backed file low (one read per block, not per cell).
    """
    n_obs = matrix.shape[0]
    if n_obs <= max_cells:
        return _to_csr(matrix[0:n_obs])
    block = max_cells // _DETECTION_BLOCKS
    starts = np.linspace(0, n_obs - block, _DETECTION_BLOCKS).astype(int)
    return sp.vstack([_to_csr(matrix[s : s + block]) for s in starts], format="csr")


def check_chunk(values: np.ndarray, *, source: str, hint: str = "", start: int = 0) -> None:
    """Refuse non-finite or negative values with a message that says what to do.

    Parameters
    ----------
    values
        The stored (non-zero) values of a chunk.
    source
        Where the values came from, for the message (``"adata.X"``, ``"adata.layers['counts']"``).
    hint
        Extra advice, such as the name of a counts layer.
    start
        Index of the chunk's first cell, for the message.
    """
    if values.size == 0:
        return
    finite = np.isfinite(values)
    if not finite.all():
        bad = values[~finite][0]
        raise ValueError(
            f"{source} contains NaN or infinite values (e.g. {bad} in the chunk starting at cell {start:,}); "
            f"scBERT needs raw counts or log1p-normalised values. Remove or fill them before encoding.{hint}"
        )
    minimum = values.min()
    if minimum < 0:
        negative_fraction = float((values < 0).mean())
        if negative_fraction > _SCALED_NEGATIVE_FRACTION:
            what = (
                f"looks scaled (z-scored, e.g. by sc.pp.scale): {negative_fraction:.0%} of its non-zero values are "
                f"negative (minimum {minimum:.3g})"
            )
        else:
            what = f"contains negative values (minimum {minimum:.3g})"
        raise ValueError(
            f"{source} {what}; scBERT needs raw counts or log1p-normalised values, not scaled or centred data. "
            f"Pass the unscaled data instead.{hint}"
        )


def _is_integer(values: np.ndarray) -> bool:
    return bool(np.all(values == np.floor(values)))


def detect_input_kind(sample: sp.csr_matrix, *, source: str = "adata.X", hint: str = "") -> InputKind:
    """Decide whether a sample of cells holds raw counts or log1p-normalised values.

    Parameters
    ----------
    sample
        A float CSR sample of cells (see :func:`sample_rows`).
    source
        Where the values came from, for messages.
    hint
        Extra advice for error messages, such as the name of a counts layer.

    Returns
    -------
    ``"counts"`` for non-negative integers; ``"log1p"`` for non-negative non-integers no larger than 30.

    Raises
    ------
    ValueError
        For NaN, infinity, negative or scaled values, and for non-integers too large to be log1p output
        (normalised but not log-transformed data).
    """
    values = sample.data
    check_chunk(values, source=source, hint=hint)
    if _is_integer(values):
        return "counts"
    maximum = float(values.max())
    if maximum <= _MAX_LOG1P_VALUE:
        return "log1p"
    raise ValueError(
        f"{source} holds non-integer values as large as {maximum:.4g}: neither raw counts (integers) nor "
        f"log1p-normalised values (at most about {_MAX_LOG1P_VALUE:g}). If it is normalised but not "
        f"log-transformed, run sc.pp.log1p first; if these are corrected counts, pass input_kind='counts'.{hint}"
    )


def recover_counts(rows: sp.csr_matrix) -> np.ndarray:
    """Undo scanpy's ``normalize_total`` + natural ``log1p`` for a chunk of cells.

    ``expm1`` gives back the normalised values only to within a few float32 units, and values that sat exactly on a
    bin boundary (``log2(1 + x)`` an integer, as when a cell's total is a multiple of 10,000) would then fall on
    either side of it. Normalised counts of one cell are all multiples of a common factor, so where a cell's
    ``expm1`` values divided by their smallest value are integers (to within float32 error), those integers are
    used as the cell's counts: they renormalise to exactly what the counts would give whenever the cell's smallest
    count is 1, as it almost always is in single-cell data. Cells that are not integer multiples (corrected or
    otherwise transformed data) keep their ``expm1`` values.

    Parameters
    ----------
    rows
        Float CSR chunk of log1p-normalised values.

    Returns
    -------
    The recovered values (float32), aligned with ``rows.data``.
    """
    values = np.expm1(rows.data.astype(np.float64))
    lengths = np.diff(rows.indptr)
    if values.size == 0:
        return values.astype(np.float32)
    nonempty = lengths > 0
    row_min = np.ones(rows.shape[0])
    row_min[nonempty] = np.minimum.reduceat(values, rows.indptr[:-1][nonempty])
    ratio = values / np.repeat(row_min, lengths)
    counts = np.rint(ratio)
    # float32 log1p keeps ~7 significant digits; allow that, relative to the size of each count.
    off = np.abs(ratio - counts) > 1e-3 + 1e-5 * counts
    bad_rows = np.zeros(rows.shape[0], dtype=bool)
    bad_rows[np.repeat(np.arange(rows.shape[0]), lengths)[off]] = True
    if bad_rows.any():
        use_expm1 = np.repeat(bad_rows, lengths)
        counts[use_expm1] = values[use_expm1]
    return counts.astype(np.float32)


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
) -> sp.csr_matrix:
    """Align, normalise, log-transform and bin a chunk of cells.

    Parameters
    ----------
    rows
        Float32 CSR chunk in the data's gene order, shape ``(n_cells, num_data_genes)``.
    data_to_panel
        Panel position of every data column, ``-1`` for columns to drop.
    num_genes
        Panel length.
    input_kind
        ``"counts"`` or ``"log1p"``.
    normalization_target
        Total each cell is scaled to over the panel genes.
    log_base
        Base of the ``log(1 + x)`` transform.
    max_bin
        Highest token; larger values are clamped to it.

    Returns
    -------
    CSR matrix of shape ``(n_cells, num_genes)`` holding the non-zero tokens (uint8), column indices sorted.
    """
    n_cells = rows.shape[0]
    values = recover_counts(rows) if input_kind == "log1p" else rows.data.copy()
    panel_pos = data_to_panel[rows.indices]
    indptr = rows.indptr
    row_of = np.repeat(np.arange(n_cells), np.diff(indptr))
    keep = panel_pos >= 0
    if not keep.all():
        indptr = _drop_entries(indptr, row_of, keep)
        values, panel_pos, row_of = values[keep], panel_pos[keep], row_of[keep]

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
