"""Pretraining and fine-tuning with the stock ``transformers.Trainer``: the workflows :func:`pretrain` and
:func:`finetune`, each a short sequence of named phases.

:func:`finetune`: check the options -> the classes and the datasets (:mod:`.data`, :mod:`.labels`) -> the model
(:mod:`.model_setup`: build, preset) -> the Trainer (:mod:`.trainer`: feature redraw, early stopping, class-weighted
loss; :mod:`.run_card`: the card's facts) -> train -> evaluate and report (:mod:`.metrics`) -> save (model,
tokenizer, pipeline code, card, metrics). :func:`pretrain` is the same without classes, evaluation report or card,
with the masking collator of :mod:`tokenization.data`. The caller's ``TrainingArguments`` is never changed: the
Trainer gets a copy with the few fields these workflows need. :func:`pretrain_main` and :func:`finetune_main` run them
from a command line parsed by :mod:`.arguments` (every ``TrainingArguments`` option works).
"""

from __future__ import annotations

import dataclasses
import logging
import textwrap
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from anndata import AnnData
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from tokenization import ScBertTokenizer
from tokenization.corpus import is_corpus
from tokenization.data import (
    LABEL,
    DataCollatorForCellClassification,
    DataCollatorForMaskedExpression,
    working_files,
)
from tokenization.reading import ScBertReadingArguments, takes_reading_options

from ..configuration_scbert import ScBertConfig
from ..modeling_scbert import ScBertForMaskedLM, ScBertForSequenceClassification
from .arguments import parse_finetune_command, parse_pretrain_command
from .checkpoints import last_complete_checkpoint
from .data import check_labels, encode, encode_options, finetuning_datasets
from .labels import CLASS_CHANGES, reconcile_classes
from .metrics import compute_classification_metrics, evaluate_classifier
from .model_setup import (
    FINETUNING_PRESET_CHOICES,
    ScBertStartingClasses,
    apply_finetuning_preset,
    auto_finetuning_preset,
    build_model,
    builds_new_model,
    checkpoint_classes,
    extend_classifier_head,
    new_classifier_head,
    parse_config_overrides,
    resolve_tokenizer,
    starting_classes,
)
from .novelty import fit_novelty_detector
from .run_card import ScBertModelCardCallback, add_evaluation_facts, check_card_renders, run_card_facts
from .trainer import (
    CLASS_WEIGHTINGS,
    ScBertFeatureRedrawCallback,
    ScBertTrainer,
    ScBertWeightedLoss,
    balanced_class_weights,
)

logger = logging.getLogger(__name__)

# --- Shared by both workflows: the Trainer's arguments, resuming, saving --------------------------------------------


def _trainer_arguments(training_args: TrainingArguments, **changes: Any) -> TrainingArguments:
    """A copy of the caller's ``TrainingArguments`` for the Trainer, with ``changes``; the caller's is never changed.

    ``dataclasses.replace`` builds the copy through the constructor, so ``TrainingArguments`` checks it as it checks
    any. The collators read the sparse columns (``gene_indices``, ``bins``) that ``forward()`` does not name, which
    the Trainer would drop: the copy keeps them (``remove_unused_columns=False``).
    """
    if training_args.remove_unused_columns:
        logger.info("Setting remove_unused_columns=False: the collators need the sparse token columns.")
    return dataclasses.replace(training_args, remove_unused_columns=False, **changes)


def _resume_point(training_args: TrainingArguments, resume_from_checkpoint: str | bool | None) -> str | bool | None:
    """The checkpoint to resume from: ``resume_from_checkpoint``, else ``training_args``'; ``True`` is the last
    complete ``checkpoint-*`` folder in ``output_dir`` (:func:`.checkpoints.last_complete_checkpoint`: incomplete
    newer ones are named in a WARNING and skipped), which must exist."""
    resume = resume_from_checkpoint if resume_from_checkpoint is not None else training_args.resume_from_checkpoint
    if resume in (True, "True", "true"):
        last = last_complete_checkpoint(training_args)
        logger.info("Resuming from %s", last)
        return last
    return resume or None


