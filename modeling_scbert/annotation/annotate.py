"""Cell-type annotation and cell embeddings, written back into AnnData.

Both run as the same phases: load and check the model(s)
(:func:`~modeling_scbert.annotation.inference.resolve_model`); plan the reading once (:func:`_plan`: gene alignment
with its overlap report, input-kind detection, the device; every error before any cell is read); run the batches
(:func:`_predict` / :func:`_embed`); gather the per-cell results to the main process. Annotation then applies the call
rule once (:func:`tokenization.cell_calls.call_cells`), votes in over-clusters when asked and returns an
:class:`~modeling_scbert.annotation.result.AnnotationResult` (:func:`predict_cell_types`), which :func:`annotate`
writes.

Cells are encoded chunk by chunk and run through the model in batches under ``torch.inference_mode``
(:func:`~modeling_scbert.annotation.inference.encoded_batches`), so a backed ``.h5ad`` larger than memory is annotated
with bounded memory: at most one chunk of tokens and one batch of activations exist at a time; only the per-cell
results (class probabilities and detected panel genes, or an embedding) are kept.

Under ``torchrun`` or ``accelerate launch`` each process takes a contiguous share of the cells on its own device and
the results are gathered to the main process, which alone writes them (``distributed.py``, docs/scale_out.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from tokenization import ScBertTokenizer
from tokenization.cell_batches import INFERENCE_BATCH_CELLS, CellBatch
from tokenization.cell_calls import UNASSIGNED, CellCalls, call_cells
from tokenization.novelty import DEFAULT_NOVELTY_THRESHOLD, NOVELTY_FILE, NoveltyDetector
from tokenization.preprocessing import default_min_genes
from tokenization.reading import ScBertReadingArguments, takes_reading_options
from tokenization.tokenization_scbert import ENCODING_CHUNK_CELLS

from ..modeling_scbert import ScBertForSequenceClassification, ScBertModel, ScBertPreTrainedModel, pool_cell_embeddings
from .distributed import InferenceProcesses, inference_processes
from .inference import (
    adata_to_write,
    autocast,
    check_writable,
    dtype_name,
    encoded_batches,
    label_names,
    resolve_model,
)
from .result import AnnotationResult

logger = logging.getLogger(__name__)

# A fine-tuned classifier, or the folder or Hub id it was saved to.
Annotator = ScBertForSequenceClassification | str | PathLike
# (model, tokenizer, name): a loaded model with the tokenizer that reads its cells, and the name recorded in .uns.
Member = tuple[ScBertPreTrainedModel, ScBertTokenizer, str]


def check_ensemble(members: Sequence[Member]) -> list[str]:
    """Check that ``(model, tokenizer, name)`` triples can vote together; return their class names.

    Every member must be a classifier with the same classes in the same order, and read the cells with the same
    tokenizer (panel and binning); otherwise averaging their probabilities would mix different things.

    Parameters
    ----------
    members
        The loaded members, as :func:`~modeling_scbert.annotation.inference.resolve_model` returns them.

    Returns
    -------
    The class names, in class-index order.

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


def check_novelty_threshold(novelty_threshold: float) -> None:
    """Refuse a novelty threshold outside (0, 1].

    Raises
    ------
    ValueError
        For a threshold outside (0, 1].
    """
    if not 0 < novelty_threshold <= 1:
        raise ValueError(
            f"novelty_threshold must lie in (0, 1] (1 - the share of known-type cells flagged; "
            f"{DEFAULT_NOVELTY_THRESHOLD} flags at most 5%); got {novelty_threshold}."
        )


def novelty_detector(
    member: tuple[Any, ScBertTokenizer, str], class_names: list[str], *, required: bool
) -> NoveltyDetector | None:
    """The novelty detector saved with a model (its folder or Hub id; a model object's ``name_or_path``), checked
    against its classes and panel; ``None`` when it has none (a model fine-tuned before novelty detectors existed, or from an
    encoded dataset). An ensemble uses its first member's: the members share their reference cells.

    Raises
    ------
    ValueError
        With ``required`` (``novel_types=True``) when the model has no calibrated detector; for a detector of other
        classes or another panel.
    """
    model, tokenizer, name = member
    source = str(getattr(model, "name_or_path", "") or name)
    detector = NoveltyDetector.load(source) if source else None
    if detector is not None:
        detector.check_classes(class_names, source=source)
        if detector.num_genes != tokenizer.num_genes:
            raise ValueError(
                f"The novelty detector in {source!r} covers {detector.num_genes} genes, the model's panel "
                f"{tokenizer.num_genes}: it belongs to another model. Remove {NOVELTY_FILE} or fine-tune again."
            )
    if detector is None or not detector.calibrated:
        if required:
            raise ValueError(
                f"novel_types=True needs the model's novelty detector, and {source or name!r} has none "
                f"({NOVELTY_FILE}): it was fine-tuned before novelty detectors existed, or from an encoded dataset. Fine-tune it "
                "again from AnnData cells, or call novel types with unassigned_threshold (1 - max probability)."
            )
        logger.info("%s has no novelty detector: no novelty score is written.", source or name)
        return None
    return detector


