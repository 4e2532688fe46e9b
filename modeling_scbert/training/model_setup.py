"""Which model and which tokenizer a training run starts from.

:func:`resolve_tokenizer` picks the panel (given, saved with the model, or built over the training cells);
:func:`build_model` builds the model class a workflow trains from a folder or Hub id, a config, a model object or
nothing (a new model over the tokenizer's panel, with :data:`NEW_MODEL_DEFAULTS`), applying
:func:`parse_config_overrides`' fields and checking the panel against the tokenizer's. Which of its parameters
fine-tuning trains is a preset (:data:`FINETUNING_PRESETS`): :func:`apply_finetuning_preset` applies one,
:func:`auto_finetuning_preset` says which one ``"auto"`` stands for.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch
from anndata import AnnData
from transformers import (
    PreTrainedModel,
)

from tokenization import ScBertTokenizer
from tokenization.corpus import is_corpus, tokenizer_from_corpus
from tokenization.reading import ScBertReadingArguments

from ..configuration_scbert import ScBertConfig
from ..loading import load_checked_model
from ..modeling_scbert import ScBertForSequenceClassification

logger = logging.getLogger(__name__)

# The config of a model built from scratch over a tokenizer's panel, where the config's defaults (the published
# model's) do not fit, chosen on the Kang 2018 PBMCs (docs/training.md): no gene2vec table exists for an arbitrary
# panel, so the gene embedding is learned; the head is the published per-gene ("conv") head, which learns on real 10x
# data where a mean over the genes ("pooled") did not, with dropout on its per-gene scores so that it cannot rest on a
# few genes; no activation on its per-gene scores ("linear"), because a (leaky) ReLU there passes the cells'
# differences only when the shared projection happens to put expressed genes above zero, and a seed that put them
# below zero collapsed (README recipe, seed 3: macro-F1 0.252 with "leaky_relu", 0.872 without).
NEW_MODEL_DEFAULTS = {
    "gene_embedding_type": "learned",
    "classifier_type": "conv",
    "classifier_input_dropout": 0.3,
    "classifier_score_activation": "linear",
    "initializer_range": 0.1,
}

# Which parameters fine-tuning trains (apply_finetuning_preset), and what a run may ask for: the presets or "auto",
# which stands for "full" for a model without pretrained weights or with one layer (nothing to keep frozen), else
# "published" (auto_finetuning_preset).
FINETUNING_PRESETS = ("published", "full")
FINETUNING_PRESET_CHOICES = ("auto", *FINETUNING_PRESETS)


def parse_config_overrides(overrides: str | dict[str, Any] | None) -> dict[str, Any]:
    """Parse ``"hidden_size=64,num_hidden_layers=2,classifier_hidden_sizes=[128]"`` or a JSON object into a dict.

    Values are read as JSON where they parse (numbers, booleans, ``null``, lists) and as strings otherwise.

    Raises
    ------
    ValueError
        For an entry that is not ``key=value``, or text starting with ``{`` that is not JSON.
    """
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    text = overrides.strip()
    if text.startswith("{"):
        return json.loads(text)
    result = {}
    # Split on commas outside brackets, so list values such as [512,128] stay whole.
    for item in re.split(r",(?![^\[]*\])", text):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(
                f"config_overrides entry {item!r} is not key=value; expected e.g. 'hidden_size=64,num_hidden_layers=2'."
            )
        key, value = (part.strip() for part in item.split("=", 1))
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


def _check_config_keys(overrides: dict[str, Any]) -> None:
    known = set(ScBertConfig().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"config_overrides has unknown ScBertConfig fields {unknown}; known fields: {sorted(known)}.")


def builds_new_model(model: Any) -> bool:
    """Whether ``model`` (what a run starts from) means a new model without pretrained weights: ``None`` or a config."""
    return model is None or isinstance(model, ScBertConfig)


def build_model(
    model_class: type[PreTrainedModel],
    model: str | PathLike | ScBertConfig | PreTrainedModel | None,
    *,
    tokenizer: ScBertTokenizer,
    config_overrides: dict[str, Any],
    label_kwargs: dict[str, Any] | None = None,
    may_lack: tuple[str, ...] | None = None,
) -> PreTrainedModel:
    """The model a workflow trains, of class ``model_class``.

    Parameters
    ----------
    model_class
        ``ScBertForMaskedLM`` (pretraining) or ``ScBertForSequenceClassification`` (fine-tuning).
    model
        A folder or Hub id (head weights whose shapes differ are initialised anew), a config, a model object
        (returned as it is), or ``None`` for a new model over the tokenizer's panel with :data:`NEW_MODEL_DEFAULTS`.
    tokenizer
        The panel the model must have.
    config_overrides
        Config fields to set (from :func:`parse_config_overrides`); not allowed with a model object.
    label_kwargs
        Config fields of the classes (``id2label``, ``label2id``, ``problem_type``), set on the config.
    may_lack
        For a folder or Hub id: load it with :func:`~modeling_scbert.loading.load_checked_model`, which refuses
        damaged saved weights; the saved tensors may lack these name prefixes (``("classifier.",)`` when the run
        starts a new head over a pretrained encoder). ``None``: plain ``from_pretrained``.

    Raises
    ------
    ValueError
        For unknown config fields, ``config_overrides`` with a model object, or a panel that differs from the
        tokenizer's.
    TypeError
        For a model object of another class than ``model_class``.
    OSError
        From ``from_pretrained``, for a folder or Hub id that holds no model.
    tokenization.saved_weights.DamagedWeightsError
        With ``may_lack``, for saved tensors that are missing, of another kind, or not finite.
    """
    label_kwargs = label_kwargs or {}
    _check_config_keys(config_overrides)
    if isinstance(model, PreTrainedModel):
        if config_overrides:
            raise ValueError("config_overrides apply to a config or a folder, not to a model object.")
        if not isinstance(model, model_class):
            raise TypeError(f"Expected a {model_class.__name__}; got a {type(model).__name__}.")
        tokenizer.check_model_config(model.config)
        return model
    if builds_new_model(model):
        if model is None:
            config = ScBertConfig(num_genes=tokenizer.num_genes, **{**NEW_MODEL_DEFAULTS, **config_overrides})
        else:
            config = ScBertConfig.from_dict({**model.to_dict(), **config_overrides})
        for key, value in label_kwargs.items():
            setattr(config, key, value)
        tokenizer.check_model_config(config)
        logger.info("Training a new %s from a fresh config.", model_class.__name__)
        return model_class(config)
    config = ScBertConfig.from_pretrained(model, **config_overrides)
    for key, value in label_kwargs.items():
        setattr(config, key, value)
    tokenizer.check_model_config(config)
    if may_lack is None:
        # A pretrained (masked-expression) folder has no classifier: mismatched head weights are re-initialised.
        return model_class.from_pretrained(model, config=config, ignore_mismatched_sizes=True)
    # Missing, mistyped or non-finite saved tensors are refused (loading.load_checked_model); head weights whose
    # shapes differ (a new head, or other classifier widths in config_overrides) are initialised anew.
    return load_checked_model(model_class, model, may_lack=may_lack, config=config, ignore_mismatched_sizes=True)


# The class names transformers gives a config without labels ("LABEL_0", "LABEL_1", ...): no classes at all.
_DEFAULT_LABEL = re.compile(r"LABEL_\d+")


@dataclass(frozen=True)
class ScBertStartingClasses:
    """The classes of the classifier a fine-tuning run starts from (see :func:`starting_classes`).

    Attributes
    ----------
    names
        The classes, in the order of the head's outputs (``id2label``).
    source
        How messages name where they come from: ``"the starting model 'annotator/'"``, ``"the checkpoint '...'"``.
    """

    names: list[str]
    source: str


def _real_classes(id2label: dict | None) -> list[str] | None:
    """A classifier config's classes in id order, or ``None`` for none / transformers' default ``LABEL_<i>``."""
    id2label = {int(i): str(name) for i, name in (id2label or {}).items()}
    names = [id2label[i] for i in sorted(id2label)]
    if not names or all(_DEFAULT_LABEL.fullmatch(name) for name in names):
        return None
    return names


def _is_classifier(architectures: Any) -> bool:
    return any(str(name).endswith("ForSequenceClassification") for name in architectures or ())


def starting_classes(model: Any, **from_pretrained: Any) -> ScBertStartingClasses | None:
    """The classes of the classifier a fine-tuning run starts from, read from its config only (no weights loaded).

    Parameters
    ----------
    model
        ``finetune``'s ``model``: a folder or Hub id (its ``config.json``: ``architectures`` and ``id2label``), a
        model object (``model.config``), a config or ``None`` (a new model: no classes).
    **from_pretrained
        For reading a folder's or Hub id's config (``revision``, ...).

    Returns
    -------
    The classes, or ``None`` when the starting model is not a classifier (``...ForSequenceClassification``) or
    has no real labels (transformers' default ``LABEL_0``, ``LABEL_1``, ...).
    """
    if builds_new_model(model):
        return None
    if isinstance(model, PreTrainedModel):
        if not isinstance(model, ScBertForSequenceClassification):
            return None
        names = _real_classes(model.config.id2label)
        return None if names is None else ScBertStartingClasses(names, "the starting model (a model object)")
    config = ScBertConfig.from_pretrained(model, **from_pretrained)
    names = _real_classes(config.id2label) if _is_classifier(config.architectures) else None
    return None if names is None else ScBertStartingClasses(names, f"the starting model {str(model)!r}")


def checkpoint_classes(checkpoint: str | PathLike | None) -> ScBertStartingClasses | None:
    """The classes of a checkpoint a run resumes from (its ``config.json``), or ``None`` without one."""
    if not checkpoint or not isinstance(checkpoint, (str, PathLike)):
        return None
    path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    if not _is_classifier(config.get("architectures")):
        return None
    names = _real_classes(config.get("id2label"))
    return None if names is None else ScBertStartingClasses(names, f"the checkpoint {str(checkpoint)!r}")


def _set_classes(model: ScBertForSequenceClassification, label_names: list[str]) -> None:
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}
    model.num_labels = len(label_names)


@torch.no_grad()
def new_classifier_head(model: ScBertForSequenceClassification, label_names: list[str]) -> None:
    """Replace ``model``'s head by a new one over ``label_names``, initialised as ``_init_weights`` does (in
    place; the encoder is kept)."""
    _set_classes(model, label_names)
    head = type(model.classifier)(model.config)
    head.apply(model._init_weights)
    model.classifier = head.to(device=model.device, dtype=model.dtype)


@torch.no_grad()
def extend_classifier_head(model: ScBertForSequenceClassification, added: list[str]) -> None:
    """Append outputs for the classes ``added`` to ``model``'s head (in place): the rows of the final layer
    (``classifier.out_proj``) of the classes it has are kept, in their order; the new rows are initialised as
    ``_init_weights`` does."""
    old = model.classifier.out_proj
    names = [model.config.id2label[i] for i in range(old.out_features)]
    new = torch.nn.Linear(old.in_features, old.out_features + len(added), device=old.weight.device)
    model._init_weights(new)
    new = new.to(dtype=old.weight.dtype)
    new.weight[: old.out_features] = old.weight
    new.bias[: old.out_features] = old.bias
    new.weight.requires_grad_(old.weight.requires_grad)
    new.bias.requires_grad_(old.bias.requires_grad)
    model.classifier.out_proj = new
    _set_classes(model, [*names, *added])


def resolve_tokenizer(
    tokenizer: ScBertTokenizer | str | PathLike | None,
    model: Any,
    train_data: Any,
    *,
    panel_min_fraction: float = 0.5,
    read_options: dict[str, Any] | None = None,
) -> ScBertTokenizer:
    """The tokenizer of a run: ``tokenizer`` itself or loaded from its folder, else the one saved with ``model``
    (a folder or Hub id), else a new panel over the genes of ``train_data``: an AnnData's, or a corpus's (the genes in
    at least ``panel_min_fraction`` of its inputs, :func:`tokenization.corpus.tokenizer_from_corpus`, where the gene
    names are found by the reading options in ``read_options``).

    Raises
    ------
    FileNotFoundError
        When the tokenizer folder, or the model's folder, holds no tokenizer; for corpus files that do not exist.
    ValueError
        When there is nothing to take a tokenizer from, or no gene is in enough of a corpus's inputs.
    """
    if isinstance(tokenizer, ScBertTokenizer):
        return tokenizer
    if tokenizer is not None:
        return ScBertTokenizer.from_pretrained(tokenizer)
    if isinstance(model, (str, PathLike)):
        return ScBertTokenizer.from_pretrained(model)
    if isinstance(train_data, AnnData):
        logger.info("No tokenizer given: building a panel over the training data's %d genes.", train_data.n_vars)
        return ScBertTokenizer.from_adata(train_data)
    if is_corpus(train_data):
        reading = {k: v for k, v in (read_options or {}).items() if k in ScBertReadingArguments.names()}
        return tokenizer_from_corpus(train_data, min_fraction=panel_min_fraction, **reading)
    raise ValueError(
        "A tokenizer is needed: pass tokenizer=, a model folder that has one, or AnnData to build a panel from."
    )


def apply_finetuning_preset(model: ScBertForSequenceClassification, preset: str) -> list[str]:
    """Choose which parameters fine-tuning trains.

    ``"published"`` is the recipe of the scBERT paper: every parameter is frozen except those of the second-to-last
    encoder layer (``scbert.encoder.layers[-2]``), the final LayerNorm (``scbert.final_layer_norm``) and the
    classification head (``classifier``). ``"full"`` trains every parameter. Buffers (the frozen gene table, the
    random features) are never trained either way.

    Parameters
    ----------
    model
        The model, modified in place (``requires_grad``).
    preset
        ``"published"`` or ``"full"``.

    Returns
    -------
    Names of the trainable parameters.

    Raises
    ------
    ValueError
        For an unknown ``preset``, or ``"published"`` on a model with fewer than two encoder layers.
    """
    if preset not in FINETUNING_PRESETS:
        raise ValueError(f"preset must be one of {FINETUNING_PRESETS}; got {preset!r}.")
    if preset == "full":
        model.requires_grad_(True)
    else:
        layers = model.scbert.encoder.layers
        if len(layers) < 2:
            raise ValueError(
                f"The 'published' preset trains the second-to-last encoder layer, but this model has {len(layers)} "
                "layer; use preset='full'."
            )
        model.requires_grad_(False)
        for module in (layers[-2], model.scbert.final_layer_norm, model.classifier):
            module.requires_grad_(True)
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("Fine-tuning preset %r: %s of %s parameters trainable.", preset, f"{count:,}", f"{total:,}")
    return trainable


def auto_finetuning_preset(model: ScBertForSequenceClassification, start: Any) -> str:
    """The preset ``"auto"`` stands for: ``"full"`` for a model without pretrained weights or with fewer than two
    layers (the published recipe trains the second-to-last), else ``"published"``.

    Parameters
    ----------
    model
        The model to fine-tune.
    start
        What the model was built from (the ``model`` argument of :func:`~modeling_scbert.training.finetune`):
        ``None`` or a config means a new model without pretrained weights.
    """
    if builds_new_model(start):
        preset, why = "full", "a new model has no pretrained layers to keep frozen"
    elif model.config.num_hidden_layers < 2:
        preset, why = "full", "the published recipe trains the second-to-last layer, and this model has one"
    else:
        preset, why = "published", "the model is pretrained"
    logger.info("Fine-tuning preset 'auto': %r (%s).", preset, why)
    return preset


__all__ = [
    "FINETUNING_PRESETS",
    "FINETUNING_PRESET_CHOICES",
    "NEW_MODEL_DEFAULTS",
    "ScBertStartingClasses",
    "apply_finetuning_preset",
    "auto_finetuning_preset",
    "build_model",
    "builds_new_model",
    "checkpoint_classes",
    "extend_classifier_head",
    "new_classifier_head",
    "parse_config_overrides",
    "resolve_tokenizer",
    "starting_classes",
]
