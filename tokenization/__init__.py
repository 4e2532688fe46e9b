"""scBERT expression tokenizer and data pipeline: AnnData in, published tokens out.

This package is standalone: it never imports ``modeling_scbert`` (which re-exports :class:`ScBertTokenizer`). It is
flat on purpose: the ``cell-type-annotation`` pipeline travels as remote code with its sibling modules, which
resolve their relative imports as files of one folder.
"""

from ._imports import install_moved_modules
from .genes import GeneOverlapReport, SynonymTable, align_genes, detect_identifier_type, strip_ensembl_version
from .reading import ScBertReadingArguments
from .tokenization_scbert import ScBertTokenizer

# Modules merged by job in 0.2 (docs/architecture.md); the old paths warn and go in the next release.
install_moved_modules(
    {
        "tokenization.cell_encoding": ["tokenization.tokenization_scbert"],
        "tokenization.anndata_sources": ["tokenization.reading"],
        "tokenization.matrix_reading": ["tokenization.reading"],
        "tokenization.encoding_plan": ["tokenization.encoding"],
        "tokenization.chunked_encoding": ["tokenization.encoding"],
        "tokenization.gene_search": ["tokenization.genes"],
        "tokenization.input_kinds": ["tokenization.preprocessing"],
        "tokenization.dataset_columns": ["tokenization.data"],
        "tokenization.collators": ["tokenization.data"],
    }
)

__all__ = [
    "GeneOverlapReport",
    "ScBertReadingArguments",
    "ScBertTokenizer",
    "SynonymTable",
    "align_genes",
    "detect_identifier_type",
    "strip_ensembl_version",
]
