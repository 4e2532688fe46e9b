"""Which novelty score? The candidates tried for ``tokenization.novelty``, on the models of ``kang_novelty.py``.

For each held-out type's model (one seed, control -> stimulated; run ``benchmarks/kang_novelty.py`` first), it reads
the model's own representations of the reference cells and the query cells and scores every candidate:

- the model's confidence: ``1 - max probability`` and the energy ``-logsumexp(logits)``;
- Mahalanobis distance to the nearest class mean (shared covariance, Ledoit-Wolf shrinkage; Lee et al., NeurIPS 2018)
  in the model's spaces: the mean of the encoder's final encodings (``pooled``), the classifier's first and last
  hidden layers (``hidden 0``, ``hidden 1``), the per-gene scores the conv head reads (reduced to 50 principal
  components); the relative Mahalanobis distance (Ren et al. 2021) and per-class covariances in ``pooled``;
  ten nearest neighbours (cosine, standardised ``pooled``);
- the nearest class profile of ``tokenization.novelty`` over the panel genes (the chosen score), with other
  floors, on the tokens instead of the values, with genes weighed by how much of their variance the classes explain,
  on the 50 / 200 most class-specific genes only, and with each gene's term capped or log-compressed (robust to a
  few shifted genes).

Per candidate: the AUROC of finding the held-out type among the query cells, and the share of known-type query cells
above the 95th percentile of the held-out reference cells (the finetune's 10% split), i.e. what a threshold that
flags 5% of known cells flags under the stimulation.

Run (one thread, a few minutes)::

    OMP_NUM_THREADS=1 python benchmarks/novelty_candidates.py --data-dir kang_data --runs-dir kang_novelty

Results: ``docs/novelty.md`` ("The candidates").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "examples")]

from demo_kang import LABEL_KEY  # noqa: E402
from kang_novelty import TYPES  # noqa: E402

THRESHOLD_QUANTILE = 0.95


def model_features(model_dir: Path, adata) -> dict[str, np.ndarray]:
    """The model's logits and representations of every cell, and the cells' tokens and values."""
    import scipy.sparse as sp
    import torch

    from modeling_scbert.annotation.inference import encoded_batches, load_annotator

    model, tokenizer = load_annotator(model_dir)
    model.eval()
    captured: dict[str, list] = {}
    head = model.classifier
    head.hidden_layers[0].register_forward_pre_hook(lambda m, a: captured.setdefault("gene scores", []).append(a[0]))
    for i, layer in enumerate(head.hidden_layers):
        layer.register_forward_hook(lambda m, a, o, i=i: captured.setdefault(f"hidden {i}", []).append(torch.relu(o)))
    logits, pooled, tokens, values = [], [], [], []
    with torch.inference_mode():
        batches = encoded_batches(
            adata, tokenizer=tokenizer, batch_size=64, chunk_size=2048, progress=False, desc="", encode_kwargs={},
            return_values=True,
        )  # fmt: skip
        for batch in batches:
            output = model(input_ids=batch.input_ids, output_hidden_states=True)
            logits.append(output.logits)
            pooled.append(output.hidden_states[-1].mean(dim=1))
            tokens.append(sp.csr_matrix(batch.input_ids[:, :-1].numpy().astype(np.float32)))
            values.append(batch.values)
    features = {name: torch.cat(blocks).numpy() for name, blocks in captured.items()}
    features.update(logits=torch.cat(logits).numpy(), pooled=torch.cat(pooled).numpy())
    features.update(tokens=sp.vstack(tokens).tocsr(), values=sp.vstack(values).tocsr())
    return features


def mahalanobis(train, labels, classes, query, *, relative=False, per_class=False):
    from sklearn.covariance import LedoitWolf

    means = np.stack([train[labels == c].mean(0) for c in classes])
    if per_class:
        distances = []
        for c, mean in zip(classes, means):
            fit = LedoitWolf().fit(train[labels == c])
            distances.append(
                np.einsum("ij,jk,ik->i", query - mean, fit.precision_, query - mean)
                + np.linalg.slogdet(fit.covariance_)[1]
            )
        return np.min(distances, axis=0)
    centred = train - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf().fit(centred).precision_
    distance = np.min([np.einsum("ij,jk,ik->i", query - m, precision, query - m) for m in means], axis=0)
    if relative:
        background = LedoitWolf().fit(train)
        offset = query - train.mean(0)
        distance = distance - np.einsum("ij,jk,ik->i", offset, background.precision_, offset)
    return distance


def profile_distance(
    train, labels, classes, query, *, floor=1e-3, weight_power=0, top_genes=None, cap=None, log=False
):
    """The nearest class profile of tokenization.novelty, with its variants."""
    train, query = train.toarray(), query.toarray()
    counts = np.array([(labels == c).sum() for c in classes])
    means = np.stack([train[labels == c].mean(0) for c in classes])
    within = sum(n * train[labels == c].var(0) for n, c in zip(counts, classes)) / counts.sum()
    between = (counts[:, None] * (means - train.mean(0)) ** 2).sum(0) / counts.sum()
    explained = between / (between + within + 1e-12)
    weights = explained**weight_power
    if top_genes is not None:
        weights = np.zeros_like(weights)
        weights[np.argsort(-explained)[:top_genes]] = 1.0
    weights = weights / weights.sum()

    def terms(m):
        term = ((query - m) ** 2) / (within + floor)
        if cap is not None:
            term = np.minimum(term, cap)
        return np.log1p(term) if log else term

    return np.min([(terms(m) * weights).sum(1) for m in means], axis=0)


def candidates(ref, query, train_rows, held_rows, labels, classes):
    """name -> (scores of the held-out reference cells, scores of the query cells)."""
    from sklearn.decomposition import PCA

    def both(function, name, **options):
        train = ref[name][train_rows]
        return (
            function(train, labels[train_rows], classes, ref[name][held_rows], **options),
            function(train, labels[train_rows], classes, query[name], **options),
        )

    def confidence(features):
        logits = features["logits"] - features["logits"].max(1, keepdims=True)
        probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return 1 - probabilities.max(1), -np.log(np.exp(logits).sum(1)) - features["logits"].max(1)

    (held_conf, held_energy), (query_conf, query_energy) = (
        confidence({"logits": ref["logits"][held_rows]}),
        confidence(query),
    )
    results = {"1 - max probability": (held_conf, query_conf), "energy": (held_energy, query_energy)}
    for name in ("pooled", "hidden 0", "hidden 1"):
        results[f"Mahalanobis, {name}"] = both(mahalanobis, name)
    results["relative Mahalanobis, pooled"] = both(mahalanobis, "pooled", relative=True)
    results["per-class Mahalanobis, pooled"] = both(mahalanobis, "pooled", per_class=True)
    pca = PCA(50, random_state=0).fit(ref["gene scores"][train_rows])
    reduced_ref = {"scores50": pca.transform(ref["gene scores"])}
    reduced_query = {"scores50": pca.transform(query["gene scores"])}
    results["Mahalanobis, gene scores (50 PCs)"] = (
        mahalanobis(
            reduced_ref["scores50"][train_rows], labels[train_rows], classes, reduced_ref["scores50"][held_rows]
        ),
        mahalanobis(reduced_ref["scores50"][train_rows], labels[train_rows], classes, reduced_query["scores50"]),
    )
    mean, std = ref["pooled"][train_rows].mean(0), ref["pooled"][train_rows].std(0) + 1e-6

    def unit(x):
        x = (x - mean) / std
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    bank = unit(ref["pooled"][train_rows])
    results["10 nearest neighbours, pooled"] = tuple(
        -np.sort(unit(x) @ bank.T, axis=1)[:, -10:].mean(1) for x in (ref["pooled"][held_rows], query["pooled"])
    )
    variants = {
        "class profiles (chosen: values, floor 1e-3)": ("values", {}),
        "class profiles, floor 1e-2": ("values", {"floor": 1e-2}),
        "class profiles, floor 1e-1": ("values", {"floor": 1e-1}),
        "class profiles over the tokens": ("tokens", {"floor": 1e-2}),
        "class profiles, genes weighed by variance explained": ("values", {"weight_power": 1}),
        "class profiles, 200 most class-specific genes": ("values", {"top_genes": 200}),
        "class profiles, 50 most class-specific genes": ("values", {"top_genes": 50}),
        "class profiles, each gene's term capped at 25": ("values", {"cap": 25.0}),
        "class profiles, each gene's term capped at 100": ("values", {"cap": 100.0}),
        "class profiles, log(1 + each gene's term)": ("values", {"log": True}),
    }
    for label, (name, options) in variants.items():
        results[label] = both(profile_distance, name, **options)
    return results


def main(argv: list[str] | None = None) -> None:
    import anndata

    from modeling_scbert.training.novelty import auroc
    from tokenization.data import stratified_eval_mask

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("kang_data"))
    parser.add_argument("--runs-dir", type=Path, default=Path("kang_novelty"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    control = anndata.read_h5ad(args.data_dir / "ctrl_hvg.h5ad")
    stimulated = anndata.read_h5ad(args.data_dir / "stim_hvg.h5ad")
    truth = stimulated.obs[LABEL_KEY].astype(str).to_numpy()
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for held_out in TYPES:
        model_dir = (
            args.runs_dir / f"control_to_stimulated_{held_out.replace(' ', '_').replace('+', 'p')}_seed{args.seed}"
        )
        reference = control[control.obs[LABEL_KEY].astype(str) != held_out]
        classes = sorted(set(reference.obs[LABEL_KEY].astype(str)))
        labels = reference.obs[LABEL_KEY].astype(str).to_numpy()
        held_rows = stratified_eval_mask(np.searchsorted(classes, labels), 0.1, seed=0)  # finetune's split
        ref, query = model_features(model_dir, reference), model_features(model_dir, stimulated)
        novel = truth == held_out
        for name, (held, scores) in candidates(ref, query, ~held_rows, held_rows, labels, classes).items():
            threshold = np.quantile(held, THRESHOLD_QUANTILE)
            table.setdefault(name, {})[held_out] = (auroc(novel, scores), float((scores[~novel] > threshold).mean()))
        print(f"done: {held_out}", file=sys.stderr, flush=True)
    print("| score | " + " | ".join(TYPES) + " | mean AUROC | known cells flagged (range) |")
    print("| --- | " + " | ".join("---" for _ in TYPES) + " | --- | --- |")
    for name, row in table.items():
        aurocs = [row[t][0] for t in TYPES]
        flagged = [row[t][1] for t in TYPES]
        print(
            f"| {name} | " + " | ".join(f"{a:.2f}" for a in aurocs) + f" | {np.mean(aurocs):.3f} "
            f"| {min(flagged):.2f}-{max(flagged):.2f} |"
        )


if __name__ == "__main__":
    main()
