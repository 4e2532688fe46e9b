"""The class list comes from the training cells: present labels only, natural order, missing
labels refused, evaluation types unseen in training refused or (with ``drop_unseen_labels``) left out."""

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from transformers import TrainingArguments

from modeling_scbert.cli import main as cli_main
from modeling_scbert.training.labels import class_names_from_labels, describe_data, unseen_labels
from modeling_scbert.training.workflows import finetune

TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "head_dim": 8,
    "intermediate_size": 32,
    "num_random_features": 8,
    "classifier_hidden_sizes": [16],
}


def cells(labels, seed: int = 0) -> ad.AnnData:
    labels = list(labels) if not isinstance(labels, pd.Categorical) else labels
    n = len(labels)
    rng = np.random.default_rng(seed)
    return ad.AnnData(
        X=sp.csr_matrix(rng.poisson(3.0, size=(n, 10)).astype(np.float32)),
        obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"G{j}" for j in range(10)]),
    )


def arguments(tmp_path, **overrides) -> TrainingArguments:
    defaults = {"num_train_epochs": 1, "per_device_train_batch_size": 8, "report_to": [], "use_cpu": True}
    defaults.update(save_strategy="no", disable_tqdm=True, logging_strategy="no", seed=0)
    return TrainingArguments(str(tmp_path / "model"), **{**defaults, **overrides})


def test_categorical_labels_keep_category_order_of_present_categories_and_log_the_unused(caplog):
    labels = pd.Categorical(["T", "B", "T", "NK"], categories=["NK", "Hepatocyte", "T", "B", "Kupffer"])
    with caplog.at_level(logging.WARNING, logger="modeling_scbert.training.labels"):
        names = class_names_from_labels(cells(labels), label_key="cell_type", what="the training cells")
    assert names == ["NK", "T", "B"]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "2 of the 5 categories" in warning and "Hepatocyte" in warning and "Kupffer" in warning


@pytest.mark.parametrize(
    ("labels", "expected"),
    [(["T", "B", "NK", "B"], ["B", "NK", "T"]), ([10, 2, 1, 2], ["1", "2", "10"]), (["b", 1, "a"], ["1", "a", "b"])],
)
def test_other_labels_are_sorted_naturally(labels, expected):
    adata = cells(labels)
    adata.obs["cell_type"] = pd.Series(labels, index=adata.obs_names, dtype=object if labels[-1] == "a" else None)
    assert class_names_from_labels(adata, label_key="cell_type", what="x") == expected


def test_missing_labels_are_refused_with_their_count_and_the_data_named(tmp_path):
    adata = cells(["B", None, "T", np.nan, "B"])
    path = tmp_path / "reference.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    what = describe_data(backed, role="training", argument="train_data")
    assert what == f"the training file {str(path)!r}"
    with pytest.raises(ValueError, match=r"has 2 of 5 cells without a label \(NaN\)") as error:
        class_names_from_labels(backed, label_key="cell_type", what=what)
    assert "reference.h5ad" in str(error.value) and "notna()" in str(error.value)


def test_unseen_evaluation_types_are_refused_per_type_or_dropped(caplog):
    evaluation = cells(["B", "Platelet", "T", "Platelet", "pDC"])
    with pytest.raises(ValueError) as error:
        unseen_labels(
            evaluation, label_key="cell_type", class_names=["B", "T"], what="the evaluation file 'e'", drop=False
        )
    message = str(error.value)
    assert "the evaluation file 'e'" in message and "2 of 'Platelet'" in message and "1 of 'pDC'" in message
    assert "drop_unseen_labels=True" in message and "--drop_unseen_labels" in message
    with caplog.at_level(logging.WARNING, logger="modeling_scbert.training.labels"):
        dropped = unseen_labels(evaluation, label_key="cell_type", class_names=["B", "T"], what="e", drop=True)
    assert dropped == ["Platelet", "pDC"] and "Leaving 3 evaluation cells out" in caplog.text
    assert unseen_labels(cells(["T", "B"]), label_key="cell_type", class_names=["B", "T"], what="e", drop=False) == []
    with pytest.raises(ValueError, match="nothing is left to evaluate"):
        unseen_labels(cells(["pDC"]), label_key="cell_type", class_names=["B", "T"], what="e", drop=True)


