"""Time this checkout's default (CPU: per-cell) inference against another checkout's, alternating in one process.

On a shared machine, separate runs see different loads; alternating the two models call by call, on the same weights
and input, makes the comparison fair even when absolute times are not. The other checkout is loaded from its files
(``git archive main | tar -x -C /tmp/before``), without registering its Auto classes.

Usage::

    python benchmarks/compare_cpu_paths.py --before /tmp/before --num-genes 4000 --batches 1 4 --calls 4
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="root of the other checkout (holds modeling_scbert/)")
    parser.add_argument("--num-genes", type=int, default=4000)
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--calls", type=int, default=4, help="timed calls of each model per batch size")
    args = parser.parse_args()

    import torch

    package = types.ModuleType("scbert_before")
    package.__path__ = [os.path.join(os.path.abspath(args.before), "modeling_scbert")]
    sys.modules["scbert_before"] = package
    before = importlib.import_module("scbert_before.modeling_scbert")
    after = importlib.import_module("modeling_scbert.modeling_scbert")

    torch.manual_seed(0)
    model_after = after.ScBertForMaskedLM(after.ScBertConfig(num_genes=args.num_genes)).eval()
    model_before = before.ScBertForMaskedLM(before.ScBertConfig(num_genes=args.num_genes)).eval()
    model_before.load_state_dict(model_after.state_dict())
    models = {"before": model_before, "after": model_after}
    for batch in args.batches:
        ids = torch.randint(0, 6, (batch, args.num_genes + 1), generator=torch.Generator().manual_seed(1))
        times = {"before": [], "after": []}
        outputs = {}
        for call in range(args.calls):
            for name in ("before", "after") if call % 2 == 0 else ("after", "before"):
                start = time.perf_counter()
                with torch.inference_mode():
                    outputs[name] = models[name](ids).logits
                times[name].append(time.perf_counter() - start)
        best = {name: min(values) for name, values in times.items()}
        print(
            f"genes {args.num_genes} batch {batch}: "
            + ", ".join(
                f"{name} {' '.join(f'{t:.2f}' for t in times[name])} s (best {best[name]:.2f})" for name in times
            )
            + f"; after/before {best['after'] / best['before']:.3f}; "
            f"max |difference| {(outputs['after'] - outputs['before']).abs().max().item():.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
