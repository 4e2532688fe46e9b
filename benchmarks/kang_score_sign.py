"""Which side of zero a fine-tuned conv head puts expressed genes on, and how much of the cells it passes on.

For each saved model folder: the mean of the shared per-gene projection (``classifier.token_projection``, before the
score activation) over expressed and over unexpressed genes, the share of (cell, gene) pairs below zero, the spread
of the per-gene scores (after the activation) between cells, and the live units of the head's MLP, on 256 cells of
``--cells``. A collapsed run of the README recipe had expressed genes below zero, where a leaky ReLU passes 1% of the
signal (docs/training.md, "Seeds").

Run: ``python benchmarks/kang_score_sign.py --cells ctrl_hvg.h5ad MODEL [MODEL ...]``.
"""

from __future__ import annotations

import argparse

import anndata
import torch

from modeling_scbert import ScBertForSequenceClassification
from tokenization import ScBertTokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", required=True, help=".h5ad of cells the models can read")
    parser.add_argument("--n-cells", type=int, default=256)
    parser.add_argument("models", nargs="+")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cells = anndata.read_h5ad(args.cells)
    chosen = torch.randperm(cells.n_obs, generator=torch.Generator().manual_seed(0))[: args.n_cells].sort().values
    cells = cells[chosen.numpy()].copy()
    for folder in args.models:
        model = ScBertForSequenceClassification.from_pretrained(folder).eval()
        ids = ScBertTokenizer.from_pretrained(folder)(cells, return_tensors="pt")["input_ids"].long()
        head, seen = model.classifier, {}
        hooks = [
            head.token_projection.register_forward_hook(
                lambda m, a, out, seen=seen: seen.__setitem__("z", out.squeeze(-1))
            )
        ]
        hooks += [
            layer.register_forward_hook(lambda m, a, out, k=k, seen=seen: seen.__setitem__(k, out))
            for k, layer in enumerate(head.hidden_layers)
        ]
        with torch.no_grad():
            model(input_ids=ids)
        for hook in hooks:
            hook.remove()
        z, expressed = seen["z"], ids != 0
        scores = head.score_activation(z)
        live = [f"{int((seen[k] > 0).any(0).sum())} of {seen[k].shape[1]}" for k in range(len(head.hidden_layers))]
        print(
            f"{folder}: projection expressed {z[expressed].mean():+.2f}, unexpressed {z[~expressed].mean():+.2f}; "
            f"below zero {(z < 0).float().mean():.0%} of (cell, gene) pairs, {(z < 0).all(0).float().mean():.0%} of "
            f"genes in every cell; score spread between cells {scores.std(0).mean():.3f}; live MLP units "
            f"{', '.join(live)}"
        )


if __name__ == "__main__":
    main()
