"""A corpus: many inputs (``.h5ad`` files, AnnData in memory or backed, a folder, a glob) over one gene panel.

- :func:`corpus_inputs` turns what a user gives into named inputs, each opened (files backed, read on demand); the
  name of an input, its *source*, is what every row encoded from it carries in the column ``source``.
- :func:`tokenizer_from_corpus` builds one panel from the inputs' genes: those present in at least ``min_fraction`` of
  the inputs, matched across identifier kinds through a synonym table.
- :class:`CorpusReport` (from :func:`corpus_report`, and saved beside every corpus dataset): per input, its cells, the
  panel genes it matches and the panel genes it lacks.
- :func:`plan_corpus` opens, checks and plans every input (genes aligned, input kind verified, one class list over
  labelled inputs) before any cell is encoded.

Encoding is :func:`tokenization.data.to_dataset`'s: given a corpus, it writes one input at a time (see there).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from .atomic_files import write_text_atomically
from .cell_digest import encoding_digest
from .encoding import EncodingPlan, plan_encoding
from .genes import GeneOverlapReport, load_synonyms, strip_ensembl_version
from .label_rules import cell_labels
from .reading import ScBertReadingArguments, adata_gene_names, is_zarr_store, read_h5ad, takes_reading_options
from .tokenization_scbert import ScBertTokenizer

logger = logging.getLogger(__name__)

# One input of a corpus as a user gives it: a file, a folder of .h5ad files, a glob pattern, or an AnnData.
CorpusItem = str | PathLike | AnnData

# The name of the report that to_dataset saves inside a corpus dataset's folder.
CORPUS_REPORT_FILE = "corpus_report.json"

# Panel genes a report lists by name for each input that lacks them; the count is always complete.
_NUM_LISTED = 20


@dataclass(frozen=True)
class CorpusInput:
    """One input of a corpus.

    Parameters
    ----------
    source
        Its name, kept with every cell encoded from it: the path as given (a folder's or a pattern's files by their
        paths), a backed AnnData's file, or ``anndata[i]`` for the ``i``-th item given when it is in memory.
    adata
        The cells (a file is opened backed).
    """

    source: str
    adata: AnnData


def is_corpus(data: Any) -> bool:
    """Whether ``data`` is a corpus (a path, a folder, a glob, or a list or tuple of these and AnnData) rather than one
    AnnData or a dataset."""
    return isinstance(data, (str, PathLike, list, tuple))


def _files(item: str | PathLike) -> list[Path]:
    text = os.fspath(item)
    path = Path(text)
    if path.is_dir() and not is_zarr_store(path):
        files = sorted(path.glob("*.h5ad"))
        if not files:
            raise FileNotFoundError(
                f"The folder {text!r} holds no .h5ad file; give .h5ad files, a folder of them or a glob such as "
                f"{os.path.join(text, '*.h5ad')!r}. A dataset saved by to_dataset is read with "
                "datasets.load_from_disk."
            )
        return files
    if not path.exists() and any(char in text for char in "*?["):
        files = sorted(Path(name) for name in glob.glob(text) if not Path(name).is_dir() or is_zarr_store(name))
        if not files:
            raise FileNotFoundError(f"The pattern {text!r} matches no file; check the folder and the pattern.")
        return files
    return [path]


def corpus_inputs(corpus: CorpusItem | Sequence[CorpusItem]) -> list[CorpusInput]:
    """The inputs of a corpus, in the order given (a folder's and a pattern's files sorted by name), each opened.

    Parameters
    ----------
    corpus
        An ``.h5ad`` file (or AnnData zarr store), a folder (its ``*.h5ad`` files), a glob pattern
        (``"data/*.h5ad"``), an AnnData, or a list or tuple of these.

    Returns
    -------
    The inputs; files are opened backed (``.X`` is read on demand, never modified).

    Raises
    ------
    FileNotFoundError
        For a file that does not exist, a folder without ``.h5ad`` files, or a pattern that matches nothing.
    ValueError
        For an empty corpus, a file given twice, or a file that cannot be read as an AnnData (naming it).
    TypeError
        For an item that is neither a path nor an AnnData.
    """
    items = list(corpus) if isinstance(corpus, (list, tuple)) else [corpus]
    if not items:
        raise ValueError("The corpus is empty; give .h5ad files, a folder of them, a glob pattern or AnnData objects.")
    inputs: list[CorpusInput] = []
    for position, item in enumerate(items):
        if isinstance(item, AnnData):
            source = str(item.filename) if item.isbacked else f"anndata[{position}]"
            inputs.append(CorpusInput(source, item))
        elif isinstance(item, (str, PathLike)):
            inputs += [CorpusInput(str(path), read_h5ad(path, what="corpus file")) for path in _files(item)]
        else:
            raise TypeError(
                f"Item {position} of the corpus is a {type(item).__name__}; give .h5ad paths, folders, glob patterns "
                "or AnnData objects."
            )
    sources = [item.source for item in inputs]
    repeated = sorted({source for source in sources if sources.count(source) > 1})
    if repeated:
        raise ValueError(f"The corpus names {repeated} more than once; give each input once.")
    return inputs


# ---------------------------------------------------------------------------------------------------------------------
# One panel over the corpus
# ---------------------------------------------------------------------------------------------------------------------


@takes_reading_options
def tokenizer_from_corpus(
    corpus: CorpusItem | Sequence[CorpusItem] | Sequence[CorpusInput],
    *,
    min_fraction: float = 0.5,
    reading: ScBertReadingArguments | None = None,
    tokenizer_kwargs: dict[str, Any] | None = None,
    **read_options: Any,
) -> ScBertTokenizer:
    """Build one panel from a corpus: the genes present in at least ``min_fraction`` of its inputs.

    A gene is present in an input when its identifier is among the input's genes (``.var``; with ``gene_key`` /
    ``use_raw``, that column or ``.raw``), whatever its values. Identifiers are compared after removing Ensembl
    versions; with ``synonyms``, each is first replaced by its current symbol (an Ensembl id or a previous symbol in
    one file and the symbol in another count as one gene, named by the symbol). The panel lists the genes in the
    order they first appear (input by input, column by column). Of the reading options, only those that say where
    the gene names are (``gene_key``, ``use_raw``, ``synonyms``) are used.

    Parameters
    ----------
    corpus
        As for :func:`corpus_inputs`, or its inputs.
    min_fraction
        The fraction of the inputs a gene must be in, in ``(0, 1]``: ``1`` keeps the genes every input has, a small
        value every gene of any input (at least one input is always needed).
    tokenizer_kwargs
        Contract options of :class:`ScBertTokenizer` (``max_bin``, ...).
    {reading_options}

    Returns
    -------
    The tokenizer over the panel.

    Raises
    ------
    ValueError
        For ``min_fraction`` outside ``(0, 1]``, or when no gene is in enough inputs (saying how many each has).
    FileNotFoundError, TypeError
        As :func:`corpus_inputs` raises them.
    """
    reading = ScBertReadingArguments.from_kwargs(read_options, caller="tokenizer_from_corpus", reading=reading)
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must lie in (0, 1]; got {min_fraction}.")
    inputs = _as_inputs(corpus)
    synonyms = load_synonyms(reading.synonyms)
    presence: dict[str, int] = {}  # gene -> inputs it is in, in the order of first appearance
    for item in inputs:
        names = strip_ensembl_version(adata_gene_names(item.adata, gene_key=reading.gene_key, use_raw=reading.use_raw))
        keys = (name if synonyms is None else synonyms.canonical(name) or name for name in names if name is not None)
        for key in dict.fromkeys(keys):
            presence[key] = presence.get(key, 0) + 1
    needed = max(1, math.ceil(min_fraction * len(inputs) - 1e-9))
    panel = [gene for gene, count in presence.items() if count >= needed]
    if not panel:
        raise ValueError(
            f"No gene is in {needed} of the {len(inputs)} inputs (min_fraction={min_fraction}); the inputs have "
            f"{[item.adata.n_vars for item in inputs]} genes. Lower min_fraction (panel_min_fraction= of pretrain and "
            "finetune, --panel_min_fraction on the command line), or pass synonyms= (--synonyms) when the inputs name "
            "genes differently (symbols in some, Ensembl ids in others)."
        )
    logger.info(
        "Built a panel of %d genes, each in at least %d of the %d inputs (%d genes in fewer left out).",
        len(panel),
        needed,
        len(inputs),
        len(presence) - len(panel),
    )
    return ScBertTokenizer(panel, **(tokenizer_kwargs or {}))


def _as_inputs(corpus: Any) -> list[CorpusInput]:
    if isinstance(corpus, (list, tuple)) and corpus and all(isinstance(item, CorpusInput) for item in corpus):
        return list(corpus)
    return corpus_inputs(corpus)


# ---------------------------------------------------------------------------------------------------------------------
# The report: what each input brings to the panel and what it lacks
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CorpusInputReport:
    """How one input lines up with the panel.

    Parameters
    ----------
    source
        The input's name (its ``source`` column).
    cells
        Its cells.
    genes
        Its gene columns.
    identifier_type
        What its gene names look like: ``"symbol"``, ``"ensembl"`` or ``"mixed"``.
    matched
        Panel genes found in it (exactly or through synonyms).
    matched_by_synonym
        Of ``matched``, how many through the synonym table.
    missing
        Panel genes it lacks (encoded as zero for its cells).
    extra
        Its genes not in the panel (dropped).
    """

    source: str
    cells: int
    genes: int
    identifier_type: str
    matched: int
    matched_by_synonym: int
    missing: list[str]
    extra: int

    @classmethod
    def from_overlap(cls, source: str, cells: int, overlap: GeneOverlapReport) -> CorpusInputReport:
        """The entry of an input from its gene alignment (:class:`~tokenization.genes.GeneOverlapReport`)."""
        return cls(
            source=source,
            cells=cells,
            genes=overlap.num_data_genes,
            identifier_type=overlap.identifier_type,
            matched=overlap.matched,
            matched_by_synonym=overlap.matched_by_synonym,
            missing=list(overlap.missing),
            extra=len(overlap.extra),
        )


@dataclass
class CorpusReport:
    """The panel report of a corpus: per input, its cells, the panel genes it matches and those it lacks.

    Parameters
    ----------
    num_panel_genes
        Genes in the panel.
    inputs
        One entry per input, in order.
    """

    num_panel_genes: int
    inputs: list[CorpusInputReport]

    @property
    def num_cells(self) -> int:
        """Cells over all inputs."""
        return sum(item.cells for item in self.inputs)

    def summary(self) -> str:
        """One line per input, as logged."""
        lines = [f"{len(self.inputs)} inputs, {self.num_cells:,} cells, one panel of {self.num_panel_genes:,} genes:"]
        for item in self.inputs:
            line = (
                f"  {item.source}: {item.cells:,} cells, {item.genes:,} genes ({item.identifier_type}); "
                f"{item.matched:,} panel genes matched ({item.matched_by_synonym:,} through synonyms), "
                f"{len(item.missing):,} lacking, {item.extra:,} of its genes not in the panel"
            )
            if item.missing:
                line += f"; lacking e.g. {', '.join(item.missing[:5])}"
            lines.append(line)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; each input lists its first 20 lacking panel genes (``missing``) and counts them all
        (``num_missing``)."""
        inputs = [{**asdict(item), "num_missing": len(item.missing)} for item in self.inputs]
        for entry in inputs:
            entry["missing"] = entry["missing"][:_NUM_LISTED]
        return {"num_panel_genes": self.num_panel_genes, "num_cells": self.num_cells, "inputs": inputs}

    def save(self, path: str | PathLike) -> None:
        """Write :meth:`to_dict` as JSON to ``path``, atomically."""
        write_text_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n")