def _save_trained(trainer: Trainer, tokenizer: ScBertTokenizer) -> None:
    """Save the trained model (with a classifier's pipeline code: :meth:`ScBertTrainer.save_model`), the Trainer's
    state and the tokenizer in ``output_dir``."""
    trainer.save_model()  # writes on the main process only; the tokenizer goes with it (processing_class)
    trainer.save_state()
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(trainer.args.output_dir)


# --- The phases of pretrain -----------------------------------------------------------------------------------------


def _pretraining_trainer(
    model: ScBertForMaskedLM,
    training_args: TrainingArguments,
    *,
    tokenizer: ScBertTokenizer,
    train_dataset: Any,
    eval_dataset: Any,
    mask_probability: float,
    replace_probability: float,
    callbacks: Sequence[TrainerCallback],
) -> Trainer:
    """The stock ``Trainer`` of a pretraining run: masking as published, the feature redraw, the caller's
    callbacks."""
    args = _trainer_arguments(training_args)
    collator = DataCollatorForMaskedExpression(
        num_genes=tokenizer.num_genes,
        mask_probability=mask_probability,
        replace_probability=replace_probability,
        mask_token_id=model.config.mask_token_id,
        # Seeded per process: replicas mask their own shards differently, and a rerun masks the same way.
        seed=args.seed + args.process_index,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[ScBertFeatureRedrawCallback(), *callbacks],
    )


# --- The phases of finetune -----------------------------------------------------------------------------------------


def _check_finetune_options(
    train_data: Any,
    training_args: TrainingArguments,
    *,
    label_key: str | None,
    eval_data: Any,
    eval_fraction: float | None,
    preset: str,
    class_weighting: str | None,
    early_stopping_patience: int | None,
    card_facts: dict[str, Any] | None,
    class_change: str = "refuse",
) -> None:
    """The checks of :func:`finetune`'s options that need no cell: they run before anything is encoded.

    Raises
    ------
    ValueError
        For an unknown ``class_weighting``, ``preset`` or ``class_change``, an AnnData without ``label_key``, early stopping without
        evaluation cells or without ``load_best_model_at_end``, and ``push_to_hub`` without a license.
    """
    if class_weighting not in (None, *CLASS_WEIGHTINGS):
        raise ValueError(f"class_weighting must be one of {CLASS_WEIGHTINGS}; got {class_weighting!r}.")
    if preset not in FINETUNING_PRESET_CHOICES:
        raise ValueError(f"preset must be one of {FINETUNING_PRESET_CHOICES}; got {preset!r}.")
    if class_change not in CLASS_CHANGES:
        raise ValueError(f"class_change must be one of {CLASS_CHANGES}; got {class_change!r}.")
    if isinstance(train_data, AnnData) and label_key is None:
        raise ValueError(
            f"label_key= is needed to fine-tune on an AnnData: the .obs column holding the cell types (columns: "
            f"{list(train_data.obs.columns)})."
        )
    if is_corpus(train_data) and label_key is None:
        raise ValueError("label_key= is needed to fine-tune on a corpus: the .obs column holding the cell types.")
    if early_stopping_patience:
        if eval_data is None and not eval_fraction:  # no evaluation dataset (see finetuning_datasets)
            raise ValueError("early_stopping_patience needs evaluation cells: pass eval_data= or eval_fraction=.")
        if not training_args.load_best_model_at_end:
            raise ValueError(
                "early_stopping_patience needs load_best_model_at_end=True, with matching eval and save strategies."
            )
    if training_args.push_to_hub and not (card_facts or {}).get("license"):
        raise ValueError(
            "push_to_hub=True pushes a model card, which needs the weights' license: pass card_facts={'license': ...}, "
            "e.g. 'apache-2.0', 'cc-by-4.0' or 'other'."
        )


