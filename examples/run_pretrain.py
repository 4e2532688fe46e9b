#!/usr/bin/env python
"""Pretrain scBERT by masked expression on the cells of an ``.h5ad`` file, with the stock ``Trainer``.

A script in the manner of transformers' ``examples/pytorch/language-modeling/run_mlm.py``, written against the public
API of this package so that it can be copied and adapted: the options are ``HfArgumentParser`` over the package's
argument dataclasses plus ``TrainingArguments`` (so every Trainer option works: ``--bf16``,
``--gradient_accumulation_steps``, ``--deepspeed``, ``--fsdp``, ``--report_to``, ...). The masking is the published
one (only non-zero tokens; ``ceil(15%)`` of them per cell; 90% become the mask token, the rest stay). ``scbert
pretrain`` does the same from the console script, through :func:`modeling_scbert.pretrain`. A run resumes
from the last checkpoint in ``--output_dir`` when there is one. Examples:

    # a new compact model over the genes of cells.h5ad (the panel is built from its var_names)
    python examples/run_pretrain.py --train_file cells.h5ad --output_dir scbert-pretrained \\
        --config_overrides "hidden_size=64,num_hidden_layers=2,num_attention_heads=4,head_dim=16" \\
        --num_train_epochs 5 --per_device_train_batch_size 16 --learning_rate 1e-3 --validation_fraction 0.05 \\
        --eval_strategy epoch --save_strategy epoch

    # continue from a published or earlier model (its tokenizer fixes the panel)
    python examples/run_pretrain.py --model_name_or_path scbert-pretrained --train_file more_cells.h5ad \\
        --output_dir scbert-pretrained-2

    # two GPUs / two CPU processes
    torchrun --standalone --nproc_per_node 2 examples/run_pretrain.py --train_file cells.h5ad --output_dir out ...

Options can also come from one JSON or YAML file: ``python examples/run_pretrain.py options.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import anndata as ad
import datasets
import transformers
import yaml
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from modeling_scbert import ScBertConfig, ScBertForMaskedLM
from modeling_scbert.training.arguments import ScBertDataArguments, ScBertModelArguments
from modeling_scbert.training.model_setup import NEW_MODEL_DEFAULTS, parse_config_overrides
from modeling_scbert.training.trainer import ScBertFeatureRedrawCallback
from tokenization import ScBertTokenizer
from tokenization.corpus import tokenizer_from_corpus
from tokenization.data import DataCollatorForMaskedExpression, to_dataset
from tokenization.reading import ScBertReadingArguments

logger = logging.getLogger(__name__)


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


def main(argv: list[str] | None = None) -> dict:
    # 1. Options: ours and every TrainingArguments option, from the command line or one JSON / YAML file. The
    # collator reads the sparse token columns (gene_indices, bins) that the model's forward does not name.
    parser = HfArgumentParser((ScBertModelArguments, ScBertDataArguments, ScBertReadingArguments, TrainingArguments))
    parser.set_defaults(remove_unused_columns=False)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        with open(argv[0]) as handle:  # a file's options bypass the parser's defaults: apply them here
            options = json.load(handle) if argv[0].endswith(".json") else yaml.safe_load(handle)
        model_args, data_args, reading, training_args = parser.parse_dict(
            {**{"remove_unused_columns": False}, **options}
        )
    else:
        model_args, data_args, reading, training_args = parser.parse_args_into_dataclasses(args=argv)

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

    # 4. The cells and the tokenizer (the model's, or a new panel over the cells' genes), encoded to datasets.
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
        train_dataset, eval_dataset = [
            cells
            if cells is None or isinstance(cells, datasets.Dataset)
            else to_dataset(cells, tokenizer=tokenizer, **encode_kwargs)
            for cells in (train_cells, read_cells(data_args.validation_file))
        ]
    if eval_dataset is None and data_args.validation_fraction:
        splits = train_dataset.train_test_split(test_size=data_args.validation_fraction, seed=data_args.split_seed)
        train_dataset, eval_dataset = splits["train"], splits["test"]
    logger.info(f"{len(train_dataset):,} training cells over a panel of {tokenizer.num_genes:,} genes")

    # 5. The model: continued from a folder or Hub id, or new from a config over the tokenizer's panel.
    set_seed(training_args.seed)  # the new weights and random features are drawn from the run's seed
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.model_name_or_path is not None:
        config = ScBertConfig.from_pretrained(model_args.model_name_or_path, **overrides)
        model = ScBertForMaskedLM.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        config = ScBertConfig(num_genes=tokenizer.num_genes, **{**NEW_MODEL_DEFAULTS, **overrides})
        model = ScBertForMaskedLM(config)

    # 6. The stock Trainer with the package's masking collator and feature-redraw callback.
    collator = DataCollatorForMaskedExpression(
        num_genes=tokenizer.num_genes,
        mask_probability=data_args.mask_probability,
        replace_probability=data_args.replace_probability,
        mask_token_id=config.mask_token_id,
        seed=training_args.seed + training_args.process_index,  # each process masks its own shard differently
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[ScBertFeatureRedrawCallback()],
    )

    # 7. Train, save (model and tokenizer), evaluate: the masked-expression loss on held-out cells.
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    metrics = dict(train_result.metrics, train_samples=len(train_dataset))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if eval_dataset is not None:
        eval_metrics = dict(trainer.evaluate(), eval_samples=len(eval_dataset))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    # 8. Optional push of the model, its tokenizer and a card (the stock Trainer's).
    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, tags=["scbert", "single-cell"])
    return metrics


if __name__ == "__main__":
    main()
