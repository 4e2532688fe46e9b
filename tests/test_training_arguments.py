"""The command lines of `scbert pretrain` / `scbert finetune` (modeling_scbert.training.arguments): the defaults of
fine-tuning come from the parser, and an option on the command line always wins, in any spelling argparse takes."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from modeling_scbert.training.arguments import (
    FINETUNE_DEFAULTS,
    argument_parser,
    parse_finetune_command,
    parse_pretrain_command,
)

GENES = [f"GENE{j}" for j in range(12)]


@pytest.fixture(scope="module")
def cells_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    adata = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(3.0, size=(12, len(GENES))).astype(np.float32)),
        obs=pd.DataFrame({"cell_type": rng.choice(["B", "T"], 12)}, index=[f"c{i}" for i in range(12)]),
        var=pd.DataFrame(index=GENES),
    )
    path = tmp_path_factory.mktemp("cells") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def finetune_args(cells_file, tmp_path, *options: str):
    argv = ["--train_file", str(cells_file), "--label_key", "cell_type", "--output_dir", str(tmp_path / "run")]
    return parse_finetune_command([*argv, "--use_cpu", "--report_to", "none", *options])["training_args"]


def test_finetune_without_evaluation_data_neither_evaluates_nor_keeps_a_best_model(cells_file, tmp_path):
    training_args = finetune_args(cells_file, tmp_path)
    assert training_args.eval_strategy == "no"
    assert training_args.load_best_model_at_end is False
    assert training_args.metric_for_best_model is None
    # The other defaults of fine-tuning hold either way.
    assert training_args.save_strategy == "epoch" and training_args.logging_strategy == "epoch"
    assert training_args.save_total_limit == FINETUNE_DEFAULTS["save_total_limit"]
    assert training_args.warmup_steps == 0.1  # models trained from scratch need it (docs/training.md)
    assert finetune_args(cells_file, tmp_path, "--warmup_steps", "0").warmup_steps == 0
    # --help shows these defaults.
    assert argument_parser("finetune").get_default("eval_strategy") == "no"


@pytest.mark.parametrize(
    "evaluation",
    [
        ["--validation_fraction", "0.25"],
        ["--validation-fraction=0.25"],
        ["--validation_frac", "0.25"],  # an abbreviation argparse accepts: the parser decides, not string matching
        ["--validation_file", "held_out.h5ad"],
    ],
)
def test_finetune_with_evaluation_data_evaluates_every_epoch_and_keeps_the_best_by_macro_f1(
    cells_file, tmp_path, evaluation
):
    if "held_out.h5ad" in evaluation:
        evaluation = [evaluation[0], str(cells_file)]
    training_args = finetune_args(cells_file, tmp_path, *evaluation)
    assert training_args.eval_strategy == "epoch" and training_args.save_strategy == "epoch"
    assert training_args.load_best_model_at_end is True
    assert training_args.metric_for_best_model == "macro_f1"


def test_an_option_on_the_command_line_wins_over_the_finetune_defaults(cells_file, tmp_path):
    training_args = finetune_args(
        cells_file,
        tmp_path,
        *("--validation_fraction", "0.25", "--eval_strategy", "steps", "--eval_steps", "3"),
        *("--save-strategy", "steps", "--save_steps", "3", "--save_total_limit", "5", "--metric_for_best_model"),
        *("accuracy", "--logging_strategy", "steps"),
    )
    assert training_args.eval_strategy == "steps" and training_args.save_strategy == "steps"
    assert training_args.save_total_limit == 5 and training_args.logging_strategy == "steps"
    assert training_args.metric_for_best_model == "accuracy" and training_args.load_best_model_at_end is True
    training_args = finetune_args(
        cells_file, tmp_path, "--validation_fraction", "0.25", "--load_best_model_at_end", "0"
    )
    assert training_args.load_best_model_at_end is False and training_args.eval_strategy == "epoch"


def test_save_steps_alone_means_saving_every_that_many_steps(cells_file, tmp_path, caplog):
    # Fine-tuning saves every epoch by default, which would silently ignore --save_steps: given alone, it means steps.
    with caplog.at_level("INFO", logger="modeling_scbert"):
        training_args = finetune_args(cells_file, tmp_path, "--save_steps", "5")
    assert training_args.save_strategy == "steps" and training_args.save_steps == 5
    assert training_args.eval_strategy == "no"
    assert any("--save_steps 5" in r.getMessage() and "save_strategy=steps" in r.getMessage() for r in caplog.records)
    # With evaluation data, evaluation follows the saves, as keeping the best model needs.
    training_args = finetune_args(cells_file, tmp_path, "--validation_fraction", "0.25", "--save-steps=4")
    assert training_args.save_strategy == "steps" and training_args.eval_strategy == "steps"
    assert training_args.save_steps == 4 and training_args.eval_steps == 4 and training_args.load_best_model_at_end
    # What the command line names wins.
    training_args = finetune_args(cells_file, tmp_path, "--save_steps", "5", "--save_strategy", "epoch")
    assert training_args.save_strategy == "epoch"
    training_args = finetune_args(
        cells_file, tmp_path, "--validation_fraction", "0.25", "--save_steps", "6", "--eval_steps", "3"
    )
    assert training_args.save_strategy == "steps" and training_args.eval_steps == 3
    assert finetune_args(cells_file, tmp_path).save_strategy == "epoch"


def test_pretrain_keeps_the_training_arguments_defaults(cells_file, tmp_path):
    argv = ["--train_file", str(cells_file), "--output_dir", str(tmp_path / "run"), "--use_cpu", "--report_to", "none"]
    options = parse_pretrain_command([*argv, "--validation_fraction", "0.5", "--dataset_cache_dir", str(tmp_path)])
    assert options["training_args"].eval_strategy == "no" and options["training_args"].save_strategy == "steps"
    assert len(options["train_data"]) + len(options["eval_data"]) == 12
    assert options["tokenizer"].num_genes == len(GENES)
