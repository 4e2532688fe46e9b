"""Annotation: cell types, confidences and embeddings written back into AnnData.

- :mod:`.annotate`: :func:`annotate` and :func:`embed`;
- :mod:`.inference`: loading a model with its tokenizer, device, precision, batches;
- :mod:`.attention`: per-cell-type gene attention;
- :mod:`.distributed`: sharing the cells among processes (``torchrun``), gathered on rank 0;
- :mod:`.majority_voting`: majority voting over over-clusters.
"""

from tokenization._imports import lazy_attributes

_LAZY = {
    "annotate": "modeling_scbert.annotation.annotate",
    "embed": "modeling_scbert.annotation.annotate",
    "gene_attention_scores": "modeling_scbert.annotation.attention",
    "top_attention_genes": "modeling_scbert.annotation.attention",
    "ScBertProcessError": "modeling_scbert.annotation.distributed",
    "load_annotator": "modeling_scbert.annotation.inference",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = ["ScBertProcessError", "annotate", "embed", "gene_attention_scores", "load_annotator", "top_attention_genes"]
