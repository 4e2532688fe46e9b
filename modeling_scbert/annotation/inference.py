"""What annotation, embedding and attention scoring share: the model with its tokenizer, device, precision, batches.

:func:`modeling_scbert.annotate.annotate`, :func:`~modeling_scbert.annotate.embed` and
:func:`modeling_scbert.attention.gene_attention_scores` run the same loop: load the model and the tokenizer saved
with it (:func:`resolve_model`), read the cells chunk by chunk with the tokenizer and feed them to the model in
batches (:func:`encoded_batches`) under :func:`autocast`, then write into the AnnData (:func:`adata_to_write`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from os import PathLike
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from tokenization import ScBertTokenizer

from ..modeling_scbert import ScBertForSequenceClassification, ScBertPreTrainedModel
from .distributed import InferenceProcesses

# Compute precisions of annotate / embed: autocast for the linear layers, the FAVOR+ kernel stays in float32.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------------------------
# The model and its tokenizer
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
        When the folder does not exist, or the folder or repository has no scBERT tokenizer
        (``tokenizer_config.json`` and ``genes.txt``) or no model of ``model_class``.
    ValueError
        When the model's panel is not the tokenizer's (see :meth:`ScBertTokenizer.check_model_config`).
    """
    tokenizer = ScBertTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
    try:
        model = model_class.from_pretrained(name_or_path, revision=revision, local_files_only=local_files_only)
    except OSError as error:
        raise FileNotFoundError(f"Could not load an scBERT model from {str(name_or_path)!r}: {error}") from error
    tokenizer.check_model_config(model.config)
    return model, tokenizer


def resolve_model(
    model: ScBertPreTrainedModel | str | PathLike,
    tokenizer: ScBertTokenizer | str | PathLike | None,
    *,
    model_class: type[ScBertPreTrainedModel],
) -> tuple[ScBertPreTrainedModel, ScBertTokenizer, str]:
    """The ``(model, tokenizer, name)`` that the ``model=`` and ``tokenizer=`` of annotate, embed and attention name.

    A folder or Hub id is loaded, with the tokenizer saved with it unless ``tokenizer`` is given; ``name`` (recorded
    in ``.uns``) is the folder or Hub id, or a model object's ``name_or_path``.

    Raises
    ------
    FileNotFoundError
        As for :func:`load_annotator`.
    ValueError
        For a model object without ``tokenizer=``, or a model whose panel is not the tokenizer's.
    """
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
        tokenizer = ScBertTokenizer.from_pretrained(tokenizer)
    tokenizer.check_model_config(model.config)
    return model, tokenizer, name


def label_names(model: ScBertForSequenceClassification) -> list[str]:
    """A classifier's class names, in class-index order."""
    return [str(model.config.id2label[i]) for i in range(model.config.num_labels)]


# ---------------------------------------------------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------------------------------------------------


def inference_device(device: str | torch.device | None) -> torch.device:
    """The device of a single process: ``device``, or the first of CUDA, MPS and CPU that is available.

    Raises
    ------
    ValueError
        For a device that does not exist here (see :meth:`InferenceProcesses.device`).
    """
    return InferenceProcesses().device(device)


def dtype_name(dtype: str | torch.dtype) -> str:
    """The name in :data:`DTYPES` of a compute precision given by name or as a ``torch.dtype``.

    Raises
    ------
    ValueError
        For a precision that is not one of :data:`DTYPES`.
    """
    names = {value: name for name, value in DTYPES.items()}
    name = names.get(dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; got {dtype!r}.")
    return name


def autocast(device: torch.device, dtype: str) -> torch.autocast:
    """bf16 / fp16 autocast for the linear layers (the model keeps the FAVOR+ kernel in float32); off for float32."""
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype], enabled=dtype != "float32")


# ---------------------------------------------------------------------------------------------------------------------
# Cells in, results out
# ---------------------------------------------------------------------------------------------------------------------


def adata_to_write(adata: AnnData, *, copy: bool) -> AnnData:
    """The AnnData to write results into: a copy with ``copy=True``, else ``adata`` itself (a view made actual).

    Raises
    ------
    ValueError
        For ``copy=True`` on a backed AnnData (the copy would load it whole into memory).
    """
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


def encoded_batches(
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

    Raises
    ------
    ValueError
        For ``batch_size`` below 1, and cells that cannot be read (see :meth:`ScBertTokenizer.iter_encoded`).
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


__all__ = [
    "DTYPES",
    "adata_to_write",
    "autocast",
    "dtype_name",
    "encoded_batches",
    "inference_device",
    "label_names",
    "load_annotator",
    "resolve_model",
]
