"""What annotation, embedding and attention scoring share: the model with its tokenizer, device, precision, batches.

:func:`modeling_scbert.annotation.annotate.annotate`, :func:`~modeling_scbert.annotation.annotate.embed` and
:func:`modeling_scbert.annotation.attention.gene_attention_scores` run the same loop: load the model and the tokenizer
saved with it (:func:`resolve_model`), read this process's cells in batches (:func:`encoded_batches`, over the one
batching of :func:`tokenization.cell_batches.cell_batches`, which the pipeline uses too) and feed them to the model
under :func:`autocast`, then write into the AnnData (:func:`adata_to_write`, refused early by
:func:`check_writable`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from os import PathLike
from typing import Any

import torch
from anndata import AnnData
from tqdm.auto import tqdm

from tokenization import ScBertTokenizer
from tokenization.cell_batches import CellBatch, cell_batches
from tokenization.saved_weights import check_finite_weights

from ..loading import load_checked_model
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
    tokenization.saved_weights.DamagedWeightsError
        When saved tensors are missing or of another kind, or the weights are not finite (a ``ValueError``).
    """
    tokenizer = ScBertTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
    try:
        model = load_checked_model(model_class, name_or_path, revision=revision, local_files_only=local_files_only)
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
        For a model object without ``tokenizer=``, or a model whose panel is not the tokenizer's; damaged weights
        (``tokenization.saved_weights.DamagedWeightsError``: missing, mistyped or non-finite).
    """
    if isinstance(model, (str, PathLike)):
        name = str(model)
        if tokenizer is None:
            model, tokenizer = load_annotator(model, model_class=model_class)
        else:
            model = load_checked_model(model_class, model)
    else:
        name = getattr(model, "name_or_path", "") or type(model).__name__
        if tokenizer is None:
            raise ValueError(
                f"Pass tokenizer= with a model object ({type(model).__name__}), or pass the model's folder or Hub id, "
                "whose tokenizer is loaded with it."
            )
        check_finite_weights(model, source=name)
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


def check_writable(adata: AnnData, *, copy: bool) -> None:
    """Refuse what :func:`adata_to_write` would refuse, before any work.

    A view of a backed AnnData (``backed[mask]``) is accepted: :func:`adata_to_write` loads only its rows.

    Raises
    ------
    ValueError
        For ``copy=True`` on a backed AnnData that is not a view (the copy would load it whole into memory).
    """
    if copy and adata.isbacked and not adata.is_view:
        raise ValueError(
            "copy=True would load the whole backed AnnData into memory; annotate it in place (copy=False; the "
            "file itself is not changed) or load it first with adata.to_memory()."
        )


def adata_to_write(adata: AnnData, *, copy: bool) -> AnnData:
    """The AnnData to write results into: a copy with ``copy=True``, else ``adata`` itself (a view made actual).

    A view of a backed AnnData cannot be copied by anndata; its rows are read from the file into memory instead
    (``adata.to_memory()``, the view's rows only), as the copy or as the actual AnnData the view becomes. The file is
    never changed.

    Raises
    ------
    ValueError
        For ``copy=True`` on a backed AnnData that is not a view (the copy would load it whole into memory).
    """
    check_writable(adata, copy=copy)
    backed_view = adata.is_view and adata.isbacked
    if copy:
        return adata.to_memory() if backed_view else adata.copy()
    if backed_view:
        warnings.warn(
            f"Received a view of a backed AnnData; loading its {adata.n_obs} rows into memory (adata.to_memory()) to "
            "make it an actual AnnData to write into. The file is not changed.",
            UserWarning,
            2,
        )
        adata._init_as_actual(adata.to_memory())
    elif adata.is_view:
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
    return_values: bool = False,
) -> Iterator[CellBatch]:
    """This process's rows (all rows for one process) in batches, :func:`tokenization.cell_batches.cell_batches`
    over this process's share, with a progress bar.

    Reading is planned when this is called (alignment with its overlap report, input-kind detection and their
    errors), before any batch.

    Parameters
    ----------
    adata
        The cells.
    tokenizer
        The model's tokenizer.
    batch_size, chunk_size
        Cells per batch; cells read and encoded at a time.
    progress
        Show a progress bar (only the main process does); by default when there is more than one batch.
    desc
        The progress bar's label.
    encode_kwargs
        How to read the cells, as for :meth:`ScBertTokenizer.iter_encoded`.
    processes
        The processes that share the cells; this one alone when ``None``.
    return_values
        Give :class:`~tokenization.cell_batches.ValuedCellBatch` es, with the log-normalised values the novelty
        score reads.

    Returns
    -------
    An iterator of :class:`~tokenization.cell_batches.CellBatch`, ``(start, end, input_ids, detected_genes)``, rows
    indexed in the whole of ``adata``.

    Raises
    ------
    ValueError
        For ``batch_size`` below 1, and cells that cannot be read (see :meth:`ScBertTokenizer.iter_encoded`).
    """
    processes = InferenceProcesses() if processes is None else processes
    start, end = processes.shard(adata.n_obs)
    batches = cell_batches(
        tokenizer,
        adata,
        batch_size=batch_size,
        chunk_size=chunk_size,
        start=start,
        end=end,
        return_values=return_values,
        **encode_kwargs,
    )
    # One progress bar, the main process's (its share is as large as any other's, give or take a cell).
    show = (end - start > batch_size if progress is None else progress) and processes.is_main
    return _with_progress(batches, total=end - start, desc=desc, show=show)


def _with_progress(batches: Iterator[CellBatch], *, total: int, desc: str, show: bool) -> Iterator[CellBatch]:
    with tqdm(total=total, unit="cells", desc=desc, disable=not show) as bar:
        for batch in batches:
            yield batch
            bar.update(batch.end - batch.start)


__all__ = [
    "DTYPES",
    "adata_to_write",
    "autocast",
    "check_writable",
    "dtype_name",
    "encoded_batches",
    "inference_device",
    "label_names",
    "load_annotator",
    "resolve_model",
]
