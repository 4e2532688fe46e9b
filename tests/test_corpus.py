"""A corpus of many inputs encoded over one panel: the alignment (token for token as each input alone), the panel built
from the corpus and its report, provenance, resuming a killed run, `scbert pretrain` / `finetune` on files, and the
split of the dataset between two processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import datasets
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import tokenization.data
from tokenization import ScBertTokenizer, atomic_files
from tokenization.corpus import CORPUS_REPORT_FILE, corpus_report, tokenizer_from_corpus
from tokenization.data import densify, to_dataset

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = [f"GENE{j}" for j in range(12)]


def ensembl(j: int) -> str:
    return f"ENSG{j:011d}"


def write_corpus(folder: Path) -> tuple[list[Path], Path]:
    """Three files with different genes and identifier kinds, and the synonym table that relates them:
    ``a`` symbols GENE0-9 plus a gene of its own; ``b`` versioned Ensembl ids of GENE2-11; ``c`` symbols, with
    ``OLD3`` (a previous symbol of GENE3) and without GENE2-4."""
    rng = np.random.default_rng(0)
    genes = {
        "a.h5ad": [*SYMBOLS[:10], "ONLYA"],
        "b.h5ad": [f"{ensembl(j)}.3" for j in range(2, 12)],
        "c.h5ad": ["GENE0", "GENE1", "OLD3", *SYMBOLS[5:]],
    }
    cells = {"a.h5ad": 7, "b.h5ad": 5, "c.h5ad": 6}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, var_names in genes.items():
        counts = rng.poisson(3.0, size=(cells[name], len(var_names))).astype(np.float32)
        obs = pd.DataFrame(
            {"cell_type": rng.choice(["B", "T"], size=cells[name])},
            index=[f"cell{i}" for i in range(cells[name])],  # the same ids in every file: the source tells them apart
        )
        ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=var_names)).write_h5ad(folder / name)
        paths.append(folder / name)
    synonyms = folder.parent / "synonyms.tsv"
    lines = [f"{ensembl(j)}\tGENE{j}" for j in range(12)] + ["OLD3\tGENE3"]
    synonyms.write_text("name\tsymbol\n" + "\n".join(lines) + "\n")
    return paths, synonyms


@pytest.fixture
def corpus(tmp_path) -> tuple[list[Path], Path]:
    return write_corpus(tmp_path / "corpus")


def rows_by_source(dataset) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in dataset:
        out.setdefault(row["source"], []).append(row)
    return out


def assert_each_input_encodes_as_alone(dataset, paths, tokenizer, synonyms) -> None:
    """The rows of each source are its cells in order, with the tokens the tokenizer gives that file alone."""
    by_source = rows_by_source(dataset)
    assert list(by_source) == [str(path) for path in paths]  # one input after another, in the order given
    for path in paths:
        alone = ad.read_h5ad(path, backed="r")
        rows = by_source[str(path)]
        assert [row["cell_id"] for row in rows] == list(alone.obs_names)
        expected = tokenizer(alone, synonyms=str(synonyms))["input_ids"]
        np.testing.assert_array_equal(densify(rows, num_genes=tokenizer.num_genes).numpy(), expected)


def test_a_panel_from_a_corpus_keeps_the_genes_in_enough_inputs_matched_across_identifier_kinds(corpus):
    paths, synonyms = corpus
    # Through the synonyms, an Ensembl id in b and a previous symbol in c are the genes of a's symbols.
    half = tokenizer_from_corpus(paths, min_fraction=0.5, synonyms=str(synonyms))
    assert list(half.genes) == SYMBOLS  # in two of three files at least; ONLYA (one file) is left out
    every = tokenizer_from_corpus(paths, min_fraction=1.0, synonyms=str(synonyms))
    assert list(every.genes) == ["GENE3", *SYMBOLS[5:10]]
    # Without synonyms the identifier kinds do not meet: a's symbols and b's Ensembl ids never count as one gene.
    with pytest.raises(ValueError, match=r"No gene is in 2 of the 2 inputs .*\[11, 10\] genes.*pass synonyms="):
        tokenizer_from_corpus(paths[:2], min_fraction=1.0)
    with pytest.raises(ValueError, match=r"min_fraction must lie in \(0, 1\]; got 0"):
        tokenizer_from_corpus(paths, min_fraction=0)


def test_three_files_encode_into_one_dataset_equal_to_each_file_alone_with_their_provenance(corpus, tmp_path):
    paths, synonyms = corpus
    tokenizer = tokenizer_from_corpus(paths, synonyms=str(synonyms))
    dataset = to_dataset(paths, tokenizer=tokenizer, synonyms=str(synonyms), output_dir=tmp_path / "ds", batch_size=2)
    assert dataset.column_names == ["gene_indices", "bins", "cell_id", "source"]
    assert len(dataset) == 7 + 5 + 6
    assert_each_input_encodes_as_alone(dataset, paths, tokenizer, synonyms)
    # A folder, a glob and AnnData objects (backed, or in memory: named by their position) are corpora too.
    assert to_dataset(paths[0].parent, tokenizer=tokenizer, synonyms=str(synonyms))["source"] == dataset["source"]
    pattern = str(paths[0].parent / "*.h5ad")
    assert to_dataset(pattern, tokenizer=tokenizer, synonyms=str(synonyms))["bins"] == dataset["bins"]
    objects = [ad.read_h5ad(paths[0], backed="r"), ad.read_h5ad(paths[1])]
    mixed = to_dataset(objects, tokenizer=tokenizer, synonyms=str(synonyms))
    assert sorted(set(mixed["source"])) == sorted([str(paths[0]), "anndata[1]"])
    assert mixed["bins"] == dataset["bins"][:12]


def test_the_panel_report_says_what_each_input_matches_and_lacks_and_is_saved_with_the_dataset(corpus, tmp_path):
    paths, synonyms = corpus
    tokenizer = tokenizer_from_corpus(paths, synonyms=str(synonyms))
    report = corpus_report(paths, tokenizer=tokenizer, synonyms=str(synonyms))
    a, b, c = report.inputs
    assert (a.cells, a.genes, a.matched, a.missing, a.extra) == (7, 11, 10, ["GENE10", "GENE11"], 1)
    assert (b.identifier_type, b.matched, b.matched_by_synonym, b.missing) == ("ensembl", 10, 10, ["GENE0", "GENE1"])
    assert (c.matched, c.matched_by_synonym, c.missing) == (10, 1, ["GENE2", "GENE4"])
    assert report.num_panel_genes == 12 and report.num_cells == 18
    assert "c.h5ad: 6 cells, 10 genes (symbol); 10 panel genes matched (1 through synonyms), 2 lacking" in (
        report.summary()
    )
    to_dataset(paths, tokenizer=tokenizer, synonyms=str(synonyms), output_dir=tmp_path / "ds")
    saved = json.loads((tmp_path / "ds" / CORPUS_REPORT_FILE).read_text())
    assert saved == report.to_dict()
    assert saved["inputs"][2]["missing"] == ["GENE2", "GENE4"] and saved["inputs"][2]["num_missing"] == 2
    assert len(datasets.load_from_disk(str(tmp_path / "ds"))) == 18  # the report beside it does not disturb loading


def test_bad_corpus_inputs_are_refused_by_name_before_any_cell_is_encoded(corpus, tmp_path, monkeypatch):
    paths, synonyms = corpus
    tokenizer = tokenizer_from_corpus(paths, synonyms=str(synonyms))
    encoded = []
    monkeypatch.setattr(tokenization.data, "_write_shards", lambda *a, **k: encoded.append(1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no \.h5ad file"):
        to_dataset(tmp_path / "empty", tokenizer=tokenizer)
    with pytest.raises(FileNotFoundError, match=r"matches no file"):
        to_dataset(str(tmp_path / "nowhere" / "*.h5ad"), tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"names \[.*a\.h5ad'\] more than once"):
        to_dataset([paths[0], paths[0].parent], tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"corpus is empty"):
        to_dataset([], tokenizer=tokenizer)
    # The last file lacks the label column; the first two would be encoded by then were the checks not first.
    unlabelled = ad.read_h5ad(paths[2])
    del unlabelled.obs["cell_type"]
    unlabelled.write_h5ad(tmp_path / "unlabelled.h5ad")
    with pytest.raises(ValueError, match=r"unlabelled\.h5ad.*'cell_type' is not a column"):
        to_dataset([*paths[:2], tmp_path / "unlabelled.h5ad"], tokenizer=tokenizer, label_key="cell_type")
    # Without the synonyms, b's Ensembl ids match no panel gene: refused, naming b.
    with pytest.raises(ValueError, match=r"In the corpus input .*b\.h5ad: Only 0 of 12 panel genes"):
        to_dataset(paths, tokenizer=tokenizer)
    assert encoded == []


def test_a_labelled_corpus_has_one_class_list_over_its_inputs(corpus):
    paths, synonyms = corpus
    tokenizer = tokenizer_from_corpus(paths, synonyms=str(synonyms))
    c = ad.read_h5ad(paths[2])
    c.obs["cell_type"] = "NK"  # a type only this input has
    dataset = to_dataset([*paths[:2], c], tokenizer=tokenizer, synonyms=str(synonyms), label_key="cell_type")
    assert dataset.features["label"].names == ["B", "NK", "T"]
    assert dataset["label"][-6:] == [1] * 6


def _kill_after_first_input(monkeypatch) -> type[BaseException]:
    """The first input's folder is published, then the run stops (as if killed there)."""

    class Killed(BaseException):
        pass

    def fault(point: str) -> None:
        if point == "published":
            monkeypatch.setattr(atomic_files, "_fault_point", atomic_files._no_fault)
            raise Killed

    monkeypatch.setattr(atomic_files, "_fault_point", fault)
    return Killed


