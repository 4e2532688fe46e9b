"""scBERT as a Hugging Face Transformers model.

Importing this package registers the scBERT classes with the Auto classes (``AutoConfig``, ``AutoModel``,
``AutoModelForMaskedLM``, ``AutoModelForSequenceClassification``) and the ``cell-type-annotation`` pipeline, and
nothing else.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY

from tokenization import ScBertTokenizer
from tokenization.pipeline_scbert import TASK as ANNOTATION_TASK
from tokenization.pipeline_scbert import ScBertCellTypeAnnotationPipeline

from .configuration_scbert import ScBertConfig
from .modeling_scbert import (
    ScBertForMaskedLM,
    ScBertForSequenceClassification,
    ScBertModel,
    ScBertPreTrainedModel,
    gene_attention,
)

AutoConfig.register("scbert", ScBertConfig, exist_ok=True)
AutoModel.register(ScBertConfig, ScBertModel, exist_ok=True)
AutoModelForMaskedLM.register(ScBertConfig, ScBertForMaskedLM, exist_ok=True)
AutoModelForSequenceClassification.register(ScBertConfig, ScBertForSequenceClassification, exist_ok=True)

# pipeline("cell-type-annotation", model=...) in this process; saved folders carry it as remote code (save_pipeline_code).
PIPELINE_REGISTRY.register_pipeline(
    ANNOTATION_TASK, pipeline_class=ScBertCellTypeAnnotationPipeline, pt_model=AutoModelForSequenceClassification
)

# Saved configs carry `auto_map`, so that a folder loads with `trust_remote_code=True` without this package.
ScBertConfig.register_for_auto_class()
ScBertModel.register_for_auto_class("AutoModel")
ScBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
ScBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "ScBertCellTypeAnnotationPipeline",
    "ScBertConfig",
    "ScBertForMaskedLM",
    "ScBertForSequenceClassification",
    "ScBertModel",
    "ScBertPreTrainedModel",
    "ScBertTokenizer",
    "gene_attention",
]
