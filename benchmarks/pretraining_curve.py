"""A pretraining run's loss curve, from its ``trainer_state.json``: a PNG and the numbers behind it.

Run::

    python benchmarks/pretraining_curve.py backbone/ --output docs/images/backbone_pretraining_loss.png \\
        --reference "each cell's own bin histogram=0.706" --title "..."

Prints, per epoch, the mean training loss of the logged steps and the evaluation loss (masked-expression
cross-entropy on held-out cells, when the run had them), and writes them with the logged points as JSON beside the
PNG (``.json``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def curve(state: dict) -> dict:
    history = state["log_history"]
    train = [(entry["epoch"], entry["loss"]) for entry in history if "loss" in entry]
    evaluation = [(entry["epoch"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]
    per_epoch = {}
    for epoch, loss in train:
        per_epoch.setdefault(max(1, math.ceil(epoch)), []).append(loss)
    return {
        "train": train,
        "eval": evaluation,
        "train_mean_per_epoch": {epoch: sum(values) / len(values) for epoch, values in sorted(per_epoch.items())},
        "global_step": state.get("global_step"),
        "train_runtime": next((entry["train_runtime"] for entry in history if "train_runtime" in entry), None),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="the folder with trainer_state.json")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument(
        "--reference",
        nargs="*",
        default=[],
        metavar="LABEL=LOSS",
        help="horizontal lines, e.g. a trivial predictor's loss",
    )
    parser.add_argument("--title", default="Masked-expression pretraining")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = curve(json.loads((args.model_dir / "trainer_state.json").read_text()))
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(*zip(*numbers["train"]), lw=0.8, label="training loss (logged every 100 steps)")
    if numbers["eval"]:
        axis.plot(*zip(*numbers["eval"]), "o-", label="held-out loss (2% of the cells)")
    for item in args.reference:
        label, value = item.rsplit("=", 1)
        axis.axhline(float(value), ls="--", lw=0.8, color="gray")
        axis.annotate(f"{label} ({float(value):.3f})", (0, float(value)), va="bottom", fontsize=8, color="dimgray")
    axis.set_xlabel("epoch")
    axis.set_ylabel("masked-expression cross-entropy")
    axis.set_title(args.title, fontsize=10)
    axis.legend()
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=110)
    args.output.with_suffix(".json").write_text(json.dumps(numbers, indent=1) + "\n")
    for epoch, loss in numbers["train_mean_per_epoch"].items():
        print(f"epoch {epoch}: training loss {loss:.4f}")
    for epoch, loss in numbers["eval"]:
        print(f"epoch {epoch:g}: held-out loss {loss:.4f}")
    print(f"{numbers['global_step']} steps, {numbers['train_runtime']} s")


if __name__ == "__main__":
    main()
