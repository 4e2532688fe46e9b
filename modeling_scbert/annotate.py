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
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from tokenization import ScBertTokenizer
from tokenization.preprocessing import default_min_genes, low_signal

from .distributed import InferenceProcesses, inference_processes
from .modeling_scbert import (
    ScBertForSequenceClassification,
    ScBertModel,
    ScBertPreTrainedModel,
    pool_cell_embeddings,
)
from .reading import ScBertReadingArguments, takes_reading_options

logger = logging.getLogger(__name__)

UNASSIGNED = "Unassigned"
# Why a cell is labelled UNASSIGNED, in .obs[f"{key_added}_unassigned_reason"].
UNASSIGNED_REASONS = ["no panel counts", "few panel genes", "low confidence"]
# A fine-tuned classifier, or the folder or Hub id it was saved to.
Annotator = ScBertForSequenceClassification | str | PathLike
DEFAULT_BATCH_SIZE = 32
DEFAULT_CHUNK_SIZE = 2048
# Compute precisions of annotate / embed: autocast for the linear layers, the FAVOR+ kernel stays in float32.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def load_annotator(
    name_or_path: str | PathLike,
    *,
    model_class: type[ScBertPreTrainedModel] = ScBertForSequenceClassification,
    revision: str | None = None,
    local_files_only: bool = False,
) -> tuple[ScBertPreTrainedModel, ScBertTokenizer]:
    """Load a model and the tokenizer saved with it, from a folder or a Hub id.

    Raises
    ------
    FileNotFoundError
        When the folder or repository has no scBERT tokenizer (``tokenizer_config.json`` and ``genes.txt``).
    """
    from .model_resolution import load_tokenizer

    text = str(name_or_path)
    # A Hub id is "name" or "org/name"; anything else that is not on disk is a local folder that is missing.
    looks_local = Path(text).is_absolute() or text.startswith((".", "~")) or text.count("/") > 1
    if looks_local and not Path(text).exists():
        raise FileNotFoundError(f"The model folder {text!r} does not exist.")
    tokenizer = load_tokenizer(name_or_path, local_files_only=local_files_only)
    try:
        model = model_class.from_pretrained(name_or_path, revision=revision, local_files_only=local_files_only)
    except OSError as error:
        raise FileNotFoundError(f"Could not load an scBERT model from {str(name_or_path)!r}: {error}") from error
    return model, tokenizer


def _resolve(
    model: ScBertPreTrainedModel | str | PathLike,
    tokenizer: ScBertTokenizer | str | PathLike | None,
    *,
    model_class: type[ScBertPreTrainedModel],
) -> tuple[ScBertPreTrainedModel, ScBertTokenizer, str]:
    from .model_resolution import load_tokenizer

    if isinstance(model, (str, PathLike)):
        name = str(model)
        if tokenizer is None:
            model, tokenizer = load_annotator(model, model_class=model_class)
        else:
            model = model_class.from_pretrained(model)
    else:
        name = getattr(model, "name_or_path", "") or type(model).__name__
        if tokenizer is None:
            raise ValueError(
                f"Pass tokenizer= with a model object ({type(model).__name__}), or pass the model's folder or Hub id, "
                "whose tokenizer is loaded with it."
            )
    if isinstance(tokenizer, (str, PathLike)):
        tokenizer = load_tokenizer(tokenizer, what="tokenizer")
    if model.config.num_genes != tokenizer.num_genes:
        raise ValueError(
            f"The model's panel has {model.config.num_genes:,} genes but the tokenizer's has {tokenizer.num_genes:,}; "
            "use the tokenizer saved with the model."
        )
    return model, tokenizer, name


def _class_names(model: ScBertForSequenceClassification) -> list[str]:
    return [str(model.config.id2label[i]) for i in range(model.config.num_labels)]


def check_ensemble(members: Sequence[tuple[ScBertPreTrainedModel, ScBertTokenizer, str]]) -> list[str]:
    """Check that ``(model, tokenizer, name)`` triples can vote together; return their class names.

    Every member must be a classifier with the same classes in the same order, and read the cells with the same
    tokenizer (panel and binning); otherwise averaging their probabilities would mix different things.
    """
    for model, _, _ in members:
        if not isinstance(model, ScBertForSequenceClassification):
            raise TypeError(f"annotate needs a ScBertForSequenceClassification; got a {type(model).__name__}.")
    first_model, first_tokenizer, first_name = members[0]
    class_names = _class_names(first_model)
    for model, tokenizer, name in members[1:]:
        names = _class_names(model)
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


