"""The command lines of ``scbert pretrain`` and ``scbert finetune``: their options and what they ask for.

``HfArgumentParser`` parses :class:`ScBertModelArguments`, :class:`ScBertDataArguments`,
:class:`~tokenization.reading.ScBertReadingArguments` (and :class:`ScBertFinetuningArguments`) plus
``TrainingArguments``, so every Trainer option works (``--bf16``, ``--gradient_accumulation_steps``,
``--gradient_checkpointing``, ``--deepspeed``, ``--fsdp``, ``--push_to_hub``, ``--resume_from_checkpoint``,
``--report_to``, ...), every option in both spellings (``--label_key`` and ``--label-key``).
:func:`parse_pretrain_command` and :func:`parse_finetune_command` turn a command line into the keyword arguments of
:func:`modeling_scbert.training.pretrain` / :func:`~modeling_scbert.training.finetune` (reading the data files and
checking what only the command line can get wrong); ``training.pretrain_main`` / ``finetune_main`` call them. This
module sits below ``training`` and never imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from anndata import AnnData
from transformers import HfArgumentParser, TrainingArguments

from tokenization.data import to_dataset
from tokenization.reading import ScBertReadingArguments

from .labels import CLASS_CHANGES
from .model_setup import FINETUNING_PRESET_CHOICES, resolve_tokenizer
from .trainer import CLASS_WEIGHTINGS

logger = logging.getLogger(__name__)


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
    """Where the cells are (how to read them: :class:`~tokenization.reading.ScBertReadingArguments`)."""

    train_file: list[str] = field(
        metadata={
            "help": "Training cells: a .h5ad file, or a folder written by to_dataset; or a corpus aligned to one panel: "
            "several .h5ad files, a folder of them, or a glob pattern (quoted: 'data/*.h5ad')."
        }
    )
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation cells (.h5ad or dataset)."})
    validation_fraction: float | None = field(
        default=None, metadata={"help": "Without validation_file: hold out this fraction of train_file."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the validation split."})
    panel_min_fraction: float = field(
        default=0.5,
        metadata={
            "help": "A corpus without a tokenizer or model: the panel is the genes in this fraction of its files."
        },
    )
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
    drop_missing_labels: bool = field(
        default=False,
        metadata={"help": "Leave out cells without a label (NaN, 'nan', 'None', '', ...), instead of refusing them."},
    )
    merge_label_variants: bool = field(
        default=False,
        metadata={"help": "Merge labels that differ only by whitespace or case into the most frequent spelling."},
    )
    class_change: str = field(
        default="refuse",
        metadata={
            "help": "When the starting model's classes differ from the data's: refuse (default), new_head (a new head "
            "over the data's classes), or extend (keep the model's classes, append the new ones).",
            "choices": CLASS_CHANGES,
        },
    )


# Defaults of `scbert finetune` that differ from TrainingArguments': evaluate and save every epoch, keep the best model
# by macro-F1, keep two checkpoints, log every epoch, and warm the learning rate up over the first 10% of the steps
# (without warmup, models trained from scratch on the Kang 2018 PBMCs collapsed to the majority class on some seeds:
# docs/training.md). Any of them can still be set on the command line.
FINETUNE_DEFAULTS = {
    "warmup_steps": 0.1,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "load_best_model_at_end": True,
    "metric_for_best_model": "macro_f1",
    "save_total_limit": 2,
    "logging_strategy": "epoch",
}
# Without evaluation data (no --validation_file or --validation_fraction) there is nothing to evaluate or pick by.
FINETUNE_DEFAULTS_WITHOUT_EVALUATION = {
    **FINETUNE_DEFAULTS,
    "eval_strategy": "no",
    "load_best_model_at_end": False,
    "metric_for_best_model": None,
}

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
    """The ``HfArgumentParser`` of ``scbert pretrain`` / ``scbert finetune`` (every option in both spellings).

    ``scbert finetune``'s parser carries its defaults for a run without evaluation data
    (:data:`FINETUNE_DEFAULTS_WITHOUT_EVALUATION`, what ``--help`` shows); :func:`parse_finetune_command` switches to
    :data:`FINETUNE_DEFAULTS` when the command line gives evaluation data.

    Raises
    ------
    KeyError
        For a command other than ``"pretrain"`` and ``"finetune"``.
    """
    parser = HfArgumentParser(COMMAND_ARGUMENTS[command], prog=prog or f"scbert {command}")
    if command == "finetune":
        parser.set_defaults(**FINETUNE_DEFAULTS_WITHOUT_EVALUATION)
    return parser


def _parse(command: Literal["pretrain", "finetune"], argv: Sequence[str] | None, *, prog: str) -> tuple:
    """The dataclasses of a command line, or of its one ``.json`` / ``.yaml`` file of options."""
    parser = argument_parser(command, prog=prog)
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 1 and args[0].endswith((".json", ".yaml", ".yml")):
        # A file of options sets every field it does not name to the dataclass's default, as HfArgumentParser does.
        path = os.path.abspath(args[0])
        return parser.parse_json_file(path) if path.endswith(".json") else parser.parse_yaml_file(path)
    if command == "finetune":
        # Which defaults apply depends on whether there are evaluation cells: parse the options once (argparse, not
        # string matching), then set the defaults; an option given on the command line wins over either.
        given, _ = parser.parse_known_args(args)
        if given.validation_file is not None or given.validation_fraction is not None:
            parser.set_defaults(**FINETUNE_DEFAULTS)
        _save_steps_mean_steps(parser, args)
    return parser.parse_args_into_dataclasses(args=args)


def _save_steps_mean_steps(parser: HfArgumentParser, args: list[str]) -> None:
    """``--save_steps N`` without ``--save_strategy`` saves every N steps (``save_strategy=steps``), where fine-tuning's
    default (``epoch``) would silently ignore it; evaluation then follows the saves (``eval_strategy=steps``,
    ``eval_steps=N``) when it would otherwise run every epoch, as keeping the best model needs both on one schedule.
    An option given on the command line wins."""
    unset = object()
    names = ("save_steps", "save_strategy", "eval_strategy", "eval_steps")
    # argparse leaves an attribute that is already in the namespace alone unless the option is given: what is still
    # `unset` afterwards was not on the command line (in any spelling or abbreviation argparse takes).
    given, _ = parser.parse_known_args(args, namespace=argparse.Namespace(**dict.fromkeys(names, unset)))
    given = {name: getattr(given, name) for name in names if getattr(given, name) is not unset}
    if "save_steps" not in given or "save_strategy" in given or parser.get_default("save_strategy") == "steps":
        return
    steps: dict[str, Any] = {"save_strategy": "steps"}
    if parser.get_default("eval_strategy") == "epoch" and "eval_strategy" not in given:
        steps["eval_strategy"] = "steps"
        if "eval_steps" not in given:
            steps["eval_steps"] = given["save_steps"]
    parser.set_defaults(**steps)
    logger.info(
        "--save_steps %s without --save_strategy: saving every %s steps (%s).",
        given["save_steps"],
        given["save_steps"],
        ", ".join(f"{name}={value}" for name, value in steps.items()),
    )


def _is_saved_dataset(path: str) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (``to_dataset(..., output_dir=...)``)."""
    return any(os.path.isfile(os.path.join(path, name)) for name in ("dataset_info.json", "dataset_dict.json"))