def _classifier(
    start: str | PathLike | ScBertConfig | ScBertForSequenceClassification | None,
    *,
    tokenizer: ScBertTokenizer,
    label_names: list[str],
    head: str,
    config_overrides: dict[str, Any],
    preset: str,
    warmup_steps: float,
) -> tuple[ScBertForSequenceClassification, str]:
    """The model a fine-tuning run trains, built from ``start`` (``finetune``'s ``model``) with the run's classes,
    and its preset (``"auto"`` resolved), applied; warns when a new model trains without warmup.

    ``head`` says what happens to the starting model's head (:func:`~modeling_scbert.training.labels.
    reconcile_classes`): ``"new"`` / ``"keep"`` build the model over ``label_names`` (a kept head loads as saved),
    ``"new_head"`` replaces it by a new one, ``"extend"`` appends the outputs of the classes after the model's own.
    A folder or Hub id is loaded with its saved weights checked (:func:`~modeling_scbert.loading.load_checked_model`);
    only a new head over a pretrained encoder may lack the ``classifier`` tensors.

    Returns
    -------
    ``(model, preset)``.

    Raises
    ------
    ValueError
        As :func:`build_model` and :func:`apply_finetuning_preset` raise it, and for a model object with another
        number of classes.
    """
    start_names = None
    if head == "extend":  # the model is built with its own classes, then extended
        start_config = start.config if isinstance(start, ScBertForSequenceClassification) else None
        start_config = start_config or ScBertConfig.from_pretrained(start)
        start_names = [start_config.id2label[i] for i in range(len(start_config.id2label))]
    build_names = start_names or label_names
    model = build_model(
        ScBertForSequenceClassification,
        start,
        tokenizer=tokenizer,
        config_overrides=config_overrides,
        label_kwargs={
            "id2label": dict(enumerate(build_names)),
            "label2id": {name: i for i, name in enumerate(build_names)},
            "problem_type": "single_label_classification",
        },
        may_lack=("classifier.",) if head in ("new", "new_head") else (),
    )
    if head == "new_head":
        new_classifier_head(model, label_names)
    elif head == "extend":
        extend_classifier_head(model, label_names[len(start_names) :])
    elif (
        head == "new"
        and isinstance(start, ScBertForSequenceClassification)
        and model.config.num_labels == len(label_names)
    ):
        model.config.id2label = dict(enumerate(label_names))  # a model object without real classes gets the run's
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
    if model.config.num_labels != len(label_names):
        raise ValueError(f"The model has {model.config.num_labels} classes but the data has {len(label_names)}.")
    if preset == "auto":
        preset = auto_finetuning_preset(model, start)
    apply_finetuning_preset(model, preset)
    if builds_new_model(start) and not warmup_steps:
        logger.warning(
            "A new model without learning-rate warmup can collapse to the majority class (docs/training.md); pass "
            "TrainingArguments(warmup_steps=0.1), the `scbert finetune` default."
        )
    return model, preset


def _dataset_classes(train_data: Any) -> list[str] | None:
    """The class names of a dataset of training cells (its ``label`` column), known without encoding anything."""
    features = getattr(train_data, "features", None)
    if features is None or LABEL not in features or not hasattr(features[LABEL], "names"):
        return None
    return list(features[LABEL].names)


def _class_change_fact(head: str, start: ScBertStartingClasses | None, label_names: list[str]) -> str | None:
    """What the model card says about the starting model's classes when they were replaced or extended."""
    if start is None or head not in ("new_head", "extend"):
        return None
    if head == "new_head":
        return f"replaced by a new head (class_change='new_head'); the starting model's were {', '.join(start.names)}"
    added = label_names[len(start.names) :]
    return f"kept, with {', '.join(added) or 'no class'} appended (class_change='extend')"


