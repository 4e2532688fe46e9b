"""Which genes drew the model's attention, per cell type, written back into AnnData.

For every cell, :func:`modeling_scbert.gene_attention` gives the attention each gene receives in one layer (the FAVOR+
attention matrix's column means, over queries and heads, computed in linear time). :func:`gene_attention_scores`
averages these over the cells of each type (the model's predicted type, or an ``.obs`` column) and writes a genes x
types matrix into ``.varm``; :func:`top_attention_genes` turns it into a table of the top genes per type. Cells are
streamed as in :func:`~modeling_scbert.annotate.annotate`, so a backed ``.h5ad`` larger than memory works in bounded
memory.
"""

from __future__ import annotations

import logging
from os import PathLike
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from transformers import AutoConfig

from tokenization import ScBertTokenizer
from tokenization.cell_batches import INFERENCE_BATCH_CELLS
from tokenization.genes import align_genes
from tokenization.genes import load_synonyms as _load_synonyms
from tokenization.reading import ScBertReadingArguments, takes_reading_options
from tokenization.reading import adata_gene_names as _gene_names
from tokenization.tokenization_scbert import ENCODING_CHUNK_CELLS

from ..modeling_scbert import ScBertForSequenceClassification, ScBertModel, ScBertPreTrainedModel, gene_attention
from .inference import (
    adata_to_write,
    encoded_batches,
    inference_device,
    label_names,
    resolve_model,
)

logger = logging.getLogger(__name__)


def _groups(adata: AnnData, groupby: str) -> tuple[np.ndarray, list[str]]:
    """Group index per cell (-1 for a missing value) and the group names, from an ``.obs`` column."""
    if groupby not in adata.obs.columns:
        raise ValueError(
            f"groupby={groupby!r} is not a column of .obs; the columns are {list(adata.obs.columns)}. Pass one of "
            "them, or groupby=None to group the cells by the model's predicted type."
        )
    column = adata.obs[groupby]
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = [str(name) for name in column.cat.categories]
        return column.cat.codes.to_numpy().astype(np.int64), names
    values = column.astype(object)
    present = values.notna().to_numpy()
    names = sorted({str(value) for value in values[present]})
    index = {name: i for i, name in enumerate(names)}
    return np.asarray([index[str(value)] if keep else -1 for value, keep in zip(values, present)]), names


@takes_reading_options
def gene_attention_scores(
    adata: AnnData,
    model: ScBertPreTrainedModel | str | PathLike,
    *,
    tokenizer: ScBertTokenizer | str | PathLike | None = None,
    groupby: str | None = None,
    attention_layer: int = -1,
    key_added: str = "scbert_attention",
    batch_size: int = INFERENCE_BATCH_CELLS,
    device: str | torch.device | None = None,
    chunk_size: int = ENCODING_CHUNK_CELLS,
    progress: bool | None = None,
    copy: bool = False,
    **read_options: Any,
) -> AnnData | None:
    """Mean attention each gene receives, per cell type.

    Parameters
    ----------
    adata
        The cells, in memory or backed (only ``.varm`` and ``.uns`` are written, in memory, never the file).
    model
        A fine-tuned :class:`ScBertForSequenceClassification` (or its folder or Hub id) to group the cells by their
        predicted type; with ``groupby``, any scBERT model.
    tokenizer
        The model's tokenizer; needed with a model object.
    groupby
        An ``.obs`` column of cell types to group by (cells with a missing value are skipped); ``None`` groups by the
        model's predicted type (the most likely class, no threshold).
    attention_layer
        Which layer's attention (0-based; ``-1``, the default, is the last).
    key_added
        Writes ``.varm[key_added]`` and ``.uns[key_added]``.
    batch_size, device, chunk_size, progress, copy
        As for :func:`~modeling_scbert.annotation.annotate.annotate`. Of the reading options below, ``use_raw`` is
        refused: ``.varm`` is indexed by ``adata.var``.
    {reading_options}

    Returns
    -------
    ``None``, or the copy with ``copy=True``. Written (with ``key_added="scbert_attention"``):

    - ``.varm['scbert_attention']``: float32 ``(n_vars, n_types)``, the attention a gene receives in a cell (a cell's
      genes sum to 1 over the panel), averaged over the cells of each type; NaN for genes outside the model's panel
      and for types without cells. Its columns are ``.uns['scbert_attention']['cell_types']``.
    - ``.uns['scbert_attention']``: ``cell_types``, ``n_cells`` (cells per type), ``sequence_length`` (tokens per
      cell, so ``score * sequence_length`` is attention relative to uniform) and ``params`` (``model``, ``groupby``
      or ``"predicted"``, ``attention_layer``, ``batch_size``, ``layer``, ``gene_key``, ``input_kind``).

    Raises
    ------
    ValueError
        When ``groupby`` is not an ``.obs`` column, ``attention_layer`` does not exist, ``use_raw`` is set, or the
        cells cannot be read (as for ``annotate``).
    TypeError
        When ``groupby`` is ``None`` and the model has no classification head.
    """
    reading = ScBertReadingArguments.from_kwargs(read_options, caller="gene_attention_scores")
    if reading.use_raw:
        raise ValueError(
            "use_raw=True cannot be used here: the scores are written to .varm, which is indexed by adata.var, not "
            "adata.raw.var. Pass adata.raw.to_adata() as the AnnData instead."
        )
    model_class = ScBertForSequenceClassification if groupby is None else _saved_class(model)
    resolved, tokenizer, model_name = resolve_model(model, tokenizer, model_class=model_class)
    if groupby is None and not isinstance(resolved, ScBertForSequenceClassification):
        raise TypeError(
            f"Grouping by predicted type needs a ScBertForSequenceClassification; got a {type(resolved).__name__}. "
            "Pass groupby= an .obs column of cell types."
        )
    if groupby is not None:
        group_of_cell, type_names = _groups(adata, groupby)
    else:
        type_names = label_names(resolved)
    num_layers = resolved.config.num_hidden_layers
    if not -num_layers <= attention_layer < num_layers:
        raise ValueError(
            f"attention_layer={attention_layer} does not exist: the model has {num_layers} layers (0 to "
            f"{num_layers - 1}, or -1 for the last)."
        )
    names = _gene_names(adata, gene_key=reading.gene_key)
    data_to_panel = align_genes(tokenizer.genes, names, synonyms=_load_synonyms(reading.synonyms)).data_to_panel
    encode_kwargs = reading.tokenizer_kwargs()

    device = inference_device(device)
    resolved = resolved.to(device).eval()
    sums = np.zeros((len(type_names), tokenizer.sequence_length), dtype=np.float64)
    counts = np.zeros(len(type_names), dtype=np.int64)
    for start, end, input_ids, _ in encoded_batches(
        adata,
        tokenizer=tokenizer,
        batch_size=batch_size,
        chunk_size=chunk_size,
        progress=progress,
        desc="Gene attention",
        encode_kwargs=encode_kwargs,
    ):
        input_ids = input_ids.to(device)
        if groupby is None:
            with torch.inference_mode():
                groups = resolved(input_ids).logits.argmax(dim=-1).cpu().numpy()
        else:
            groups = group_of_cell[start:end]
        keep = groups >= 0
        if not keep.any():
            continue
        scores = gene_attention(resolved, input_ids[torch.from_numpy(keep).to(device)], layer=attention_layer)
        np.add.at(sums, groups[keep], scores.cpu().numpy().astype(np.float64))
        counts += np.bincount(groups[keep], minlength=len(type_names))

    with np.errstate(invalid="ignore", divide="ignore"):
        panel_means = (sums / counts[:, None]).T.astype(np.float32)  # (sequence_length, n_types)
    per_gene = np.full((len(names), len(type_names)), np.nan, dtype=np.float32)
    matched = data_to_panel >= 0
    per_gene[matched] = panel_means[data_to_panel[matched]]
    empty = [name for name, n in zip(type_names, counts) if n == 0]
    if empty:
        logger.info("No cells for %s: their columns are NaN.", empty)

    adata = adata_to_write(adata, copy=copy)
    adata.varm[key_added] = per_gene
    adata.uns[key_added] = {
        "cell_types": np.asarray(type_names, dtype=object),
        "n_cells": counts,
        "sequence_length": int(tokenizer.sequence_length),
        "params": {
            "model": model_name,
            "groupby": groupby or "predicted",
            "attention_layer": int(attention_layer),
            "batch_size": int(batch_size),
            **reading.params(),
        },
    }
    return adata if copy else None


