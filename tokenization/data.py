"""AnnData -> Hugging Face ``datasets``: one sparse row per cell, encoded and written chunk by chunk.

:func:`to_dataset` writes a dataset (memory-mapped from disk, or saved with ``save_to_disk``),
:func:`to_iterable_dataset` streams one, :func:`stratified_split` holds out cells class by class. The columns are
described in :mod:`tokenization.dataset_columns`; the collators that densify a batch live in
:mod:`tokenization.collators` and are re-exported here.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from anndata import AnnData

from .atomic_files import atomic_path
from .cell_encoding import DEFAULT_BATCH_SIZE
from .chunked_encoding import encode_chunks
from .collators import DataCollatorForCellClassification, DataCollatorForMaskedExpression, densify
from .dataset_columns import BINS, CELL_ID, GENE_INDICES, LABEL, cell_labels, dataset_features, record_batch
from .encoding_plan import InputKindOption, plan_encoding
from .genes import SynonymTable
from .tokenization_scbert import ScBertTokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "DataCollatorForCellClassification",
    "DataCollatorForMaskedExpression",
    "densify",
    "stratified_split",
    "to_dataset",
    "to_iterable_dataset",
]

# Largest Arrow file written, both while encoding and in the saved folder (``save_to_disk``'s default).
MAX_SHARD_BYTES = 500 * 1024**2


def to_dataset(
    adata: AnnData,
    *,
    tokenizer: ScBertTokenizer,
    label_key: str | None = None,
    label_names: Sequence[str] | None = None,
    output_dir: str | PathLike | None = None,
    cache_dir: str | PathLike | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    input_kind: InputKindOption = "auto",
    synonyms: SynonymTable | str | PathLike | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    min_gene_overlap: float | None = None,
    progress: bool | None = None,
    use_raw: bool = False,
    min_genes: int | None = None,
):
    """Encode an AnnData into a ``datasets.Dataset`` with one sparse row per cell.

    Cells are read, encoded and written ``batch_size`` at a time as Arrow record batches, so memory stays bounded
    for a backed ``.h5ad`` larger than RAM; the result is memory-mapped from disk.

    Parameters
    ----------
    adata
        The cells (in memory or backed); never modified.
    tokenizer
        Gives the panel and the binning rule.
    label_key
        ``.obs`` column with the cell labels, stored as a ``ClassLabel`` column ``label``.
    label_names
        Class names in id order (e.g. a fine-tuned model's ``id2label``); by default the column's categories that
        some cell has (in category order), or its sorted unique values.
    output_dir
        Save the dataset here with ``Dataset.save_to_disk`` (reload with ``datasets.load_from_disk``). The cells are
        first written to Arrow files in a hidden folder beside it, removed afterwards; the saved folder is built
        under a temporary name and renamed into place, so a crash never leaves a half-written dataset.
    cache_dir
        Where the Arrow files go when ``output_dir`` is ``None``; the ``datasets`` cache by default.
    layer, gene_key, input_kind, synonyms, batch_size, min_gene_overlap, progress, use_raw, min_genes
        As for :meth:`ScBertTokenizer.__call__`.

    Returns
    -------
    The dataset, with columns ``gene_indices``, ``bins``, ``cell_id`` and (with ``label_key``) ``label``.

    Raises
    ------
    FileExistsError
        When ``output_dir`` exists and is not an empty folder.
    ValueError
        For a ``label_key`` that is not an ``.obs`` column, missing labels or labels not in ``label_names``, and
        whatever :meth:`ScBertTokenizer.__call__` refuses (too few panel genes, values that are not counts or
        (log-)normalised values, ...).
    TypeError
        For reading options that do not fit the input, as :meth:`ScBertTokenizer.__call__` says.
    """
    import datasets

    label_names, labels = cell_labels(adata, label_key=label_key, label_names=label_names)
    features = dataset_features(label_names)
    chunks = tokenizer.iter_encoded(
        adata,
        layer=layer,
        gene_key=gene_key,
        input_kind=input_kind,
        synonyms=synonyms,
        batch_size=batch_size,
        min_gene_overlap=min_gene_overlap,
        progress=progress,
        use_raw=use_raw,
        min_genes=min_genes,
    )
    if output_dir is not None:
        output_dir = Path(output_dir)
        if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
            raise FileExistsError(
                f"output_dir {str(output_dir)!r} already exists and is not an empty folder; pass a new path or "
                "delete it first."
            )
    write = functools.partial(
        _write_shards,
        chunks=chunks,
        features=features,
        cell_ids=adata.obs_names,
        labels=labels,
        max_shard_bytes=MAX_SHARD_BYTES,
    )
    if output_dir is None:
        parent = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE) / "scbert"
        parent.mkdir(parents=True, exist_ok=True)
        # The Arrow files stay in this folder: the dataset returned is memory-mapped from them.
        work_dir = Path(tempfile.mkdtemp(dir=parent, prefix=".scbert-dataset-"))
        try:
            return write(work_dir)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(
            dir=output_dir.parent, prefix=".scbert-shards-", ignore_cleanup_errors=True
        ) as shard_dir,
        atomic_path(output_dir, directory=True) as staging,
    ):
        # datasets writes its own layout from the encoded files: one more pass over the data on disk, never in memory.
        dataset = write(Path(shard_dir))
        # Without cells, datasets would plan zero files and the folder would not load: ask for one, empty.
        shards = {"num_shards": 1} if len(dataset) == 0 else {"max_shard_size": MAX_SHARD_BYTES}
        dataset.save_to_disk(str(staging), **shards)
        del dataset  # its Arrow files are memory-mapped from the folder about to be removed
    return datasets.load_from_disk(str(output_dir))


def _write_shards(
    directory: Path,
    *,
    chunks: Iterator[tuple[int, int, Any]],
    features: Any,
    cell_ids: Sequence[str],
    labels: np.ndarray | None,
    max_shard_bytes: int,
):
    """Stream record batches into Arrow files of at most about ``max_shard_bytes`` each; open them as one dataset."""
    import datasets

    schema = features.arrow_schema
    cell_ids = np.asarray(cell_ids)
    paths: list[Path] = []
    sink = writer = None
    try:
        for start, end, tokens in chunks:
            if writer is None or sink.tell() >= max_shard_bytes:
                if writer is not None:
                    writer.close()
                    sink.close()
                paths.append(directory / f"shard-{len(paths):05d}.arrow")
                sink = pa.OSFile(str(paths[-1]), "wb")
                writer = pa.ipc.new_stream(sink, schema)
            batch_labels = None if labels is None else labels[start:end]
            writer.write_batch(record_batch(schema, tokens, cell_ids[start:end], batch_labels))
        if writer is None:  # no cells: still write one empty shard so the dataset has its columns
            paths.append(directory / "shard-00000.arrow")
            sink = pa.OSFile(str(paths[-1]), "wb")
            writer = pa.ipc.new_stream(sink, schema)
    finally:
        if writer is not None:
            writer.close()
            sink.close()
    info = datasets.DatasetInfo(features=features)
    return datasets.concatenate_datasets([datasets.Dataset.from_file(str(path), info=info) for path in paths])


def _generate_cells(
    shards: list[tuple[int, int]], *, tokenizer: ScBertTokenizer, plan: Any, batch_size: int, cell_ids, labels
) -> Iterator[dict[str, Any]]:
    for shard_start, shard_end in shards:
        for start, _, tokens in encode_chunks(
            plan, tokenizer=tokenizer, batch_size=batch_size, progress=False, start=shard_start, end=shard_end
        ):
            indptr = tokens.indptr
            for i in range(tokens.shape[0]):
                row = {
                    GENE_INDICES: tokens.indices[indptr[i] : indptr[i + 1]],
                    BINS: tokens.data[indptr[i] : indptr[i + 1]],
                    CELL_ID: str(cell_ids[start + i]),
                }
                if labels is not None:
                    row[LABEL] = int(labels[start + i])
                yield row


def to_iterable_dataset(
    adata: AnnData,
    *,
    tokenizer: ScBertTokenizer,
    label_key: str | None = None,
    label_names: Sequence[str] | None = None,
    num_shards: int | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    input_kind: InputKindOption = "auto",
    synonyms: SynonymTable | str | PathLike | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    min_gene_overlap: float | None = None,
    use_raw: bool = False,
    min_genes: int | None = None,
):
    """Stream an AnnData as a ``datasets.IterableDataset``, encoding cells as they are read (nothing written).

    The cells are cut into ``num_shards`` contiguous row ranges, so ``datasets.distributed.split_dataset_by_node``
    gives each process whole shards when ``num_shards`` is a multiple of the world size (and every
    ``world_size``-th cell otherwise); either way each cell is seen exactly once across processes. Gene alignment
    and input-kind detection run once, here, so errors surface before training starts.

    Parameters
    ----------
    adata
        The cells (in memory or backed); never modified.
    tokenizer
        Gives the panel and the binning rule.
    label_key, label_names
        As for :func:`to_dataset`.
    num_shards
        Contiguous row ranges to split the cells into; one per ``batch_size`` cells by default.
    layer, gene_key, input_kind, synonyms, batch_size, min_gene_overlap, use_raw, min_genes
        As for :meth:`ScBertTokenizer.__call__`.

    Returns
    -------
    The iterable dataset, with the columns of :func:`to_dataset`.

    Raises
    ------
    ValueError
        For ``num_shards`` below 1, label problems (as :func:`to_dataset`), and whatever
        :meth:`ScBertTokenizer.__call__` refuses; raised here, before any cell is streamed.
    TypeError
        For reading options that do not fit the input.
    """
    import datasets

    label_names, labels = cell_labels(adata, label_key=label_key, label_names=label_names)
    plan = plan_encoding(
        adata,
        tokenizer=tokenizer,
        layer=layer,
        gene_key=gene_key,
        input_kind=input_kind,
        synonyms=synonyms,
        min_gene_overlap=min_gene_overlap,
        use_raw=use_raw,
        min_genes=min_genes,
    )
    n_obs = adata.n_obs
    num_shards = max(1, math.ceil(n_obs / batch_size)) if num_shards is None else num_shards
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1; got {num_shards}.")
    bounds = np.linspace(0, n_obs, min(num_shards, max(n_obs, 1)) + 1).astype(int)
    shards = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    generator = functools.partial(
        _generate_cells,
        tokenizer=tokenizer,
        plan=plan,
        batch_size=batch_size,
        cell_ids=np.asarray(adata.obs_names),
        labels=labels,
    )
    return datasets.IterableDataset.from_generator(
        generator, features=dataset_features(label_names), gen_kwargs={"shards": shards}
    )


def stratified_split(
    dataset,
    *,
    label_column: str = LABEL,
    eval_fraction: float = 0.1,
    seed: int = 0,
):
    """Split a labelled dataset into ``train`` and ``eval``, class by class.

    The rule, per class of ``n`` cells: a class with one cell goes entirely to ``train``; otherwise
    ``round(n * eval_fraction)`` cells go to ``eval``, but at least one and at most ``n - 1`` (so a class of two
    cells puts one in each split and every class in ``eval`` also appears in ``train``). Which cells go where is a
    seeded random draw; each split keeps the dataset's order.

    Parameters
    ----------
    dataset
        A ``datasets.Dataset`` with an integer (``ClassLabel``) label column.
    label_column
        The label column.
    eval_fraction
        Target fraction of each class held out, in ``(0, 1)``.
    seed
        Seed of the draw.

    Returns
    -------
    A ``datasets.DatasetDict`` with ``train`` and ``eval``.

    Raises
    ------
    ValueError
        For an ``eval_fraction`` outside ``(0, 1)`` or a ``label_column`` the dataset does not have (listing its
        columns).
    """
    import datasets

    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must lie strictly between 0 and 1; got {eval_fraction}.")
    if label_column not in dataset.column_names:
        raise ValueError(
            f"label_column={label_column!r} is not a column of the dataset; the columns are {dataset.column_names}."
        )
    labels = np.asarray(dataset.data.column(label_column).to_numpy())
    rng = np.random.default_rng(seed)
    eval_mask = np.zeros(len(labels), dtype=bool)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        n = len(members)
        if n < 2:
            continue
        n_eval = min(n - 1, max(1, math.floor(n * eval_fraction + 0.5)))
        eval_mask[rng.choice(members, size=n_eval, replace=False)] = True
    return datasets.DatasetDict(
        {"train": dataset.select(np.flatnonzero(~eval_mask)), "eval": dataset.select(np.flatnonzero(eval_mask))}
    )
