"""Annotation: cell types, confidences and embeddings written back into AnnData.

- :mod:`.annotate`: :func:`annotate` and :func:`embed`, as phases (plan, predict, call, vote, write);
  :func:`predict_cell_types`, what :func:`annotate` writes, as a result object;
- :mod:`.result`: :class:`AnnotationResult`, one call's result, read by the AnnData writer, the CSV and the CLI;
- :mod:`.inference`: loading a model with its tokenizer, device, precision, batches;
- :mod:`.attention`: per-cell-type gene attention;
- :mod:`.distributed`: sharing the cells among processes (``torchrun``), gathered on rank 0;
- :mod:`.majority_voting`: majority voting over over-clusters.
"""

from tokenization._imports import lazy_attributes

_LAZY = {
    "annotate": "modeling_scbert.annotation.annotate",
    "embed": "modeling_scbert.annotation.annotate",
    "predict_cell_types": "modeling_scbert.annotation.annotate",
    "AnnotationResult": "modeling_scbert.annotation.result",
    "gene_attention_scores": "modeling_scbert.annotation.attention",
    "top_attention_genes": "modeling_scbert.annotation.attention",
    "ScBertProcessError": "modeling_scbert.annotation.distributed",
    "load_annotator": "modeling_scbert.annotation.inference",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "AnnotationResult",
    "ScBertProcessError",
    "annotate",
    "embed",
    "gene_attention_scores",
    "load_annotator",
    "predict_cell_types",
    "top_attention_genes",
]