@takes_reading_options
def corpus_report(
    corpus: CorpusItem | Sequence[CorpusItem] | Sequence[CorpusInput],
    *,
    tokenizer: ScBertTokenizer,
    reading: ScBertReadingArguments | None = None,
    **read_options: Any,
) -> CorpusReport:
    """How each input of a corpus lines up with the tokenizer's panel, without encoding anything (only ``.var`` is
    read). :func:`tokenization.data.to_dataset` logs the same report and saves it in a corpus dataset's folder. Of the
    reading options, only those that say where the gene names are (``gene_key``, ``use_raw``, ``synonyms``) are used.

    Parameters
    ----------
    corpus
        As for :func:`corpus_inputs`, or its inputs.
    tokenizer
        Gives the panel.
    {reading_options}

    Returns
    -------
    The report (also logged at INFO).

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        As :func:`corpus_inputs` raises them, and for a ``gene_key`` that is not a ``.var`` column.
    """
    reading = ScBertReadingArguments.from_kwargs(read_options, caller="corpus_report", reading=reading)
    entries = []
    for item in _as_inputs(corpus):
        overlap = tokenizer.align(
            item.adata, gene_key=reading.gene_key, synonyms=reading.synonyms, use_raw=reading.use_raw
        )
        entries.append(CorpusInputReport.from_overlap(item.source, item.adata.n_obs, overlap))
    report = CorpusReport(num_panel_genes=tokenizer.num_genes, inputs=entries)
    logger.info("Corpus: %s", report.summary())
    return report


