#!/usr/bin/env python
"""Fine-tune scBERT for cell-type annotation on a labelled ``.h5ad`` reference, with the stock ``Trainer``.

A script in the manner of transformers' ``examples/pytorch/text-classification/run_glue.py``, written against the
public API of this package so that it can be copied and adapted: the options are ``HfArgumentParser`` over the
package's argument dataclasses plus ``TrainingArguments`` (so every Trainer option works: ``--bf16``,
``--gradient_accumulation_steps``, ``--deepspeed``, ``--fsdp``, ``--report_to``, ...). ``scbert finetune`` does the
same from the console script, through :func:`modeling_scbert.finetune`.

Defaults that differ from ``TrainingArguments``: evaluate and save every epoch, keep the best model by macro-F1, keep
two checkpoints (without evaluation cells, evaluation is off). A run resumes from the last checkpoint in
``--output_dir`` when there is one. Examples:

    # the published recipe (train layer -2, the final LayerNorm and a new head) from a pretrained model
    python examples/run_finetune.py --model_name_or_path scbert-pretrained --train_file reference.h5ad \\
        --label_key cell_type --validation_fraction 0.1 --output_dir scbert-annotator \\
        --finetuning_preset published --num_train_epochs 10 --learning_rate 1e-4

    # a new compact model over the reference's genes, class-weighted loss, early stopping, bf16 on a GPU
    python examples/run_finetune.py --train_file reference.h5ad --label_key cell_type --validation_file held_out.h5ad \\
        --config_overrides "hidden_size=64,num_hidden_layers=1,num_attention_heads=2,head_dim=16" \\
        --output_dir scbert-annotator --class_weighting balanced --early_stopping_patience 3 --bf16

    # push the model with its tokenizer and model card to the Hub at the end
    python examples/run_finetune.py ... --push_to_hub --hub_model_id ORG/scbert-annotator --license apache-2.0

Options can also come from one JSON or YAML file: ``python examples/run_finetune.py options.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

import anndata as ad
import datasets
import numpy as np
import transformers
import yaml
from transformers import EarlyStoppingCallback, HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from modeling_scbert import ScBertConfig, ScBertForSequenceClassification
from modeling_scbert.hub.push import push_model_folder
from modeling_scbert.training import arguments as training_cli
from modeling_scbert.training.arguments import ScBertDataArguments, ScBertFinetuningArguments, ScBertModelArguments
from modeling_scbert.training.metrics import compute_classification_metrics
from modeling_scbert.training.model_setup import NEW_MODEL_DEFAULTS, apply_finetuning_preset, parse_config_overrides
from modeling_scbert.training.trainer import ScBertFeatureRedrawCallback, ScBertWeightedLoss, balanced_class_weights
from tokenization import ScBertTokenizer
from tokenization.corpus import tokenizer_from_corpus
from tokenization.data import DataCollatorForCellClassification, stratified_split, to_dataset
from tokenization.pipeline_scbert import save_pipeline_code
from tokenization.reading import ScBertReadingArguments

logger = logging.getLogger(__name__)

# The defaults of `scbert finetune` (evaluate and save every epoch, keep the best by macro-F1, 10% warmup); a flag on
# the command line still wins. The collator reads the sparse token columns (gene_indices, bins) that the model's
# forward does not name, so they must be kept.
FINETUNE_DEFAULTS = {**training_cli.FINETUNE_DEFAULTS, "remove_unused_columns": False}


def read_cells(paths: str | list[str] | None):
    """A ``.h5ad`` file (read backed, so it need not fit in memory), a folder saved by ``to_dataset``, or a corpus
    (several files, a folder of them, a glob) that ``to_dataset`` reads itself, aligned to one panel."""
    if paths is None:
        return None
    paths = [paths] if isinstance(paths, str) else paths
    if len(paths) == 1 and os.path.isfile(os.path.join(paths[0], "dataset_info.json")):
        return datasets.load_from_disk(paths[0])
    if len(paths) == 1 and os.path.isfile(paths[0]):
        return ad.read_h5ad(paths[0], backed="r")
    return paths


def encode(cells, *, tokenizer: ScBertTokenizer, label_key: str, label_names, encode_kwargs: dict):
    """AnnData -> a ``datasets.Dataset`` of sparse tokens with a ``ClassLabel`` column ``label``; a dataset passes."""
    if cells is None or isinstance(cells, datasets.Dataset):
        return cells
    if isinstance(cells, ad.AnnData) and label_key not in cells.obs.columns:
        raise ValueError(
            f"--label_key {label_key!r} is not a column of .obs; the columns are {list(cells.obs.columns)}."
        )
    return to_dataset(cells, tokenizer=tokenizer, label_key=label_key, label_names=label_names, **encode_kwargs)


def main(argv: list[str] | None = None) -> dict:
    # 1. Options: ours and every TrainingArguments option, from the command line or one JSON / YAML file.
    parser = HfArgumentParser(
        (
            ScBertModelArguments,
            ScBertDataArguments,
            ScBertReadingArguments,
            ScBertFinetuningArguments,
            TrainingArguments,
        )
    )
    parser.set_defaults(**FINETUNE_DEFAULTS)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        with open(argv[0]) as handle:  # a file's options bypass the parser's defaults: apply them here
            options = json.load(handle) if argv[0].endswith(".json") else yaml.safe_load(handle)
        model_args, data_args, reading, finetune_args, training_args = parser.parse_dict(
            {**FINETUNE_DEFAULTS, **options}
        )
    else:
        model_args, data_args, reading, finetune_args, training_args = parser.parse_args_into_dataclasses(args=argv)

    # 2. Logging: the main process logs at INFO, the others at WARNING (TrainingArguments' log levels).
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    for name in (__name__, "modeling_scbert", "tokenization"):
        logging.getLogger(name).setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, n_gpu: {training_args.n_gpu}, "
        f"distributed training: {training_args.parallel_mode.value == 'distributed'}"
    )
    if training_args.push_to_hub and not finetune_args.license:
        raise ValueError("--push_to_hub pushes a model card, which needs the weights' license: pass --license.")

    # 3. A previous run in output_dir: resume from its last checkpoint ("--resume_from_checkpoint true" says so too).
    checkpoint = training_args.resume_from_checkpoint
    last_checkpoint = (
        get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    )
    if checkpoint in ("true", "True") or (checkpoint is None and last_checkpoint is not None):
        if last_checkpoint is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint true, but {training_args.output_dir} has no checkpoint."
            )
        logger.info(f"Checkpoint found: resuming from {last_checkpoint} (use another --output_dir to start afresh).")
        checkpoint = last_checkpoint

    # 4. The cells and the tokenizer (the model's, or a new panel over the reference's genes).
    train_cells = read_cells(data_args.train_file)
    tokenizer_source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if tokenizer_source is not None:
        tokenizer = ScBertTokenizer.from_pretrained(tokenizer_source)
    elif isinstance(train_cells, ad.AnnData):
        tokenizer = ScBertTokenizer.from_adata(train_cells)
    elif isinstance(train_cells, list):  # a corpus: the genes in enough of its files
        tokenizer = tokenizer_from_corpus(
            train_cells, min_fraction=data_args.panel_min_fraction, **reading.tokenizer_kwargs()
        )
    else:
        raise ValueError("A dataset folder carries no gene panel: pass --tokenizer_name_or_path.")
    encode_kwargs = reading.tokenizer_kwargs()
    if data_args.dataset_cache_dir is not None:
        encode_kwargs["cache_dir"] = data_args.dataset_cache_dir
    with training_args.main_process_first(desc="encoding the cells"):
        train_dataset = encode(
            train_cells,
            tokenizer=tokenizer,
            label_key=data_args.label_key,
            label_names=None,
            encode_kwargs=encode_kwargs,
        )
        label_names = train_dataset.features["label"].names
        eval_dataset = encode(
            read_cells(data_args.validation_file),
            tokenizer=tokenizer,
            label_key=data_args.label_key,
            label_names=label_names,
            encode_kwargs=encode_kwargs,
        )
    if eval_dataset is None and data_args.validation_fraction:
        splits = stratified_split(
            train_dataset, eval_fraction=data_args.validation_fraction, seed=data_args.split_seed
        )
        train_dataset, eval_dataset = splits["train"], splits["eval"]
    if eval_dataset is None and training_args.eval_strategy != "no":
        logger.info("No evaluation cells (--validation_file / --validation_fraction): evaluation is off.")
        training_args = dataclasses.replace(
            training_args, eval_strategy="no", load_best_model_at_end=False, metric_for_best_model=None
        )
    logger.info(f"{len(train_dataset):,} training cells, classes {label_names}")

    # 5. The model: a pretrained folder or Hub id (a new head where the classes differ), or a new model from a config.
    set_seed(training_args.seed)
    labels = {"id2label": dict(enumerate(label_names)), "label2id": {name: i for i, name in enumerate(label_names)}}
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.model_name_or_path is not None:
        config = ScBertConfig.from_pretrained(model_args.model_name_or_path, **overrides, **labels)
        model = ScBertForSequenceClassification.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True
        )
    else:
        config = ScBertConfig(num_genes=tokenizer.num_genes, **{**NEW_MODEL_DEFAULTS, **overrides}, **labels)
        model = ScBertForSequenceClassification(config)
    preset = finetune_args.finetuning_preset
    if preset == "auto":  # nothing pretrained to keep frozen in a new or one-layer model
        new = model_args.model_name_or_path is None or config.num_hidden_layers < 2
        preset = "full" if new else "published"
    apply_finetuning_preset(model, preset)

    # 6. The stock Trainer with the package's collator, feature-redraw callback, metrics and (optional) weighted loss.
    callbacks = [ScBertFeatureRedrawCallback()]
    if finetune_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=finetune_args.early_stopping_patience))
    loss = None
    if finetune_args.class_weighting == "balanced":
        loss = ScBertWeightedLoss(balanced_class_weights(np.asarray(train_dataset["label"]), len(label_names)))
    trainer = Trainer(
        model=model,
        # Pushed once at the end, with the package's model card (the stock push would write a generic one).
        args=dataclasses.replace(training_args, push_to_hub=False),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorForCellClassification(num_genes=tokenizer.num_genes),
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
        compute_loss_func=loss,
        callbacks=callbacks,
    )

    # 7. Train, save (model, tokenizer, the pipeline code for pipeline("cell-type-annotation")), evaluate.
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    metrics = dict(train_result.metrics, train_samples=len(train_dataset))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        save_pipeline_code(training_args.output_dir)
    if eval_dataset is not None:
        eval_metrics = dict(trainer.evaluate(), eval_samples=len(eval_dataset))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    # 8. Optional push: the folder with its model card, in one commit.
    if training_args.push_to_hub and trainer.is_world_process_zero():
        facts = {"license": finetune_args.license, "base_model": finetune_args.base_model}
        push_model_folder(
            training_args.output_dir,
            repo_id=training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir)),
            private=bool(training_args.hub_private_repo),
            token=training_args.hub_token,
            facts={key: value for key, value in facts.items() if value},
        )
    return metrics


if __name__ == "__main__":
    main()