def _device(device: str | torch.device | None) -> torch.device:
    """The device of a single process: ``device``, or the first of CUDA, MPS and CPU that is available."""
    return InferenceProcesses().device(device)


def _dtype_name(dtype: str | torch.dtype) -> str:
    names = {value: name for name, value in DTYPES.items()}
    name = names.get(dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; got {dtype!r}.")
    return name


def _autocast(device: torch.device, dtype: str) -> torch.autocast:
    """bf16 / fp16 autocast for the linear layers (the model keeps the FAVOR+ kernel in float32); off for float32."""
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype], enabled=dtype != "float32")


def _prepare(adata: AnnData, *, copy: bool) -> AnnData:
    if copy:
        if adata.isbacked:
            raise ValueError(
                "copy=True would load the whole backed AnnData into memory; annotate it in place (copy=False; the "
                "file itself is not changed) or load it first with adata.to_memory()."
            )
        return adata.copy()
    if adata.is_view:
        warnings.warn("Received a view of an AnnData; making it an actual AnnData to write into.", UserWarning, 2)
        adata._init_as_actual(adata.copy())
    return adata


# ---------------------------------------------------------------------------------------------------------------------
# Batched inference
# ---------------------------------------------------------------------------------------------------------------------


def _batches(
    adata: AnnData,
    *,
    tokenizer: ScBertTokenizer,
    batch_size: int,
    chunk_size: int,
    progress: bool | None,
    desc: str,
    encode_kwargs: dict[str, Any],
    processes: InferenceProcesses | None = None,
    detected_genes: np.ndarray | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(start, end, input_ids)`` batches of this process's rows (all rows for one process).

    Reading is planned when this is called (alignment, input-kind detection and their errors), before any batch.
    ``detected_genes``, when given (one entry per row of this process's share), receives each cell's number of
    detected panel genes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
    processes = InferenceProcesses() if processes is None else processes
    start, end = processes.shard(adata.n_obs)
    chunks = tokenizer.iter_encoded(
        adata,
        batch_size=chunk_size,
        progress=False,
        start=start,
        end=end,
        return_detected_genes=True,
        **encode_kwargs,
    )
    # One progress bar, the main process's (its share is as large as any other's, give or take a cell).
    show = (end - start > batch_size if progress is None else progress) and processes.is_main
    return _iter_batches(
        chunks,
        tokenizer=tokenizer,
        batch_size=batch_size,
        offset=start,
        total=end - start,
        desc=desc,
        show=show,
        detected_genes=detected_genes,
    )


def _iter_batches(
    chunks, *, tokenizer, batch_size, offset, total, desc, show, detected_genes
) -> Iterator[tuple[int, int, torch.Tensor]]:
    with tqdm(total=total, unit="cells", desc=desc, disable=not show) as bar:
        for chunk_start, chunk_end, tokens, detected in chunks:
            if detected_genes is not None:
                detected_genes[chunk_start - offset : chunk_end - offset] = detected
            for start in range(0, tokens.shape[0], batch_size):
                rows = tokens[start : start + batch_size]
                input_ids = torch.from_numpy(tokenizer.input_ids_from_tokens(rows))
                yield chunk_start + start, chunk_start + start + rows.shape[0], input_ids
                bar.update(rows.shape[0])


@takes_reading_options
def annotate(
    adata: AnnData,
    model: Annotator | Sequence[Annotator],
    *,
    tokenizer: ScBertTokenizer | str | PathLike | None = None,
    unassigned_threshold: float | None = None,
    key_added: str = "scbert",
    return_probabilities: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] | torch.dtype = "float32",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
        (float16: 0.01; docs/scale_out.md, tests/test_annotate_precision.py); near-ties can change label.
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
    dtype = _dtype_name(dtype)
    if unassigned_threshold is not None and not 0 <= unassigned_threshold <= 1:
        raise ValueError(f"unassigned_threshold must lie in [0, 1] (a probability); got {unassigned_threshold}.")
    candidates = list(model) if isinstance(model, (list, tuple)) else [model]
    if not candidates:
        raise ValueError("annotate needs a model; got an empty list.")
    processes = inference_processes() if distributed else InferenceProcesses()
    # Everything that can fail runs on every process before any cell is read; a failure anywhere stops all.
    with processes.all_or_none("Loading the models and planning the reading"):
        members = [_resolve(member, tokenizer, model_class=ScBertForSequenceClassification) for member in candidates]
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
        batches = _batches(
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
    with processes.all_or_none("Annotating cells"), torch.inference_mode(), _autocast(device, dtype):
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

    adata = _prepare(adata, copy=copy)
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
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] | torch.dtype = "float32",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
    dtype = _dtype_name(dtype)
    processes = inference_processes() if distributed else InferenceProcesses()
    with processes.all_or_none("Loading the model and planning the reading"):
        model, tokenizer, model_name = _resolve(model, tokenizer, model_class=ScBertModel)
        encoder = model if isinstance(model, ScBertModel) else model.scbert
        encode_kwargs = reading.tokenizer_kwargs()
        tokenizer.align(adata, gene_key=reading.gene_key, synonyms=reading.synonyms, use_raw=reading.use_raw)
        device = processes.device(device)
        encoder = encoder.to(device).eval()
        batches = _batches(
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
    with processes.all_or_none("Embedding cells"), torch.inference_mode(), _autocast(device, dtype):
        for batch_start, batch_end, input_ids in batches:
            hidden = encoder(input_ids.to(device)).last_hidden_state
            embeddings[batch_start - start : batch_end - start] = pool_cell_embeddings(hidden.float()).cpu().numpy()
    gathered = processes.gather_rows({"embeddings": embeddings}, adata.n_obs)
    if gathered is None:
        return None  # not the main process: it writes nothing
    embeddings = gathered["embeddings"]
    adata = _prepare(adata, copy=copy)
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


# ---------------------------------------------------------------------------------------------------------------------
# Files: read with clear errors, write atomically and never touch the input
# ---------------------------------------------------------------------------------------------------------------------


def read_h5ad(path: str | PathLike, *, backed: Literal["r"] | None = "r", what: str = "input") -> AnnData:
    """Read an ``.h5ad`` (backed by default), turning every failure into an error that names the file."""
    import anndata

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The {what} {str(path)!r} does not exist or is not a file.")
    try:
        return anndata.read_h5ad(path, backed=backed)
    except Exception as error:  # h5py and anndata raise many types for a damaged or foreign file
        raise ValueError(
            f"Could not read the {what} {str(path)!r} as an .h5ad file ({type(error).__name__}: {error}). Check that "
            "it is an AnnData file written by anndata/scanpy and is not truncated."
        ) from error


def check_output_path(path: str | PathLike, *, overwrite: bool, inputs: tuple[str | PathLike, ...] = ()) -> Path:
    """Refuse an existing output (unless ``overwrite``), an output that is an input, or a missing parent folder."""
    path = Path(path)
    for source in inputs:
        if Path(source).exists() and path.exists() and path.resolve() == Path(source).resolve():
            raise ValueError(
                f"The output {str(path)!r} is the input file; the input is never modified. Pick a new path."
            )
    if path.exists() and not overwrite:
        raise FileExistsError(f"The output {str(path)!r} already exists; pass --overwrite to replace it.")
    if path.is_dir():
        raise IsADirectoryError(f"The output {str(path)!r} is a folder; give a file path.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The output's folder {str(path.parent)!r} does not exist; create it first.")
    return path


COPY_LAYOUT, REWRITE_LAYOUT = "copy", "rewrite"


def plan_h5ad_output(source: str | PathLike) -> Literal["copy", "rewrite"]:
    """Decide how :func:`write_h5ad_with_slots` will write a copy of ``source`` with new slots, and check that it can.

    ``"copy"``: the file is copied byte for byte and the new slots are written into the copy (``.X`` is never
    loaded). This needs the layout of anndata 0.7 and later, where ``obs`` is a dataframe group and ``obsm`` and
    ``uns`` are groups (or absent). ``"rewrite"``: older layouts (anndata < 0.7: ``obs`` as a compound, structured
    dataset, categories in ``uns``) are read whole with ``anndata.read_h5ad`` and written with anndata's own writer,
    in the current layout; this needs the file in memory. Call it before the model runs, so that a file that cannot
    be written is refused before any work.

    Raises
    ------
    ValueError
        When ``source`` is not an HDF5 file, or its ``obs`` cannot be read.
    """
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(source, "r") as file:
            obs = file.get("obs")
            groups = all(file.get(key) is None or isinstance(file[key], h5py.Group) for key in ("obsm", "uns"))
            if isinstance(obs, h5py.Group) and obs.attrs.get("encoding-type") == "dataframe" and groups:
                read_elem(obs)  # the copy path rewrites .obs from this; a failure here costs no model run
                return COPY_LAYOUT
    except Exception as error:  # h5py and anndata raise many types for a damaged or foreign file
        raise ValueError(
            f"Could not read the .obs of {str(source)!r} to write a copy with new columns ({type(error).__name__}: "
            f"{error}); the file needs to be an .h5ad that anndata.read_h5ad reads."
        ) from error
    logger.info(
        "%s has the layout of anndata < 0.7 (obs is not a dataframe group): the output is written with anndata's "
        "own writer, in the current layout, from a copy read into memory.",
        source,
    )
    return REWRITE_LAYOUT


def write_h5ad_with_slots(
    source: str | PathLike,
    destination: str | PathLike,
    adata: AnnData,
    *,
    obs_columns: list[str] = (),
    obsm_keys: list[str] = (),
    uns_keys: list[str] = (),
    layout: Literal["copy", "rewrite"] | None = None,
    varm_keys: list[str] = (),
) -> None:
    """Write ``source`` plus the given slots of ``adata`` to ``destination``, atomically.

    With the ``"copy"`` layout (files of anndata 0.7 and later) the input file is copied byte for byte to a
    temporary file in the destination's folder and the new ``.obs`` columns, ``.obsm``, ``.varm`` and ``.uns`` entries are
    written into that copy, in bounded memory (``.X`` is never loaded). With ``"rewrite"`` (older layouts, which
    cannot be patched in place) the input is read with ``anndata.read_h5ad``, given the new slots and written with
    anndata's own writer. Either way the temporary file is then renamed over ``destination`` (``os.replace``), so
    a failure leaves no partial output; the input is never modified. ``layout=None`` asks
    :func:`plan_h5ad_output`.

    Raises
    ------
    ValueError
        When the input cannot be read (see :func:`plan_h5ad_output`).
    """
    layout = plan_h5ad_output(source) if layout is None else layout
    if layout not in (COPY_LAYOUT, REWRITE_LAYOUT):
        raise ValueError(f"layout must be {COPY_LAYOUT!r} or {REWRITE_LAYOUT!r}; got {layout!r}.")
    destination = Path(destination)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(handle)
    try:
        if layout == COPY_LAYOUT:
            _patch_copy(
                source,
                temporary,
                adata,
                obs_columns=obs_columns,
                obsm_keys=obsm_keys,
                varm_keys=varm_keys,
                uns_keys=uns_keys,
            )
        else:
            import anndata

            full = anndata.read_h5ad(source)
            for column in obs_columns:
                full.obs[column] = adata.obs[column].values
            for key in obsm_keys:
                full.obsm[key] = adata.obsm[key]
            for key in varm_keys:
                full.varm[key] = adata.varm[key]
            for key in uns_keys:
                full.uns[key] = adata.uns[key]
            full.write_h5ad(temporary)
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _patch_copy(
    source: str | PathLike,
    temporary: str,
    adata: AnnData,
    *,
    obs_columns: Sequence[str],
    obsm_keys: Sequence[str],
    varm_keys: Sequence[str],
    uns_keys: Sequence[str],
) -> None:
    import h5py
    from anndata.io import read_elem, write_elem

    shutil.copyfile(source, temporary)
    with h5py.File(temporary, "r+") as file:
        if obs_columns:
            obs = read_elem(file["obs"])
            for column in obs_columns:
                obs[column] = adata.obs[column].values
            del file["obs"]
            write_elem(file, "obs", obs)
        slots = [("obsm", obsm_keys, adata.obsm), ("varm", varm_keys, adata.varm), ("uns", uns_keys, adata.uns)]
        for group, keys, values in slots:
            for key in keys:
                if group not in file:
                    file.create_group(group)
                if key in file[group]:
                    del file[group][key]
                write_elem(file[group], key, values[key])


def write_text_atomically(path: str | PathLike, write: Any) -> None:
    """Call ``write(temporary_path)``, then rename the temporary file (same folder) over ``path``."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


__all__ = ["DTYPES", "UNASSIGNED", "annotate", "embed", "load_annotator", "read_h5ad"]