def test_finetune_drops_unseen_evaluation_cells_only_when_asked(tmp_path):
    train = cells(["B", "T", "NK"] * 8)
    evaluation = cells(["B", "T", "NK", "Platelet", "B", "pDC"] * 2, seed=1)
    obs_before = evaluation.obs.copy()
    run = {"label_key": "cell_type", "preset": "full", "config_overrides": TINY}
    run["encode_kwargs"] = {"cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ValueError, match=r"2 of 'Platelet', 2 of 'pDC'"):
        finetune(train, training_args=arguments(tmp_path), eval_data=evaluation, **run)
    assert not (tmp_path / "model").exists()
    trainer = finetune(
        train,
        training_args=arguments(tmp_path, eval_strategy="epoch"),
        eval_data=evaluation,
        drop_unseen_labels=True,
        **run,
    )
    assert len(trainer.eval_dataset) == 8  # the 4 cells of unseen types are left out
    assert trainer.eval_dataset.features["label"].names == ["B", "NK", "T"]
    report = json.loads((tmp_path / "model" / "classification_report.json").read_text())
    assert report["macro avg"]["support"] == 8
    assert evaluation.obs.equals(obs_before)


def test_command_line_names_the_evaluation_file_and_drops_on_request(tmp_path, capsys):
    train, evaluation = tmp_path / "train.h5ad", tmp_path / "eval.h5ad"
    cells(["B", "T"] * 8).write_h5ad(train)
    cells(["B", "T", "Platelet", "B"] * 2, seed=1).write_h5ad(evaluation)
    overrides = ",".join(f"{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY.items())
    argv = ["finetune", "--train-file", str(train), "--validation-file", str(evaluation), "--label-key", "cell_type"]
    argv += ["--output-dir", str(tmp_path / "out"), "--use-cpu", "--report-to", "none", "--num-train-epochs", "1"]
    argv += ["--config-overrides", overrides, "--preset", "full", "--dataset-cache-dir", str(tmp_path / "cache")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"the evaluation file {str(evaluation)!r}" in err and "2 of 'Platelet'" in err
    assert not (tmp_path / "out").exists()
    assert cli_main([*argv, "--drop-unseen-labels"]) == 0
    report = json.loads((tmp_path / "out" / "classification_report.json").read_text())
    assert report["macro avg"]["support"] == 6


def test_to_dataset_by_default_leaves_unused_categories_out_of_the_class_list(tmp_path):
    from tokenization import ScBertTokenizer
    from tokenization.data import to_dataset

    adata = cells(pd.Categorical(["T", "B", "T"], categories=["NK", "T", "Platelet", "B"]))
    dataset = to_dataset(
        adata, tokenizer=ScBertTokenizer(list(adata.var_names)), label_key="cell_type", cache_dir=tmp_path
    )
    assert dataset.features["label"].names == ["T", "B"]
    assert dataset["label"] == [0, 1, 0]


# --- One label rule everywhere (issue 21, kind 2; case 22) -----------------------------------------------------------


def _near_duplicates() -> ad.AnnData:
    """Case 22: one type spelled 'T cell', 'T cell ' (a second annotator's spreadsheet) and 't cell'."""
    labels = ["B cell", "T cell", "NK cell"] * 8
    labels[1], labels[4], labels[7] = "T cell ", "T cell ", "t cell"
    return cells(labels)


def test_near_duplicate_labels_are_refused_with_the_group_or_merged_on_request(tmp_path, caplog):
    adata = _near_duplicates()
    obs_before = adata.obs.copy()
    run = {"label_key": "cell_type", "preset": "full", "config_overrides": TINY}
    run["encode_kwargs"] = {"cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ValueError, match="differ only by whitespace or case") as error:
        finetune(adata, training_args=arguments(tmp_path), **run)
    message = str(error.value)
    assert "'T cell' (5 cells)" in message and "'T cell ' (2 cells)" in message and "'t cell' (1 cells)" in message
    assert "merge_label_variants=True" in message and "--merge_label_variants" in message
    assert not (tmp_path / "model").exists()
    with caplog.at_level(logging.WARNING, logger="tokenization.label_rules"):
        trainer = finetune(adata, training_args=arguments(tmp_path), merge_label_variants=True, **run)
    assert trainer.model.config.id2label == {0: "B cell", 1: "NK cell", 2: "T cell"}
    assert np.bincount(trainer.train_dataset["label"]).tolist() == [8, 8, 8]
    assert "Merging spellings" in caplog.text
    assert adata.obs.equals(obs_before)


def test_merged_evaluation_spellings_map_onto_the_training_classes(tmp_path):
    train = _near_duplicates()  # 'T cell' is the most frequent spelling here
    evaluation = cells(["B cell", "t cell", "T cell ", "NK cell", "t cell", "B cell"], seed=1)  # 't cell' there
    run = {"label_key": "cell_type", "preset": "full", "config_overrides": TINY, "merge_label_variants": True}
    run["encode_kwargs"] = {"cache_dir": str(tmp_path / "cache")}
    trainer = finetune(train, training_args=arguments(tmp_path), eval_data=evaluation, **run)
    assert trainer.eval_dataset.features["label"].names == ["B cell", "NK cell", "T cell"]
    assert [trainer.eval_dataset.features["label"].int2str(i) for i in trainer.eval_dataset["label"]] == [
        "B cell",
        "T cell",
        "T cell",
        "NK cell",
        "T cell",
        "B cell",
    ]


@pytest.mark.parametrize("placeholder", ["nan", "None", "", " NA ", "<NA>", None, np.nan])
def test_missing_labels_in_every_spelling_are_refused_or_their_cells_left_out(tmp_path, placeholder):
    from tokenization import ScBertTokenizer
    from tokenization.data import to_dataset, to_iterable_dataset

    labels = ["B", "T"] * 6
    labels[3] = labels[8] = placeholder
    adata = cells(labels)
    if placeholder is not None and placeholder is not np.nan:
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
    with pytest.raises(ValueError, match="2 of 12 cells"):
        class_names_from_labels(adata, label_key="cell_type", what="the training data")
    with pytest.raises(ValueError, match="drop_missing_labels=True"):
        to_dataset(adata, tokenizer=ScBertTokenizer(list(adata.var_names)), label_key="cell_type", cache_dir=tmp_path)
    tokenizer = ScBertTokenizer(list(adata.var_names))
    names = class_names_from_labels(adata, label_key="cell_type", what="x", drop_missing_labels=True)
    assert names == ["B", "T"]
    dataset = to_dataset(
        adata, tokenizer=tokenizer, label_key="cell_type", cache_dir=tmp_path, drop_missing_labels=True
    )
    assert len(dataset) == 10 and "c3" not in dataset["cell_id"] and "c8" not in dataset["cell_id"]
    assert dataset.features["label"].names == ["B", "T"]
    streamed = list(
        to_iterable_dataset(adata, tokenizer=tokenizer, label_key="cell_type", drop_missing_labels=True, batch_size=5)
    )
    assert [row["cell_id"] for row in streamed] == dataset["cell_id"]
    assert [row["label"] for row in streamed] == dataset["label"]


def test_finetune_and_the_command_line_leave_cells_without_a_label_out_of_both_datasets(tmp_path):
    train = cells(["B", "T", "NK"] * 8)
    train.obs["cell_type"] = train.obs["cell_type"].astype(str)
    train.obs.iloc[[0, 5], 0] = "nan"
    evaluation = cells(["B", "T", "None", "NK"] * 2, seed=1)
    run = {"label_key": "cell_type", "preset": "full", "config_overrides": TINY}
    run["encode_kwargs"] = {"cache_dir": str(tmp_path / "cache")}
    with pytest.raises(ValueError, match="2 of 24 cells have no label"):
        finetune(train, training_args=arguments(tmp_path), eval_data=evaluation, **run)
    trainer = finetune(
        train,
        training_args=arguments(tmp_path, eval_strategy="epoch"),
        eval_data=evaluation,
        drop_missing_labels=True,
        **run,
    )
    assert len(trainer.train_dataset) == 22 and len(trainer.eval_dataset) == 6
    assert trainer.model.config.id2label == {0: "B", 1: "NK", 2: "T"}
    train_file, eval_file = tmp_path / "train.h5ad", tmp_path / "eval.h5ad"
    train.write_h5ad(train_file)
    evaluation.write_h5ad(eval_file)
    overrides = ",".join(f"{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY.items())
    argv = ["finetune", "--train-file", str(train_file), "--validation-file", str(eval_file), "--label-key"]
    argv += ["cell_type", "--output-dir", str(tmp_path / "out"), "--use-cpu", "--report-to", "none"]
    argv += ["--num-train-epochs", "1", "--config-overrides", overrides, "--preset", "full"]
    argv += ["--dataset-cache-dir", str(tmp_path / "cache")]
    assert cli_main(argv) == 2
    assert cli_main([*argv, "--drop-missing-labels"]) == 0
    report = json.loads((tmp_path / "out" / "classification_report.json").read_text())
    assert report["macro avg"]["support"] == 6