def _class_weighted_loss(
    class_weighting: str | None, train_labels: np.ndarray, label_names: list[str]
) -> ScBertWeightedLoss | None:
    """The loss of ``class_weighting``: ``None`` (the model's cross-entropy) unless ``"balanced"``."""
    if class_weighting != "balanced":
        return None
    weights = balanced_class_weights(train_labels, len(label_names))
    logger.info("Class weights: %s", dict(zip(label_names, np.round(weights.numpy(), 3).tolist())))
    return ScBertWeightedLoss(weights)


# The metrics an evaluation of finetune reports (compute_classification_metrics, and the Trainer's loss).
FINETUNING_METRICS = ("accuracy", "macro_f1", "weighted_f1", "loss")


def _finetuning_arguments(training_args: TrainingArguments, *, has_evaluation: bool) -> TrainingArguments:
    """The Trainer's copy of a fine-tuning run's arguments, built (and so checked) before any cell is encoded.

    TrainingArguments picks "loss" by itself when ``load_best_model_at_end`` is set without a metric; for annotation
    the model to keep is the best by macro-F1, which weighs rare cell types as much as common ones.

    Raises
    ------
    ValueError
        For an ``eval_strategy`` without evaluation cells, and a ``metric_for_best_model`` that no evaluation
        reports; what ``TrainingArguments`` refuses in the copy.
    """
    if training_args.eval_strategy != "no" and not has_evaluation:
        raise ValueError(
            f"eval_strategy={str(training_args.eval_strategy.value)!r} evaluates during training, but there are no "
            "evaluation cells: pass eval_data= (held-out labelled cells) or eval_fraction= (a fraction of the training "
            "cells held out; --validation_file / --validation_fraction on the command line), or set "
            "eval_strategy='no'."
        )
    best_by = {}
    metric = training_args.metric_for_best_model
    if has_evaluation and metric in (None, "loss", "eval_loss"):
        best_by = {"metric_for_best_model": "macro_f1", "greater_is_better": True}
    elif has_evaluation and metric is not None and metric.removeprefix("eval_") not in FINETUNING_METRICS:
        raise ValueError(
            f"metric_for_best_model={metric!r} is not a metric that fine-tuning reports; choose one of "
            f"{list(FINETUNING_METRICS)}."
        )
    return _trainer_arguments(training_args, **best_by)


def _classification_trainer(
    model: ScBertForSequenceClassification,
    trainer_args: TrainingArguments,
    *,
    tokenizer: ScBertTokenizer,
    train_dataset: Any,
    eval_dataset: Any,
    loss: ScBertWeightedLoss | None,
    early_stopping_patience: int | None,
    callbacks: Sequence[TrainerCallback],
    facts: dict[str, Any],
) -> ScBertTrainer:
    """The Trainer of a fine-tuning run: its arguments (:func:`_finetuning_arguments`, built before anything was
    encoded), the callbacks (feature redraw, the caller's, early stopping, the card's when ``facts`` has a license),
    the loss."""
    trainer_callbacks = [ScBertFeatureRedrawCallback(), *callbacks]
    if early_stopping_patience:
        trainer_callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    if facts.get("license"):
        trainer_callbacks.append(ScBertModelCardCallback(tokenizer=tokenizer, facts=facts))
    return ScBertTrainer(  # the stock Trainer; its card is ours
        model=model,
        args=trainer_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorForCellClassification(num_genes=tokenizer.num_genes),
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
        compute_loss_func=loss,
        callbacks=trainer_callbacks,
    )


def _save_classifier(
    trainer: ScBertTrainer, tokenizer: ScBertTokenizer, *, facts: dict[str, Any], metrics: dict[str, float] | None
) -> None:
    """Save the fine-tuned model, its tokenizer, pipeline code and final metrics in ``output_dir``; with a license,
    the model card too, and push them all with ``push_to_hub``."""
    if metrics is not None:
        trainer.save_metrics("eval", metrics)
    if not facts.get("license"):
        _save_trained(trainer, tokenizer)
        logger.info("No license given (card_facts={'license': ...}): no model card written.")
    elif trainer.args.push_to_hub:
        trainer.save_state()
        # The stock push: saves model and tokenizer, ScBertTrainer.create_model_card renders our card, one commit.
        trainer.push_to_hub(card_facts=facts)
    else:
        trainer.save_state()
        trainer.save_model()
        trainer.create_model_card(card_facts=facts)


