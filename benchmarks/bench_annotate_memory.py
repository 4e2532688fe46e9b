"""Peak memory per process of ``scbert annotate`` on backed files of growing size, in one and in two processes.

    python benchmarks/bench_annotate_memory.py [--cells 10000 100000 1000000] [--processes 1 2] [--workdir DIR]

For each size, writes a synthetic ``.h5ad`` (a tiny panel of 64 genes, about 10 expressed genes per cell, CSR),
a tiny annotator (hidden 16, 1 layer, 5 classes), then runs ``scbert annotate --probabilities`` on it, alone and under
``torchrun --standalone --nproc_per_node 2`` (gloo, CPU), and prints every process's peak resident memory
(``ru_maxrss``), its resident memory after the imports, and the wall time. The model and panel are tiny on purpose:
what is measured is what grows with the number of cells, not the activations (which depend on the batch size and the
model, never on the number of cells).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_GENES = 64
CLASSES = ["B", "T", "NK", "Mono", "DC"]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(report: Path, argv: list[str]) -> int:
    """Run the command line in this process, then record its peak and post-import memory."""
    from modeling_scbert.cli import main

    after_imports = _rss_mb()
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    rank = int(os.environ.get("RANK", "0"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"rank": rank, "code": code, "peak_mb": peak, "after_imports_mb": after_imports, "seconds": seconds}
    Path(f"{report}.rank{rank}.json").write_text(json.dumps(row))
    return code


def make_inputs(workdir: Path, n_cells: int) -> tuple[Path, Path]:
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    import torch

    from modeling_scbert import ScBertConfig, ScBertForSequenceClassification
    from tokenization import ScBertTokenizer

    genes = [f"G{j}" for j in range(N_GENES)]
    model = workdir / "model"
    if not model.exists():
        torch.manual_seed(0)
        config = ScBertConfig(
            num_genes=N_GENES,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            head_dim=8,
            intermediate_size=32,
            num_random_features=8,
            gene_embedding_type="learned",
            classifier_type="pooled",
            classifier_hidden_sizes=[16],
            id2label=dict(enumerate(CLASSES)),
            label2id={name: i for i, name in enumerate(CLASSES)},
        )
        ScBertForSequenceClassification(config).save_pretrained(model)
        ScBertTokenizer(genes).save_pretrained(model)
    data = workdir / f"cells-{n_cells}.h5ad"
    if not data.exists():
        rng = np.random.default_rng(0)
        per_cell = 10
        indices = np.sort(rng.random((n_cells, N_GENES)).argsort(axis=1)[:, :per_cell], axis=1).astype(np.int32)
        values = rng.integers(1, 20, size=(n_cells, per_cell)).astype(np.float32)
        matrix = sp.csr_matrix(
            (values.ravel(), indices.ravel(), np.arange(0, n_cells * per_cell + 1, per_cell)), shape=(n_cells, N_GENES)
        )
        obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)]))
        ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(data)
    return data, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker is not None:
        sys.exit(worker(args.worker, rest))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scbert-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    print("| cells | processes | process | peak RSS (MB) | RSS after imports (MB) | wall (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n_cells in args.cells:
        data, model = make_inputs(workdir, n_cells)
        for processes in args.processes:
            output, report = workdir / f"out-{n_cells}-{processes}.h5ad", workdir / f"report-{n_cells}-{processes}"
            launcher = (
                [sys.executable] if processes == 1 else [torchrun, "--standalone", "--nproc_per_node", str(processes)]
            )
            command = [*launcher, __file__, "--worker", str(report), "annotate", "--model", str(model)]
            command += ["--input", str(data), "--output", str(output), "--overwrite", "--probabilities"]
            command += ["--batch-size", str(args.batch_size), "--device", "cpu"]
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
            for rank in range(processes):
                row = json.loads(Path(f"{report}.rank{rank}.json").read_text())
                print(
                    f"| {n_cells:,} | {processes} | {rank} | {row['peak_mb']:.0f} | {row['after_imports_mb']:.0f} "
                    f"| {row['seconds']:.0f} |",
                    flush=True,
                )
            output.unlink()
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
