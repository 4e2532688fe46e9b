"""Time and memory of ``gene_attention`` per cell at the published size, beside a plain forward pass.

Each measurement runs in its own process, so the peak resident memory is that measurement's alone. The model has the
published shapes (16,906 genes + 1, width 200, 6 layers, 10 heads of 64, 266 random features, the per-position
classifier) in fp32 with random weights (the cost does not depend on the weights); cells are random tokens with 10%
non-zero genes, like a 10x cell over the panel.

Usage::

    python benchmarks/bench_gene_attention.py                 # full size, 4 cells per measurement
    python benchmarks/bench_gene_attention.py --genes 4000     # smaller panel
    python benchmarks/bench_gene_attention.py --json out.json

Reported: seconds per cell, peak RSS, and working memory per call (peak RSS minus the RSS after the model and inputs
were built) for ``gene_attention`` on the last and the first layer, and for the classifier's forward pass, each in its
own process; then the three alternated cell by cell in one process (medians), whose ratios hold on a loaded machine. For scale,
the explicit attention matrix that the column means would otherwise need is ``tokens^2`` floats per head and cell.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(num_genes: int, cells: int, threads: int):
    import torch

    from modeling_scbert import ScBertConfig, ScBertForSequenceClassification

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ScBertForSequenceClassification(ScBertConfig(num_genes=num_genes, num_labels=10)).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 6, (cells, num_genes + 1), generator=generator)
    ids[torch.rand(ids.shape, generator=generator) > 0.1] = 0
    ids[:, -1] = 0
    return model, ids


def interleaved(num_genes: int, cells: int, threads: int) -> dict:
    """Seconds per cell of the forward pass and of gene_attention (last and first layer), alternated cell by cell in
    one process, so that load from other processes hits all three alike; medians over the cells."""
    import statistics

    import torch

    from modeling_scbert import gene_attention

    model, ids = _setup(num_genes, cells, threads)
    runs = {
        "forward": lambda cell: model(cell).logits,
        "attention_last": lambda cell: gene_attention(model, cell, layer=-1),
        "attention_first": lambda cell: gene_attention(model, cell, layer=0),
    }
    times = {name: [] for name in runs}
    with torch.inference_mode():
        model(ids[:1])
    for i in range(cells):
        for name, run in runs.items():
            start = time.perf_counter()
            with torch.inference_mode():
                run(ids[i : i + 1])
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"seconds_per_cell": medians, "all": times}


def measure(what: str, num_genes: int, cells: int, threads: int) -> dict:
    import torch

    from modeling_scbert import gene_attention

    model, ids = _setup(num_genes, cells, threads)
    if what == "forward":

        def run(batch):
            with torch.inference_mode():
                return model(batch).logits
    else:
        layer = -1 if what == "attention_last" else 0

        def run(batch):
            return gene_attention(model, batch, layer=layer)

    run(ids[:1])  # warm-up
    baseline = _rss_mb()
    start = time.perf_counter()
    run(ids)
    seconds = time.perf_counter() - start
    peak = _peak_rss_mb()
    return {
        "what": what,
        "cells": cells,
        "seconds_per_cell": seconds / cells,
        "peak_rss_mb": peak,
        "working_memory_mb": max(peak - baseline, 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genes", type=int, default=16906)
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "interleaved":
        print(json.dumps(interleaved(args.genes, args.cells, args.threads)))
        return
    if args.child:
        print(json.dumps(measure(args.child, args.genes, args.cells, args.threads)))
        return

    results = []
    for what in ("forward", "attention_last", "attention_first"):
        command = [sys.executable, __file__, "--child", what, "--genes", str(args.genes), "--cells", str(args.cells)]
        command += ["--threads", str(args.threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{what:16s} {result['seconds_per_cell']:7.2f} s/cell  peak RSS {result['peak_rss_mb']:7.0f} MB  "
            f"working memory {result['working_memory_mb']:6.0f} MB ({result['cells']} cells)",
            flush=True,
        )
    command = [
        sys.executable,
        __file__,
        "--child",
        "interleaved",
        "--genes",
        str(args.genes),
        "--cells",
        str(args.cells),
    ]
    command += ["--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    alternated = json.loads(output.strip().splitlines()[-1])
    medians = alternated["seconds_per_cell"]
    print(
        "alternated cell by cell in one process (median s/cell): "
        + ", ".join(f"{name} {value:.2f}" for name, value in medians.items())
        + f"; attention_last / forward = {medians['attention_last'] / medians['forward']:.2f}"
    )
    tokens = args.genes + 1
    explicit_gb = tokens * tokens * 4 / 1e9
    print(
        f"explicit attention matrix: {explicit_gb:.2f} GB per head per cell (fp32), x10 heads = {10 * explicit_gb:.1f} GB"
    )
    if args.json:
        summary = {
            "genes": args.genes,
            "threads": args.threads,
            "machine": platform.processor() or platform.machine(),
            "explicit_matrix_gb_per_head": explicit_gb,
            "results": results,
            "alternated": alternated,
        }
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
