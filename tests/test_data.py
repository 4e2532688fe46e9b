"""Datasets (sparse rows, ClassLabel, streaming, splits) and the collators."""

from __future__ import annotations

import math
from pathlib import Path

import anndata as ad
import datasets
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from datasets.distributed import split_dataset_by_node

import tokenization.data
from tokenization import ScBertTokenizer
from tokenization.data import (
    DataCollatorForCellClassification,
    DataCollatorForMaskedExpression,
    densify,
    stratified_split,
    to_dataset,
    to_iterable_dataset,
)


@pytest.fixture
def cells() -> ad.AnnData:
    rng = np.random.default_rng(0)
    n_cells, n_genes = 60, 50
    counts = rng.poisson(rng.gamma(0.5, 4.0, size=(n_cells, n_genes))).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], size=n_cells), categories=["T", "B", "NK"])},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    return adata


@pytest.fixture
def tokenizer(cells) -> ScBertTokenizer:
    return ScBertTokenizer.from_adata(cells)


def test_dataset_round_trip_densifies_to_the_tokenizer_output(cells, tokenizer, tmp_path):
    dataset = to_dataset(cells, tokenizer=tokenizer, label_key="cell_type", output_dir=tmp_path / "ds", batch_size=16)
    reloaded = datasets.load_from_disk(str(tmp_path / "ds"))
    assert len(reloaded) == cells.n_obs and reloaded.column_names == dataset.column_names
    assert reloaded.features["label"].names == ["T", "B", "NK"]
    assert reloaded.features["gene_indices"].feature.dtype == "int32"
    assert reloaded.features["bins"].feature.dtype == "uint8"
    rows = [reloaded[i] for i in range(len(reloaded))]
    np.testing.assert_array_equal(densify(rows, num_genes=tokenizer.num_genes).numpy(), tokenizer(cells)["input_ids"])
    assert [r["cell_id"] for r in rows] == list(cells.obs_names)
    assert [r["label"] for r in rows] == list(cells.obs["cell_type"].cat.codes)
    assert all(0 not in r["bins"] for r in rows)  # stored sparse: zero tokens are implicit


def test_in_cache_dataset_saves_and_loads(cells, tokenizer, tmp_path):
    dataset = to_dataset(cells, tokenizer=tokenizer, cache_dir=tmp_path / "cache")
    assert "label" not in dataset.column_names
    dataset.save_to_disk(str(tmp_path / "saved"))
    reloaded = datasets.load_from_disk(str(tmp_path / "saved"))
    assert list(reloaded["gene_indices"]) == list(dataset["gene_indices"])
    assert list(reloaded["bins"]) == list(dataset["bins"])


def test_dataset_from_a_backed_file(cells, tokenizer, tmp_path):
    cells.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    dataset = to_dataset(backed, tokenizer=tokenizer, label_key="cell_type", cache_dir=tmp_path, batch_size=7)
    dense = densify([dataset[i] for i in range(len(dataset))], num_genes=tokenizer.num_genes).numpy()
    np.testing.assert_array_equal(dense, tokenizer(cells)["input_ids"])


def test_missing_label_column_lists_obs_columns(cells, tokenizer, tmp_path):
    before = cells.obs.copy()
    with pytest.raises(ValueError, match=r"label_key='celltype'.*\['cell_type'\]"):
        to_dataset(cells, tokenizer=tokenizer, label_key="celltype", cache_dir=tmp_path)
    pd.testing.assert_frame_equal(cells.obs, before)


