"""Kang 2018 reference-to-query annotation over several seeds, both directions, and the ablations behind the defaults.

Each configuration is one run of ``examples/demo_kang.py`` (its ``main``) with some options changed; the results
(mean over the seeds, each seed, per-class F1, logistic regression on the same genes) are collected into
``--output`` (JSON) and printed as the Markdown table of ``docs/training.md``.

    python benchmarks/bench_kang.py                                   # control -> stimulated and back, seeds 0-2
    python benchmarks/bench_kang.py --configs forward --seeds 0      # one configuration, one seed
    python benchmarks/bench_kang.py --configs forward-weighted forward-pretrained   # the ablations

Each run trains one model per seed (side by side in worker processes); at 4 epochs on the 2-core CPU a seed takes
about 3-4 minutes when the machine is quiet, several times that when it is shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

CONFIGS = {
    # What `make demo` runs.
    "forward": [],
    "reverse": ["--reverse"],
    # Ablations: the class-weighted loss; masked pretraining on every cell first.
    "forward-weighted": ["--class-weighting", "balanced"],
    "forward-pretrained": ["--pretrain-epochs", "2"],
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["forward", "reverse"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="benchmarks/results_kang.json", help="where the results are written")
    parser.add_argument("--data-dir", help="local copies of the three files (see demo_kang.py)")
    parser.add_argument("--quick", action="store_true", help="a few training steps only (smoke run)")
    args, extra = parser.parse_known_args(argv)

    import demo_kang

    results = {}
    for name in args.configs:
        with tempfile.TemporaryDirectory(prefix=f"bench-kang-{name}-") as scratch:
            options = ["--seeds", *map(str, args.seeds), "--output-dir", scratch, *CONFIGS[name], *extra]
            if args.data_dir:
                options += ["--data-dir", args.data_dir]
            if args.quick:
                options.append("--quick")
            metrics = demo_kang.main(options)
        results[name] = metrics
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")  # after each, so a long run keeps its part

    print(
        "\n| configuration | direction | scBERT accuracy | scBERT macro-F1 | megakaryocyte F1 | logistic regression "
        "accuracy / macro-F1 / megakaryocyte F1 |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, m in results.items():
        seeds = m["per_seed"]
        spread = " ".join(f"{r['accuracy']:.3f}/{r['macro_f1']:.3f}" for r in seeds)
        print(
            f"| {name} | {m['direction']} | {m['accuracy']:.3f} | {m['macro_f1']:.3f} | "
            f"{m['per_class_f1'].get('Megakaryocytes', float('nan')):.3f} | {m['baseline_accuracy']:.3f} / "
            f"{m['baseline_macro_f1']:.3f} / {m['baseline_per_class_f1'].get('Megakaryocytes', float('nan')):.3f} |"
            f" <!-- per seed {spread} -->"
        )
    return results


if __name__ == "__main__":
    main()