F = TypeVar("F", bound=Callable[..., Any])

# Parameters that pretrain and finetune share, documented once (a docstring line holding only {name} takes them).
_SHARED_PARAMETERS = {
    "training_args": (
        "Any ``TrainingArguments``; ``output_dir`` receives checkpoints and the final model with its tokenizer. Never "
        "changed: the Trainer gets a copy (``trainer.args``)."
    ),
    "tokenizer": ("The panel; by default the model folder's tokenizer, else a new panel over ``train_data``'s genes."),
    "callbacks": ("Extra Trainer callbacks; :class:`ScBertFeatureRedrawCallback` is always added."),
    "resume_from_checkpoint": (
        "A checkpoint folder, or ``True`` for the last one in ``output_dir``; ``training_args.resume_from_checkpoint`` "
        "when ``None``."
    ),
    "encode_kwargs": (
        "Other keyword arguments of ``to_dataset`` for AnnData inputs (``cache_dir``, ``batch_size``, ...); with a "
        "``cache_dir``, a corpus's inputs are encoded there one by one and a rerun reuses those it finished."
    ),
    "panel_min_fraction": (
        "Without a tokenizer or model folder, a corpus's panel is the genes in at least this fraction of its inputs "
        "(:func:`tokenization.corpus.tokenizer_from_corpus`)."
    ),
}


def _shared_parameters(function: F) -> F:
    """Write the entries of :data:`_SHARED_PARAMETERS` into ``function``'s docstring where a line holds ``{name}``."""
    doc = function.__doc__ or ""
    for name, text in _SHARED_PARAMETERS.items():
        entry = f"    {name}\n" + textwrap.indent(textwrap.fill(text, width=111), " " * 8)
        doc = doc.replace(f"    {{{name}}}", entry)
    function.__doc__ = doc
    return function


# --- The two workflows ----------------------------------------------------------------------------------------------


