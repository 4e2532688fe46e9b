"""Cell-type annotation and cell embeddings, written back into AnnData.

Cells are encoded chunk by chunk with the tokenizer's chunked iterator and run through the model in batches under
``torch.inference_mode``, so a backed ``.h5ad`` larger than memory is annotated with bounded memory: at most one
chunk of tokens and one batch of activations exist at a time; only the per-cell results (a label, a confidence and,
optionally, probabilities or an embedding) are kept.

Under ``torchrun`` or ``accelerate launch`` each process takes a contiguous share of the cells on its own device and
the results are gathered to the main process, which alone writes them (``distributed.py``, docs/scale_out.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from tokenization import ScBertTokenizer
from tokenization.pipeline_scbert import INFERENCE_BATCH_CELLS, UNASSIGNED
from tokenization.preprocessing import default_min_genes, low_signal
from tokenization.reading import ScBertReadingArguments, takes_reading_options
from tokenization.tokenization_scbert import ENCODING_CHUNK_CELLS

from ..modeling_scbert import ScBertForSequenceClassification, ScBertModel, ScBertPreTrainedModel, pool_cell_embeddings
from .distributed import InferenceProcesses, inference_processes
from .inference import (
    adata_to_write,
    autocast,
    dtype_name,
    encoded_batches,
    label_names,
    resolve_model,
)

logger = logging.getLogger(__name__)

# Why a cell is labelled UNASSIGNED, in .obs[f"{key_added}_unassigned_reason"].
UNASSIGNED_REASONS = ["no panel counts", "few panel genes", "low confidence"]
# A fine-tuned classifier, or the folder or Hub id it was saved to.
Annotator = ScBertForSequenceClassification | str | PathLike


def check_ensemble(members: Sequence[tuple[ScBertPreTrainedModel, ScBertTokenizer, str]]) -> list[str]:
    """Check that ``(model, tokenizer, name)`` triples can vote together; return their class names.

    Every member must be a classifier with the same classes in the same order, and read the cells with the same
    tokenizer (panel and binning); otherwise averaging their probabilities would mix different things.

    Raises
    ------
    TypeError
        When a member is not a :class:`ScBertForSequenceClassification`.
    ValueError
        When members have different classes, or different tokenizers.
    """
    for model, _, _ in members:
        if not isinstance(model, ScBertForSequenceClassification):
            raise TypeError(f"annotate needs a ScBertForSequenceClassification; got a {type(model).__name__}.")
    first_model, first_tokenizer, first_name = members[0]
    class_names = label_names(first_model)
    for model, tokenizer, name in members[1:]:
        names = label_names(model)
        if names != class_names:
            raise ValueError(
                f"The ensemble's models have different classes: {name!r} has {names}, {first_name!r} has "
                f"{class_names}. Fine-tune every member on the same classes, in the same order."
            )
        if tokenizer != first_tokenizer:
            raise ValueError(
                f"The ensemble's models read the cells differently: {name!r} has {tokenizer!r}, {first_name!r} has "
                f"{first_tokenizer!r}. Fine-tune every member from the same panel and tokenizer."
            )
    return class_names


@takes_reading_options
def annotate(
    adata: AnnData,
    model: Annotator | Sequence[Annotator],
    *,
    tokenizer: ScBertTokenizer | str | PathLike | None = None,
    unassigned_threshold: float | None = None,
    key_added: str = "scbert",
    return_probabilities: bool = False,
    batch_size: int = INFERENCE_BATCH_CELLS,
    device: str | torch.device | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] | torch.dtype = "float32",
    chunk_size: int = ENCODING_CHUNK_CELLS,
    progress: bool | None = None,
    distributed: bool = True,
    copy: bool = False,
    majority_voting: bool = False,
    over_clustering: str | None = None,
    **read_options: Any,
) -> AnnData | None:
    """Predict a cell type for every cell, with a confidence and, optionally, novel-type detection.

    Parameters
    ----------
    adata
        The cells: counts or log1p-normalised values, in memory or backed (``read_h5ad(path, backed="r")``; only
        ``.obs``, ``.obsm`` and ``.uns`` are written, in memory, never the file).
    model
        A fine-tuned :class:`ScBertForSequenceClassification`, or its folder or Hub id (the tokenizer saved with it
        is loaded too). A list of them is an ensemble: their class probabilities are averaged, which gives steadier
        predictions and confidences than any one fine-tuning run on a small reference (docs/training.md). The
        members must have the same classes in the same order and the same tokenizer.
    tokenizer
        The model's tokenizer (every member's, for an ensemble); needed with model objects.
    unassigned_threshold
        Cells whose highest class probability is below this are labelled ``"Unassigned"`` (candidate novel types);
        the paper uses 0.5. ``None`` labels every cell with its most likely type.
    key_added
        Prefix of the slots written.
    return_probabilities
        Also write every class probability.
    batch_size
        Cells per forward pass.
    device
        Where to run; the first of CUDA, MPS and CPU that is available when ``None``. Under ``torchrun`` /
        ``accelerate launch`` with several processes: ``cuda:LOCAL_RANK``, or the CPU without CUDA.
    dtype
        ``"float32"``, or ``"bfloat16"`` / ``"float16"``: autocast for the linear layers while the FAVOR+ kernel stays
        in float32 (faster on GPUs). Probabilities under bfloat16 stay within 0.03 of float32's on small models
        (float16: 0.01; docs/scale_out.md, tests/test_annotation_precision.py); near-ties can change label.
    chunk_size
        Cells read and encoded at a time (memory stays bounded for backed data).
    progress
        Show a progress bar; by default when there is more than one batch.
    distributed
        Under ``torchrun`` / ``accelerate launch`` with several processes, share the cells among them (then call this
        on every process). ``False`` annotates every cell in this process alone, e.g. on the main process after
        distributed training; the others are not involved.
    copy
        Return an annotated copy instead of writing into ``adata``.
    majority_voting
        Also give every cell its over-cluster's most frequent predicted label, as CellTypist does: neighbouring cells
        usually share a type, and the vote smooths out single-cell errors.
    over_clustering
        With ``majority_voting``, an ``.obs`` column of clusters to vote in. ``None`` over-clusters the cells with
        Leiden (``flavor="igraph"``) on a 15-neighbour graph of the first 50 principal components of their expression
        tokens, at a resolution that grows with the number of cells (5 below 5,000 cells, as CellTypist); this needs
        ``igraph`` (``pip install 'scbert-hf[clustering]'``) and keeps every cell's tokens in memory (sparse).
    **read_options
        How to read the cells, by name: every field of :class:`~modeling_scbert.reading.ScBertReadingArguments`
        (``layer``, ``gene_key``, ``input_kind``, ``synonyms``, ``min_gene_overlap``, ...), as for
        :meth:`tokenization.ScBertTokenizer.__call__`; the same options as ``scbert annotate``'s.

    Returns
    -------
    ``None``, or the annotated copy with ``copy=True``. Under ``torchrun`` / ``accelerate launch`` every process
    annotates its contiguous share of the cells (call this on every process); the results are gathered to the main
    process (rank 0), which alone writes them, identical to one process's; the other processes return ``None`` and
    leave ``adata`` as it was. Written (with the default ``key_added="scbert"``):

    - ``.obs['scbert_cell_type']``: categorical, the predicted type (categories: the model's classes in
      ``id2label`` order, then ``"Unassigned"`` when ``unassigned_threshold`` is set or a cell lacks signal);
    - ``.obs['scbert_confidence']``: float32, the highest class probability;
    - ``.obs['scbert_unassigned_reason']``: categorical, why a cell is ``"Unassigned"``: ``"no panel counts"``,
      ``"few panel genes"`` (below ``min_genes``) or ``"low confidence"`` (below ``unassigned_threshold``); missing
      for assigned cells;
    - ``.obsm['scbert_probabilities']``: float32 ``(n_obs, num_labels)``, only with ``return_probabilities``; its
      columns are ``.uns['scbert']['class_names']``;
    - ``.obs['scbert_majority_voting']``: categorical, only with ``majority_voting``: the most frequent
      ``scbert_cell_type`` of the cell's over-cluster (same categories);
    - ``.obs['scbert_over_clustering']``: categorical, only with ``majority_voting`` and no ``over_clustering``: the
      Leiden over-clusters voted in;
    - ``.uns['scbert']['params']``: the model (for an ensemble, the list of members), ``batch_size``, ``dtype``,
      ``layer``, ``gene_key``, ``input_kind``, ``min_genes``, the other reading options that were set, (when set)
      ``unassigned_threshold`` and, with ``majority_voting``, ``majority_voting``, ``over_clustering`` (the column,
      or ``"leiden"``) and ``leiden_resolution``.

    Nothing else is changed.

    Raises
    ------
    TypeError
        For a keyword that is not an option, or a model that is not a classifier.
    ValueError
        For a threshold outside [0, 1], members that disagree, a model object without ``tokenizer=``, and cells
        that cannot be read (too few panel genes, an input kind that does not fit the values, ...); all before the
        model runs.
    ScBertProcessError
        With several processes, on every process but the one that failed (which raises its own error).
    """
    reading = ScBertReadingArguments.from_kwargs(read_options, caller="annotate")
    dtype = dtype_name(dtype)
    if unassigned_threshold is not None and not 0 <= unassigned_threshold <= 1:
        raise ValueError(f"unassigned_threshold must lie in [0, 1] (a probability); got {unassigned_threshold}.")
    candidates = list(model) if isinstance(model, (list, tuple)) else [model]
    if not candidates:
        raise ValueError("annotate needs a model; got an empty list.")
    processes = inference_processes() if distributed else InferenceProcesses()
    # Everything that can fail runs on every process before any cell is read; a failure anywhere stops all.
    with processes.all_or_none("Loading the models and planning the reading"):
        members = [
            resolve_model(member, tokenizer, model_class=ScBertForSequenceClassification) for member in candidates
        ]
        class_names = check_ensemble(members)
        models, tokenizers, model_names = zip(*members)
        tokenizer = tokenizers[0]  # check_ensemble made sure that every member's is the same
        if over_clustering is not None:
            if not majority_voting:
                raise ValueError(
                    "over_clustering= is the clustering that majority voting uses; pass majority_voting=True."
                )
            if over_clustering not in adata.obs.columns:
                raise ValueError(
                    f"over_clustering={over_clustering!r} is not a column of .obs; the columns are "
                    f"{list(adata.obs.columns)}. Pass one of them, or None to over-cluster with Leiden."
                )
        if unassigned_threshold is not None and UNASSIGNED in class_names:
            raise ValueError(f"The model has a class named {UNASSIGNED!r}, which novel-type detection would shadow.")
        encode_kwargs = reading.tokenizer_kwargs()
        # Alignment (and its overlap report or error) happens here, before anything is written.
        tokenizer.align(adata, gene_key=reading.gene_key, synonyms=reading.synonyms, use_raw=reading.use_raw)
        device = processes.device(device)
        models = [member.to(device).eval() for member in models]
        start, end = processes.shard(adata.n_obs)
        detected_genes = np.zeros(end - start, dtype=np.int64)
        batches = encoded_batches(
            adata,
            tokenizer=tokenizer,
            batch_size=batch_size,
            chunk_size=chunk_size,
            progress=progress,
            desc="Annotating cells",
            encode_kwargs=encode_kwargs,
            processes=processes,
            detected_genes=detected_genes,
        )
    # This process's rows: the label as a class index, its probability, and every probability only when asked for.
    best = np.zeros(end - start, dtype=np.int64)
    confidence = np.zeros(end - start, dtype=np.float32)
    probabilities = np.empty((end - start, len(class_names)), dtype=np.float32) if return_probabilities else None
    with processes.all_or_none("Annotating cells"), torch.inference_mode(), autocast(device, dtype):
        for batch_start, batch_end, input_ids in batches:
            input_ids = input_ids.to(device)
            # Probabilities, not logits, are averaged: each member's vote is bounded, so one overconfident member
            # cannot outvote the others.
            mean = sum(torch.softmax(member(input_ids).logits.float(), dim=-1) for member in models) / len(models)
            mean = mean.cpu().numpy()
            rows = slice(batch_start - start, batch_end - start)
            best[rows] = mean.argmax(axis=1)
            confidence[rows] = mean[np.arange(mean.shape[0]), best[rows]]
            if probabilities is not None:
                probabilities[rows] = mean
    per_cell = {"best": best, "confidence": confidence, "detected_genes": detected_genes}
    if probabilities is not None:
        per_cell["probabilities"] = probabilities
    per_cell = processes.gather_rows(per_cell, adata.n_obs)
    if per_cell is None:
        return None  # not the main process: it writes nothing
    best, confidence, probabilities = per_cell["best"], per_cell["confidence"], per_cell.get("probabilities")
    detected_genes = per_cell["detected_genes"]

    adata = adata_to_write(adata, copy=copy)
    labels = np.asarray(class_names, dtype=object)[best]
    categories = list(class_names)
    reasons = np.full(adata.n_obs, None, dtype=object)
    if unassigned_threshold is not None:
        reasons[confidence < unassigned_threshold] = "low confidence"
        logger.info(
            "%d of %d cells below confidence %.2f: labelled %r.",
            int((confidence < unassigned_threshold).sum()),
            adata.n_obs,
            unassigned_threshold,
            UNASSIGNED,
        )
    min_genes = default_min_genes(tokenizer.num_genes) if reading.min_genes is None else reading.min_genes
    _flag_low_signal(reasons, detected_genes, min_genes=min_genes)
    labels = np.where(pd.isna(reasons), labels, UNASSIGNED)
    if (unassigned_threshold is not None or not pd.isna(reasons).all()) and UNASSIGNED not in categories:
        categories.append(UNASSIGNED)
    if majority_voting:
        from .majority_voting import leiden_resolution, majority_vote, over_cluster

        if over_clustering is None:
            clusters = over_cluster(_all_tokens(adata, tokenizer, encode_kwargs, chunk_size=chunk_size))
        else:
            clusters = adata.obs[over_clustering].to_numpy()
        voted = majority_vote(labels, clusters)
    adata.obs[f"{key_added}_cell_type"] = pd.Categorical(labels, categories=categories)
    adata.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    adata.obs[f"{key_added}_unassigned_reason"] = pd.Categorical(reasons, categories=UNASSIGNED_REASONS)
    if majority_voting:
        adata.obs[f"{key_added}_majority_voting"] = pd.Categorical(voted, categories=categories)
        if over_clustering is None:
            names = sorted(set(clusters), key=lambda name: (len(name), name))
            adata.obs[f"{key_added}_over_clustering"] = pd.Categorical(clusters, categories=names)
    uns: dict[str, Any] = {
        "params": {
            "model": model_names[0] if len(model_names) == 1 else np.asarray(model_names, dtype=object),
            "batch_size": int(batch_size),
            "dtype": dtype,
            **reading.params(),
            "min_genes": int(min_genes),
        }
    }
    if unassigned_threshold is not None:
        uns["params"]["unassigned_threshold"] = float(unassigned_threshold)
    if majority_voting:
        uns["params"]["majority_voting"] = True
        uns["params"]["over_clustering"] = over_clustering or "leiden"
        if over_clustering is None:
            uns["params"]["leiden_resolution"] = leiden_resolution(adata.n_obs)
    if return_probabilities:
        adata.obsm[f"{key_added}_probabilities"] = probabilities
        uns["class_names"] = np.asarray(class_names, dtype=object)
    adata.uns[key_added] = uns
    return adata if copy else None


@takes_reading_options
def embed(
    adata: AnnData,
    model: ScBertPreTrainedModel | str | PathLike,
    *,
    tokenizer: ScBertTokenizer | str | PathLike | None = None,
    key_added: str = "scbert",
    batch_size: int = INFERENCE_BATCH_CELLS,
    device: str | torch.device | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] | torch.dtype = "float32",
    chunk_size: int = ENCODING_CHUNK_CELLS,
    progress: bool | None = None,
    distributed: bool = True,
    copy: bool = False,
    **read_options: Any,
) -> AnnData | None:
    """Cell embeddings: the mean of the encoder's final (LayerNorm-ed) encodings over all panel positions.

    This is the pooling of the ``"pooled"`` classification head (every position of a full-length cell, zeros
    included, since zero tokens still carry their gene's embedding); any scBERT model works (masked-expression,
    classifier or bare encoder).

    Parameters
    ----------
    adata
        The cells, in memory or backed (only ``.obsm`` and ``.uns`` are written, in memory).
    model
        A model, or its folder or Hub id (the tokenizer saved with it is loaded too).
    tokenizer
        The model's tokenizer; needed with a model object.
    key_added
        Writes ``.obsm[f"X_{key_added}"]`` and ``.uns[f"{key_added}_embedding"]``.
    batch_size, device, dtype, chunk_size, progress, distributed, copy, **read_options
        As for :func:`annotate` (also how several processes share the cells and the main process writes; the
        reading options are the same as ``scbert embed``'s).

    Returns
    -------
    ``None``, or the copy with ``copy=True`` (``None`` on every process but the main one). Written (with
    ``key_added="scbert"``):

    - ``.obsm['X_scbert']``: float32 ``(n_obs, hidden_size)``;
    - ``.uns['scbert_embedding']['params']``: the model, ``pooling``, ``batch_size``, ``dtype``, ``layer``,
      ``gene_key``,
      ``input_kind`` and the other reading options that were set.

    Raises
    ------
    TypeError, ValueError, ScBertProcessError
        As for :func:`annotate`.
    """
    reading = ScBertReadingArguments.from_kwargs(read_options, caller="embed")
    dtype = dtype_name(dtype)
    processes = inference_processes() if distributed else InferenceProcesses()
    with processes.all_or_none("Loading the model and planning the reading"):
        model, tokenizer, model_name = resolve_model(model, tokenizer, model_class=ScBertModel)
        encoder = model if isinstance(model, ScBertModel) else model.scbert
        encode_kwargs = reading.tokenizer_kwargs()
        tokenizer.align(adata, gene_key=reading.gene_key, synonyms=reading.synonyms, use_raw=reading.use_raw)
        device = processes.device(device)
        encoder = encoder.to(device).eval()
        batches = encoded_batches(
            adata,
            tokenizer=tokenizer,
            batch_size=batch_size,
            chunk_size=chunk_size,
            progress=progress,
            desc="Embedding cells",
            encode_kwargs=encode_kwargs,
            processes=processes,
        )
    start, end = processes.shard(adata.n_obs)
    embeddings = np.empty((end - start, encoder.config.hidden_size), dtype=np.float32)
    with processes.all_or_none("Embedding cells"), torch.inference_mode(), autocast(device, dtype):
        for batch_start, batch_end, input_ids in batches:
            hidden = encoder(input_ids.to(device)).last_hidden_state
            embeddings[batch_start - start : batch_end - start] = pool_cell_embeddings(hidden.float()).cpu().numpy()
    gathered = processes.gather_rows({"embeddings": embeddings}, adata.n_obs)
    if gathered is None:
        return None  # not the main process: it writes nothing
    embeddings = gathered["embeddings"]
    adata = adata_to_write(adata, copy=copy)
    adata.obsm[f"X_{key_added}"] = embeddings
    adata.uns[f"{key_added}_embedding"] = {
        "params": {
            "model": model_name,
            "pooling": "mean over all positions of the final encodings",
            "batch_size": int(batch_size),
            "dtype": dtype,
            **reading.params(),
        }
    }
    return adata if copy else None


def _all_tokens(adata: AnnData, tokenizer: ScBertTokenizer, encode_kwargs: dict[str, Any], *, chunk_size: int):
    """Every cell's expression tokens, ``(n_obs, num_genes)`` float32 CSR, for the over-clustering of majority voting
    (encoded again on the main process, which after a multi-process run holds no tokens)."""
    blocks = [
        tokens.astype(np.float32)
        for _, _, tokens in tokenizer.iter_encoded(adata, batch_size=chunk_size, progress=False, **encode_kwargs)
    ]
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, tokenizer.num_genes), dtype=np.float32)


def _flag_low_signal(reasons: np.ndarray, detected_genes: np.ndarray, *, min_genes: int) -> None:
    """Mark cells without signal in the panel (no counts, or fewer than ``min_genes`` panel genes) and warn."""
    empty, few = low_signal(detected_genes, min_genes=min_genes)
    reasons[few] = "few panel genes"
    reasons[empty] = "no panel counts"
    if empty.any() or few.any():
        logger.warning(
            "%d of %d cells labelled %r for too little signal in the panel: %d with no panel counts, %d with fewer "
            "than min_genes=%d detected panel genes (see .obs['..._unassigned_reason']).",
            int(empty.sum() + few.sum()),
            len(reasons),
            UNASSIGNED,
            int(empty.sum()),
            int(few.sum()),
            min_genes,
        )


__all__ = ["annotate", "check_ensemble", "embed"]
