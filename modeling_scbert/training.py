"""Pretraining and fine-tuning with the stock ``transformers.Trainer``.

Everything here plugs into the plain ``Trainer``: a callback (feature redraw), collators (from
``tokenization.data``), ``compute_metrics`` (accuracy, macro-F1) and ``compute_loss_func`` (class-weighted loss).
:func:`pretrain` and :func:`finetune` wire them together; :func:`pretrain_main` and :func:`finetune_main` parse the
command line with ``HfArgumentParser`` over :class:`ScBertModelArguments`, :class:`ScBertDataArguments`
(and :class:`ScBertFinetuningArguments`) plus ``TrainingArguments``, so every Trainer option works
(``--bf16``, ``--gradient_accumulation_steps``, ``--gradient_checkpointing``, ``--deepspeed``, ``--fsdp``,
``--push_to_hub``, ``--resume_from_checkpoint``, ``--report_to``, ...).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from anndata import AnnData
from transformers import (
    EarlyStoppingCallback,
    EvalPrediction,
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from tokenization import ScBertTokenizer
from tokenization.data import (
    DataCollatorForCellClassification,
    DataCollatorForMaskedExpression,
    stratified_split,
    to_dataset,
)
from tokenization.pipeline_scbert import save_pipeline_code

from .configuration_scbert import ScBertConfig
from .labels import class_names_from_labels, describe_data, unseen_labels
from .model_card_data import report_to_evaluation
from .modeling_scbert import ScBertForMaskedLM, ScBertForSequenceClassification
from .reading import ScBertReadingArguments, takes_reading_options
from .trainer import ScBertModelCardCallback, ScBertTrainer

logger = logging.getLogger(__name__)

FINETUNING_PRESETS = ("published", "full")
# "auto": "full" for a model without pretrained weights or with one layer (nothing to keep frozen), else "published".
FINETUNING_PRESET_CHOICES = ("auto", *FINETUNING_PRESETS)
# The config of a model built from scratch over a tokenizer's panel, where the config's defaults (the published
# model's) do not fit: no gene2vec table exists for an arbitrary panel, so the gene embedding is learned; the head is
# the published per-gene ("conv") head, which learns on real 10x data where a mean over the genes ("pooled") did not
# (docs/training.md, "Kang 2018"), with dropout on its per-gene scores so that it cannot rest on a few genes.
# A new model's head and initialisation, chosen on the Kang 2018 PBMCs (docs/training.md): the per-gene head learns
# where the mean over genes did not; a leaky score activation with a wider initialisation made two of three seeds
# learn instead of one.
NEW_MODEL_DEFAULTS = {
    "gene_embedding_type": "learned",
    "classifier_type": "conv",
    "classifier_input_dropout": 0.3,
    "classifier_score_activation": "leaky_relu",
    "initializer_range": 0.1,
}
CLASS_WEIGHTINGS = ("none", "balanced")
LABEL_COLUMN = "label"


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks, losses and metrics: the pieces the stock Trainer takes
# ---------------------------------------------------------------------------------------------------------------------


class ScBertFeatureRedrawCallback(TrainerCallback):
    """Redraw the FAVOR+ random features every ``interval`` optimisation steps, as the published training did.

    The draw uses a generator seeded from ``(seed, global_step)``, so every process of a distributed run draws the
    same features without communicating, and a resumed run draws what the uninterrupted run would have.

    Args:
        interval: Steps between redraws. ``None`` uses the model's ``config.feature_redraw_interval``; 0 or ``None``
            there never redraws.
        seed: Base seed. ``None`` uses ``TrainingArguments.seed``.
    """

    def __init__(self, interval: int | None = None, seed: int | None = None):
        self.interval = interval
        self.seed = seed

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        if model is None:
            return
        model = getattr(model, "module", model)  # unwrap DDP-style wrappers
        interval = self.interval if self.interval is not None else model.config.feature_redraw_interval
        if not interval or state.global_step % interval:
            return
        seed = self.seed if self.seed is not None else args.seed
        generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + state.global_step)
        model.redraw_random_features(generator=generator)
        logger.debug("Redrew FAVOR+ random features at step %d", state.global_step)


def balanced_class_weights(labels: Sequence[int] | np.ndarray, num_labels: int) -> torch.Tensor:
    """Per-class weights ``n_cells / (num_labels * n_cells_of_class)`` (scikit-learn's ``"balanced"``).

    A class absent from ``labels`` gets weight 0 (it cannot contribute to the loss anyway).

    Parameters
    ----------
    labels
        Class ids of the training cells.
    num_labels
        Number of classes.

    Returns
    -------
    float32 tensor of shape ``(num_labels,)``.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_labels).astype(np.float64)
    if counts.shape[0] > num_labels:
        raise ValueError(f"labels contain class ids up to {counts.shape[0] - 1}, but num_labels is {num_labels}.")
    weights = np.divide(counts.sum(), num_labels * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class ScBertWeightedLoss:
    """Class-weighted cross-entropy for ``Trainer(compute_loss_func=...)``.

    The loss is ``sum_i w[y_i] * CE_i / num_items_in_batch``, where ``num_items_in_batch`` is the Trainer's count of
    labelled cells over the whole accumulated, all-process batch. This is how the Trainer expects a
    ``compute_loss_func`` to normalise: it then neither divides by the gradient-accumulation steps nor averages
    differently across processes, so gradients match a single-process run on the same global batch. With
    :func:`balanced_class_weights` the weights average 1 over the training cells, so the scale of the loss is that of
    the unweighted mean.

    Parameters
    ----------
    class_weights
        ``(num_labels,)`` weights.
    """

    class_weights: torch.Tensor

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weights = self.class_weights.to(device=logits.device, dtype=torch.float32)
        losses = torch.nn.functional.cross_entropy(logits.float(), labels.view(-1), weight=weights, reduction="sum")
        count = labels.numel() if num_items_in_batch is None else num_items_in_batch
        if torch.is_tensor(count):
            count = count.to(losses.device)
        return losses / count


def compute_classification_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """``compute_metrics`` for cell-type classification: accuracy, macro-F1 and weighted F1.

    Macro-F1 weighs every cell type equally, so rare types count as much as common ones; it is the default
    ``metric_for_best_model`` of :func:`finetune`.
    """
    from sklearn.metrics import accuracy_score, f1_score

    logits = eval_prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    predictions = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(eval_prediction.label_ids)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
    }


