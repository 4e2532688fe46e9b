"""The one matrix reader: rows of any expression matrix, chunk by chunk, as canonical float CSR.

Every matrix is read through :func:`read_rows`: dense or sparse (CSR, CSC, COO, ...), in memory or backed, any integer
or float dtype. It returns a CSR copy that the caller owns, with duplicate entries summed, column indices sorted,
explicit zeros dropped and values widened to float32 (float64 stays float64) before any arithmetic.
:func:`iter_row_chunks` reads a matrix ``batch_size`` cells at a time, so a backed file larger than memory is never
held whole; :func:`sample_rows` reads the bounded sample that input-kind detection looks at (at most
``DETECTION_SAMPLE_CELLS`` in a few contiguous blocks spread over the matrix), so detection costs the same on a
1,000-cell matrix and on a 10-million-cell backed file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["DETECTION_SAMPLE_CELLS", "iter_row_chunks", "read_rows", "row_sliceable", "sample_rows"]

DETECTION_SAMPLE_CELLS = 1024
_DETECTION_BLOCKS = 4


def _float_dtype(dtype: np.dtype) -> type:
    """The float type values are widened to before any arithmetic."""
    dtype = np.dtype(dtype)
    if dtype.kind in "biu":
        # Counts up to 2**24 are exact in float32; wider integer types go to float64.
        return np.float32 if dtype.itemsize <= 2 else np.float64
    if dtype.kind == "f":
        return np.float64 if dtype.itemsize >= 8 else np.float32
    raise TypeError(
        f"The expression matrix holds {dtype} values; scBERT reads integer or float counts or normalised values. "
        "Convert the matrix to float32 first."
    )


def read_rows(block: Any) -> sp.csr_matrix:
    """The one matrix reader: a block of rows as a canonical float CSR matrix that the caller owns.

    Parameters
    ----------
    block
        Rows of a numpy array, an h5py dataset slice or any scipy sparse matrix or array, of any integer or float
        dtype (float16, int32, uint16, ...).

    Returns
    -------
    A new CSR matrix (never a view of ``block``, which is left as it was): float32 values (float64 for float64 and
    32/64-bit integer input), duplicate ``(cell, gene)`` entries summed, column indices sorted, explicit zeros
    dropped.

    Raises
    ------
    TypeError
        For values that are neither integers nor floats (complex, strings, objects).
    ValueError
        For a dense block that is not two-dimensional.
    """
    if sp.issparse(block):
        out = sp.csr_matrix(block, dtype=_float_dtype(block.dtype), copy=True)
    else:
        array = np.asarray(block)
        if array.ndim != 2:
            raise ValueError(f"Expected a 2-D block of cells x genes; got an array of shape {array.shape}.")
        out = sp.csr_matrix(array.astype(_float_dtype(array.dtype), copy=False))
    out.sum_duplicates()  # sums duplicate entries and sorts indices, in our copy
    out.eliminate_zeros()
    return out


def row_sliceable(matrix: Any) -> Any:
    """A matrix whose row ranges can be read: sparse formats without row slicing (COO, DIA, ...) become CSR.

    The conversion builds a new matrix (the caller's is not changed); CSR, CSC, LIL, dense and backed matrices are
    returned as they are.
    """
    if sp.issparse(matrix) and matrix.format not in ("csr", "csc", "lil"):
        return sp.csr_matrix(matrix)
    return matrix


def iter_row_chunks(matrix: Any, *, batch_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, end, rows)`` with ``rows`` as :func:`read_rows` returns them, at most ``batch_size`` cells.

    Parameters
    ----------
    matrix
        A numpy array, a scipy sparse matrix (CSR, CSC, COO, ...), an h5py dataset or an anndata backed sparse
        dataset. Only one chunk of rows is ever held in memory in CSR form; a backed CSC matrix has to be read column
        by column for every chunk, which is slow: convert it to CSR on disk for large files.
    batch_size
        Cells per chunk.

    Raises
    ------
    ValueError
        For a ``batch_size`` below 1.
    TypeError
        As :func:`read_rows`, for values that are neither integers nor floats.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of cells; got {batch_size}.")
    matrix = row_sliceable(matrix)
    n_obs = matrix.shape[0]
    for start in range(0, n_obs, batch_size):
        end = min(start + batch_size, n_obs)
        yield start, end, read_rows(matrix[start:end])


def sample_rows(matrix: Any, *, max_cells: int = DETECTION_SAMPLE_CELLS) -> sp.csr_matrix:
    """Read a bounded sample of cells from a few contiguous blocks spread over the matrix.

    Contiguous blocks keep the cost of reading a backed file low (one read per block, not per cell).

    Raises
    ------
    TypeError
        As :func:`read_rows`, for values that are neither integers nor floats.
    """
    matrix = row_sliceable(matrix)
    n_obs = matrix.shape[0]
    if n_obs <= max_cells:
        return read_rows(matrix[0:n_obs])
    block = max_cells // _DETECTION_BLOCKS
    starts = np.linspace(0, n_obs - block, _DETECTION_BLOCKS).astype(int)
    return sp.vstack([read_rows(matrix[s : s + block]) for s in starts], format="csr")
