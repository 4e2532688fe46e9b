"""scBERT as a Hugging Face Transformers model.

Importing this package registers the scBERT classes with the Auto classes (``AutoConfig``, ``AutoModel``,
``AutoModelForMaskedLM``, ``AutoModelForSequenceClassification``) and nothing else.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from tokenization import ScBertTokenizer

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

# Saved configs carry `auto_map`, so that a folder loads with `trust_remote_code=True` without this package.
ScBertConfig.register_for_auto_class()
ScBertModel.register_for_auto_class("AutoModel")
ScBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
ScBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "ScBertConfig",
    "ScBertForMaskedLM",
    "ScBertForSequenceClassification",
    "ScBertModel",
    "ScBertPreTrainedModel",
    "ScBertTokenizer",
    "gene_attention",
]