def classification_report(labels: Sequence[int], predictions: Sequence[int], *, label_names: Sequence[str]) -> dict:
    """Per-class precision, recall, F1 and support (scikit-learn's ``classification_report``) as a dict."""
    from sklearn.metrics import classification_report as sklearn_report

    return sklearn_report(
        labels,
        predictions,
        labels=list(range(len(label_names))),
        target_names=list(label_names),
        output_dict=True,
        zero_division=0,
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


# ---------------------------------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------------------------------


def parse_config_overrides(overrides: str | dict[str, Any] | None) -> dict[str, Any]:
    """Parse ``"hidden_size=64,num_hidden_layers=2,classifier_hidden_sizes=[128]"`` or a JSON object into a dict.

    Values are read as JSON where they parse (numbers, booleans, ``null``, lists) and as strings otherwise.
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


def load_tokenizer(
    name_or_path: str | PathLike, *, what: str = "model", local_files_only: bool = False
) -> ScBertTokenizer:
    """Load the tokenizer saved next to a model, with an error that says what to do when there is none."""
    try:
        return ScBertTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"No scBERT tokenizer found for {what} {str(name_or_path)!r} ({error}). A model folder needs "
            "tokenizer_config.json and genes.txt next to config.json; write them with "
            "ScBertTokenizer.save_pretrained(folder) or pass the tokenizer explicitly."
        ) from error


def _check_panel(config: ScBertConfig, tokenizer: ScBertTokenizer) -> None:
    if config.num_genes != tokenizer.num_genes:
        raise ValueError(
            f"The model's panel has {config.num_genes:,} genes but the tokenizer's has {tokenizer.num_genes:,}; "
            "use the tokenizer saved with the model."
        )


def _build_model(
    model_class: type[PreTrainedModel],
    model: str | PathLike | ScBertConfig | PreTrainedModel | None,
    *,
    tokenizer: ScBertTokenizer,
    config_overrides: dict[str, Any],
    label_kwargs: dict[str, Any] | None = None,
) -> PreTrainedModel:
    label_kwargs = label_kwargs or {}
    _check_config_keys(config_overrides)
    if isinstance(model, PreTrainedModel):
        if config_overrides:
            raise ValueError("config_overrides apply to a config or a folder, not to a model object.")
        if not isinstance(model, model_class):
            raise TypeError(f"Expected a {model_class.__name__}; got a {type(model).__name__}.")
        _check_panel(model.config, tokenizer)
        return model
    if model is None or isinstance(model, ScBertConfig):
        if model is None:
            config = ScBertConfig(num_genes=tokenizer.num_genes, **{**NEW_MODEL_DEFAULTS, **config_overrides})
        else:
            config = ScBertConfig.from_dict({**model.to_dict(), **config_overrides})
        for key, value in label_kwargs.items():
            setattr(config, key, value)
        _check_panel(config, tokenizer)
        logger.info("Training a new %s from a fresh config.", model_class.__name__)
        return model_class(config)
    config = ScBertConfig.from_pretrained(model, **config_overrides)
    for key, value in label_kwargs.items():
        setattr(config, key, value)
    _check_panel(config, tokenizer)
    # A pretrained (masked-expression) folder has no classifier, and a fine-tuned one may have other classes:
    # mismatched head weights are re-initialised rather than refused.
    return model_class.from_pretrained(model, config=config, ignore_mismatched_sizes=True)


def _resolve_tokenizer(
    tokenizer: ScBertTokenizer | str | PathLike | None, model: Any, train_data: Any
) -> ScBertTokenizer:
    if isinstance(tokenizer, ScBertTokenizer):
        return tokenizer
    if tokenizer is not None:
        return load_tokenizer(tokenizer, what="tokenizer")
    if isinstance(model, (str, PathLike)):
        return load_tokenizer(model)
    if isinstance(train_data, AnnData):
        logger.info("No tokenizer given: building a panel over the training data's %d genes.", train_data.n_vars)
        return ScBertTokenizer.from_adata(train_data)
    raise ValueError(
        "A tokenizer is needed: pass tokenizer=, a model folder that has one, or AnnData to build a panel from."
    )


def _encode(
    data: Any,
    *,
    tokenizer: ScBertTokenizer,
    label_key: str | None,
    label_names: Sequence[str] | None,
    encode_kwargs: dict[str, Any],
):
    """AnnData -> datasets.Dataset; a Dataset passes through."""
    if data is None or not isinstance(data, AnnData):
        return data
    return to_dataset(data, tokenizer=tokenizer, label_key=label_key, label_names=label_names, **encode_kwargs)


def _encode_options(encode_kwargs: dict[str, Any] | None, read_options: dict[str, Any], *, caller: str) -> dict:
    """The keyword arguments of ``to_dataset``: the reading options (given by name, or, as before, inside
    ``encode_kwargs``) plus the other ``encode_kwargs`` (``cache_dir``, ``batch_size``, ...)."""
    encode_kwargs = dict(encode_kwargs or {})
    both = sorted(set(encode_kwargs) & set(read_options))
    if both:
        raise ValueError(f"{both} given both as keywords of {caller}() and in encode_kwargs; pass them once.")
    reading = {name: encode_kwargs.pop(name) for name in ScBertReadingArguments.names() if name in encode_kwargs}
    reading = ScBertReadingArguments.from_kwargs({**reading, **read_options}, caller=caller)
    return {**encode_kwargs, **reading.tokenizer_kwargs()}


def _prepare_args(training_args: TrainingArguments) -> None:
    # The collators read the sparse columns (gene_indices, bins) that forward() does not name; the Trainer would drop
    # them otherwise.
    if training_args.remove_unused_columns:
        logger.info("Setting remove_unused_columns=False: the collators need the sparse token columns.")
        training_args.remove_unused_columns = False


def _resume_point(training_args: TrainingArguments, resume_from_checkpoint: str | bool | None) -> str | bool | None:
    resume = resume_from_checkpoint if resume_from_checkpoint is not None else training_args.resume_from_checkpoint
    if resume in (True, "True", "true"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise FileNotFoundError(
                f"resume_from_checkpoint=True but {training_args.output_dir!r} holds no checkpoint-* folder; "
                "drop the option to start afresh, or pass the checkpoint folder."
            )
        logger.info("Resuming from %s", last)
        return last
    return resume or None


def _finish(trainer: Trainer, tokenizer: ScBertTokenizer) -> None:
    trainer.save_model()  # writes on the main process only; the tokenizer goes with it (processing_class)
    trainer.save_state()
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(trainer.args.output_dir)
        if isinstance(getattr(trainer.model, "module", trainer.model), ScBertForSequenceClassification):
            save_pipeline_code(trainer.args.output_dir)  # pipeline("cell-type-annotation", ...) as remote code


# ---------------------------------------------------------------------------------------------------------------------
# The two workflows
# ---------------------------------------------------------------------------------------------------------------------


@takes_reading_options
def pretrain(
    train_data: AnnData | Any,
    *,
    training_args: TrainingArguments,
    model: str | PathLike | ScBertConfig | ScBertForMaskedLM | None = None,
    tokenizer: ScBertTokenizer | str | PathLike | None = None,
    eval_data: AnnData | Any | None = None,
    config_overrides: str | dict[str, Any] | None = None,
    mask_probability: float = 0.15,
    replace_probability: float = 0.9,
    callbacks: Sequence[TrainerCallback] = (),
    resume_from_checkpoint: str | bool | None = None,
    encode_kwargs: dict[str, Any] | None = None,
    **read_options: Any,
) -> Trainer:
    """Masked-expression pretraining with the stock ``Trainer``, masking as published.

    Parameters
    ----------
    train_data
        Cells to pretrain on: an AnnData (encoded with :func:`tokenization.data.to_dataset`) or a dataset from it.
    training_args
        Any ``TrainingArguments``; ``output_dir`` receives checkpoints and the final model with its tokenizer.
    model
        A folder or Hub id to continue from, a :class:`ScBertConfig`, a model, or ``None`` for a new model over the
        tokenizer's panel (learned gene embedding; the published widths unless ``config_overrides`` says otherwise).
    tokenizer
        The panel; by default the model folder's tokenizer, else a new panel over ``train_data``'s genes.
    eval_data
        Held-out cells for the masked-expression loss (``--eval_strategy``).
    config_overrides
        Config fields to change, as a dict or ``"hidden_size=64,num_hidden_layers=2"``.
    mask_probability, replace_probability
        Masking rule of :class:`tokenization.data.DataCollatorForMaskedExpression`.
    callbacks
        Extra Trainer callbacks; :class:`ScBertFeatureRedrawCallback` is always added.
    resume_from_checkpoint
        A checkpoint folder, or ``True`` for the last one in ``output_dir``; ``training_args.resume_from_checkpoint``
        when ``None``.
    encode_kwargs
        Other keyword arguments of ``to_dataset`` for AnnData inputs (``cache_dir``, ``batch_size``, ...).
    **read_options
        How to read the cells, by name: every field of :class:`~modeling_scbert.reading.ScBertReadingArguments`
        (``layer``, ``gene_key``, ``input_kind``, ``synonyms``, ``min_gene_overlap``, ...); the same options as
        ``scbert pretrain``'s.

    Returns
    -------
    The ``Trainer`` after training; the model and tokenizer are saved in ``training_args.output_dir``.

    Raises
    ------
    TypeError
        For a keyword that is not an option.
    ValueError
        For cells that cannot be read (too few panel genes, an input kind that does not fit the values, ...) and
        bad ``config_overrides``, before training starts.
    """
    encode_kwargs = _encode_options(encode_kwargs, read_options, caller="pretrain")
    tokenizer = _resolve_tokenizer(tokenizer, model, train_data)
    train_dataset = _encode(
        train_data, tokenizer=tokenizer, label_key=None, label_names=None, encode_kwargs=encode_kwargs
    )
    eval_dataset = _encode(
        eval_data, tokenizer=tokenizer, label_key=None, label_names=None, encode_kwargs=encode_kwargs
    )
    set_seed(training_args.seed)  # the new weights (and random features) are drawn from the run's seed
    model = _build_model(
        ScBertForMaskedLM, model, tokenizer=tokenizer, config_overrides=parse_config_overrides(config_overrides)
    )
    _prepare_args(training_args)
    collator = DataCollatorForMaskedExpression(
        num_genes=tokenizer.num_genes,
        mask_probability=mask_probability,
        replace_probability=replace_probability,
        mask_token_id=model.config.mask_token_id,
        # Seeded per process: replicas mask their own shards differently, and a rerun masks the same way.
        seed=training_args.seed + training_args.process_index,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[ScBertFeatureRedrawCallback(), *callbacks],
    )
    trainer.train(resume_from_checkpoint=_resume_point(training_args, resume_from_checkpoint))
    _finish(trainer, tokenizer)
    return trainer


@takes_reading_options
def finetune(
    train_data: AnnData | Any,
    *,
    training_args: TrainingArguments,
    model: str | PathLike | ScBertConfig | ScBertForSequenceClassification | None = None,
    tokenizer: ScBertTokenizer | str | PathLike | None = None,
    label_key: str | None = None,
    eval_data: AnnData | Any | None = None,
    eval_fraction: float | None = None,
    split_seed: int = 0,
    preset: Literal["auto", "published", "full"] = "auto",
    class_weighting: Literal["none", "balanced"] | None = None,
    early_stopping_patience: int | None = None,
    config_overrides: str | dict[str, Any] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    resume_from_checkpoint: str | bool | None = None,
    encode_kwargs: dict[str, Any] | None = None,
    card_facts: dict[str, Any] | None = None,
    drop_unseen_labels: bool = False,
    **read_options: Any,
) -> Trainer:
    """Fine-tune a cell-type classifier with the stock ``Trainer``.

    The classes are the labels present in the training cells, in natural order (see :mod:`modeling_scbert.labels`:
    categories no training cell has are dropped with a WARNING; cells without a label are refused; evaluation cells
    of types absent from the training cells are refused unless ``drop_unseen_labels``). They are stored in the saved
    config (``id2label`` / ``label2id``). With evaluation data, every
    evaluation reports accuracy, macro-F1 and weighted F1; at the end the per-class report (precision, recall, F1,
    support) is logged and written to ``output_dir/classification_report.json``. When
    ``training_args.metric_for_best_model`` is unset or ``"loss"`` (what ``TrainingArguments`` fills in by itself
    for ``load_best_model_at_end``), it becomes ``"macro_f1"``, so with ``load_best_model_at_end=True`` the model
    kept is the best by macro-F1.

    Parameters
    ----------
    train_data
        Labelled reference cells: an AnnData (with ``label_key``) or a dataset with a ``ClassLabel`` column
        ``label`` (from :func:`tokenization.data.to_dataset`).
    training_args
        Any ``TrainingArguments``; ``output_dir`` receives checkpoints and the final model with its tokenizer.
    model
        A pretrained folder or Hub id (masked-expression or fine-tuned; a new head is initialised where the shapes
        differ), a :class:`ScBertConfig`, a model, or ``None`` for a new model over the tokenizer's panel.
    tokenizer
        The panel; by default the model folder's tokenizer, else a new panel over ``train_data``'s genes.
    label_key
        ``.obs`` column with the cell types (AnnData inputs).
    eval_data
        Held-out labelled cells.
    eval_fraction
        Without ``eval_data``: hold out this fraction of each class of ``train_data`` (stratified, seeded by
        ``split_seed``) for evaluation.
    split_seed
        Seed of that split.
    preset
        Which parameters train: ``"published"`` (see :func:`apply_finetuning_preset`) or ``"full"``. ``"auto"``
        (the default) is ``"full"`` for a model built from scratch (``model=None`` or a config: it has no pretrained
        layers to keep frozen) or with one layer, and ``"published"`` for a pretrained folder, Hub id or model
        object with two or more.
    class_weighting
        ``"balanced"`` weighs each class's loss by ``n / (k * n_class)`` (see :class:`ScBertWeightedLoss`), which
        helps macro-F1 on imbalanced references; ``"none"`` / ``None`` is plain cross-entropy.
    early_stopping_patience
        Stop after this many evaluations without improvement of ``metric_for_best_model``; needs evaluation data
        and ``load_best_model_at_end=True``.
    config_overrides
        Config fields to change (e.g. ``classifier_type``, ``classifier_dropout``).
    callbacks
        Extra Trainer callbacks; :class:`ScBertFeatureRedrawCallback` is always added.
    resume_from_checkpoint
        A checkpoint folder, or ``True`` for the last one in ``output_dir``; ``training_args.resume_from_checkpoint``
        when ``None``.
    encode_kwargs
        Other keyword arguments of ``to_dataset`` for AnnData inputs (``cache_dir``, ``batch_size``, ...).
    card_facts
        Facts for the model card written into ``output_dir`` (``README.md``) and pushed with the model: at least
        ``license`` (the weights' license, your choice: nothing is assumed); optionally ``base_model``,
        ``training_data`` (``name``, ``description``), ``species``, ``description``. The label counts, the
        hyperparameters and the evaluation are filled in from the run. Without a license no card is written, and
        ``push_to_hub=True`` is refused before training starts.
    drop_unseen_labels
        Leave out evaluation cells whose type no training cell has (logged at WARNING with the count of each type),
        instead of refusing them.
    **read_options
        How to read the cells, by name: every field of :class:`~modeling_scbert.reading.ScBertReadingArguments`
        (``layer``, ``gene_key``, ``input_kind``, ``synonyms``, ``min_gene_overlap``, ...); the same options as
        ``scbert finetune``'s.

    Returns
    -------
    The ``Trainer`` after training; the model (with ``id2label``) and tokenizer are saved in
    ``training_args.output_dir``.

    Raises
    ------
    TypeError
        For a keyword that is not an option.
    ValueError
        Before training starts: for a missing label column, cells without a label, evaluation cells of types
        absent from the training cells (without ``drop_unseen_labels``), cells that cannot be read, bad options.
    """
    if class_weighting not in (None, *CLASS_WEIGHTINGS):
        raise ValueError(f"class_weighting must be one of {CLASS_WEIGHTINGS}; got {class_weighting!r}.")
    if preset not in FINETUNING_PRESET_CHOICES:
        raise ValueError(f"preset must be one of {FINETUNING_PRESET_CHOICES}; got {preset!r}.")
    if isinstance(train_data, AnnData) and label_key is None:
        raise ValueError(
            f"label_key= is needed to fine-tune on an AnnData: the .obs column holding the cell types (columns: "
            f"{list(train_data.obs.columns)})."
        )
    encode_kwargs = _encode_options(encode_kwargs, read_options, caller="finetune")
    # The class list and the evaluation labels are checked before anything is encoded or trained.
    label_names = None
    if isinstance(train_data, AnnData):
        what = describe_data(train_data, role="training", argument="train_data")
        label_names = class_names_from_labels(train_data, label_key=label_key, what=what)

    def check_evaluation_labels(class_names: list[str]) -> list[str]:
        if not isinstance(eval_data, AnnData):
            return []
        what = describe_data(eval_data, role="evaluation", argument="eval_data")
        return unseen_labels(
            eval_data, label_key=label_key, class_names=class_names, what=what, drop=drop_unseen_labels
        )

    unseen = None if label_names is None else check_evaluation_labels(label_names)
    tokenizer = _resolve_tokenizer(tokenizer, model, train_data)
    train_dataset = _encode(
        train_data, tokenizer=tokenizer, label_key=label_key, label_names=label_names, encode_kwargs=encode_kwargs
    )
    if LABEL_COLUMN not in train_dataset.column_names:
        raise ValueError(
            f"The training dataset has no {LABEL_COLUMN!r} column (columns: {train_dataset.column_names}); build it "
            "with to_dataset(..., label_key=...)."
        )
    label_names = list(train_dataset.features[LABEL_COLUMN].names)
    if not isinstance(train_data, AnnData):
        counts = np.bincount(np.asarray(train_dataset[LABEL_COLUMN]), minlength=len(label_names))
        if not counts.all():
            logger.warning(
                "Classes of the training dataset without a training cell: %s. The model gets an output for each, "
                "which can only take probability from the others; build the dataset with to_dataset(..., "
                "label_names=...) listing the classes that have cells.",
                [name for name, count in zip(label_names, counts) if not count],
            )
    if unseen is None:  # a dataset of training cells: its class list is known only now
        unseen = check_evaluation_labels(label_names)
    eval_dataset = _encode(
        eval_data,
        tokenizer=tokenizer,
        label_key=label_key,
        label_names=[*label_names, *unseen],
        encode_kwargs=encode_kwargs,
    )
    if unseen:
        eval_dataset = _drop_classes_from(eval_dataset, label_names)
    if eval_dataset is None and eval_fraction:
        splits = stratified_split(train_dataset, eval_fraction=eval_fraction, seed=split_seed)
        train_dataset, eval_dataset = splits["train"], splits["eval"]
    if eval_dataset is not None:
        eval_names = list(eval_dataset.features[LABEL_COLUMN].names)
        if eval_names != label_names:
            raise ValueError(
                f"The evaluation dataset's classes {eval_names} differ from the training data's {label_names}; "
                f"build it with to_dataset(..., label_names=...) given the training classes."
            )

    set_seed(training_args.seed)
    start = model
    model = _build_model(
        ScBertForSequenceClassification,
        model,
        tokenizer=tokenizer,
        config_overrides=parse_config_overrides(config_overrides),
        label_kwargs={
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
            "problem_type": "single_label_classification",
        },
    )
    if model.config.num_labels != len(label_names):
        raise ValueError(f"The model has {model.config.num_labels} classes but the data has {len(label_names)}.")
    if preset == "auto":
        preset = _auto_preset(model, start)
    apply_finetuning_preset(model, preset)

    _prepare_args(training_args)
    # TrainingArguments picks "loss" by itself when load_best_model_at_end is set without a metric; for annotation
    # the model to keep is the best by macro-F1, which weighs rare cell types as much as common ones.
    if eval_dataset is not None and training_args.metric_for_best_model in (None, "loss", "eval_loss"):
        training_args.metric_for_best_model = "macro_f1"
        training_args.greater_is_better = True
    trainer_callbacks = [ScBertFeatureRedrawCallback(), *callbacks]
    if early_stopping_patience:
        if eval_dataset is None:
            raise ValueError("early_stopping_patience needs evaluation cells: pass eval_data= or eval_fraction=.")
        if not training_args.load_best_model_at_end:
            raise ValueError(
                "early_stopping_patience needs load_best_model_at_end=True, with matching eval and save strategies."
            )
        trainer_callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    facts = _card_facts(card_facts, train_dataset, eval_dataset, label_names, model=model, preset=preset)
    if facts.get("license"):
        trainer_callbacks.append(ScBertModelCardCallback(tokenizer=tokenizer, facts=facts))
    elif training_args.push_to_hub:
        raise ValueError(
            "push_to_hub=True pushes a model card, which needs the weights' license: pass card_facts={'license': ...}, "
            "e.g. 'apache-2.0', 'cc-by-4.0' or 'other'."
        )
    loss = None
    if class_weighting == "balanced":
        weights = balanced_class_weights(np.asarray(train_dataset[LABEL_COLUMN]), len(label_names))
        logger.info("Class weights: %s", dict(zip(label_names, np.round(weights.numpy(), 3).tolist())))
        loss = ScBertWeightedLoss(weights)

    trainer = ScBertTrainer(  # the stock Trainer; its card is ours
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorForCellClassification(num_genes=tokenizer.num_genes),
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
        compute_loss_func=loss,
        callbacks=trainer_callbacks,
    )
    trainer.train(resume_from_checkpoint=_resume_point(training_args, resume_from_checkpoint))

    metrics = None
    if eval_dataset is not None:
        prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
        metrics = prediction.metrics
        trainer.log_metrics("eval", metrics)
        report = classification_report(
            prediction.label_ids, np.asarray(prediction.predictions).argmax(-1), label_names=label_names
        )
        majority = majority_class_baseline(
            np.asarray(train_dataset[LABEL_COLUMN]), np.asarray(prediction.label_ids), label_names=label_names
        )
        facts.setdefault("evaluation", {})["majority_class"] = majority
        facts["evaluation"].update(report_to_evaluation(report, list(label_names)))  # per-class rows for the card
        _warn_if_no_better(metrics, majority)
        if trainer.is_world_process_zero():
            Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
            path = Path(training_args.output_dir) / "classification_report.json"
            path.write_text(json.dumps(report, indent=2) + "\n")
            logger.info("Per-class report on the evaluation cells:\n%s", _format_report(report, label_names))
    if facts.get("license"):
        if metrics is not None:
            trainer.save_metrics("eval", metrics)
        trainer.save_state()
        if training_args.push_to_hub:
            # The stock push: saves model and tokenizer, ScBertTrainer.create_model_card renders our card, one commit.
            trainer.push_to_hub(card_facts=facts)
        else:
            trainer.save_model()
            trainer.create_model_card(card_facts=facts)
    else:
        _finish(trainer, tokenizer)
        if metrics is not None:
            trainer.save_metrics("eval", metrics)
        logger.info("No license given (card_facts={'license': ...}): no model card written.")
    return trainer


def _drop_classes_from(dataset: Any, label_names: Sequence[str]) -> Any:
    """Keep the rows whose class id is one of the first ``len(label_names)``, with a ``ClassLabel`` of those names."""
    import datasets

    keep = len(label_names)
    dataset = dataset.filter(
        lambda labels: [label < keep for label in labels], input_columns=LABEL_COLUMN, batched=True
    )
    return dataset.cast_column(LABEL_COLUMN, datasets.ClassLabel(names=list(label_names)))


def _auto_preset(model: ScBertForSequenceClassification, start: Any) -> str:
    """``"full"`` for a model without pretrained weights (built here from ``None`` or a config) or with fewer than two
    layers (the published recipe trains the second-to-last), else ``"published"``."""
    if start is None or isinstance(start, ScBertConfig):
        preset, why = "full", "a new model has no pretrained layers to keep frozen"
    elif model.config.num_hidden_layers < 2:
        preset, why = "full", "the published recipe trains the second-to-last layer, and this model has one"
    else:
        preset, why = "published", "the model is pretrained"
    logger.info("Fine-tuning preset 'auto': %r (%s).", preset, why)
    return preset


def majority_class_baseline(
    train_labels: Sequence[int] | np.ndarray, eval_labels: Sequence[int] | np.ndarray, *, label_names: Sequence[str]
) -> dict[str, Any]:
    """Scores of the predictor that always answers the most frequent training class, on the evaluation labels.

    A classifier that does not beat it has learned nothing usable (it may still have a fine-looking accuracy on an
    imbalanced reference).

    Returns
    -------
    ``{"label": name, "accuracy": float, "macro_f1": float}``; macro-F1 over the classes present in
    ``eval_labels`` or predicted, as :func:`compute_classification_metrics` computes it.
    """
    from sklearn.metrics import f1_score

    train_labels, eval_labels = np.asarray(train_labels), np.asarray(eval_labels)
    if train_labels.size == 0 or eval_labels.size == 0:
        raise ValueError("The majority-class baseline needs training and evaluation labels; one of them is empty.")
    majority = int(np.bincount(train_labels, minlength=len(label_names)).argmax())
    constant = np.full_like(eval_labels, majority)
    return {
        "label": str(label_names[majority]),
        "accuracy": float(np.mean(eval_labels == majority)),
        "macro_f1": float(f1_score(eval_labels, constant, average="macro", zero_division=0)),
    }


def _warn_if_no_better(metrics: dict[str, Any], majority: dict[str, Any]) -> bool:
    """Log a warning when the final evaluation does not beat the majority-class predictor on accuracy or on
    macro-F1; returns whether it warned."""
    accuracy, macro_f1 = metrics.get("eval_accuracy"), metrics.get("eval_macro_f1")
    if accuracy is None or macro_f1 is None:
        return False
    if accuracy > majority["accuracy"] and macro_f1 > majority["macro_f1"]:
        return False
    logger.warning(
        "The fine-tuned model is no better than always predicting the most frequent training class %r on the "
        "evaluation cells: accuracy %.3f against %.3f, macro-F1 %.3f against %.3f. It has not learned to tell the "
        "cell types apart; do not annotate with it. Check the learning rate and the number of epochs, the head "
        "(config classifier_type), and the genes the panel keeps.",
        majority["label"],
        accuracy,
        majority["accuracy"],
        macro_f1,
        majority["macro_f1"],
    )
    return True


def _card_facts(
    given: dict[str, Any] | None,
    train_dataset: Any,
    eval_dataset: Any,
    label_names: Sequence[str],
    *,
    model: ScBertForSequenceClassification,
    preset: str,
) -> dict[str, Any]:
    """The card facts this run knows (label counts, cell numbers, the fine-tuning choices), under the caller's."""
    counts = np.bincount(np.asarray(train_dataset[LABEL_COLUMN]), minlength=len(label_names))
    facts: dict[str, Any] = {
        "label_counts": {name: int(count) for name, count in zip(label_names, counts, strict=True)},
        "training_data": {"num_cells": int(counts.sum())},
        "hyperparameters": {"fine-tuning preset": preset},
    }
    base = getattr(model.config, "_name_or_path", "")
    if base and not os.path.isdir(base) and "/" in base:
        facts["base_model"] = base  # a Hub id; local folders are not citable
    if eval_dataset is not None:
        facts["evaluation"] = {"dataset_name": "held-out labelled cells", "num_cells": len(eval_dataset)}
    for key, value in (given or {}).items():
        if isinstance(value, dict) and isinstance(facts.get(key), dict):
            facts[key] = {**facts[key], **value}
        else:
            facts[key] = value
    return facts


def _format_report(report: dict, label_names: Sequence[str]) -> str:
    width = max(12, *(len(name) for name in label_names))
    lines = [f"{'':>{width}}  precision  recall  f1-score  support"]
    for name in [*label_names, "macro avg", "weighted avg"]:
        row = report[name]
        lines.append(
            f"{name:>{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1-score']:8.3f}  "
            f"{int(row['support']):7d}"
        )
    lines.append(f"{'accuracy':>{width}}  {report['accuracy']:.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Command line: HfArgumentParser over our dataclasses plus TrainingArguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ScBertModelArguments:
    """Which model to start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained folder or Hub id to start from; omit to train a new model over the panel."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder or Hub id; default: the model's, else a new panel over train_file."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config fields to set, e.g. 'hidden_size=64,num_hidden_layers=2,head_dim=16' or JSON."},
    )


@dataclass
class ScBertDataArguments:
    """Where the cells are (how to read them: :class:`~modeling_scbert.reading.ScBertReadingArguments`)."""

    train_file: str = field(metadata={"help": "Training cells: a .h5ad file, or a folder written by to_dataset."})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation cells (.h5ad or dataset)."})
    validation_fraction: float | None = field(
        default=None, metadata={"help": "Without validation_file: hold out this fraction of train_file."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the validation split."})
    label_key: str | None = field(default=None, metadata={"help": "The .obs column with the cell types."})
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Where encoded cells are written (default: the datasets cache)."}
    )
    mask_probability: float = field(
        default=0.15, metadata={"help": "Pretraining: fraction of non-zero tokens chosen."}
    )
    replace_probability: float = field(default=0.9, metadata={"help": "Pretraining: chosen tokens set to the mask."})


@dataclass
class ScBertFinetuningArguments:
    """Fine-tuning choices."""

    finetuning_preset: str = field(
        default="auto",
        metadata={
            "help": "published (train layer -2, final LayerNorm and head), full, or auto (default): full for a new "
            "model (no --model_name_or_path) or a one-layer one, published for a pretrained one (also --preset, as "
            "in Python).",
            "choices": FINETUNING_PRESET_CHOICES,
            "aliases": ["--preset"],
        },
    )
    class_weighting: str = field(
        default="none", metadata={"help": "none or balanced (for imbalanced references).", "choices": CLASS_WEIGHTINGS}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Evaluations without improvement before stopping (needs evaluation data)."}
    )
    license: str | None = field(
        default=None,
        metadata={"help": "License of the fine-tuned weights, for the model card (needed with --push_to_hub)."},
    )
    base_model: str | None = field(default=None, metadata={"help": "Hub id of the pretrained model, for the card."})
    drop_unseen_labels: bool = field(
        default=False,
        metadata={"help": "Leave out evaluation cells whose type no training cell has, instead of refusing them."},
    )


# Defaults that differ from TrainingArguments' for fine-tuning: evaluate and save every epoch, keep the best model by
# macro-F1. Any of them can still be set on the command line.
_FINETUNE_DEFAULTS = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "load_best_model_at_end": True,
    "metric_for_best_model": "macro_f1",
    "save_total_limit": 2,
    "logging_strategy": "epoch",
}


def _read_data(path: str | None, *, split: str):
    """A .h5ad file (read backed, so it need not fit in memory) or a saved dataset folder."""
    if path is None:
        return None
    if os.path.isdir(path):
        import datasets

        return datasets.load_from_disk(path)
    from .annotate import read_h5ad

    return read_h5ad(path, backed="r", what=f"{split} file")


def _encode_kwargs(data_args: ScBertDataArguments, reading: ScBertReadingArguments) -> dict[str, Any]:
    kwargs = reading.tokenizer_kwargs()
    if data_args.dataset_cache_dir is not None:
        kwargs["cache_dir"] = data_args.dataset_cache_dir
    return kwargs


def _given(args: Sequence[str], *names: str) -> bool:
    """Whether any of the options ``names`` (written with underscores) is on the command line, in either spelling."""
    spellings = {f"--{name}" for name in names} | {f"--{name.replace('_', '-')}" for name in names}
    return any(arg.split("=", 1)[0] in spellings for arg in args)


# The options of each training command, in the order parse_args_into_dataclasses returns them.
COMMAND_ARGUMENTS = {
    "pretrain": (ScBertModelArguments, ScBertDataArguments, ScBertReadingArguments, TrainingArguments),
    "finetune": (
        ScBertModelArguments,
        ScBertDataArguments,
        ScBertReadingArguments,
        ScBertFinetuningArguments,
        TrainingArguments,
    ),
}


def argument_parser(command: Literal["pretrain", "finetune"], *, prog: str | None = None) -> HfArgumentParser:
    """The ``HfArgumentParser`` of ``scbert pretrain`` / ``scbert finetune`` (every option in both spellings)."""
    return HfArgumentParser(COMMAND_ARGUMENTS[command], prog=prog or f"scbert {command}")


def _parse(command: str, argv: Sequence[str] | None, *, prog: str, defaults: dict[str, Any] | None = None):
    parser = argument_parser(command, prog=prog)
    if defaults:
        parser.set_defaults(**defaults)
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 1 and args[0].endswith((".json", ".yaml", ".yml")):
        path = os.path.abspath(args[0])
        return parser.parse_json_file(path) if path.endswith(".json") else parser.parse_yaml_file(path)
    return parser.parse_args_into_dataclasses(args=args)


def pretrain_main(argv: Sequence[str] | None = None, *, prog: str = "scbert pretrain") -> Trainer:
    """Masked-expression pretraining from the command line (also takes one ``.json`` / ``.yaml`` file of options)."""
    model_args, data_args, reading, training_args = _parse("pretrain", argv, prog=prog)
    train = _read_data(data_args.train_file, split="train")
    no_panel = model_args.tokenizer_name_or_path is None and model_args.model_name_or_path is None
    if no_panel and not isinstance(train, AnnData):
        raise ValueError("A dataset folder carries no gene panel: pass --tokenizer_name_or_path.")
    tokenizer = _resolve_tokenizer(model_args.tokenizer_name_or_path, model_args.model_name_or_path, train)
    evaluation = _read_data(data_args.validation_file, split="validation")
    if evaluation is None and data_args.validation_fraction:
        if isinstance(train, AnnData):
            train = to_dataset(train, tokenizer=tokenizer, **_encode_kwargs(data_args, reading))
        splits = train.train_test_split(test_size=data_args.validation_fraction, seed=data_args.split_seed)
        train, evaluation = splits["train"], splits["test"]
    return pretrain(
        train,
        training_args=training_args,
        model=model_args.model_name_or_path,
        tokenizer=tokenizer,
        eval_data=evaluation,
        config_overrides=model_args.config_overrides,
        mask_probability=data_args.mask_probability,
        replace_probability=data_args.replace_probability,
        encode_kwargs=_encode_kwargs(data_args, reading),
    )


def finetune_main(argv: Sequence[str] | None = None, *, prog: str = "scbert finetune") -> Trainer:
    """Fine-tuning from the command line (also takes one ``.json`` / ``.yaml`` file of options).

    Defaults that differ from ``TrainingArguments``: evaluate and save every epoch, keep the best model by macro-F1
    (``load_best_model_at_end``), keep two checkpoints, log every epoch. Without evaluation data these are turned
    off.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    has_eval = _given(args, "validation_file", "validation_fraction")
    defaults = dict(_FINETUNE_DEFAULTS)
    if not has_eval:
        defaults.update(eval_strategy="no", load_best_model_at_end=False, metric_for_best_model=None)
    model_args, data_args, reading, finetune_args, training_args = _parse(
        "finetune", args, prog=prog, defaults=defaults
    )
    if data_args.label_key is None and not os.path.isdir(data_args.train_file):
        raise ValueError("--label_key is required with a .h5ad train_file: the .obs column holding the cell types.")
    # Checks whose advice differs on the command line from finetune()'s (which names its Python arguments).
    evaluation = data_args.validation_file or data_args.validation_fraction
    if finetune_args.early_stopping_patience and not evaluation:
        raise ValueError(
            "--early_stopping_patience needs evaluation cells: pass --validation_file or --validation_fraction."
        )
    if training_args.push_to_hub and not finetune_args.license:
        raise ValueError(
            "--push_to_hub pushes a model card, which needs the weights' license: pass --license, e.g. 'apache-2.0', "
            "'cc-by-4.0' or 'other'."
        )
    train = _read_data(data_args.train_file, split="train")
    if isinstance(train, AnnData) and data_args.label_key not in train.obs.columns:
        raise ValueError(
            f"--label_key {data_args.label_key!r} is not a column of {data_args.train_file}'s .obs; the columns are "
            f"{list(train.obs.columns)}."
        )
    tokenizer = model_args.tokenizer_name_or_path
    if tokenizer is None and model_args.model_name_or_path is None and not isinstance(train, AnnData):
        raise ValueError("A dataset folder carries no gene panel: pass --tokenizer_name_or_path.")
    return finetune(
        train,
        training_args=training_args,
        model=model_args.model_name_or_path,
        tokenizer=tokenizer,
        label_key=data_args.label_key,
        eval_data=_read_data(data_args.validation_file, split="validation"),
        eval_fraction=data_args.validation_fraction,
        split_seed=data_args.split_seed,
        preset=finetune_args.finetuning_preset,
        class_weighting=finetune_args.class_weighting,
        early_stopping_patience=finetune_args.early_stopping_patience,
        config_overrides=model_args.config_overrides,
        encode_kwargs=_encode_kwargs(data_args, reading),
        drop_unseen_labels=finetune_args.drop_unseen_labels,
        card_facts={
            key: value
            for key, value in {"license": finetune_args.license, "base_model": finetune_args.base_model}.items()
            if value
        },
    )


__all__ = [
    "COMMAND_ARGUMENTS",
    "ScBertDataArguments",
    "ScBertFeatureRedrawCallback",
    "ScBertFinetuningArguments",
    "ScBertModelArguments",
    "ScBertReadingArguments",
    "ScBertWeightedLoss",
    "apply_finetuning_preset",
    "argument_parser",
    "balanced_class_weights",
    "classification_report",
    "compute_classification_metrics",
    "finetune",
    "finetune_main",
    "majority_class_baseline",
    "parse_config_overrides",
    "pretrain",
    "pretrain_main",
]