def _read_data(paths: str | Sequence[str] | None, *, split: str):
    """A .h5ad file (read backed, so it need not fit in memory), a saved dataset folder, or a corpus (several files, a
    folder of .h5ad files, a glob pattern: passed on as paths, opened by ``to_dataset``)."""
    if paths is None:
        return None
    paths = [paths] if isinstance(paths, str) else list(paths)
    path = paths[0]
    if len(paths) == 1 and _is_saved_dataset(path):
        import datasets

        return datasets.load_from_disk(path)
    from tokenization.reading import is_zarr_store, read_h5ad

    if len(paths) == 1 and (os.path.isfile(path) or is_zarr_store(path)):
        return read_h5ad(path, backed="r", what=f"{split} file")
    return paths


def _encode_kwargs(data_args: ScBertDataArguments, reading: ScBertReadingArguments) -> dict[str, Any]:
    kwargs = reading.tokenizer_kwargs()
    if data_args.dataset_cache_dir is not None:
        kwargs["cache_dir"] = data_args.dataset_cache_dir
    return kwargs


def parse_pretrain_command(argv: Sequence[str] | None = None, *, prog: str = "scbert pretrain") -> dict[str, Any]:
    """The keyword arguments of :func:`modeling_scbert.training.pretrain` that a command line asks for.

    Parameters
    ----------
    argv
        The options (default: ``sys.argv[1:]``), or one ``.json`` / ``.yaml`` file of them.
    prog
        The program name in usage and error messages.

    Returns
    -------
    ``train_data`` (read from ``--train_file``), ``training_args`` and every other keyword of ``pretrain`` the
    command line sets; with ``--validation_fraction`` and no ``--validation_file``, the training cells are encoded
    and split here.

    Raises
    ------
    SystemExit
        From argparse, for options it cannot parse (after printing the usage).
    ValueError
        For a dataset folder without ``--tokenizer_name_or_path`` or ``--model_name_or_path``, and for cells that
        cannot be read.
    FileNotFoundError
        For data files, or a tokenizer or model folder, that do not exist.
    """
    model_args, data_args, reading, training_args = _parse("pretrain", argv, prog=prog)
    train = _read_data(data_args.train_file, split="train")
    no_panel = model_args.tokenizer_name_or_path is None and model_args.model_name_or_path is None
    if no_panel and not isinstance(train, (AnnData, list)):
        raise ValueError("A dataset folder carries no gene panel: pass --tokenizer_name_or_path.")
    tokenizer = resolve_tokenizer(
        model_args.tokenizer_name_or_path,
        model_args.model_name_or_path,
        train,
        panel_min_fraction=data_args.panel_min_fraction,
        read_options=reading.tokenizer_kwargs(),
    )
    evaluation = _read_data(data_args.validation_file, split="validation")
    if evaluation is None and data_args.validation_fraction:
        if isinstance(train, (AnnData, list)):
            train = to_dataset(train, tokenizer=tokenizer, **_encode_kwargs(data_args, reading))
        splits = train.train_test_split(test_size=data_args.validation_fraction, seed=data_args.split_seed)
        train, evaluation = splits["train"], splits["test"]
    return {
        "train_data": train,
        "training_args": training_args,
        "model": model_args.model_name_or_path,
        "tokenizer": tokenizer,
        "eval_data": evaluation,
        "config_overrides": model_args.config_overrides,
        "mask_probability": data_args.mask_probability,
        "replace_probability": data_args.replace_probability,
        "encode_kwargs": _encode_kwargs(data_args, reading),
    }


