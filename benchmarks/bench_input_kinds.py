"""Tokenizer throughput by input kind, in memory (CSR): raw counts, then log1p of 10,000-normalised counts.

Every kind is verified on a sample before encoding and the log1p route recovers counts cell by cell, so this checks
that neither costs much. 20,000 cells x 2,000 genes, 10% non-zero; best of three.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_input_kinds.py
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from tokenization import ScBertTokenizer


def main(n_cells: int = 20_000, n_genes: int = 2_000) -> None:
    rng = np.random.default_rng(0)
    counts = sp.random(
        n_cells, n_genes, density=0.1, format="csr", random_state=0, data_rvs=lambda k: rng.geometric(0.4, k)
    ).astype(np.float32)
    counts = sp.hstack([sp.csr_matrix(np.ones((n_cells, 1), np.float32)), counts], format="csr")  # a count of 1
    genes = [f"G{i}" for i in range(counts.shape[1])]
    totals = np.asarray(counts.sum(1)).ravel()
    log1p = sp.csr_matrix(sp.diags(1e4 / totals) @ counts)
    log1p.data = np.log1p(log1p.data).astype(np.float32)
    tokenizer = ScBertTokenizer(genes)
    for name, matrix in (("counts", counts), ("log1p", log1p)):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            tokenizer(matrix, gene_names=genes)
            times.append(time.perf_counter() - start)
        print(f"{name}: {min(times):.2f} s, {n_cells / min(times):,.0f} cells/s")


if __name__ == "__main__":
    main()