def test_a_run_stopped_after_the_first_input_resumes_without_encoding_it_again_and_gives_the_same_dataset(
    corpus, tmp_path, monkeypatch, caplog
):
    paths, synonyms = corpus
    tokenizer = tokenizer_from_corpus(paths, synonyms=str(synonyms))
    run = {"tokenizer": tokenizer, "synonyms": str(synonyms), "batch_size": 2}
    whole = to_dataset(paths, output_dir=tmp_path / "whole", **run)

    killed = _kill_after_first_input(monkeypatch)
    with pytest.raises(killed):
        to_dataset(paths, output_dir=tmp_path / "ds", **run)
    assert not (tmp_path / "ds").exists()  # never a half-written dataset
    work = tmp_path / ".ds.scbert-inputs"
    finished = [p.name for p in work.iterdir() if p.name.startswith("scbert-corpus-input-")]
    assert len(finished) == 1

    written = []
    write_shards = tokenization.data._write_shards
    monkeypatch.setattr(
        tokenization.data, "_write_shards", lambda *a, **k: written.append(k["source"]) or write_shards(*a, **k)
    )
    with caplog.at_level("INFO", logger="tokenization.data"):
        resumed = to_dataset(paths, output_dir=tmp_path / "ds", **run)
    assert written == [str(paths[1]), str(paths[2])]  # the first input was not encoded again
    assert f"Reusing the cells encoded in {work / finished[0]}" in caplog.text
    assert resumed.data.table.equals(whole.data.table)
    assert not work.exists()  # the inputs' folders go once the dataset is saved