@working_files()  # the cells encoded into the datasets cache are removed when the run ends, success or failure
@takes_reading_options
@_shared_parameters
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
    panel_min_fraction: float = 0.5,
    **read_options: Any,
) -> Trainer:
    """Masked-expression pretraining with the stock ``Trainer``, masking as published.

    Parameters
    ----------
    train_data
        Cells to pretrain on: an AnnData or a corpus of many (``.h5ad`` files, a folder, a glob, a list; see
        :mod:`tokenization.corpus`), encoded with :func:`tokenization.data.to_dataset`, or a dataset from it.
    {training_args}
    model
        A folder or Hub id to continue from, a :class:`ScBertConfig`, a model, or ``None`` for a new model over the
        tokenizer's panel (learned gene embedding; the published widths unless ``config_overrides`` says otherwise).
    {tokenizer}
    eval_data
        Held-out cells for the masked-expression loss (``--eval_strategy``).
    config_overrides
        Config fields to change, as a dict or ``"hidden_size=64,num_hidden_layers=2"``.
    mask_probability, replace_probability
        Masking rule of :class:`tokenization.data.DataCollatorForMaskedExpression`.
    {callbacks}
    {resume_from_checkpoint}
    {encode_kwargs}
    {panel_min_fraction}
    {reading_options}

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
    FileNotFoundError
        For ``resume_from_checkpoint=True`` when ``output_dir`` holds no checkpoint, or a tokenizer or model folder
        that holds none, before anything is encoded.
    """
    encode_kwargs = encode_options(encode_kwargs, read_options, caller="pretrain")
    overrides = parse_config_overrides(config_overrides)
    resume = _resume_point(training_args, resume_from_checkpoint)
    tokenizer = resolve_tokenizer(
        tokenizer, model, train_data, panel_min_fraction=panel_min_fraction, read_options=encode_kwargs
    )
    train_dataset = encode(train_data, tokenizer=tokenizer, encode_kwargs=encode_kwargs)
    eval_dataset = encode(eval_data, tokenizer=tokenizer, encode_kwargs=encode_kwargs)
    set_seed(training_args.seed)  # the new weights (and random features) are drawn from the run's seed
    masked_lm = build_model(ScBertForMaskedLM, model, tokenizer=tokenizer, config_overrides=overrides)
    trainer = _pretraining_trainer(
        masked_lm,
        training_args,
        tokenizer=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        mask_probability=mask_probability,
        replace_probability=replace_probability,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    _save_trained(trainer, tokenizer)
    return trainer


@working_files()  # the cells encoded into the datasets cache are removed when the run ends, success or failure
@takes_reading_options
@_shared_parameters
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
    drop_missing_labels: bool = False,
    merge_label_variants: bool = False,
    class_change: Literal["refuse", "new_head", "extend"] = "refuse",
    panel_min_fraction: float = 0.5,
    **read_options: Any,
) -> Trainer:
    """Fine-tune a cell-type classifier with the stock ``Trainer``.

    The classes are the labels present in the training cells, in natural order (see :mod:`modeling_scbert.training.labels`:
    categories no training cell has are dropped with a WARNING; cells without a label are refused; evaluation cells
    of types absent from the training cells are refused unless ``drop_unseen_labels``). When ``model`` is a
    classifier with the same classes, its order is kept; with other classes, see ``class_change``. They are stored
    in the saved config (``id2label`` / ``label2id``). With evaluation data, every
    evaluation reports accuracy, macro-F1 and weighted F1; at the end the per-class report (precision, recall, F1,
    support) is logged and written to ``output_dir/classification_report.json``. When
    ``training_args.metric_for_best_model`` is unset or ``"loss"`` (what ``TrainingArguments`` fills in by itself
    for ``load_best_model_at_end``), it becomes ``"macro_f1"``, so with ``load_best_model_at_end=True`` the model
    kept is the best by macro-F1. Classes of the evaluation cells that the model never predicts, or predicts with
    F1 near 0, are named in a WARNING and in the model card.

    Parameters
    ----------
    train_data
        Labelled reference cells: an AnnData or a corpus of many (with ``label_key``; the classes are the union of
        the inputs' labels), or a dataset with a ``ClassLabel`` column ``label`` (from
        :func:`tokenization.data.to_dataset`).
    {training_args}
    model
        A pretrained folder or Hub id (masked-expression: a new head; fine-tuned: its classes are kept, or see
        ``class_change``), a :class:`ScBertConfig`, a model, or ``None`` for a new model over the tokenizer's panel.
        A folder's saved weights are checked as they load (missing, mistyped or non-finite tensors are refused).
    {tokenizer}
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
    {callbacks}
    {resume_from_checkpoint}
    {encode_kwargs}
    {panel_min_fraction}
    card_facts
        Facts for the model card written into ``output_dir`` (``README.md``) and pushed with the model: at least
        ``license`` (the weights' license, your choice: nothing is assumed); optionally ``base_model``,
        ``training_data`` (``name``, ``description``), ``species``, ``description``. The label counts, the
        hyperparameters and the evaluation are filled in from the run. Without a license no card is written, and
        ``push_to_hub=True`` is refused before training starts.
    drop_unseen_labels
        Leave out evaluation cells whose type no training cell has (logged at WARNING with the count of each type),
        instead of refusing them.
    drop_missing_labels
        Leave out training and evaluation cells without a label (NaN, None, or a text such as ``'nan'``, ``'None'``,
        ``''`` that ``.astype(str)`` makes of one; logged at WARNING with their count) instead of refusing them.
    merge_label_variants
        Merge labels that differ only by whitespace or case (``'T cell'``, ``'T cell '``, ``'t cell'``) into the
        most frequent spelling (logged at WARNING) instead of refusing them with the groups listed.
    class_change
        When ``model`` is a classifier with classes (``id2label``) other than the data's, before anything is
        encoded: ``"refuse"`` (the default) names both lists; ``"new_head"`` starts a new head over the data's
        classes (logged at WARNING and recorded in the model card); ``"extend"`` keeps the model's classes in their
        order, with their rows of the final layer, and appends the data's new ones. With the same classes the
        model's order is always kept (the labels are mapped through its ``label2id``). A checkpoint to resume from
        must have the run's classes.
    {reading_options}

    Returns
    -------
    The ``Trainer`` after training; the model (with ``id2label``) and tokenizer are saved in
    ``training_args.output_dir``.

    Raises
    ------
    TypeError
        For a keyword that is not an option.
    ValueError
        Before training starts: for a missing label column, cells without a label (without
        ``drop_missing_labels``), labels that differ only by whitespace or case (without ``merge_label_variants``),
        evaluation cells of types absent from the training cells (without ``drop_unseen_labels``), classes that
        differ from the starting model's (without ``class_change``) or from the checkpoint's, cells that cannot be
        read, bad options (those that need no cell, such as ``early_stopping_patience`` or an ``eval_strategy``
        without evaluation cells, an unknown ``metric_for_best_model`` or ``push_to_hub`` without a license, before
        anything is encoded).
    tokenization.saved_weights.DamagedWeightsError
        For a starting folder with missing, mistyped or non-finite saved tensors, before anything is encoded.
    FileNotFoundError
        For ``resume_from_checkpoint=True`` when ``output_dir`` holds no checkpoint, or a tokenizer or model folder
        that holds none, before anything is encoded.
    """
    # Check the options: everything that can be refused without a cell is refused before anything is encoded.
    _check_finetune_options(
        train_data,
        training_args,
        label_key=label_key,
        eval_data=eval_data,
        eval_fraction=eval_fraction,
        preset=preset,
        class_weighting=class_weighting,
        early_stopping_patience=early_stopping_patience,
        card_facts=card_facts,
        class_change=class_change,
    )
    trainer_args = _finetuning_arguments(training_args, has_evaluation=eval_data is not None or bool(eval_fraction))
    encode_kwargs = encode_options(encode_kwargs, read_options, caller="finetune")
    overrides = parse_config_overrides(config_overrides)
    resume = _resume_point(training_args, resume_from_checkpoint)

    # The classes and the datasets: the class list and the evaluation labels are checked before anything is encoded.
    label_rule = {"drop_missing_labels": drop_missing_labels, "merge_label_variants": merge_label_variants}
    label_names, unseen = check_labels(
        train_data, eval_data, label_key=label_key, drop=drop_unseen_labels, label_rule=label_rule
    )
    # The classes of the model the run starts from (a checkpoint's, a folder's, an object's) are kept, or refused.
    run_classes = label_names if label_names is not None else _dataset_classes(train_data)
    start, head = starting_classes(model), "new"
    if run_classes is not None:
        label_names, head = reconcile_classes(
            run_classes,
            start=start,
            checkpoint=checkpoint_classes(resume),
            class_change=class_change,
        )
    tokenizer = resolve_tokenizer(
        tokenizer, model, train_data, panel_min_fraction=panel_min_fraction, read_options=encode_kwargs
    )

    # The model, built (and its saved weights checked) before any cell is encoded when the classes are known.
    def build_classifier() -> tuple[ScBertForSequenceClassification, str]:
        set_seed(training_args.seed)  # the new weights (a new head at least) are drawn from the run's seed
        return _classifier(
            model,
            tokenizer=tokenizer,
            label_names=label_names,
            head=head,
            config_overrides=overrides,
            preset=preset,
            warmup_steps=training_args.warmup_steps,
        )

    classifier = applied_preset = None
    if label_names is not None:
        classifier, applied_preset = build_classifier()
    train_dataset, eval_dataset, label_names = finetuning_datasets(
        train_data,
        eval_data,
        tokenizer=tokenizer,
        label_key=label_key,
        label_names=label_names,
        unseen=unseen,
        eval_fraction=eval_fraction,
        split_seed=split_seed,
        drop=drop_unseen_labels,
        encode_kwargs=encode_kwargs,
        label_rule=label_rule,
    )
    train_labels = np.asarray(train_dataset[LABEL])
    if classifier is None:  # a dataset whose classes were known only once it was read
        classifier, applied_preset = build_classifier()

    # The card's facts, the Trainer; then train.
    num_eval_cells = None if eval_dataset is None else len(eval_dataset)
    facts = run_card_facts(
        card_facts,
        train_labels,
        label_names,
        num_eval_cells=num_eval_cells,
        model=classifier,
        preset=applied_preset,
        class_change=_class_change_fact(head, start, label_names),
    )
    if facts.get("license"):
        check_card_renders(classifier, tokenizer, facts)  # a card that cannot be written stops the run now
    trainer = _classification_trainer(
        classifier,
        trainer_args,
        tokenizer=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        loss=_class_weighted_loss(class_weighting, train_labels, label_names),
        early_stopping_patience=early_stopping_patience,
        callbacks=callbacks,
        facts=facts,
    )
    trainer.train(resume_from_checkpoint=resume)

    # Evaluate and report, then save.
    metrics = evaluation = None
    if eval_dataset is not None:
        evaluation = evaluate_classifier(trainer, eval_dataset, train_labels=train_labels, label_names=label_names)
        facts = add_evaluation_facts(facts, evaluation.report, evaluation.majority, label_names, evaluation.missed)
        metrics = evaluation.metrics
    # The novelty detector: class profiles of the training cells, calibrated on the held-out ones.
    detector = fit_novelty_detector(
        train_data,
        eval_data,
        tokenizer=tokenizer,
        label_key=label_key,
        label_names=label_names,
        label_rule=label_rule,
        eval_fraction=eval_fraction,
        split_seed=split_seed,
        read_options={name: value for name, value in encode_kwargs.items() if name in ScBertReadingArguments.names()},
        eval_logits=None if evaluation is None else evaluation.logits,
    )
    if detector is not None:
        facts = {**facts, "novelty": detector.facts}
        if trainer.is_world_process_zero():
            Path(trainer.args.output_dir).mkdir(parents=True, exist_ok=True)
            detector.save(trainer.args.output_dir)
    _save_classifier(trainer, tokenizer, facts=facts, metrics=metrics)
    return trainer


