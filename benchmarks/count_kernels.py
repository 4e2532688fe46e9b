"""Count the operators of one forward (or training step) that would each launch a kernel on a GPU.

On a GPU every operator is a kernel launch of several microseconds, so the number of operators bounds the speed of a
model whose operators are small. This script counts them on the CPU with the torch profiler: it records one call and
counts the innermost ``aten::`` operators, leaving out those that only make views or allocate (``view``,
``transpose``, ``empty``, ...), since those launch nothing. An operator that calls other counted operators is not
counted itself (``aten::linear`` is counted once, as its ``aten::addmm``). The counts are the same on any machine:
they depend on the shapes and the code, not on the speed.

Both models are built with the published shapes (7 tokens, width 200, 6 layers, 10 heads of 64, 266 random features,
16,906 genes + 1) in fp32, in eval mode; the reference is ``performer-pytorch`` 1.1.4, as in ``bench_model.py``.
``batched`` is counted as it runs on a GPU (its chunk sizes do not depend on the device).

Usage::

    python benchmarks/count_kernels.py                        # forward at batch 1 and 8, all three; about 5 minutes
    python benchmarks/count_kernels.py --modes infer train --batches 1 --num-genes 4000
    python benchmarks/count_kernels.py --json benchmarks/results/kernels.json

Each configuration runs in its own process (``--worker``), so a large one does not hold memory for the next.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_model import build_model  # noqa: E402

IMPLEMENTATIONS = ("per_cell", "batched", "reference")

# Operators that only make views, change metadata, allocate, or do nothing for real (non-conjugate) tensors of the
# right dtype: no kernel is launched for them. A CPU matrix product calls ``resolve_conj`` on its inputs; leaving it
# out makes the product itself the innermost operator, counted once.
NO_KERNEL = {
    "alias",
    "as_strided",
    "chunk",
    "contiguous",
    "detach",
    "detach_",
    "dropout",
    "empty",
    "empty_like",
    "empty_strided",
    "expand",
    "expand_as",
    "feature_dropout",
    "flatten",
    "_has_compatible_shallow_copy_type",
    "is_same_size",
    "lift_fresh",
    "narrow",
    "new_empty",
    "new_empty_strided",
    "permute",
    "promote_types",
    "reshape",
    "_reshape_alias",
    "resize_",
    "resolve_conj",
    "resolve_neg",
    "result_type",
    "select",
    "slice",
    "split",
    "split_with_sizes",
    "squeeze",
    "t",
    "to",
    "_to_copy",
    "transpose",
    "type_as",
    "unbind",
    "unflatten",
    "_unsafe_view",
    "unsqueeze",
    "view",
    "view_as",
}


def _launches(name: str) -> bool:
    return name.startswith("aten::") and name[len("aten::") :] not in NO_KERNEL


def count_kernel_operators(events) -> Counter:
    """Histogram of the innermost operators that launch a kernel, from a profiler's ``events()``."""

    def counted_below(event) -> bool:
        return any(_launches(child.name) or counted_below(child) for child in event.cpu_children)

    return Counter(event.name for event in events if _launches(event.name) and not counted_below(event))


def run_worker(spec: dict) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    impl, mode, batch, num_genes = spec["impl"], spec["mode"], spec["batch"], spec["num_genes"]
    model = build_model("reference" if impl == "reference" else "ours", num_genes)
    if impl != "reference":
        model.config.attention_schedule = impl
    ids = torch.randint(0, 6, (batch, num_genes + 1), generator=torch.Generator().manual_seed(0))

    def call(inputs):
        if mode == "infer":
            model.eval()
            with torch.inference_mode():
                model(inputs)
        else:
            model.train()
            out = model(inputs)
            logits = out if isinstance(out, torch.Tensor) else out.logits
            logits.logsumexp(-1).mean().backward()

    call(ids[:1])  # first-call work (lazy initialisation) is not part of the count
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call(ids)
    histogram = count_kernel_operators(prof.events())
    return {
        **spec,
        "kernels": sum(histogram.values()),
        "kernels_per_cell": sum(histogram.values()) / batch,
        "seconds": time.perf_counter() - started,
        "top": dict(histogram.most_common(12)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--num-genes", type=int, default=16906, help="panel size (default: the published 16,906)")
    parser.add_argument("--verbose", action="store_true", help="also print the most frequent operators")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    results = []
    print(f"sequence length {args.num_genes + 1}; operators that would each launch a kernel, one call")
    for mode in args.modes:
        for impl in args.impls:
            for batch in args.batches:
                spec = {"impl": impl, "mode": mode, "batch": batch, "num_genes": args.num_genes}
                process = subprocess.run(
                    [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True
                )
                if process.returncode != 0:
                    raise RuntimeError(f"worker {spec} failed:\n{process.stderr[-4000:]}")
                result = json.loads(process.stdout.strip().splitlines()[-1])
                results.append(result)
                print(
                    f"{impl:>9} {mode:<5} batch {batch:>3}: {result['kernels']:>8,} kernels "
                    f"({result['kernels_per_cell']:>9,.1f} per cell)",
                    flush=True,
                )
                if args.verbose:
                    print("    " + ", ".join(f"{name[6:]} {n}" for name, n in result["top"].items()))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(results, handle, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