def test_a_sigkilled_run_leaves_no_dataset_and_a_rerun_resumes_it(corpus, tmp_path):
    paths, synonyms = corpus
    tokenizer = tokenizer_from_corpus(paths, synonyms=str(synonyms))
    run = {"tokenizer": tokenizer, "synonyms": str(synonyms), "output_dir": tmp_path / "ds"}
    publishes = []
    pid = os.fork()
    if pid == 0:  # the child never returns to pytest: SIGKILLed while it writes the second input

        def fault(point: str) -> None:
            publishes.append(point)
            if publishes.count("created") == 2:
                os.kill(os.getpid(), signal.SIGKILL)

        atomic_files._fault_point = fault
        try:
            to_dataset(paths, **run)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not (tmp_path / "ds").exists()
    resumed = to_dataset(paths, **run)
    assert_each_input_encodes_as_alone(resumed, paths, tokenizer, synonyms)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left behind


TINY = "hidden_size=16,num_hidden_layers=2,num_attention_heads=2,head_dim=8,intermediate_size=32,num_random_features=8"
COMMON = ["--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]


def test_scbert_pretrain_on_three_files_trains_on_one_dataset_equal_to_each_alone_and_resumes_when_stopped(
    corpus, tmp_path, monkeypatch
):
    from modeling_scbert.training.workflows import pretrain_main

    paths, synonyms = corpus
    argv = ["--train_file", *map(str, paths), "--synonyms", str(synonyms), "--dataset_cache_dir", str(tmp_path / "c")]
    argv += ["--output_dir", str(tmp_path / "pre"), "--max_steps", "1", "--config_overrides", TINY, *COMMON]
    killed = _kill_after_first_input(monkeypatch)
    with pytest.raises(killed):
        pretrain_main(argv)
    assert len(list((tmp_path / "c").glob("scbert-corpus-input-*"))) == 1
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*")}

    trainer = pretrain_main(argv)
    tokenizer = ScBertTokenizer.from_pretrained(tmp_path / "pre")
    assert list(tokenizer.genes) == SYMBOLS  # one panel, built from the corpus
    assert_each_input_encodes_as_alone(trainer.train_dataset, paths, tokenizer, synonyms)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*")}
    assert {n: s for n, s in before.items() if after[n] != s} == {}  # the finished input was reused untouched
    assert len(list((tmp_path / "c").glob("scbert-corpus-input-*"))) == 3
    assert (tmp_path / "pre" / "model.safetensors").is_file()


def test_scbert_finetune_on_labelled_files_learns_the_classes_of_all_of_them(corpus, tmp_path):
    from modeling_scbert.training.workflows import finetune_main

    paths, synonyms = corpus
    argv = ["--train_file", str(paths[0].parent / "*.h5ad"), "--label_key", "cell_type", "--synonyms", str(synonyms)]
    argv += ["--output_dir", str(tmp_path / "ft"), "--max_steps", "1", "--config_overrides", TINY, *COMMON]
    trainer = finetune_main(argv)
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["id2label"] == {"0": "B", "1": "T"}
    assert len(trainer.train_dataset) == 18 and set(trainer.train_dataset["source"]) == set(map(str, paths))


SPLIT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import datasets
    from datasets.distributed import split_dataset_by_node
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    import tokenization.data
    from modeling_scbert.training.workflows import pretrain

    hf_logging.set_verbosity_error()
    out, rank, world_size = Path(sys.argv[1]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    corpus = datasets.load_from_disk(sys.argv[2])
    from tokenization import ScBertTokenizer
    tokenizer = ScBertTokenizer.from_pretrained(sys.argv[3])

    # 1. Streaming: each process iterates its share of the shards, reshuffled every epoch.
    stream = split_dataset_by_node(corpus.to_iterable_dataset(num_shards=6).shuffle(seed=0), rank, world_size)
    streamed = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        streamed.append([f"{row['source']}|{row['cell_id']}" for row in stream])

    # 2. pretrain's Trainer (DDP over gloo): the cells each process's batches hold, epoch by epoch.
    seen = []
    collate = tokenization.data.DataCollatorForMaskedExpression.__call__
    def recording(self, features):
        seen.extend(f"{f['source']}|{f['cell_id']}" for f in features)
        return collate(self, features)
    tokenization.data.DataCollatorForMaskedExpression.__call__ = recording
    args = TrainingArguments(output_dir=str(out / "model"), per_device_train_batch_size=3, num_train_epochs=2,
                             save_strategy="no", report_to=[], use_cpu=True, ddp_backend="gloo", disable_tqdm=True,
                             dataloader_pin_memory=False, seed=0)
    config = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8,
              "intermediate_size": 32, "num_random_features": 8}
    pretrain(corpus, training_args=args, tokenizer=tokenizer, config_overrides=config)
    trained = [seen[: len(seen) // 2], seen[len(seen) // 2 :]]
    (out / f"rank{rank}.json").write_text(json.dumps({"streamed": streamed, "trained": trained}))

    # Leave the process group before exiting: a gloo thread still alive at interpreter exit can abort the process.
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_processes_each_read_a_disjoint_share_of_the_corpus_every_epoch_and_together_all_of_it(corpus, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    paths, synonyms = corpus
    tokenizer = tokenizer_from_corpus(paths, synonyms=str(synonyms))
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    dataset = to_dataset(paths, tokenizer=tokenizer, synonyms=str(synonyms), output_dir=tmp_path / "ds")
    everything = sorted(f"{s}|{c}" for s, c in zip(dataset["source"], dataset["cell_id"]))
    assert len(set(everything)) == 18  # the source tells apart cells with the same id in different files
    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    result = subprocess.run(
        [*command, str(tmp_path / "ds"), str(tmp_path / "tokenizer")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for kind in ("streamed", "trained"):
        for epoch in (0, 1):
            first, second = (ranks[r][kind][epoch] for r in (0, 1))
            assert first and second and not set(first) & set(second), (kind, epoch)  # disjoint shares
            assert sorted(first + second) == everything, (kind, epoch)  # together every cell, once
    assert ranks[0]["streamed"][0] != ranks[0]["streamed"][1]  # each epoch reshuffled