def test_output_dir_is_never_overwritten(cells, tokenizer, tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        to_dataset(cells, tokenizer=tokenizer, output_dir=tmp_path / "ds")


def rows_of(dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def test_saved_dataset_equals_the_in_cache_one_row_for_row_across_shards(cells, tokenizer, tmp_path, monkeypatch):
    # Tiny shards: the cells span several Arrow files, both while encoding and in the saved folder.
    monkeypatch.setattr(tokenization.data, "MAX_SHARD_BYTES", 2_000)
    options = {"tokenizer": tokenizer, "label_key": "cell_type", "batch_size": 8}
    saved = to_dataset(cells, output_dir=tmp_path / "ds", **options)
    cached = to_dataset(cells, cache_dir=tmp_path / "cache", **options)
    assert len(list((tmp_path / "ds").glob("*.arrow"))) > 1
    assert len(list(next((tmp_path / "cache").glob("scbert-dataset-*")).glob("*.arrow"))) > 1
    rows = rows_of(saved)
    assert rows == rows_of(cached) == rows_of(datasets.load_from_disk(str(tmp_path / "ds")))
    assert saved.features == cached.features
    np.testing.assert_array_equal(densify(rows, num_genes=tokenizer.num_genes).numpy(), tokenizer(cells)["input_ids"])
    assert [r["cell_id"] for r in rows] == list(cells.obs_names)
    # The encoded files the saved folder was written from are gone; only the two datasets remain.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "ds"]


def test_a_failed_save_leaves_no_folder_and_no_temporary_files(cells, tokenizer, tmp_path, monkeypatch):
    def crash(self, dataset_path, **kwargs):
        (Path(dataset_path) / "data-00000-of-00001.arrow").write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", crash)
    with pytest.raises(OSError, match="No space left on device"):
        to_dataset(cells, tokenizer=tokenizer, output_dir=tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_output_folder_is_filled_and_missing_parents_are_made(cells, tokenizer, tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "new" / "ds"):
        dataset = to_dataset(cells, tokenizer=tokenizer, output_dir=folder)
        assert len(dataset) == cells.n_obs == len(datasets.load_from_disk(str(folder)))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "new"]
    assert [path.name for path in (tmp_path / "new").iterdir()] == ["ds"]


def test_no_cells_give_an_empty_dataset_with_its_columns(cells, tokenizer, tmp_path):
    dataset = to_dataset(
        cells[:0].copy(),
        tokenizer=tokenizer,
        label_key="cell_type",
        label_names=["T", "B", "NK"],
        output_dir=tmp_path / "ds",
    )
    assert len(dataset) == 0
    assert dataset.column_names == ["gene_indices", "bins", "cell_id", "label"]
    assert dataset.features["label"].names == ["T", "B", "NK"]


@pytest.mark.parametrize("num_shards", [4, 3])
def test_streaming_split_by_node_covers_every_cell_once(cells, tokenizer, num_shards):
    stream = to_iterable_dataset(cells, tokenizer=tokenizer, label_key="cell_type", num_shards=num_shards)
    seen = []
    for rank in range(2):
        node = [row["cell_id"] for row in split_dataset_by_node(stream, rank=rank, world_size=2)]
        assert 0 < len(node) < cells.n_obs
        seen += node
    assert sorted(seen) == sorted(cells.obs_names)
    first = next(iter(stream))
    expected = tokenizer(cells[:1].copy())["input_ids"][0]
    np.testing.assert_array_equal(densify([first], num_genes=tokenizer.num_genes)[0].numpy(), expected)


def test_stratified_split_handles_tiny_classes():
    labels = [0] * 20 + [1] * 2 + [2]
    dataset = datasets.Dataset.from_dict(
        {"label": labels, "cell_id": [str(i) for i in range(len(labels))]},
        features=datasets.Features(
            {"label": datasets.ClassLabel(names=["big", "pair", "single"]), "cell_id": datasets.Value("string")}
        ),
    )
    split = stratified_split(dataset, eval_fraction=0.2, seed=0)
    train_ids, eval_ids = list(split["train"]["cell_id"]), list(split["eval"]["cell_id"])
    train_labels, eval_labels = list(split["train"]["label"]), list(split["eval"]["label"])
    assert sorted(train_ids + eval_ids, key=int) == list(dataset["cell_id"])
    assert eval_labels.count(0) == 4 and eval_labels.count(1) == 1  # round(20 * 0.2); a pair gives one to each
    assert 2 not in eval_labels and train_labels.count(2) == 1  # a single cell stays in train
    assert list(stratified_split(dataset, eval_fraction=0.2, seed=0)["eval"]["cell_id"]) == eval_ids
    assert list(stratified_split(dataset, eval_fraction=0.2, seed=1)["eval"]["cell_id"]) != eval_ids


# ---------------------------------------------------------------- collators
def random_rows(n_cells: int, num_genes: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for _ in range(n_cells):
        nnz = int(rng.integers(1, num_genes // 2))
        genes = np.sort(rng.choice(num_genes, size=nnz, replace=False))
        rows.append({"gene_indices": genes.tolist(), "bins": rng.integers(1, 6, size=nnz).tolist(), "label": 1})
    return rows


def test_masking_follows_the_published_rule():
    num_genes = 400
    rows = random_rows(256, num_genes, np.random.default_rng(0))
    original = densify(rows, num_genes=num_genes)
    batch = DataCollatorForMaskedExpression(num_genes=num_genes, seed=0)(rows)
    input_ids, labels = batch["input_ids"], batch["labels"]
    assert input_ids.shape == labels.shape == (256, num_genes + 1)
    selected = labels != -100
    nnz = (original != 0).sum(1)
    expected_counts = torch.tensor([math.ceil(0.15 * int(n)) for n in nnz])
    torch.testing.assert_close(selected.sum(1), expected_counts)
    assert not selected[original == 0].any()  # zero tokens, including the appended one, are never selected
    assert not selected[:, -1].any()
    torch.testing.assert_close(labels[selected], original[selected])
    replaced = input_ids == 6
    assert not replaced[~selected].any()
    fraction = replaced.sum().item() / selected.sum().item()
    assert 0.87 < fraction < 0.93, fraction  # 90% in expectation over ~8,000 selections
    kept = selected & ~replaced
    torch.testing.assert_close(input_ids[kept], original[kept])  # no random tokens
    torch.testing.assert_close(input_ids[~selected], original[~selected])


def test_masking_is_seeded():
    rows = random_rows(8, 100, np.random.default_rng(1))
    first = DataCollatorForMaskedExpression(num_genes=100, seed=3)(rows)
    again = DataCollatorForMaskedExpression(num_genes=100, seed=3)(rows)
    other = DataCollatorForMaskedExpression(num_genes=100, seed=4)(rows)
    torch.testing.assert_close(first["labels"], again["labels"])
    assert not torch.equal(first["labels"], other["labels"])
    generator = torch.Generator().manual_seed(3)
    torch.testing.assert_close(
        DataCollatorForMaskedExpression(num_genes=100, generator=generator)(rows)["labels"], first["labels"]
    )


def test_classification_collator():
    rows = random_rows(4, 30, np.random.default_rng(2))
    batch = DataCollatorForCellClassification(num_genes=30)(rows)
    assert batch["input_ids"].shape == (4, 31) and batch["labels"].tolist() == [1, 1, 1, 1]
    for row in rows:
        del row["label"]
    assert "labels" not in DataCollatorForCellClassification(num_genes=30)(rows)


def test_densify_rejects_rows_from_another_panel():
    with pytest.raises(ValueError, match="different tokenizer"):
        densify([{"gene_indices": [0, 40], "bins": [1, 2]}], num_genes=30)


# --- Working files: the cells encoded into the datasets cache (case 26) ----------------------------------------------

_RUN = """
import os, signal, sys
import anndata as ad, numpy as np, pandas as pd, scipy.sparse as sp
from transformers import TrainingArguments
from tokenization import ScBertTokenizer
from tokenization.data import to_dataset

rng = np.random.default_rng(2)
genes = [f"GENE{j}" for j in range(12)]
cells = ad.AnnData(
    sp.csr_matrix(rng.poisson(3.0, size=(48, 12)).astype(np.float32)),
    obs=pd.DataFrame({"cell_type": rng.choice(["B", "T", "NK"], 48)}, index=[f"c{i}" for i in range(48)]),
    var=pd.DataFrame(index=genes),
)
mode = sys.argv[1]
if mode in ("succeeds", "fails"):
    from modeling_scbert.training import finetune

    args = TrainingArguments(sys.argv[2], max_steps=1, per_device_train_batch_size=16, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, eval_strategy="epoch" if mode == "fails" else "no")
    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8,
            "intermediate_size": 32, "num_random_features": 8, "classifier_hidden_sizes": [16]}
    try:
        finetune(cells, label_key="cell_type", training_args=args, preset="full", config_overrides=tiny)
        print("run finished")
    except ValueError as error:
        print("run failed:", error)
else:
    dataset = to_dataset(cells, tokenizer=ScBertTokenizer(genes))
    print(os.path.dirname(dataset.cache_files[0]["filename"]), flush=True)
    if mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()  # "holder": another process's runs start and end meanwhile
    print("read", sum(len(row) for row in dataset["gene_indices"]) > 0, len(dataset), flush=True)
"""


def test_runs_remove_their_encoded_cells_even_when_they_fail_and_never_another_live_processs(tmp_path):
    """Case 26: each run (a process of its own) removes the cells it encoded into the datasets cache when it ends,
    success or failure; those of a killed run go with the next run on the host; a live process's stay readable."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(_RUN)
    cache = tmp_path / "hf_datasets_cache"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])

    def run(*argv):
        return subprocess.run(
            [sys.executable, str(script), *argv], env=env, capture_output=True, text=True, timeout=300
        )

    def left():
        return sorted(p.name for p in cache.glob("**/.scbert-dataset-*"))

    holder = subprocess.Popen(
        [sys.executable, str(script), "holder"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        held = Path(holder.stdout.readline().strip())
        assert held.is_dir() and held.name.startswith(".scbert-dataset-")
        killed = run("killed")
        assert killed.returncode == -9
        assert len(left()) == 2  # the holder's and the killed run's
        for number, mode in enumerate(["succeeds", "succeeds", "fails"]):
            result = run(mode, str(tmp_path / f"run{number}"))
            assert f"run {mode.replace('succeeds', 'finished').replace('fails', 'failed')}" in result.stdout, (
                result.stderr[-2000:]
            )
            assert left() == [held.name]  # the killed run's went with the first run; the live holder's stays
        out, _ = holder.communicate("go\n", timeout=120)
        assert out.split() == ["read", "True", "48"] and holder.returncode == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert left() == []  # the holder removed its own at exit


def test_working_files_block_removes_default_cache_datasets_and_keeps_a_named_cache_dir(cells, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "default"))
    tokenizer = ScBertTokenizer(list(cells.var_names))
    with tokenization.data.working_files():
        working = to_dataset(cells, tokenizer=tokenizer, label_key="cell_type")
        kept = to_dataset(cells, tokenizer=tokenizer, cache_dir=tmp_path / "mine")
        splits = working.train_test_split(test_size=0.25, seed=0)  # its files go in the same folder
        assert len(splits["test"]) == 15 and len(list((tmp_path / "default").glob("scbert/.scbert-dataset-*"))) == 1
    assert list((tmp_path / "default").glob("scbert/.scbert-dataset-*")) == []
    assert len(working) == 60 and working[59]["cell_id"] == "cell59"  # still readable in this process
    assert len(list((tmp_path / "mine").glob("scbert-dataset-*"))) == 1 and len(kept) == 60


def test_a_named_cache_dir_reuses_the_same_encoding_and_only_the_same(cells, tmp_path, caplog):
    tokenizer = ScBertTokenizer(list(cells.var_names))
    options = {"tokenizer": tokenizer, "label_key": "cell_type", "cache_dir": tmp_path / "mine"}
    first = to_dataset(cells, **options)
    with caplog.at_level("INFO", logger="tokenization"):
        again = to_dataset(cells.copy(), **options)  # the same content in another object
    assert any("Reusing" in r.getMessage() for r in caplog.records)
    assert rows_of(again) == rows_of(first) and len(list((tmp_path / "mine").iterdir())) == 1
    # Anything the encoding reads gives another folder: a count, a label, the panel's binning, a reading option.
    changed = cells.copy()
    changed.X[0, changed.X[0].indices[0]] += 1
    relabelled = cells.copy()
    relabelled.obs["cell_type"] = relabelled.obs["cell_type"].cat.reorder_categories(["NK", "B", "T"])
    to_dataset(changed, **options)
    to_dataset(relabelled, **options)
    to_dataset(cells, **{**options, "tokenizer": ScBertTokenizer(list(cells.var_names), max_bin=4)})
    to_dataset(cells, **options, input_kind="counts")
    assert len(list((tmp_path / "mine").iterdir())) == 5
    # Backed: the file's identity; a view encodes only its rows.
    cells.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    assert rows_of(to_dataset(backed, **options)) == rows_of(first)
    assert len(to_dataset(backed[:10], **options)) == 10 and len(list((tmp_path / "mine").iterdir())) == 7
    assert rows_of(to_dataset(backed, **options)) == rows_of(first) and len(list((tmp_path / "mine").iterdir())) == 7


def test_a_run_killed_while_encoding_into_a_named_cache_leaves_nothing_to_reuse(cells, tmp_path):
    import os
    import signal

    from test_atomic_files import _run_in_child

    tokenizer = ScBertTokenizer(list(cells.var_names))
    options = {"tokenizer": tokenizer, "label_key": "cell_type", "cache_dir": tmp_path / "mine"}
    status = _run_in_child(
        lambda: to_dataset(cells, **options), kill_at="staged"
    )  # every shard written, not published
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert list((tmp_path / "mine").glob("scbert-dataset-*")) == []  # nothing under the name a rerun would reuse
    dataset = to_dataset(cells, **options)  # encodes afresh; the dead run's temporary goes
    assert [p.name.startswith("scbert-dataset-") for p in (tmp_path / "mine").iterdir()] == [True]
    assert rows_of(dataset) == rows_of(to_dataset(cells, tokenizer=tokenizer, label_key="cell_type"))
