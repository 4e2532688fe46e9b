"""scBERT as a Hugging Face Transformers model.

Importing this package registers the scBERT classes with the Auto classes (``AutoConfig``, ``AutoModel``,
``AutoModelForMaskedLM``, ``AutoModelForSequenceClassification``) and the ``cell-type-annotation`` pipeline, and
nothing else. The verbs users call are here too, imported on first use (training and annotation pull in
``datasets``, ``scanpy`` and the Trainer, which a plain ``from_pretrained`` does not need):

- annotation: :func:`annotate`, :func:`embed`, :func:`gene_attention_scores`, :func:`top_attention_genes`;
- training: :func:`pretrain`, :func:`finetune`, :func:`finetune_ensemble`, :class:`ScBertTrainer`;
- models and data: :func:`convert_checkpoint`, :func:`push_model_folder`, :func:`load_kang2018`.

The folders are the architecture (docs/architecture.md): ``annotation/``, ``training/``, ``hub/``, beside the two
Hub files (``configuration_scbert.py``, ``modeling_scbert.py``), the converter, ``cli.py``, ``h5ad_io.py`` and
``public_data.py``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY

from tokenization import ScBertReadingArguments, ScBertTokenizer
from tokenization._imports import install_moved_modules, lazy_attributes
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

# Verb -> the module that defines it, imported on first use (PEP 562).
_LAZY = {
    "annotate": "modeling_scbert.annotation.annotate",
    "embed": "modeling_scbert.annotation.annotate",
    "gene_attention_scores": "modeling_scbert.annotation.attention",
    "top_attention_genes": "modeling_scbert.annotation.attention",
    "pretrain": "modeling_scbert.training.workflows",
    "finetune": "modeling_scbert.training.workflows",
    "finetune_ensemble": "modeling_scbert.training.ensemble",
    "ScBertTrainer": "modeling_scbert.training.trainer",
    "convert_checkpoint": "modeling_scbert.convert_scbert_original_checkpoint",
    "push_model_folder": "modeling_scbert.hub.push",
    "load_kang2018": "modeling_scbert.public_data",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


# Modules regrouped by job in 0.2 (docs/architecture.md); the old paths warn and go in the next release. The verb
# `modeling_scbert.annotate` is the function now: `from modeling_scbert.annotate import annotate` still works.
install_moved_modules(
    {
        "modeling_scbert.annotate": [
            "modeling_scbert.annotation.annotate",
            "modeling_scbert.annotation.inference",
            "modeling_scbert.h5ad_io",
            "tokenization.atomic_files",
        ],
        "modeling_scbert.inference": ["modeling_scbert.annotation.inference"],
        "modeling_scbert.attention": ["modeling_scbert.annotation.attention"],
        "modeling_scbert.distributed": ["modeling_scbert.annotation.distributed"],
        "modeling_scbert.majority_voting": ["modeling_scbert.annotation.majority_voting"],
        "modeling_scbert.ensemble": ["modeling_scbert.training.ensemble"],
        "modeling_scbert.labels": ["modeling_scbert.training.labels"],
        "modeling_scbert.training_cli": ["modeling_scbert.training.arguments"],
        "modeling_scbert.training_data": ["modeling_scbert.training.data"],
        "modeling_scbert.model_resolution": ["modeling_scbert.training.model_setup"],
        "modeling_scbert.trainer": ["modeling_scbert.training.trainer", "modeling_scbert.training.run_card"],
        "modeling_scbert.trainer_plugins": [
            "modeling_scbert.training.trainer",
            "modeling_scbert.training.metrics",
            "modeling_scbert.training.model_setup",
            "modeling_scbert.training.run_card",
        ],
        "modeling_scbert.model_card": ["modeling_scbert.hub.card", "modeling_scbert.hub.card_data"],
        "modeling_scbert.model_card_data": ["modeling_scbert.hub.card_data"],
        "modeling_scbert.reading": ["tokenization.reading"],
        "modeling_scbert.datasets": ["modeling_scbert.public_data"],
    }
)

__all__ = [
    *_LAZY,
    "ScBertCellTypeAnnotationPipeline",
    "ScBertReadingArguments",
    "ScBertConfig",
    "ScBertForMaskedLM",
    "ScBertForSequenceClassification",
    "ScBertModel",
    "ScBertPreTrainedModel",
    "ScBertTokenizer",
    "gene_attention",
]
