"""Speed and memory of the scBERT forward and training step, against the performer-pytorch reference.

Every configuration runs in its own process, so peak resident memory is that configuration's alone. Both models are
built with the published shapes (7 tokens, width 200, 6 layers, 10 heads of 64, 266 random features, 16,906 genes +
1), in fp32, with the default allocator. The reference is ``performer-pytorch`` 1.1.4 (no rotary or local attention).

Usage::

    python benchmarks/bench_model.py            # full size, about 10 minutes on 2 cores
    python benchmarks/bench_model.py --quick    # 4,000 genes, fewer runs, under 3 minutes
    python benchmarks/bench_model.py --json benchmarks/results/model.json

On a GPU (one command; installs nothing itself: ``pip install -e ".[test]"`` brings performer-pytorch)::

    python benchmarks/bench_model.py --device cuda --json benchmarks/results/model_cuda.json

The accelerator plan measures inference at batch 1, 8, 32 and 128 and a training step (forward + backward) at the
largest batch that fits, for both attention schedules (``per_cell``, ``batched``) in fp32 and under bf16 autocast,
the batched schedule also under ``torch.compile``, and performer-pytorch at the same shapes; cells/s, peak GPU memory
(``torch.cuda.max_memory_allocated``) and the matrix-multiply floor (the forward's FLOPs at the measured fp32 and
bf16 matmul rates). It stops starting new configurations when ``--time-budget`` (default 420 s) is spent, so it
finishes within 8 minutes. The same code runs on a CPU with small shapes, to check it end to end::

    python benchmarks/bench_model.py --device cpu --plan accelerator --num-genes 300 --batches 1 4 --train-batches 4 2

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


def measure_matmul_tflops(device: str, dtype_name: str, repeats: int = 10) -> float:
    """Matrix-multiply rate on ``device`` (TFLOP/s), the best of ``repeats`` square products (8192 on a GPU)."""
    import torch

    size = 8192 if device.startswith("cuda") else 1024

    dtype = getattr(torch, dtype_name)
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


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

    schedule = impl if impl in ("per_cell", "batched") else None
    return ScBertForMaskedLM(ScBertConfig(num_genes=num_genes, attention_schedule=schedule))


def run_accelerator_worker(spec: dict) -> list[dict]:
    """One implementation, dtype and compilation setting, at several batch sizes, in this process."""
    import contextlib

    import torch

    impl, mode, num_genes, device = spec["impl"], spec["mode"], spec["num_genes"], spec["device"]
    model = build_model(impl, num_genes).to(device)
    autocast = (
        torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
        if spec["dtype"] == "bfloat16"
        else contextlib.nullcontext()
    )
    if mode == "infer":
        model.eval()
    else:
        model.train()
    runner = torch.compile(model, dynamic=False) if spec["compile"] else model

    def call(ids):
        with autocast:
            if mode == "infer":
                with torch.no_grad():
                    return runner(ids)
            out = runner(ids)
            logits = out if isinstance(out, torch.Tensor) else out.logits
            logits.float().logsumexp(-1).mean().backward()
            model.zero_grad(set_to_none=True)

    results = []
    for batch in spec["batches"]:
        ids = torch.randint(0, 6, (batch, num_genes + 1), device=device)
        try:
            started = time.perf_counter()
            call(ids)  # warm-up at this shape (and compilation)
            _synchronize(device)
            warmup = time.perf_counter() - started
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(spec["repeats"] if mode == "infer" else min(spec["repeats"], 2)):
                _synchronize(device)
                start = time.perf_counter()
                call(ids)
                _synchronize(device)
                times.append(time.perf_counter() - start)
        except torch.OutOfMemoryError:
            results.append({**spec, "batch": batch, "status": "out of memory"})
            model.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            continue
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _peak_rss_mb()
        seconds = min(times)
        results.append(
            {
                **spec,
                "batch": batch,
                "status": "ok",
                "seconds": seconds,
                "warmup_seconds": warmup,
                "cells_per_second": batch / seconds,
                "peak_memory_mb": peak,
            }
        )
        if mode == "train":
            break  # the batches are tried largest first: the first that fits is the result
    return results


def accelerator_plan(args) -> list[dict]:
    """Workers of the accelerator plan, most important first (the time budget may cut the tail)."""
    batches, train_batches = args.batches, sorted(args.train_batches, reverse=True)
    common = {"num_genes": args.num_genes, "device": args.device, "repeats": args.repeats}
    specs = []
    for impl, dtype, compiled in [
        ("batched", "float32", False),
        ("reference", "float32", False),
        ("batched", "bfloat16", False),
        ("per_cell", "float32", False),
        ("per_cell", "bfloat16", False),
        ("reference", "bfloat16", False),
    ]:
        specs.append({"impl": impl, "mode": "infer", "dtype": dtype, "compile": compiled, "batches": batches})
    for impl, dtype in [
        ("batched", "float32"),
        ("reference", "float32"),
        ("batched", "bfloat16"),
    ]:
        specs.append({"impl": impl, "mode": "train", "dtype": dtype, "compile": False, "batches": train_batches})
    for dtype in ("bfloat16", "float32"):
        specs.append({"impl": "batched", "mode": "infer", "dtype": dtype, "compile": True, "batches": batches})
    # Last: the per-cell training step is the slowest on a GPU (thousands of launches per cell).
    specs.append({"impl": "per_cell", "mode": "train", "dtype": "float32", "compile": False, "batches": train_batches})
    return [{**common, **spec} for spec in specs]


def run_accelerator_benchmark(args) -> dict:
    """Runs the accelerator plan within ``args.time_budget`` seconds and prints one line per measurement."""
    started = time.perf_counter()
    flops = forward_flops(args.num_genes)
    rates = {dtype: measure_matmul_tflops(args.device, dtype) for dtype in ("float32", "bfloat16")}
    print(f"device {args.device}; sequence length {args.num_genes + 1}; forward {flops / 1e9:.0f} GFLOP per cell")
    for dtype, rate in rates.items():
        print(f"  {dtype} matmul {rate:.3g} TFLOP/s: floor {rate * 1e12 / flops:,.1f} cells/s (inference)")
    results = []
    for spec in accelerator_plan(args):
        remaining = args.time_budget - (time.perf_counter() - started)
        label = (
            f"{spec['impl']:>9} {spec['mode']:<5} {spec['dtype']:<8} {'compiled' if spec['compile'] else 'eager':<8}"
        )
        if remaining < 20:
            print(f"{label} skipped: the time budget is spent", flush=True)
            results.append({**spec, "status": "skipped (time budget)"})
            continue
        try:
            process = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=remaining,
            )
        except subprocess.TimeoutExpired:
            print(f"{label} stopped: the time budget ran out", flush=True)
            results.append({**spec, "status": "stopped (time budget)"})
            continue
        if process.returncode != 0:
            print(f"{label} failed: {process.stderr.strip().splitlines()[-1:]}", flush=True)
            results.append({**spec, "status": "failed", "error": process.stderr[-4000:]})
            continue
        for result in json.loads(process.stdout.strip().splitlines()[-1]):
            results.append(result)
            if result["status"] != "ok":
                print(f"{label} batch {result['batch']:>4}: {result['status']}", flush=True)
                continue
            floor = rates[result["dtype"]] * 1e12 / flops / (1 if result["mode"] == "infer" else 3)
            print(
                f"{label} batch {result['batch']:>4}: {result['cells_per_second']:9.2f} cells/s "
                f"({result['seconds'] * 1e3:8.1f} ms)  peak {result['peak_memory_mb']:9,.0f} MB  "
                f"{floor / result['cells_per_second']:5.1f}x the floor  (first call {result['warmup_seconds']:.1f} s)",
                flush=True,
            )
    print(f"total {time.perf_counter() - started:.0f} s")
    return {
        "num_genes": args.num_genes,
        "forward_gflop_per_cell": flops / 1e9,
        "matmul_tflops": rates,
        "results": results,
    }


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
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--plan", choices=("cpu", "accelerator"), help="what to measure; default: cpu on a CPU, accelerator otherwise"
    )
    parser.add_argument("--num-genes", type=int, default=16906, help="accelerator plan: panel size")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 128], help="accelerator plan: inference")
    parser.add_argument(
        "--train-batches",
        nargs="+",
        type=int,
        default=[256, 128, 64, 32, 16, 8, 4, 2, 1],
        help="accelerator plan: training batches to try, the largest that fits is measured",
    )
    parser.add_argument("--repeats", type=int, default=3, help="accelerator plan: timed calls per batch (best)")
    parser.add_argument("--time-budget", type=float, default=420, help="accelerator plan: seconds before stopping")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(run_accelerator_worker(spec) if "device" in spec else run_worker(spec)))
        return
    if (args.plan or ("cpu" if args.device == "cpu" else "accelerator")) == "accelerator":
        payload = run_accelerator_benchmark(args)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json + ".tmp", "w") as handle:
                json.dump(payload, handle, indent=2)
            os.replace(args.json + ".tmp", args.json)
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
