"""Benchmark: a backed synthetic .h5ad (cells x 16,906 genes, ~2,000 non-zero counts per cell) -> saved dataset.

Reports cells per second and the peak resident memory of the conversion, which runs in a fresh process so the
figure covers only reading, encoding and writing (not building the synthetic file). Peak RSS counts the pages of
memory-mapped Arrow files that were read (``Dataset.save_to_disk`` reads the encoded files back), which the kernel
reclaims under pressure; on Linux the peak of anonymous memory (``RssAnon``, what cannot be reclaimed) is reported too.

    .venv/bin/python benchmarks/bench_tokenization.py                    # 100,000 cells
    .venv/bin/python benchmarks/bench_tokenization.py --n-cells 10000 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

N_GENES = 16_906
NNZ_PER_CELL = 2_000
TARGET_CELLS_PER_S = 5_000
TARGET_PEAK_GB = 2.0


def make_h5ad(path: Path, *, n_cells: int, n_genes: int = N_GENES, chunk: int = 2_000, seed: int = 0) -> None:
    """Write a CSR .h5ad chunk by chunk, so building it never holds the whole matrix in memory."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    density = NNZ_PER_CELL / n_genes
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        for start in range(0, n_cells, chunk):
            rows = min(chunk, n_cells - start)
            present = rng.random((rows, n_genes), dtype=np.float32) < density
            r, c = np.nonzero(present)
            counts = rng.geometric(0.3, size=len(r)).astype(np.float32)
            block = sp.csr_matrix((counts, (r, c)), shape=(rows, n_genes))
            if start == 0:
                ad.io.write_elem(f, "X", block)
            else:
                ad.io.sparse_dataset(f["X"]).append(block)
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical(rng.choice([f"type_{i}" for i in range(10)], size=n_cells))},
            index=[f"cell_{i}" for i in range(n_cells)],
        )
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", pd.DataFrame(index=[f"GENE{i:05d}" for i in range(n_genes)]))
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
    tmp.rename(path)


class PeakAnonymousMemory:
    """Sample this process's anonymous resident memory (``RssAnon``, Linux) every few milliseconds; keep the peak."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s, self.peak_kb, self._stop = interval_s, None, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int | None:
        try:
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
        except (OSError, StopIteration):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = self._sample()
            if kb is not None:
                self.peak_kb = max(self.peak_kb or 0, kb)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakAnonymousMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float | None:
        return None if self.peak_kb is None else round(self.peak_kb / 1024**2, 3)


def convert(h5ad: Path, output_dir: Path, *, batch_size: int) -> dict:
    """Run in a fresh process: read backed, encode, write the saved dataset; time it and take peak RSS."""
    import anndata as ad

    from tokenization import ScBertTokenizer
    from tokenization.data import to_dataset

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    t0, cpu0 = time.perf_counter(), time.process_time()
    with PeakAnonymousMemory() as anonymous:
        adata = ad.read_h5ad(h5ad, backed="r")
        tokenizer = ScBertTokenizer.from_adata(adata)
        dataset = to_dataset(
            adata,
            tokenizer=tokenizer,
            label_key="cell_type",
            output_dir=output_dir,
            batch_size=batch_size,
            progress=False,
        )
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "rows_written": len(dataset),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),  # user + system CPU: steadier than wall time on a shared machine
        "cells_per_s": round(adata.n_obs / seconds),
        "peak_rss_gb": round(peak_gb, 3),
        "peak_anonymous_gb": anonymous.peak_gb,
        "rss_after_imports_gb": round(rss_before, 3),
        "dataset_size_gb": round(sum(p.stat().st_size for p in output_dir.rglob("*")) / 1024**3, 3),
        "batch_size": batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-cells", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--keep", action="store_true", help="keep the saved dataset")
    parser.add_argument("--_convert", nargs=2, metavar=("H5AD", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._convert:
        print(json.dumps(convert(Path(args._convert[0]), Path(args._convert[1]), batch_size=args.batch_size)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    h5ad = args.workdir / f"synthetic_{args.n_cells}x{N_GENES}.h5ad"
    if not h5ad.exists():
        t0 = time.perf_counter()
        make_h5ad(h5ad, n_cells=args.n_cells)
        if not args.json:
            print(f"built {h5ad} in {time.perf_counter() - t0:.1f} s")
    out = Path(tempfile.mkdtemp(dir=args.workdir, prefix="dataset_"))
    shutil.rmtree(out)
    try:
        cmd = [sys.executable, __file__, "--batch-size", str(args.batch_size), "--_convert", str(h5ad), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"conversion failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    result["meets_targets"] = result["cells_per_s"] >= TARGET_CELLS_PER_S and result["peak_rss_gb"] < TARGET_PEAK_GB
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['n_cells']:,} cells x {result['n_genes']:,} genes -> saved dataset in {result['seconds']} s: "
            f"{result['cells_per_s']:,} cells/s (target >= {TARGET_CELLS_PER_S:,}), peak RSS "
            f"{result['peak_rss_gb']} GB (target < {TARGET_PEAK_GB} GB; anonymous {result['peak_anonymous_gb']} GB); "
            f"dataset {result['dataset_size_gb']} GB"
        )


if __name__ == "__main__":
    main()