# ---------------------------------------------------------------------------------------------------------------------
# The plan: every input checked before the first cell is encoded
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PlannedInput:
    """One input of a corpus, ready to encode.

    Parameters
    ----------
    source, adata
        As :class:`CorpusInput`'s.
    labels
        Class ids of its cells (int64, shape ``(n_obs,)``; ``-1`` for a cell left out), or ``None`` unlabelled.
    plan
        Its encoding plan (genes aligned to the panel, input kind verified).
    digest
        A hex digest of what its encoding reads and of its source, naming the folder its cells are encoded into.
    """

    source: str
    adata: AnnData
    labels: np.ndarray | None
    plan: EncodingPlan
    digest: str


@dataclass
class CorpusPlan:
    """A corpus planned for encoding: its inputs, one class list, the panel report."""

    inputs: list[PlannedInput]
    label_names: list[str] | None
    report: CorpusReport


def plan_corpus(
    corpus: CorpusItem | Sequence[CorpusItem],
    *,
    tokenizer: ScBertTokenizer,
    label_key: str | None = None,
    label_names: Sequence[str] | None = None,
    drop_missing_labels: bool = False,
    merge_label_variants: bool = False,
    reading: ScBertReadingArguments | None = None,
) -> CorpusPlan:
    """Open, check and plan every input of a corpus over one panel and one class list, before any cell is encoded.

    The class list is ``label_names`` when given, else the sorted union of the inputs' labels (each read by the one
    label rule, :mod:`tokenization.label_rules`). The report is logged at INFO.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        As :func:`corpus_inputs` raises them; and, naming the input, whatever
        :func:`tokenization.label_rules.cell_labels` and :func:`tokenization.encoding.plan_encoding` refuse (a missing
        label column, missing labels, too few panel genes, values that are not counts or (log-)normalised, ...).
    """
    reading = ScBertReadingArguments() if reading is None else reading
    inputs = corpus_inputs(corpus)
    rule = {
        "label_key": label_key,
        "drop_missing_labels": drop_missing_labels,
        "merge_label_variants": merge_label_variants,
    }
    if label_key is not None and label_names is None:
        names: set[str] = set()
        for item in inputs:
            names.update(_in_input(item, cell_labels, item.adata, label_names=None, **rule)[0])
        label_names = sorted(names)
    planned = []
    for item in inputs:
        label_names, labels = _in_input(item, cell_labels, item.adata, label_names=label_names, **rule)
        plan = _in_input(item, plan_encoding, item.adata, tokenizer=tokenizer, reading=reading)
        digest = encoding_digest(
            item.adata, tokenizer=tokenizer, options=reading.tokenizer_kwargs(), label_names=label_names, labels=labels
        )
        digest = hashlib.sha256(f"{digest}\0{item.source}".encode("utf-8", "surrogateescape")).hexdigest()
        planned.append(PlannedInput(item.source, item.adata, labels, plan, digest))
    entries = [
        CorpusInputReport.from_overlap(item.source, item.adata.n_obs, item.plan.alignment.report) for item in planned
    ]
    report = CorpusReport(num_panel_genes=tokenizer.num_genes, inputs=entries)
    logger.info("Corpus: %s", report.summary())
    return CorpusPlan(inputs=planned, label_names=label_names, report=report)


def _in_input(item: CorpusInput, function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, its ``ValueError`` or ``TypeError`` naming the input it was about."""
    try:
        return function(*args, **kwargs)
    except (ValueError, TypeError) as error:
        raise type(error)(f"In the corpus input {item.source}: {error}") from error


__all__ = [
    "CORPUS_REPORT_FILE",
    "CorpusInput",
    "CorpusInputReport",
    "CorpusPlan",
    "CorpusItem",
    "CorpusReport",
    "PlannedInput",
    "corpus_inputs",
    "corpus_report",
    "is_corpus",
    "plan_corpus",
    "tokenizer_from_corpus",
]
