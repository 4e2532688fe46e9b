"""Annotation and embeddings over two processes (`torchrun --standalone --nproc_per_node 2`, gloo on CPU): each
process takes half of the cells of a backed file, the main process writes one output identical to one process's, and
a failure on one process stops both instead of leaving the other waiting."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from test_annotation_annotate import CLASSES, GENES, make_adata, save_annotator

from modeling_scbert.annotation.annotate import annotate, embed
from modeling_scbert.annotation.distributed import InferenceProcesses
from tokenization import ScBertTokenizer

N_CELLS = 41  # odd: the two shares differ by one cell

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import anndata as ad
    import numpy as np

    from modeling_scbert.annotation.annotate import annotate, embed
    from modeling_scbert.cli import main as cli_main
    from modeling_scbert.annotation import distributed
    from modeling_scbert.annotation.distributed import inference_processes
    from tokenization import ScBertTokenizer

    out, data, model_a, model_b = (Path(p) for p in sys.argv[1:5])
    distributed.GATHER_BLOCK_BYTES = 100  # rows travel a few at a time: many rounds, partial last rounds
    processes = inference_processes()
    rank = processes.rank
    marker = {"rank": rank, "world_size": processes.world_size, "shard": processes.shard(N_CELLS)}

    # An ensemble of two over a backed file, in batches and chunks that do not line up with the shares.
    adata = ad.read_h5ad(data, backed="r")
    result = annotate(adata, [str(model_a), str(model_b)], return_probabilities=True, batch_size=4, chunk_size=7,
                      progress=False)
    marker["annotate_returned"] = result is not None
    marker["annotated_here"] = "scbert_cell_type" in adata.obs
    if processes.is_main:
        np.savez(out / "annotate.npz", probabilities=adata.obsm["scbert_probabilities"],
                 labels=adata.obs["scbert_cell_type"].astype(str).to_numpy(),
                 confidence=adata.obs["scbert_confidence"].to_numpy())
    # Majority voting over Leiden over-clusters of the tokens each process read: the tokens are gathered too.
    adata = ad.read_h5ad(data, backed="r")
    annotate(adata, str(model_a), majority_voting=True, batch_size=4, progress=False)
    if processes.is_main:
        np.savez(out / "voting.npz", voted=adata.obs["scbert_majority_voting"].astype(str).to_numpy(),
                 clusters=adata.obs["scbert_over_clustering"].astype(str).to_numpy())
    adata = ad.read_h5ad(data, backed="r")
    result = embed(adata, str(model_a), batch_size=5, progress=False)
    marker["embedded_here"] = "X_scbert" in adata.obsm
    if processes.is_main:
        np.save(out / "embed.npy", adata.obsm["X_scbert"])

    # A failure on one process only, while its cells are read, and one while loading: both processes stop.
    def fail(self, *args, **kwargs):
        raise ValueError("injected failure on process 1")

    failures = []
    for what in ("reading", "loading"):
        models = str(model_a) if what == "reading" or rank == 0 else str(out / "missing-model")
        original = ScBertTokenizer.input_ids_from_tokens
        if rank == 1 and what == "reading":
            ScBertTokenizer.input_ids_from_tokens = fail
        try:
            annotate(ad.read_h5ad(data, backed="r"), models, batch_size=4, progress=False)
            failures.append(None)
        except Exception as error:
            failures.append(f"{type(error).__name__}: {error}")
        finally:
            ScBertTokenizer.input_ids_from_tokens = original
    marker["failures"] = failures

    # One process alone (distributed=False), while the other does something else: it annotates every cell.
    if rank == 0:
        alone = ad.read_h5ad(data, backed="r")
        annotate(alone, str(model_a), distributed=False, return_probabilities=True, progress=False)
        np.save(out / "alone.npy", alone.obsm["scbert_probabilities"])
    with processes.all_or_none("Waiting"):  # meet again before the command line, which takes both processes
        pass

    # The command line in the same processes: embed, then an output that exists, refused before any work.
    embed_args = ["embed", "--model", str(model_a), "--input", str(data), "--output", str(out / "embedded.h5ad")]
    marker["cli_codes"] = [cli_main(embed_args), cli_main(embed_args)]
    (out / f"rank{rank}.json").write_text(json.dumps(marker))
    """
).replace("N_CELLS", str(N_CELLS))


def _torchrun():
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    return [torchrun, "--standalone", "--nproc_per_node", "2"]


