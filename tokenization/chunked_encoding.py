"""Run an encoding plan chunk by chunk: read ``batch_size`` cells, check them, bin them, count the low-signal ones.

Only one chunk of cells is ever held in memory, so a backed ``.h5ad`` larger than memory is encoded in bounded
memory. The plan (:mod:`tokenization.encoding_plan`) was settled beforehand over the whole matrix, so every row range
is read the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .encoding_plan import EncodingPlan, TokenizerContract
from .input_kinds import check_chunk
from .matrix_reading import iter_row_chunks
from .preprocessing import bin_expression, low_signal

logger = logging.getLogger(__name__)

__all__ = ["LowSignalCounts", "encode_chunks"]


@dataclass
class LowSignalCounts:
    """Cells with too little signal in the panel, counted while encoding (see ``min_genes``)."""

    cells: int = 0
    no_panel_counts: int = 0
    few_panel_genes: int = 0


class _RowWindow:
    """A row range of a matrix that slices lazily, so a dataset shard reads only its own rows."""

    def __init__(self, matrix: Any, start: int, end: int) -> None:
        self.matrix, self.start, self.end = matrix, start, end
        self.shape = (end - start, matrix.shape[1])

    def __getitem__(self, rows: slice) -> Any:
        return self.matrix[self.start + rows.start : self.start + rows.stop]


def encode_chunks(
    plan: EncodingPlan,
    *,
    tokenizer: TokenizerContract,
    batch_size: int,
    progress: bool | None,
    start: int = 0,
    end: int | None = None,
    return_detected_genes: bool = False,
) -> Iterator[tuple]:
    """Encode the rows ``start:end`` of a planned matrix, ``batch_size`` cells at a time.

    Parameters
    ----------
    plan
        From :func:`~tokenization.encoding_plan.plan_encoding`.
    tokenizer
        Gives the panel length and the binning contract.
    batch_size
        Cells per chunk.
    progress
        Show a progress bar; by default only for more than ten chunks.
    start, end
        The rows to encode (default: all); chunk bounds are yielded as indices of the whole matrix.
    return_detected_genes
        Also yield each cell's number of detected panel genes.

    Yields
    ------
    ``(start, end, tokens)`` or, with ``return_detected_genes``, ``(start, end, tokens, detected_genes)``, as
    :meth:`ScBertTokenizer.iter_encoded` describes. Once every chunk is read, cells with too little signal in the
    panel are counted in a warning.

    Raises
    ------
    ValueError
        For a chunk holding NaN, infinite or negative values, or a ``batch_size`` below 1.
    """
    n_obs = plan.matrix.shape[0] if end is None else end
    chunks = iter_row_chunks(_RowWindow(plan.matrix, start, n_obs), batch_size=batch_size)
    show = n_obs - start > 10 * batch_size if progress is None else progress
    merge = plan.alignment.merges_columns
    low = LowSignalCounts()
    with tqdm(total=n_obs - start, unit="cells", desc="Encoding cells", disable=not show) as bar:
        for chunk_start, chunk_end, rows in chunks:
            check_chunk(rows.data, source=plan.source, hint=plan.hint, start=start + chunk_start)
            detected = np.zeros(rows.shape[0], dtype=np.int64)
            tokens = bin_expression(
                rows,
                data_to_panel=plan.alignment.data_to_panel,
                num_genes=tokenizer.num_genes,
                input_kind=plan.input_kind,
                normalization_target=tokenizer.normalization_target,
                log_base=tokenizer.log_base,
                max_bin=tokenizer.max_bin,
                merge_duplicates=merge,
                detected_out=detected,
            )
            low.cells += rows.shape[0]
            empty, few = low_signal(detected, min_genes=plan.min_genes)
            low.no_panel_counts += int(empty.sum())
            low.few_panel_genes += int(few.sum())
            bar.update(chunk_end - chunk_start)
            if return_detected_genes:
                yield start + chunk_start, start + chunk_end, tokens, detected
            else:
                yield start + chunk_start, start + chunk_end, tokens
    if low.no_panel_counts or low.few_panel_genes:
        logger.warning(
            "%s of %s cells have too little signal in the panel: %s with no counts in any panel gene, %s with "
            "fewer than min_genes=%d detected panel genes. Their tokens are (nearly) all zero, so whatever the "
            "model says about them is a guess; annotate labels them %r.",
            f"{low.no_panel_counts + low.few_panel_genes:,}",
            f"{low.cells:,}",
            f"{low.no_panel_counts:,}",
            f"{low.few_panel_genes:,}",
            plan.min_genes,
            "Unassigned",
        )