def check_unassigned_threshold(unassigned_threshold: float | None) -> None:
    """Refuse a threshold that is not a probability.

    Raises
    ------
    ValueError
        For a threshold outside [0, 1].
    """
    if unassigned_threshold is not None and not 0 <= unassigned_threshold <= 1:
        raise ValueError(f"unassigned_threshold must lie in [0, 1] (a probability); got {unassigned_threshold}.")


# ---------------------------------------------------------------------------------------------------------------------
# The verbs
# ---------------------------------------------------------------------------------------------------------------------


@takes_reading_options
def annotate(
    adata: AnnData,
    model: Annotator | Sequence[Annotator],
    *,
    tokenizer: ScBertTokenizer | str | PathLike | None = None,
    unassigned_threshold: float | None = None,
    novel_types: bool = False,
    novelty_threshold: float = DEFAULT_NOVELTY_THRESHOLD,
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
        ``.obs``, ``.obsm`` and ``.uns`` are written, in memory, never the file). A view is made an actual AnnData
        with a warning; a view of a backed file (``backed[mask]``) becomes its rows, read into memory.
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
    novel_types
        Label cells whose novelty is at or above ``novelty_threshold`` ``"Unassigned"`` with the reason
        ``"novel type"``: cells unlike every type of the model's reference, which ``1 - max probability`` misses
        when the new type resembles a known one (``docs/novelty.md``). Needs a model fine-tuned from AnnData cells
        with its novelty detector (``novelty_detector.safetensors``).
    novelty_threshold
        The calibrated novelty at or above which a cell is a novel type: ``1 - alpha`` flags at most a share
        ``alpha`` of cells like the reference's held-out ones (0.95: at most 5%).
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
    {reading_options}

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
      ``"few panel genes"`` (below ``min_genes``), ``"novel type"`` (with ``novel_types``) or ``"low confidence"``
      (below ``unassigned_threshold``); missing for assigned cells;
    - ``.obs['scbert_novelty']``: float32 in ``[0, 1)``, how unlike every reference type the cell is (one minus its
      conformal p-value against held-out reference cells, :mod:`tokenization.novelty`); written whenever the model
      has a novelty detector, absent (and logged) for models fine-tuned before it existed;
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
        For a threshold outside [0, 1], members that disagree, a model object without ``tokenizer=``, ``copy=True``
        with a backed AnnData (not a view of one), and cells that cannot be read (too few panel genes, an input kind that does not fit
        the values, ...); all before the model runs.
    ScBertProcessError
        With several processes, on every process but the one that failed (which raises its own error).
    """
    reading = ScBertReadingArguments.from_kwargs(read_options, caller="annotate")
    check_writable(adata, copy=copy)  # before the model runs, not after
    result = predict_cell_types(
        adata,
        model,
        tokenizer=tokenizer,
        unassigned_threshold=unassigned_threshold,
        novel_types=novel_types,
        novelty_threshold=novelty_threshold,
        return_probabilities=return_probabilities,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        chunk_size=chunk_size,
        progress=progress,
        distributed=distributed,
        majority_voting=majority_voting,
        over_clustering=over_clustering,
        **reading.tokenizer_kwargs(),
    )
    if result is None:
        return None  # not the main process: it writes nothing
    adata = adata_to_write(adata, copy=copy)
    result.write(adata, key_added=key_added)
    return adata if copy else None


@takes_reading_options
def predict_cell_types(
    adata: AnnData,
    model: Annotator | Sequence[Annotator],
    *,
    tokenizer: ScBertTokenizer | str | PathLike | None = None,
    unassigned_threshold: float | None = None,
    novel_types: bool = False,
    novelty_threshold: float = DEFAULT_NOVELTY_THRESHOLD,
    return_probabilities: bool = False,
    batch_size: int = INFERENCE_BATCH_CELLS,
    device: str | torch.device | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] | torch.dtype = "float32",
    chunk_size: int = ENCODING_CHUNK_CELLS,
    progress: bool | None = None,
    distributed: bool = True,
    majority_voting: bool = False,
    over_clustering: str | None = None,
    **read_options: Any,
) -> AnnotationResult | None:
    """What :func:`annotate` writes, as an :class:`~modeling_scbert.annotation.result.AnnotationResult`; ``adata`` is
    only read.

    Parameters
    ----------
    adata, model, tokenizer, unassigned_threshold, novel_types, novelty_threshold, return_probabilities
        As for :func:`annotate`.
    batch_size, device, dtype, chunk_size
        As for :func:`annotate`.
    progress, distributed, majority_voting, over_clustering
        As for :func:`annotate`.
    {reading_options}

    Returns
    -------
    The result on the main process; ``None`` on the others (several processes share the cells, see
    :func:`annotate`). ``result.write(adata, key_added=...)`` writes it as :func:`annotate` does;
    ``result.to_table(...)`` is the table of ``scbert annotate --csv``.

    Raises
    ------
    TypeError, ValueError, ScBertProcessError
        As for :func:`annotate`, all before the model runs.
    """
    reading = ScBertReadingArguments.from_kwargs(read_options, caller="predict_cell_types")
    dtype = dtype_name(dtype)
    check_unassigned_threshold(unassigned_threshold)
    check_novelty_threshold(novelty_threshold)
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
        detector = novelty_detector(members[0], class_names, required=novel_types)
        _check_cell_calls(
            adata,
            class_names,
            unassigned=unassigned_threshold is not None or novel_types,
            majority_voting=majority_voting,
            over_clustering=over_clustering,
        )
        run = _plan(
            adata,
            [member for member, _, _ in members],
            tokenizer=members[0][1],  # check_ensemble made sure that every member's is the same
            model_names=[name for _, _, name in members],
            reading=reading,
            processes=processes,
            device=device,
            batch_size=batch_size,
            chunk_size=chunk_size,
            progress=progress,
            desc="Annotating cells",
            return_values=detector is not None,
        )
    # The Leiden over-clusters are made from the tokens of this pass, not from a second reading of the cells.
    leiden = majority_voting and over_clustering is None
    with processes.all_or_none("Annotating cells"):
        per_cell, tokens = _predict(
            run, num_labels=len(class_names), dtype=dtype, keep_tokens=leiden, detector=detector
        )
    per_cell = processes.gather_rows(per_cell, adata.n_obs)
    if leiden:
        tokens = processes.gather_sparse_rows(tokens, adata.n_obs)
    if per_cell is None:
        return None  # not the main process: the main one holds every cell's result

    min_genes = default_min_genes(run.tokenizer.num_genes) if reading.min_genes is None else reading.min_genes
    calls = call_cells(
        per_cell["probabilities"],
        class_names,
        detected_genes=per_cell["detected_genes"],
        min_genes=min_genes,
        unassigned_threshold=unassigned_threshold,
        novelty=per_cell.get("novelty"),
        novelty_threshold=novelty_threshold if novel_types else None,
    )
    _log_calls(calls, unassigned_threshold=unassigned_threshold, min_genes=min_genes)
    params = {**_run_params(run, batch_size=batch_size, dtype=dtype, reading=reading), "min_genes": int(min_genes)}
    if unassigned_threshold is not None:
        params["unassigned_threshold"] = float(unassigned_threshold)
    if novel_types:
        params["novelty_threshold"] = float(novelty_threshold)
        logger.info(
            "%d of %d cells at or above novelty %.2f: labelled %r (novel type).",
            calls.count("novel type"),
            len(calls.labels),
            novelty_threshold,
            UNASSIGNED,
        )
    voted = clusters = None
    if majority_voting:
        voted, clusters = _vote(calls, adata, over_clustering=over_clustering, tokens=tokens, params=params)
    return AnnotationResult(
        obs_names=adata.obs_names.copy(),
        class_names=class_names,
        calls=calls,
        params=params,
        unassigned_threshold=unassigned_threshold,
        novelty_threshold=novelty_threshold if novel_types else None,
        novelty=per_cell.get("novelty"),
        probabilities=per_cell["probabilities"] if return_probabilities else None,
        majority_voting=voted,
        over_clustering=clusters if over_clustering is None else None,
    )


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
        The cells, in memory or backed (only ``.obsm`` and ``.uns`` are written, in memory); views as for
        :func:`annotate`.
    model
        A model, or its folder or Hub id (the tokenizer saved with it is loaded too).
    tokenizer
        The model's tokenizer; needed with a model object.
    key_added
        Writes ``.obsm[f"X_{key_added}"]`` and ``.uns[f"{key_added}_embedding"]``.
    batch_size, device, dtype, chunk_size, progress, distributed, copy
        As for :func:`annotate` (also how several processes share the cells and the main process writes).
    {reading_options}

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
    check_writable(adata, copy=copy)
    processes = inference_processes() if distributed else InferenceProcesses()
    with processes.all_or_none("Loading the model and planning the reading"):
        model, tokenizer, name = resolve_model(model, tokenizer, model_class=ScBertModel)
        run = _plan(
            adata,
            [model if isinstance(model, ScBertModel) else model.scbert],
            tokenizer=tokenizer,
            model_names=[name],
            reading=reading,
            processes=processes,
            device=device,
            batch_size=batch_size,
            chunk_size=chunk_size,
            progress=progress,
            desc="Embedding cells",
        )
    with processes.all_or_none("Embedding cells"):
        embeddings = _embed(run, dtype=dtype)
    gathered = processes.gather_rows({"embeddings": embeddings}, adata.n_obs)
    if gathered is None:
        return None  # not the main process: it writes nothing
    adata = adata_to_write(adata, copy=copy)
    adata.obsm[f"X_{key_added}"] = gathered["embeddings"]
    params = _run_params(run, batch_size=batch_size, dtype=dtype, reading=reading)
    adata.uns[f"{key_added}_embedding"] = {
        "params": {"model": params.pop("model"), "pooling": "mean over all positions of the final encodings", **params}
    }
    return adata if copy else None


# ---------------------------------------------------------------------------------------------------------------------
# The phases
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """One call's plan: the models on their device and this process's batches, with the reading already planned."""

    models: list[torch.nn.Module]  # in eval mode, on `device`
    tokenizer: ScBertTokenizer
    model_names: list[str]
    device: torch.device
    rows: tuple[int, int]  # this process's share of the cells, (start, end)
    batches: Iterator[CellBatch]


def _check_cell_calls(
    adata: AnnData,
    class_names: list[str],
    *,
    unassigned: bool,
    majority_voting: bool,
    over_clustering: str | None,
) -> None:
    """Refuse calls that could not be made or written: a voting column that is not there, a class named like the
    label of unassigned cells."""
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
    if unassigned and UNASSIGNED in class_names:
        raise ValueError(f"The model has a class named {UNASSIGNED!r}, which novel-type detection would shadow.")


def _plan(
    adata: AnnData,
    models: list[torch.nn.Module],
    *,
    tokenizer: ScBertTokenizer,
    reading: ScBertReadingArguments,
    processes: InferenceProcesses,
    device: str | torch.device | None,
    batch_size: int,
    chunk_size: int,
    progress: bool | None,
    model_names: list[str],
    desc: str,
    return_values: bool = False,
) -> _Run:
    """Plan the reading of this process's cells and put the models on this process's device.

    The reading is planned once, here: the genes are aligned (the overlap report is logged once) and the input kind
    settled, and their errors raised, before any cell is read or the model runs.
    """
    batches = encoded_batches(
        adata,
        tokenizer=tokenizer,
        batch_size=batch_size,
        chunk_size=chunk_size,
        progress=progress,
        desc=desc,
        encode_kwargs=reading.tokenizer_kwargs(),
        processes=processes,
        return_values=return_values,
    )
    device = processes.device(device)
    return _Run(
        models=[model.to(device).eval() for model in models],
        tokenizer=tokenizer,
        model_names=model_names,
        device=device,
        rows=processes.shard(adata.n_obs),
        batches=batches,
    )


def _predict(
    run: _Run, *, num_labels: int, dtype: str, keep_tokens: bool = False, detector: NoveltyDetector | None = None
) -> tuple[dict[str, np.ndarray], sp.csr_matrix | None]:
    """This process's cells through the model(s): per cell, the class probabilities (an ensemble's mean), the
    detected panel genes and, with a ``detector``, the novelty; with ``keep_tokens``, also the cells' expression
    tokens (uint8 CSR), for over-clustering."""
    start, end = run.rows
    probabilities = np.empty((end - start, num_labels), dtype=np.float32)
    detected_genes = np.zeros(end - start, dtype=np.int64)
    novelty = None if detector is None else np.empty(end - start, dtype=np.float32)
    blocks = []
    with torch.inference_mode(), autocast(run.device, dtype):
        for batch in run.batches:
            rows = slice(batch.start - start, batch.end - start)
            # Probabilities, not logits, are averaged: each member's vote is bounded, so one overconfident member
            # cannot outvote the others.
            input_ids = batch.input_ids.to(run.device)
            total = sum(torch.softmax(model(input_ids).logits.float(), dim=-1) for model in run.models)
            probabilities[rows] = (total / len(run.models)).cpu().numpy()
            detected_genes[rows] = batch.detected_genes
            if novelty is not None:
                novelty[rows] = detector.scores(batch.values)
            if keep_tokens:  # the tokens are the input_ids without the appended 0 token
                blocks.append(sp.csr_matrix(batch.input_ids[:, :-1].numpy().astype(np.uint8)))
    tokens = None
    if keep_tokens:
        num_genes = run.tokenizer.num_genes
        tokens = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, num_genes), dtype=np.uint8)
    per_cell = {"probabilities": probabilities, "detected_genes": detected_genes}
    if novelty is not None:
        per_cell["novelty"] = novelty
    return per_cell, tokens


def _embed(run: _Run, *, dtype: str) -> np.ndarray:
    """This process's cell embeddings, float32 ``(cells, hidden_size)``: the mean of the final encodings."""
    (encoder,) = run.models
    start, end = run.rows
    embeddings = np.empty((end - start, encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode(), autocast(run.device, dtype):
        for batch in run.batches:
            hidden = encoder(batch.input_ids.to(run.device)).last_hidden_state
            embeddings[batch.start - start : batch.end - start] = pool_cell_embeddings(hidden.float()).cpu().numpy()
    return embeddings


def _run_params(run: _Run, *, batch_size: int, dtype: str, reading: ScBertReadingArguments) -> dict[str, Any]:
    """What every run records in ``.uns[...]['params']``: the model (an ensemble's members), ``batch_size``,
    ``dtype`` and the reading options."""
    names = run.model_names
    return {
        "model": names[0] if len(names) == 1 else np.asarray(names, dtype=object),
        "batch_size": int(batch_size),
        "dtype": dtype,
        **reading.params(),
    }


def _log_calls(calls: CellCalls, *, unassigned_threshold: float | None, min_genes: int) -> None:
    """Say how many cells are "Unassigned", and why (low signal is a WARNING: the data may be read wrongly)."""
    n_obs = len(calls.labels)
    if unassigned_threshold is not None:
        logger.info(
            "%d of %d cells below confidence %.2f: labelled %r.",
            int((calls.confidence < unassigned_threshold).sum()),
            n_obs,
            unassigned_threshold,
            UNASSIGNED,
        )
    broken = calls.count("non-finite probabilities")
    if broken:
        logger.warning(
            "%d of %d cells labelled %r because their class probabilities are NaN or infinite: the model's weights or "
            "arithmetic failed for them (try dtype='float32', or check the model).",
            broken,
            n_obs,
            UNASSIGNED,
        )
    empty, few = calls.count("no panel counts"), calls.count("few panel genes")
    if empty or few:
        logger.warning(
            "%d of %d cells labelled %r for too little signal in the panel: %d with no panel counts, %d with fewer "
            "than min_genes=%d detected panel genes (see .obs['..._unassigned_reason']).",
            empty + few,
            n_obs,
            UNASSIGNED,
            empty,
            few,
            min_genes,
        )


def _vote(
    calls: CellCalls,
    adata: AnnData,
    *,
    over_clustering: str | None,
    tokens: sp.csr_matrix | None,
    params: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray]:
    """Majority voting: every cell's over-cluster's most frequent label, and the over-clusters voted in (the
    ``.obs`` column ``over_clustering``, or Leiden clusters of the ``tokens``); records the voting in ``params``."""
    from .majority_voting import leiden_resolution, majority_vote, over_cluster

    params["majority_voting"] = True
    params["over_clustering"] = over_clustering or "leiden"
    if over_clustering is None:
        clusters = over_cluster(tokens)
        params["leiden_resolution"] = leiden_resolution(adata.n_obs)
    else:
        clusters = adata.obs[over_clustering].to_numpy()
    return majority_vote(calls.labels, clusters), clusters


__all__ = [
    "annotate",
    "check_ensemble",
    "check_novelty_threshold",
    "check_unassigned_threshold",
    "embed",
    "novelty_detector",
    "predict_cell_types",
]
