"""Batches of cells for a model: ``input_ids`` with each cell's number of detected panel genes.

One batching for every annotator: ``modeling_scbert``'s ``annotate``, ``embed`` and gene attention (through
``modeling_scbert.annotation.inference.encoded_batches``, which adds a share of the rows per process and a progress
bar) and the ``cell-type-annotation`` pipeline all read their cells through :func:`cell_batches`. Cells are encoded
chunk by chunk with the tokenizer's ``iter_encoded`` (sparse tokens) and densified one batch at a time, so memory
stays bounded for backed files larger than memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from .tokenization_scbert import ENCODING_CHUNK_CELLS

if TYPE_CHECKING:
    from .tokenization_scbert import ScBertTokenizer

# Cells per forward pass, in annotate, embed, gene attention and the pipeline.
INFERENCE_BATCH_CELLS = 32


class CellBatch(NamedTuple):
    """One batch: rows ``start:end`` of the cells (indices of the whole matrix)."""

    start: int
    end: int
    input_ids: torch.Tensor  # int64 (end - start, num_genes + 1)
    detected_genes: np.ndarray  # int64 (end - start,): detected panel genes per cell


class ValuedCellBatch(NamedTuple):
    """A :class:`CellBatch` with the log-normalised values its tokens are binned from (``return_values``)."""

    start: int
    end: int
    input_ids: torch.Tensor  # int64 (end - start, num_genes + 1)
    detected_genes: np.ndarray  # int64 (end - start,)
    values: Any  # float32 CSR (end - start, num_genes), what the novelty score reads


def cell_batches(
    tokenizer: ScBertTokenizer,
    data: Any,
    *,
    batch_size: int = INFERENCE_BATCH_CELLS,
    chunk_size: int = ENCODING_CHUNK_CELLS,
    start: int = 0,
    end: int | None = None,
    return_values: bool = False,
    **encode_kwargs: Any,
) -> Iterator[CellBatch | ValuedCellBatch]:
    """Batches of the rows ``start:end`` of ``data``, in order.

    Reading is planned when this is called (gene alignment with its overlap report, input-kind detection, and
    their errors), before any batch; the batches are encoded as they are taken.

    Parameters
    ----------
    tokenizer
        The model's tokenizer.
    data
        The cells, as for :meth:`ScBertTokenizer.iter_encoded` (an AnnData, in memory or backed, or a matrix).
    batch_size
        Cells per batch.
    chunk_size
        Cells read and encoded at a time.
    start, end
        The rows to read (default: all); a process's share of the cells.
    return_values
        Give :class:`ValuedCellBatch` es, with each batch's log-normalised values, which the novelty score reads.
    **encode_kwargs
        How to read the cells (``layer``, ``gene_key``, ``input_kind``, ``synonyms``, ``min_gene_overlap``,
        ``use_raw``, ``min_genes``, ``gene_names``), as for :meth:`ScBertTokenizer.iter_encoded`.

    Returns
    -------
    An iterator of :class:`CellBatch`, ``(start, end, input_ids, detected_genes)``; of :class:`ValuedCellBatch`,
    ``(start, end, input_ids, detected_genes, values)``, with ``return_values``.

    Raises
    ------
    ValueError
        For ``batch_size`` below 1, and cells that cannot be read (see :meth:`ScBertTokenizer.iter_encoded`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
    chunks = tokenizer.iter_encoded(
        data,
        batch_size=chunk_size,
        progress=False,
        start=start,
        end=end,
        return_detected_genes=True,
        return_values=return_values,
        **encode_kwargs,
    )
    return _batches(tokenizer, chunks, batch_size=batch_size)


def _batches(
    tokenizer: ScBertTokenizer, chunks: Iterator, *, batch_size: int
) -> Iterator[CellBatch | ValuedCellBatch]:
    # A generator apart from cell_batches, so that the reading is planned (and fails) when cell_batches is called.
    for chunk_start, _, tokens, detected, *values in chunks:
        for offset in range(0, tokens.shape[0], batch_size):
            rows = tokens[offset : offset + batch_size]
            batch = CellBatch(
                start=chunk_start + offset,
                end=chunk_start + offset + rows.shape[0],
                input_ids=torch.from_numpy(tokenizer.input_ids_from_tokens(rows)),
                detected_genes=np.asarray(detected[offset : offset + batch_size], dtype=np.int64),
            )
            yield ValuedCellBatch(*batch, values[0][offset : offset + batch_size]) if values else batch


__all__ = ["INFERENCE_BATCH_CELLS", "CellBatch", "ValuedCellBatch", "cell_batches"]