def _run(command, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    data = root / "cells.h5ad"
    make_adata(N_CELLS, seed=3).write_h5ad(data)
    return {
        "root": root,
        "data": data,
        # Seeds whose ensemble labels these cells as several types, in both shares, so the order of the rows counts.
        "model_a": save_annotator(root / "model-a", seed=5),
        "model_b": save_annotator(root / "model-b", seed=8),
    }


def test_shares_are_contiguous_cover_every_cell_once_and_differ_by_at_most_one():
    for n_obs in (0, 1, 5, 41, 1000):
        for world_size in (1, 2, 3, 8):
            shares = [InferenceProcesses(rank, world_size).shard(n_obs) for rank in range(world_size)]
            assert shares[0][0] == 0 and shares[-1][1] == n_obs
            assert all(shares[r][1] == shares[r + 1][0] for r in range(world_size - 1))
            sizes = [end - start for start, end in shares]
            assert max(sizes) - min(sizes) <= 1


def test_a_share_of_a_backed_file_encodes_like_those_rows_of_the_whole(setup):
    backed = ad.read_h5ad(setup["data"], backed="r")
    tokenizer = ScBertTokenizer(GENES)
    whole = sp.vstack([tokens for _, _, tokens in tokenizer.iter_encoded(backed, batch_size=8)]).toarray()
    chunks = list(tokenizer.iter_encoded(backed, batch_size=8, start=21, end=41))
    assert [(start, end) for start, end, _ in chunks] == [(21, 29), (29, 37), (37, 41)]
    np.testing.assert_array_equal(sp.vstack([tokens for _, _, tokens in chunks]).toarray(), whole[21:41])
    with pytest.raises(ValueError, match="0 <= start <= end <= 41"):
        tokenizer.iter_encoded(backed, start=30, end=50)


@pytest.mark.slow
def test_two_processes_annotate_and_embed_like_one_and_stop_together_on_failure(setup):
    root = Path(__file__).resolve().parents[1]
    out = setup["root"] / "api"
    out.mkdir()
    script = setup["root"] / "run.py"
    script.write_text(SCRIPT)
    code, log = _run(
        [*_torchrun(), str(script), str(out), str(setup["data"]), str(setup["model_a"]), str(setup["model_b"])], root
    )
    assert code == 0, log[-5000:]
    markers = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [m["world_size"] for m in markers] == [2, 2]  # two processes, each with its own share
    assert [m["shard"] for m in markers] == [[0, 21], [21, 41]]
    # Only the main process wrote into its AnnData; the other returned None and left its AnnData alone.
    assert [m["annotated_here"] for m in markers] == [True, False]
    assert [m["embedded_here"] for m in markers] == [True, False]
    assert [m["annotate_returned"] for m in markers] == [False, False]

    single = ad.read_h5ad(setup["data"])
    annotate(single, [str(setup["model_a"]), str(setup["model_b"])], return_probabilities=True, progress=False)
    embed(single, str(setup["model_a"]), progress=False)
    gathered = np.load(out / "annotate.npz", allow_pickle=True)
    labels = single.obs["scbert_cell_type"].astype(str).to_numpy()
    assert len(set(labels)) >= 2  # several types, so the order of the gathered rows is checked
    assert list(gathered["labels"]) == list(labels)
    np.testing.assert_allclose(gathered["probabilities"], single.obsm["scbert_probabilities"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(gathered["confidence"], single.obs["scbert_confidence"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(out / "embed.npy"), single.obsm["X_scbert"], rtol=0, atol=1e-6)
    voting = np.load(out / "voting.npz", allow_pickle=True)
    voted = annotate(ad.read_h5ad(setup["data"]), str(setup["model_a"]), majority_voting=True, copy=True)
    assert list(voting["clusters"]) == list(voted.obs["scbert_over_clustering"].astype(str))
    assert list(voting["voted"]) == list(voted.obs["scbert_majority_voting"].astype(str))

    # A failure on process 1 raised its own error there and a ScBertProcessError naming it on process 0: no hang.
    reading, loading = markers[0]["failures"]
    assert reading.startswith("ScBertProcessError") and "process 1 of 2" in reading and "injected" in reading
    assert loading.startswith("ScBertProcessError") and "process 1 of 2" in loading and "missing-model" in loading
    assert markers[1]["failures"][0] == "ValueError: injected failure on process 1"
    assert markers[1]["failures"][1].startswith("FileNotFoundError")

    # distributed=False on process 0 alone annotated every cell, like one process.
    alone = annotate(ad.read_h5ad(setup["data"]), str(setup["model_a"]), return_probabilities=True, copy=True)
    np.testing.assert_allclose(np.load(out / "alone.npy"), alone.obsm["scbert_probabilities"], rtol=0, atol=1e-6)

    # `scbert embed` wrote one output, like one process's; run again, both processes refused the existing output.
    assert [m["cli_codes"] for m in markers] == [[0, 2], [0, 2]]
    assert "process 0 of 2" in log and "--overwrite" in log
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".h5ad") == ["embedded.h5ad"]  # no temporary files
    np.testing.assert_allclose(
        ad.read_h5ad(out / "embedded.h5ad").obsm["X_scbert"], single.obsm["X_scbert"], atol=1e-6
    )


@pytest.mark.slow
def test_two_processes_through_the_command_line_write_one_output_like_one_process(setup, tmp_path):
    root = Path(__file__).resolve().parents[1]
    data, models = str(setup["data"]), [str(setup["model_a"]), str(setup["model_b"])]
    cli = [*_torchrun(), "-m", "modeling_scbert.cli", "-v"]
    out, csv = tmp_path / "annotated.h5ad", tmp_path / "annotated.csv"
    args = [
        "annotate",
        "--model",
        *models,
        "--input",
        data,
        "--output",
        str(out),
        "--probabilities",
        "--csv",
        str(csv),
    ]
    code, log = _run([*cli, *args, "--batch-size", "3"], root)
    assert code == 0, log[-5000:]
    assert "Process 1 of 2 (gloo) joined" in log
    assert log.count("written: ") == 2  # the output and the CSV, written once, by the main process
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.csv", "annotated.h5ad"]

    single = ad.read_h5ad(data)
    annotate(single, models, return_probabilities=True, progress=False)
    result = ad.read_h5ad(out)
    assert list(result.obs_names) == list(single.obs_names)
    assert list(result.obs["scbert_cell_type"].astype(str)) == list(single.obs["scbert_cell_type"].astype(str))
    assert set(result.obs["scbert_cell_type"].cat.categories) == set(CLASSES)
    np.testing.assert_allclose(result.obsm["scbert_probabilities"], single.obsm["scbert_probabilities"], atol=1e-6)
    table = pd.read_csv(csv, index_col="cell_id")
    assert list(table["scbert_cell_type"]) == list(single.obs["scbert_cell_type"].astype(str))