def parse_finetune_command(argv: Sequence[str] | None = None, *, prog: str = "scbert finetune") -> dict[str, Any]:
    """The keyword arguments of :func:`modeling_scbert.training.finetune` that a command line asks for.

    Defaults that differ from ``TrainingArguments``' (:data:`FINETUNE_DEFAULTS`): warm the learning rate up over the
    first 10% of the steps, evaluate and save every epoch, keep the best model by macro-F1
    (``load_best_model_at_end``), keep two checkpoints, log every epoch. Without
    evaluation data (neither ``--validation_file`` nor ``--validation_fraction``) evaluation and keeping the best
    model are off. ``--save_steps N`` without ``--save_strategy`` saves every N steps (and, with evaluation data and
    no ``--eval_strategy``, evaluates every N steps too). An option on the command line always wins; a ``.json`` /
    ``.yaml`` file of options starts from ``TrainingArguments``' own defaults.

    Parameters
    ----------
    argv
        The options (default: ``sys.argv[1:]``), or one ``.json`` / ``.yaml`` file of them.
    prog
        The program name in usage and error messages.

    Returns
    -------
    ``train_data`` (read from ``--train_file``), ``training_args`` and every other keyword of ``finetune`` the
    command line sets.

    Raises
    ------
    SystemExit
        From argparse, for options it cannot parse (after printing the usage).
    ValueError
        Before any data is encoded: for a ``.h5ad`` train file without ``--label_key`` or whose ``.obs`` lacks it,
        ``--early_stopping_patience`` without evaluation data, ``--push_to_hub`` without ``--license``, a dataset
        folder without a tokenizer or model, and cells that cannot be read.
    FileNotFoundError
        For data files that do not exist.
    """
    model_args, data_args, reading, finetune_args, training_args = _parse("finetune", argv, prog=prog)
    train_files = [data_args.train_file] if isinstance(data_args.train_file, str) else data_args.train_file
    if data_args.label_key is None and not (len(train_files) == 1 and _is_saved_dataset(train_files[0])):
        raise ValueError("--label_key is required with .h5ad train files: the .obs column holding the cell types.")
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
            f"--label_key {data_args.label_key!r} is not a column of {train_files[0]}'s .obs; the columns are "
            f"{list(train.obs.columns)}."
        )
    tokenizer = model_args.tokenizer_name_or_path
    if tokenizer is None and model_args.model_name_or_path is None and not isinstance(train, (AnnData, list)):
        raise ValueError("A dataset folder carries no gene panel: pass --tokenizer_name_or_path.")
    return {
        "train_data": train,
        "training_args": training_args,
        "model": model_args.model_name_or_path,
        "tokenizer": tokenizer,
        "label_key": data_args.label_key,
        "eval_data": _read_data(data_args.validation_file, split="validation"),
        "eval_fraction": data_args.validation_fraction,
        "split_seed": data_args.split_seed,
        "preset": finetune_args.finetuning_preset,
        "class_weighting": finetune_args.class_weighting,
        "early_stopping_patience": finetune_args.early_stopping_patience,
        "config_overrides": model_args.config_overrides,
        "encode_kwargs": _encode_kwargs(data_args, reading),
        "drop_unseen_labels": finetune_args.drop_unseen_labels,
        "drop_missing_labels": finetune_args.drop_missing_labels,
        "merge_label_variants": finetune_args.merge_label_variants,
        "class_change": finetune_args.class_change,
        "panel_min_fraction": data_args.panel_min_fraction,
        "card_facts": {
            key: value
            for key, value in {"license": finetune_args.license, "base_model": finetune_args.base_model}.items()
            if value
        },
    }


__all__ = [
    "COMMAND_ARGUMENTS",
    "FINETUNE_DEFAULTS",
    "FINETUNE_DEFAULTS_WITHOUT_EVALUATION",
    "ScBertDataArguments",
    "ScBertFinetuningArguments",
    "ScBertModelArguments",
    "argument_parser",
    "parse_finetune_command",
    "parse_pretrain_command",
]
