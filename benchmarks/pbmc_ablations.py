"""Ablations of the quick demo's recipe (``examples/demo_pbmc.py``) on pbmc68k_reduced, and token baselines.

Runs the demo (its ``main``, with every option of it: ``--seeds``, ``--quick``, ``--output-dir``, ``--jobs``) with
its recipe changed; the change is recorded in ``metrics.json`` under ``recipe``:

- ``--model-config JSON``: merged into the model config (e.g. ``'{"classifier_input_dropout": 0.1}'``);
- ``--finetune-args JSON``: merged into the fine-tuning arguments (e.g. ``'{"num_train_epochs": 10}'``);
- ``--class-weighting none|balanced``; ``--ensemble-size N`` (members per seed);
- ``--token-baselines``: also logistic regression (C=1) on the scBERT tokens themselves, encoded three ways: the bin
  as a number (``linear``); one indicator per bin (``one_hot``: a free response per gene and bin, as a lookup table
  gives); one indicator per "bin >= k" (``cumulative``: the same functions, but each indicator learns from every
  cell at or above its bin). Written to ``metrics.json`` under ``token_baselines`` (mean over the seeds) and to
  each seed's figures.

    python benchmarks/pbmc_ablations.py --seeds 0 1 2 --token-baselines
    python benchmarks/pbmc_ablations.py --class-weighting balanced --output-dir ablation_weighted
    python benchmarks/pbmc_ablations.py --model-config '{"classifier_input_dropout": 0.0}' --ensemble-size 1

Results of these runs are in docs/training.md ("The quick demo").
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def token_baselines(train, test, num_positions: int) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 of logistic regression on the tokens of ``train`` / ``test`` (datasets from
    ``to_dataset``), encoded ``linear``, ``one_hot`` and ``cumulative``."""
    from demo_pbmc import scores
    from sklearn.linear_model import LogisticRegression

    def bins(split) -> np.ndarray:
        matrix = np.zeros((len(split), num_positions), dtype=np.float32)
        for row, (genes, values) in enumerate(zip(split["gene_indices"], split["bins"])):
            matrix[row, genes] = values
        return matrix

    x_train, x_test = bins(train), bins(test)
    levels = range(1, int(max(x_train.max(), x_test.max())) + 1)
    encodings = {
        "linear": lambda m: m,
        "one_hot": lambda m: np.concatenate([m == k for k in levels], axis=1),
        "cumulative": lambda m: np.concatenate([m >= k for k in levels], axis=1),
    }
    results = {}
    for name, encode in encodings.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence chatter
            classifier = LogisticRegression(C=1.0, max_iter=2000).fit(encode(x_train), train["label"])
        results[name] = scores(test["label"], classifier.predict(encode(x_test)))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-config", type=json.loads, default={}, help="JSON merged into the model config")
    parser.add_argument("--finetune-args", type=json.loads, default={}, help="JSON merged into the fine-tuning args")
    parser.add_argument("--class-weighting", choices=("none", "balanced"))
    parser.add_argument("--ensemble-size", type=int, help="members per seed whose probabilities are averaged")
    parser.add_argument("--token-baselines", action="store_true", help="logistic regression on the tokens too")
    parser.add_argument("--output-dir", default="demo_output", help="where results go (replaced)")
    args, demo_options = parser.parse_known_args(argv)
    if args.ensemble_size is not None and args.ensemble_size < 1:
        parser.error("--ensemble-size must be at least 1")

    import demo_pbmc

    from tokenization.atomic_files import write_text_atomically

    base = demo_pbmc.RECIPE
    recipe = {
        "model_config": {**base["model_config"], **args.model_config},
        "pretrain": base["pretrain"],
        "finetune": {**base["finetune"], **args.finetune_args},
        "class_weighting": args.class_weighting or base["class_weighting"],
        "ensemble_size": args.ensemble_size or base["ensemble_size"],
    }

    def add_token_baselines(result, train, test, tokenizer) -> None:
        result["token_baselines"] = token_baselines(train, test, tokenizer.num_genes + 1)
        for name, figures in result["token_baselines"].items():
            print(
                f"  logistic regression on the tokens ({name}): accuracy {figures['accuracy']:.3f}, macro-F1 "
                f"{figures['macro_f1']:.3f}"
            )

    seeds: list[dict] = []

    def on_seed(result, train, test, tokenizer) -> None:
        if args.token_baselines:
            add_token_baselines(result, train, test, tokenizer)
        seeds.append(result)

    metrics = demo_pbmc.main([*demo_options, "--output-dir", args.output_dir], recipe=recipe, on_seed=on_seed)
    if args.token_baselines:
        names = seeds[0]["token_baselines"]
        metrics["token_baselines"] = {
            name: {key: float(np.mean([r["token_baselines"][name][key] for r in seeds])) for key in names[name]}
            for name in names
        }
        write_text_atomically(Path(args.output_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    main()
