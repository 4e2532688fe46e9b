"""Benchmark: collate a batch of full-length cells (16,906 genes + 1 token, ~2,000 non-zero) with masking.

Rows are built as a ``datasets.Dataset`` yields them (Python lists), so the figure includes list -> array
conversion.

    .venv/bin/python benchmarks/bench_collator.py
    .venv/bin/python benchmarks/bench_collator.py --batch-size 32 --repeats 200 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from tokenization.data import DataCollatorForCellClassification, DataCollatorForMaskedExpression

N_GENES = 16_906
NNZ_PER_CELL = 2_000
TARGET_MS = 20.0


def make_rows(batch_size: int, *, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(batch_size):
        genes = np.sort(rng.choice(N_GENES, size=NNZ_PER_CELL, replace=False)).astype(np.int32)
        bins = rng.integers(1, 6, size=NNZ_PER_CELL).astype(np.uint8)
        rows.append({"gene_indices": genes.tolist(), "bins": bins.tolist(), "label": i % 5, "cell_id": f"c{i}"})
    return rows


def time_collator(collator, rows: list[dict], *, repeats: int) -> dict:
    collator(rows)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        collator(rows)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(float(np.percentile(times, 90)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()

    rows = make_rows(args.batch_size)
    result = {
        "batch_size": args.batch_size,
        "sequence_length": N_GENES + 1,
        "nonzero_per_cell": NNZ_PER_CELL,
        "torch_threads": torch.get_num_threads(),
        "masked_expression": time_collator(
            DataCollatorForMaskedExpression(num_genes=N_GENES, seed=0), rows, repeats=args.repeats
        ),
        "classification": time_collator(
            DataCollatorForCellClassification(num_genes=N_GENES), rows, repeats=args.repeats
        ),
    }
    result["meets_target"] = result["masked_expression"]["median_ms"] < TARGET_MS
    if args.json:
        print(json.dumps(result))
    else:
        for name in ("masked_expression", "classification"):
            print(
                f"{name}: {args.batch_size} cells x {N_GENES + 1:,} tokens in {result[name]['median_ms']} ms median "
                f"({result[name]['p90_ms']} ms p90); target < {TARGET_MS:g} ms"
            )


if __name__ == "__main__":
    main()
