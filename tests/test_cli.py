"""The `scbert` command line ends every failure in one line that names the path and the cause: a full disk (a
file-size limit set in the child process, no privileges needed), and a damaged weights file."""

import resource
import signal
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from conftest import save_tiny_annotator

GENES = [f"GENE{j}" for j in range(40)]


def _cells(path, n_cells=400):
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(3.0, size=(n_cells, len(GENES))).astype(np.float32))
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=GENES)).write_h5ad(path)
    return path


def _scbert(argv, *, file_size_limit=None):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-m", "modeling_scbert.cli", *argv],
        capture_output=True,
        text=True,
        preexec_fn=limit if file_size_limit else None,
        # No bytecode writes: under the file-size limit they would leave truncated .pyc files behind.
        env={
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": ":".join(sys.path),
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        timeout=600,
    )


def test_a_full_disk_ends_in_one_line_naming_the_file_and_leaves_no_output(tmp_path):
    model = save_tiny_annotator(tmp_path / "model", GENES)
    cells = _cells(tmp_path / "cells.h5ad")
    before = cells.read_bytes()
    output = tmp_path / "annotated.h5ad"
    limit = cells.stat().st_size // 2  # the copy of the input cannot be written
    result = _scbert(
        ["annotate", "--model", str(model), "--input", str(cells), "--output", str(output)], file_size_limit=limit
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("scbert annotate: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr and "HDF5-DIAG" not in result.stderr, result.stderr
    assert "file-size limit" in lines[0] or "no space" in lines[0]
    assert not output.exists() and cells.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_a_damaged_weights_file_ends_in_one_line(tmp_path):
    model = save_tiny_annotator(tmp_path / "model", GENES)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # truncated
    cells = _cells(tmp_path / "cells.h5ad", n_cells=20)
    result = _scbert(["annotate", "--model", str(model), "--input", str(cells), "--output", str(tmp_path / "o.h5ad")])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("scbert annotate: error:")