# --- From the command line (parsed by .arguments) ------------------------------------------------------------------


@working_files()  # also the cells the command line encodes to split them
def pretrain_main(argv: Sequence[str] | None = None, *, prog: str = "scbert pretrain") -> Trainer:
    """Masked-expression pretraining from the command line (also takes one ``.json`` / ``.yaml`` file of options).

    :func:`~modeling_scbert.training.arguments.parse_pretrain_command` reads the options, then :func:`pretrain` runs.

    Raises
    ------
    SystemExit
        From argparse, for options it cannot parse.
    ValueError, FileNotFoundError
        As :func:`~modeling_scbert.training.arguments.parse_pretrain_command` and :func:`pretrain` raise them, before
        training starts.
    """
    return pretrain(**parse_pretrain_command(argv, prog=prog))


@working_files()  # also the cells the command line encodes to split them
def finetune_main(argv: Sequence[str] | None = None, *, prog: str = "scbert finetune") -> Trainer:
    """Fine-tuning from the command line (also takes one ``.json`` / ``.yaml`` file of options).

    :func:`~modeling_scbert.training.arguments.parse_finetune_command` reads the options and says their defaults.

    Raises
    ------
    SystemExit
        From argparse, for options it cannot parse.
    ValueError, FileNotFoundError
        As :func:`~modeling_scbert.training.arguments.parse_finetune_command` and :func:`finetune` raise them, before
        training starts.
    """
    return finetune(**parse_finetune_command(argv, prog=prog))


__all__ = ["finetune", "finetune_main", "pretrain", "pretrain_main"]
