"""Which new-model training settings collapse to the majority class on the Kang 2018 PBMCs, seed by seed.

Fine-tunes the compact scBERT of issue 12 (width 64, one layer, two heads of 16, feed-forward 128; the package's
``NEW_MODEL_DEFAULTS``) from scratch on the control cells' 2,000 highly variable genes, with a plain loop that does
what the stock ``Trainer`` does by default (AdamW without weight decay, batch 8, gradient clipping at 1.0, cosine
schedule, no feature redraw), so one setting can be run for many seeds quickly. For each seed it prints the held-out
(10% of each control type) and stimulated-cell accuracy / macro-F1 / megakaryocyte F1, and how many units of each
hidden layer of the head's MLP are still alive (positive for at least one of 256 held-out cells): the runs that fail
have lost most of them.

Run: ``python benchmarks/kang_collapse.py --seeds 0 1 2 --warmup 0.1 [--epochs 1] [--config '{"initializer_range":
0.02}'] [--learning-rate 1e-3] [--trace-steps 0 10 30 74 200]``; ``--trace-steps`` also counts the live units at those
steps. One epoch takes about 1-2 minutes per seed on one core (3-6 on a loaded machine). Results: docs/training.md
("Seeds"); the real command over many seeds is ``benchmarks/kang_seeds.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "examples")]

from demo_kang import COMPACT, LABEL_KEY, N_TOP_GENES, select_genes  # noqa: E402

from modeling_scbert import ScBertConfig, ScBertForSequenceClassification  # noqa: E402
from modeling_scbert.public_data import load_kang2018  # noqa: E402
from modeling_scbert.training.model_setup import NEW_MODEL_DEFAULTS  # noqa: E402
from tokenization import ScBertTokenizer  # noqa: E402


def tokens(cache: Path):
    if cache.is_file():
        return torch.load(cache)
    adata = load_kang2018(drop_unlabelled=True)
    reference = adata[adata.obs["condition"] == "control"].copy()
    query = adata[adata.obs["condition"] == "stimulated"].copy()
    genes = select_genes(reference, n_top_genes=N_TOP_GENES)
    tokenizer = ScBertTokenizer(list(genes))
    classes = list(reference.obs[LABEL_KEY].cat.categories)
    data = {"classes": classes}
    for name, cells in (("reference", reference[:, genes]), ("query", query[:, genes])):
        labels = torch.tensor([classes.index(c) for c in cells.obs[LABEL_KEY].astype(str)])
        data[name] = (tokenizer(cells, return_tensors="pt")["input_ids"].to(torch.uint8), labels)
    torch.save(data, cache)
    return data


def run(data, *, seed: int, args) -> dict:
    inputs, labels = data["reference"]
    num_labels = len(data["classes"])
    rng = np.random.default_rng(0)  # the same held-out cells for every seed
    held_out = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels.numpy() == c))[: max(1, round(0.1 * int((labels == c).sum())))]
            for c in range(num_labels)
        ]
    )
    train = np.setdiff1d(np.arange(len(labels)), held_out)
    torch.manual_seed(seed)
    config = ScBertConfig(
        num_genes=inputs.shape[1] - 1,
        num_labels=num_labels,
        **{**NEW_MODEL_DEFAULTS, **COMPACT, **json.loads(args.config)},
    )
    model = ScBertForSequenceClassification(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    total = int(math.ceil(len(train) / 8) * args.epochs)
    warm = int(args.warmup * total)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    generator = torch.Generator().manual_seed(seed)
    probe = inputs[held_out[:256]].long()

    def alive_units() -> list[int]:
        # Units of each hidden layer of the head that are positive for at least one of 256 held-out cells.
        counts = []
        hooks = [
            layer.register_forward_hook(lambda module, given, out: counts.append(int((out > 0).any(0).sum())))
            for layer in model.classifier.hidden_layers
        ]
        model.eval()
        with torch.no_grad():
            model(input_ids=probe)
        model.train()
        for hook in hooks:
            hook.remove()
        return counts

    trace = {}
    model.train()
    step = 0
    while step < total:
        for batch in torch.randperm(len(train), generator=generator).split(8):
            if step == total:
                break
            if step in args.trace_steps:
                trace[step] = alive_units()
            index = train[batch.numpy()]
            model(input_ids=inputs[index].long(), labels=labels[index]).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad()
            step += 1

    alive = alive_units()
    model.eval()

    def scores(x, y) -> tuple[float, float, float]:
        with torch.no_grad():
            predicted = torch.cat([model(input_ids=b.long()).logits.argmax(1) for b in x.split(64)]).numpy()
        mk = data["classes"].index("Megakaryocytes")
        return (
            accuracy_score(y, predicted),
            f1_score(y, predicted, average="macro", labels=range(num_labels), zero_division=0),
            f1_score(y, predicted, labels=[mk], average=None, zero_division=0)[0],
        )

    return {
        "seed": seed,
        "held_out": scores(inputs[held_out], labels[held_out].numpy()),
        "query": scores(*data["query"]),
        "alive": alive,
        "trace": trace,
        "sizes": [layer.out_features for layer in model.classifier.hidden_layers],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.0, help="fraction of the steps (0.1: the CLI default)")
    parser.add_argument("--config", default="{}", help="JSON of config fields to change")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--trace-steps", type=int, nargs="*", default=[], help="steps at which to count the head's live units too"
    )
    parser.add_argument("--cache", default="kang_tokens.pt", help="tokenized cells, made once")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = tokens(Path(args.cache))
    for seed in args.seeds:
        started = time.perf_counter()
        result = run(data, seed=seed, args=args)
        held_out, query = result["held_out"], result["query"]
        print(
            f"seed {seed}: held-out accuracy {held_out[0]:.3f} macro-F1 {held_out[1]:.3f} | stimulated accuracy "
            f"{query[0]:.3f} macro-F1 {query[1]:.3f} megakaryocyte F1 {query[2]:.2f} | alive head units "
            f"{result['alive']} of {result['sizes']} | {time.perf_counter() - started:.0f} s"
            + (f" | live units by step {result['trace']}" if result["trace"] else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
