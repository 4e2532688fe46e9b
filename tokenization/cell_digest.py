"""A digest of what encoding cells depends on, to find the cells encoded before in a named cache folder.

:func:`encoding_digest` covers the cells (for a backed file: the file's identity, size and modification time, and
the rows of a view; in memory: every matrix the reading options can choose, ``.X``, the layers and ``.raw``, with
their gene tables), the labels and classes, the tokenizer's panel and binning contract, and the reading options.
Two calls with equal digests encode to the same rows; any change to one of these gives another digest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

# Raised when the encoded layout changes, so folders written by an older layout are never reused.
ENCODED_LAYOUT_VERSION = 1


def _add_matrix(digest: Any, matrix: Any) -> None:
    if matrix is None:
        digest.update(b"none\0")
        return
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
        digest.update(f"csr {matrix.shape} {matrix.dtype}\0".encode())
        parts = (matrix.data, matrix.indices, matrix.indptr)
    else:
        matrix = np.asarray(matrix)
        digest.update(f"dense {matrix.shape} {matrix.dtype}\0".encode())
        parts = (matrix,)
    for part in parts:
        digest.update(np.ascontiguousarray(part).view(np.uint8))


def _add_table(digest: Any, table: pd.DataFrame) -> None:
    text = table.reset_index().astype(str)
    digest.update(f"{list(text.columns)}\0".encode("utf-8", "surrogateescape"))
    digest.update(pd.util.hash_pandas_object(text, index=False).to_numpy())


def encoding_digest(
    adata: AnnData,
    *,
    tokenizer: Any,
    options: dict[str, Any],
    label_names: Sequence[str] | None,
    labels: np.ndarray | None,
) -> str:
    """A hex digest of the cells, labels, tokenizer and reading ``options`` an encoding reads (see the module)."""
    digest = hashlib.sha256(f"scbert-encoded-cells {ENCODED_LAYOUT_VERSION}\0".encode())
    contract = (
        tokenizer.panel_hash,
        tokenizer.normalization_target,
        tokenizer.log_base,
        tokenizer.max_bin,
        tokenizer.mask_token_id,
        tokenizer.min_gene_overlap,
    )
    digest.update(repr((contract, sorted(options.items(), key=str), list(label_names or []))).encode())
    _add_matrix(digest, labels)
    _add_table(digest, adata.obs[[]])  # the cell ids, in order
    _add_table(digest, adata.var)
    if adata.isbacked:
        stat = os.stat(adata.filename)
        digest.update(f"{os.path.realpath(adata.filename)} {stat.st_size} {stat.st_mtime_ns} {stat.st_ino}\0".encode())
        return digest.hexdigest()
    _add_matrix(digest, adata.X)
    for name in sorted(adata.layers.keys()):
        digest.update(f"layer {name}\0".encode("utf-8", "surrogateescape"))
        _add_matrix(digest, adata.layers[name])
    if adata.raw is not None:
        _add_table(digest, adata.raw.var)
        _add_matrix(digest, adata.raw.X)
    return digest.hexdigest()


__all__ = ["ENCODED_LAYOUT_VERSION", "encoding_digest"]