def _saved_class(model: Any) -> type[ScBertPreTrainedModel]:
    """The class to load a folder with: a classifier stays a classifier (its fine-tuned encoder), anything else loads
    as the bare encoder. A model object is used as it is."""
    if isinstance(model, ScBertPreTrainedModel):
        return type(model)
    try:
        config = AutoConfig.from_pretrained(model)
    except OSError:
        return ScBertModel  # loading it reports what is missing
    architectures = getattr(config, "architectures", None) or []
    return ScBertForSequenceClassification if "ScBertForSequenceClassification" in architectures else ScBertModel


def top_attention_genes(
    adata: AnnData, *, key: str = "scbert_attention", n_genes: int = 20, gene_key: str | None = None
) -> pd.DataFrame:
    """The ``n_genes`` genes with the highest mean attention per cell type, from :func:`gene_attention_scores`.

    Parameters
    ----------
    adata
        An AnnData that :func:`gene_attention_scores` has written into.
    key
        Its ``key_added``.
    n_genes
        Genes per type.
    gene_key
        A ``.var`` column to name the genes by; ``var_names`` by default.

    Returns
    -------
    A long table with columns ``cell_type``, ``rank`` (1 = most attended), ``gene``, ``attention`` (the mean score)
    and ``relative_to_uniform`` (``attention * sequence_length``: 1 is what every token would get under uniform
    attention), ``n_cells``; types without cells are left out.

    Raises
    ------
    KeyError
        When ``.varm[key]`` or ``.uns[key]`` is missing.
    """
    if key not in adata.varm or key not in adata.uns:
        raise KeyError(f"No gene attention under {key!r}: run gene_attention_scores(adata, model, key_added={key!r}).")
    if n_genes < 1:
        raise ValueError(f"n_genes must be at least 1; got {n_genes}.")
    info = adata.uns[key]
    scores = np.asarray(adata.varm[key])
    genes = np.asarray(_gene_names(adata, gene_key=gene_key), dtype=object)
    rows = []
    for column, (cell_type, n_cells) in enumerate(zip(info["cell_types"], info["n_cells"])):
        if n_cells == 0:
            continue
        values = scores[:, column]
        valid = np.flatnonzero(~np.isnan(values))
        order = valid[np.argsort(-values[valid], kind="stable")][:n_genes]
        for rank, gene in enumerate(order, start=1):
            rows.append(
                {
                    "cell_type": str(cell_type),
                    "rank": rank,
                    "gene": str(genes[gene]),
                    "attention": float(values[gene]),
                    "relative_to_uniform": float(values[gene]) * int(info["sequence_length"]),
                    "n_cells": int(n_cells),
                }
            )
    return pd.DataFrame(rows, columns=["cell_type", "rank", "gene", "attention", "relative_to_uniform", "n_cells"])


__all__ = ["gene_attention_scores", "top_attention_genes"]
