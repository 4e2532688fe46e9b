"""scBERT expression tokenizer and data pipeline: AnnData in, published tokens out.

This package is standalone: it never imports ``modeling_scbert`` (which re-exports :class:`ScBertTokenizer`).
"""

from .genes import GeneOverlapReport, SynonymTable, align_genes, detect_identifier_type, strip_ensembl_version
from .tokenization_scbert import ScBertTokenizer

__all__ = [
    "GeneOverlapReport",
    "ScBertTokenizer",
    "SynonymTable",
    "align_genes",
    "detect_identifier_type",
    "strip_ensembl_version",
]
