"""Speed and memory of the scBERT forward and training step, against the performer-pytorch reference.

Every configuration runs in its own process, so peak resident memory is that configuration's alone. Both models are
built with the published shapes (7 tokens, width 200, 6 layers, 10 heads of 64, 266 random features, 16,906 genes +
1), in fp32, with the default allocator. The reference is ``performer-pytorch`` 1.1.4 (no rotary or local attention).

Usage::

    python benchmarks/bench_model.py            # full size, about 10 minutes on 2 cores
    python benchmarks/bench_model.py --quick    # 4,000 genes, fewer runs, under 3 minutes
    python benchmarks/bench_model.py --json benchmarks/results/model.json

Reported per configuration: seconds per call, cells per second, peak RSS of the process, and working memory (peak RSS
minus the RSS after the model and inputs were built), per cell. The floor is the forward's matrix-multiply FLOPs
divided by the fp32 matrix-multiply rate measured on this machine in the same run.
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

HIDDEN, DEPTH, HEADS, HEAD_DIM, FEATURES, VOCAB, FF = 200, 6, 10, 64, 266, 7, 800


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forward_flops(num_genes: int) -> float:
    """Matrix-multiply FLOPs of one cell's forward through the encoder (both implementations compute the same)."""
    n = num_genes + 1
    inner = HEADS * HEAD_DIM
    per_layer = (
        2 * n * HIDDEN * inner * 3  # q, k, v
        + 2 * 2 * n * HEADS * HEAD_DIM * FEATURES  # random-feature maps of q and k
        + 2 * 2 * n * HEADS * FEATURES * HEAD_DIM  # phi(K)^T V and phi(Q) (phi(K)^T V)
        + 2 * n * inner * HIDDEN  # attention output
        + 2 * 2 * n * HIDDEN * FF  # feed-forward
    )
    return DEPTH * per_layer + 2 * n * HIDDEN * VOCAB


def measure_matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def build_model(impl: str, num_genes: int):
    import torch

    torch.manual_seed(0)
    if impl == "reference":
        from performer_pytorch import PerformerLM

        return PerformerLM(
            num_tokens=VOCAB,
            max_seq_len=num_genes + 1,
            dim=HIDDEN,
            depth=DEPTH,
            heads=HEADS,
            dim_head=HEAD_DIM,
            nb_features=FEATURES,
            rotary_position_emb=False,
            attn_out_bias=True,
        )
    from modeling_scbert import ScBertConfig, ScBertForMaskedLM

    return ScBertForMaskedLM(ScBertConfig(num_genes=num_genes))


def run_worker(spec: dict) -> dict:
    import torch

    impl, mode, batch, num_genes = spec["impl"], spec["mode"], spec["batch"], spec["num_genes"]
    repeats = spec.get("repeats", 1)
    model = build_model(impl, num_genes)
    ids = torch.randint(0, 6, (batch, num_genes + 1))
    warm = ids[:1]
    if mode == "infer":
        model.eval()

        def call(x):
            with torch.inference_mode():
                out = model(x)
            return out

    else:
        model.train()
        if mode == "train_checkpointing":
            model.gradient_checkpointing_enable()

        def call(x):
            out = model(x)
            logits = out if isinstance(out, torch.Tensor) else out.logits
            logits.float().logsumexp(-1).mean().backward()
            model.zero_grad(set_to_none=True)

    baseline = _rss_mb()
    call(warm)  # first-call overheads
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(ids)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    peak = _peak_rss_mb()
    return {
        **spec,
        "seconds": seconds,
        "cells_per_second": batch / seconds,
        "peak_rss_mb": peak,
        "working_mb": peak - baseline,
        "working_mb_per_cell": (peak - baseline) / batch,
        "threads": torch.get_num_threads(),
    }


def run_in_subprocess(spec: dict) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def plan(quick: bool, training_only: bool = False) -> tuple[int, list[dict]]:
    num_genes = 4000 if quick else 16906
    batches = [1, 8] if quick else [1, 4, 8]
    specs = []
    for impl in ("ours", "reference"):
        for batch in batches:
            specs.append({"impl": impl, "mode": "infer", "batch": batch, "repeats": 2 if batch == 1 else 1})
        specs.append({"impl": impl, "mode": "train", "batch": 1, "repeats": 1})
    specs.append({"impl": "ours", "mode": "train_checkpointing", "batch": 1, "repeats": 1})
    if training_only:
        specs = [spec for spec in specs if spec["mode"] != "infer"]
    for spec in specs:
        spec["num_genes"] = num_genes
    return num_genes, specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4,000 genes and fewer runs (under 3 minutes)")
    parser.add_argument("--training-only", action="store_true", help="only the training steps (about 2 minutes)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    started = time.perf_counter()
    num_genes, specs = plan(args.quick, args.training_only)
    gflops = measure_matmul_gflops()
    results = []
    for spec in specs:
        result = run_in_subprocess(spec)
        results.append(result)
        print(
            f"{result['impl']:>9} {result['mode']:<20} batch {result['batch']}: {result['seconds']:8.2f} s "
            f"{result['cells_per_second']:7.3f} cells/s  peak {result['peak_rss_mb']:8.0f} MB  "
            f"working/cell {result['working_mb_per_cell']:8.0f} MB",
            flush=True,
        )

    def find(impl, mode, batch):
        return next(r for r in results if (r["impl"], r["mode"], r["batch"]) == (impl, mode, batch))

    flops = forward_flops(num_genes)
    floor = flops / (gflops * 1e9)
    ratios = {}
    for batch in sorted({r["batch"] for r in results if r["mode"] == "infer"}):
        ours, ref = find("ours", "infer", batch), find("reference", "infer", batch)
        ratios[f"infer_b{batch}_speedup"] = ours["cells_per_second"] / ref["cells_per_second"]
        ratios[f"infer_b{batch}_memory_per_cell_ratio"] = ours["working_mb_per_cell"] / ref["working_mb_per_cell"]
        ratios[f"infer_b{batch}_seconds_per_cell_over_floor"] = 1 / ours["cells_per_second"] / floor
    ref_train = find("reference", "train", 1)
    for mode in ("train", "train_checkpointing"):
        ours = find("ours", mode, 1)
        ratios[f"{mode}_speedup"] = ref_train["seconds"] / ours["seconds"]
        ratios[f"{mode}_memory_ratio"] = ours["working_mb"] / ref_train["working_mb"]

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{results[0]['threads']}; fp32 matmul {gflops:.0f} GFLOP/s"
    )
    print(f"sequence length {num_genes + 1}; forward {flops / 1e9:.0f} GFLOP per cell; floor {floor:.2f} s per cell")
    for name, value in ratios.items():
        print(f"  {name:<45} {value:6.2f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        payload = {
            "num_genes": num_genes,
            "matmul_gflops": gflops,
            "forward_gflop_per_cell": flops / 1e9,
            "floor_seconds_per_cell": floor,
            "results": results,
            "ratios": ratios,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        }
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)


if __name__ == "__main__":
    main()
