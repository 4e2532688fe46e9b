"""AnnData -> Hugging Face ``datasets`` -> batches: the encoded cells stored sparse, split, and densified per batch.

- The columns: one row per cell, its non-zero tokens as ``gene_indices`` (int32) and ``bins`` (uint8), its
  ``cell_id`` and, for a labelled dataset, a ``ClassLabel`` column ``label`` (:func:`dataset_features`; the labels
  by :func:`tokenization.label_rules.cell_labels`).
- Building a dataset: :func:`to_dataset` encodes and writes the cells a chunk at a time (memory-mapped from disk, or
  saved with ``save_to_disk``), and a corpus of many inputs one input at a time (:mod:`tokenization.corpus`);
  :func:`to_iterable_dataset` streams them, encoding as they are read.
- :func:`stratified_split` holds out cells class by class.
- The collators densify a batch of rows into ``input_ids``: :class:`DataCollatorForMaskedExpression` (masked for
  pretraining, with the published rule) and :class:`DataCollatorForCellClassification`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from anndata import AnnData

from .atomic_files import atomic_path, process_tag, remove_stale_working_folders
from .cell_digest import encoding_digest
from .corpus import CORPUS_REPORT_FILE, CorpusItem, CorpusPlan, is_corpus, plan_corpus
from .encoding import encode_chunks, plan_encoding
from .label_rules import cell_labels
from .reading import ScBertReadingArguments, takes_reading_options
from .tokenization_scbert import ENCODING_CHUNK_CELLS, ScBertTokenizer

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# The columns of an encoded dataset
# ---------------------------------------------------------------------------------------------------------------------


GENE_INDICES, BINS, LABEL, CELL_ID, SOURCE = "gene_indices", "bins", "label", "cell_id", "source"


def dataset_features(label_names: Sequence[str] | None, *, source: bool = False):
    """The ``datasets.Features`` of an encoded dataset; with a ``ClassLabel`` column ``label`` when ``label_names``
    are given, and a column ``source`` (each cell's input) with ``source`` (a corpus)."""
    import datasets

    columns = {
        GENE_INDICES: datasets.List(datasets.Value("int32")),
        BINS: datasets.List(datasets.Value("uint8")),
        CELL_ID: datasets.Value("string"),
    }
    if source:
        columns[SOURCE] = datasets.Value("string")
    if label_names is not None:
        columns[LABEL] = datasets.ClassLabel(names=list(label_names))
    return datasets.Features(columns)


def record_batch(
    schema: pa.Schema, tokens: Any, cell_ids: np.ndarray, labels: np.ndarray | None, source: str | None = None
) -> pa.RecordBatch:
    """One Arrow record batch of encoded cells: ``tokens`` (CSR, as ``iter_encoded`` yields it) with their ids, their
    input's name (``source``, for a corpus) and class ids, in the columns of ``schema``."""
    offsets = pa.array(tokens.indptr.astype(np.int32))
    arrays = [
        pa.ListArray.from_arrays(offsets, pa.array(tokens.indices.astype(np.int32, copy=False))),
        pa.ListArray.from_arrays(offsets, pa.array(tokens.data.astype(np.uint8, copy=False))),
        pa.array(cell_ids.astype(str), type=pa.string()),
    ]
    if source is not None:
        arrays.append(pa.array([source] * len(cell_ids), type=pa.string()))
    if labels is not None:
        arrays.append(pa.array(labels, type=pa.int64()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------------------------------------------------------------
# Building a dataset
# ---------------------------------------------------------------------------------------------------------------------


# Largest Arrow file written, both while encoding and in the saved folder (``save_to_disk``'s default).
MAX_SHARD_BYTES = 500 * 1024**2


@takes_reading_options
def to_dataset(
    adata: AnnData | CorpusItem | Sequence[CorpusItem],
    *,
    tokenizer: ScBertTokenizer,
    label_key: str | None = None,
    label_names: Sequence[str] | None = None,
    drop_missing_labels: bool = False,
    merge_label_variants: bool = False,
    output_dir: str | PathLike | None = None,
    cache_dir: str | PathLike | None = None,
    batch_size: int = ENCODING_CHUNK_CELLS,
    progress: bool | None = None,
    reading: ScBertReadingArguments | None = None,
    **read_options: Any,
):
    """Encode an AnnData, or a corpus of many, into a ``datasets.Dataset`` with one sparse row per cell.

    Cells are read, encoded and written ``batch_size`` at a time as Arrow record batches, so memory stays bounded
    for a backed ``.h5ad`` larger than RAM; the result is memory-mapped from disk. The encoding is the tokenizer's
    (:meth:`ScBertTokenizer.iter_encoded`), so the rows hold exactly the tokens it gives.

    A corpus (see :mod:`tokenization.corpus`) is aligned to the tokenizer's one panel input by input (each with its
    own genes; :func:`~tokenization.corpus.tokenizer_from_corpus` builds a panel from it) and every input is checked
    before the first cell is encoded. The inputs are then encoded one at a time, each into a folder of its own that
    is published whole (``scbert-corpus-input-<digest>``, in ``cache_dir``, else beside ``output_dir``): a run killed
    half-way and run again opens the inputs it finished instead of encoding them again, and gives the same rows. The
    rows carry their input's name in a column ``source``; the panel report (:class:`~tokenization.corpus.
    CorpusReport`) is logged, and saved in ``output_dir`` as ``corpus_report.json``.

    Parameters
    ----------
    adata
        The cells (in memory or backed); or a corpus: ``.h5ad`` files, a folder of them, a glob pattern, AnnData
        objects, or a list of these. Never modified.
    tokenizer
        Gives the panel and the binning rule.
    label_key
        ``.obs`` column with the cell labels, stored as a ``ClassLabel`` column ``label``.
    label_names
        Class names in id order (e.g. a fine-tuned model's ``id2label``); by default the column's categories that
        some cell has (in category order), or its sorted unique values.
    drop_missing_labels
        Leave out the cells without a label (NaN, or a text such as ``'nan'`` / ``'None'`` that ``.astype(str)``
        makes of one; logged at WARNING with their count) instead of refusing them: they are not in the dataset.
    merge_label_variants
        Merge spellings of one label that differ only by whitespace or case (``'T cell'``, ``'T cell '``,
        ``'t cell'``) into the most frequent one (logged at WARNING) instead of refusing them. The label rule is
        :mod:`tokenization.label_rules`'.
    output_dir
        Save the dataset here with ``Dataset.save_to_disk`` (reload with ``datasets.load_from_disk``). The cells are
        first written to Arrow files in a hidden folder beside it, removed afterwards; the saved folder is built
        under a temporary name and renamed into place, so a crash never leaves a half-written dataset.
    cache_dir
        Where the Arrow files go when ``output_dir`` is ``None``, kept there and reused: a folder
        ``scbert-dataset-<digest>`` named by what the encoding reads (the cells' content, or a backed file's identity
        and modification time; labels and classes; the tokenizer's panel and binning; the reading options; see
        :mod:`tokenization.cell_digest`), published whole, so the same encoding asked again (another run, another
        process) opens it instead of encoding again. Remove the folder when done. By default they are working files in
        the ``datasets`` cache
        (``$HF_DATASETS_CACHE/scbert/.scbert-dataset-<host>-<pid>-*``), removed at the end of the enclosing
        :func:`working_files` block (``finetune`` and ``pretrain`` are one), else when the process exits; those of a
        killed process are removed by the next call on the same host.
    batch_size
        Cells read, encoded and written at a time, as one Arrow record batch (:data:`ENCODING_CHUNK_CELLS` by
        default); it bounds the memory used and never changes the rows. Not a training batch.
    progress
        Show a progress bar; by default only for more than ten chunks.
    {reading_options}

    Returns
    -------
    The dataset, with columns ``gene_indices``, ``bins``, ``cell_id``, (for a corpus) ``source`` and (with
    ``label_key``) ``label``.

    Raises
    ------
    FileExistsError
        When ``output_dir`` exists and is not an empty folder.
    FileNotFoundError
        For a corpus file that does not exist, a folder without ``.h5ad`` files or a pattern that matches none.
    ValueError
        For a ``label_key`` that is not an ``.obs`` column, missing labels, spellings of one label, labels not in
        ``label_names``, and whatever :meth:`ScBertTokenizer.__call__` refuses (too few panel genes, values that are
        not counts or (log-)normalised values, ...).
    TypeError
        For reading options that do not fit the input, as :meth:`ScBertTokenizer.__call__` says, an unknown keyword,
        and ``reading`` together with reading options by name.
    """
    import datasets

    reading = ScBertReadingArguments.from_kwargs(read_options, caller="to_dataset", reading=reading)
    if output_dir is not None:
        output_dir = Path(output_dir)
        if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
            raise FileExistsError(
                f"output_dir {str(output_dir)!r} already exists and is not an empty folder; pass a new path or "
                "delete it first."
            )
    labelling = {"label_key": label_key, "drop_missing_labels": drop_missing_labels}
    labelling["merge_label_variants"] = merge_label_variants
    if is_corpus(adata):
        plan = plan_corpus(adata, tokenizer=tokenizer, label_names=label_names, reading=reading, **labelling)
        where = {"output_dir": output_dir, "cache_dir": cache_dir}
        return _corpus_dataset(plan, tokenizer=tokenizer, batch_size=batch_size, progress=progress, **where)
    label_names, labels = cell_labels(adata, label_names=label_names, **labelling)
    features = dataset_features(label_names)
    chunks = tokenizer.iter_encoded(adata, batch_size=batch_size, progress=progress, reading=reading)
    write = functools.partial(
        _write_shards,
        chunks=chunks,
        features=features,
        cell_ids=adata.obs_names,
        labels=labels,
        max_shard_bytes=MAX_SHARD_BYTES,
    )
    if output_dir is None:
        # The Arrow files stay in this folder: the dataset returned is memory-mapped from them.
        if cache_dir is not None:
            digest = encoding_digest(
                adata, tokenizer=tokenizer, options=reading.tokenizer_kwargs(), label_names=label_names, labels=labels
            )
            return _cached_dataset(Path(cache_dir) / f"scbert-dataset-{digest[:32]}", write=write, features=features)
        work_dir = _new_working_folder(Path(datasets.config.HF_DATASETS_CACHE) / "scbert")
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
        _save_to_disk(dataset, staging)
        del dataset  # its Arrow files are memory-mapped from the folder about to be removed
    return datasets.load_from_disk(str(output_dir))


def _save_to_disk(dataset: Any, folder: Path) -> None:
    """``save_to_disk`` in files of at most :data:`MAX_SHARD_BYTES`; without cells, datasets would plan zero files
    and the folder would not load: one file, empty."""
    shards = {"num_shards": 1} if len(dataset) == 0 else {"max_shard_size": MAX_SHARD_BYTES}
    dataset.save_to_disk(str(folder), **shards)


def _corpus_dataset(
    plan: CorpusPlan, *, tokenizer: Any, output_dir: Path | None, cache_dir: Any, batch_size: int, progress: Any
):
    """:func:`to_dataset` of a planned corpus: each input encoded into a folder of its own (named by its digest,
    published whole, opened instead of encoded when there), one after another, then saved as one dataset."""
    import datasets

    features = dataset_features(plan.label_names, source=True)
    if cache_dir is not None:
        work = Path(cache_dir)
    elif output_dir is not None:  # beside it, under a name that a rerun finds: it resumes where this run stopped
        work = output_dir.parent / f".{output_dir.name}.scbert-inputs"
    else:
        work = _new_working_folder(Path(datasets.config.HF_DATASETS_CACHE) / "scbert")
    parts = []
    for item in plan.inputs:
        chunks = encode_chunks(item.plan, tokenizer=tokenizer, chunk_cells=batch_size, progress=progress)
        write = functools.partial(
            _write_shards, chunks=chunks, features=features, cell_ids=item.adata.obs_names, labels=item.labels
        )
        write = functools.partial(write, max_shard_bytes=MAX_SHARD_BYTES, source=item.source)
        parts.append(_cached_dataset(work / f"scbert-corpus-input-{item.digest[:32]}", write=write, features=features))
    dataset = datasets.concatenate_datasets(parts)
    if output_dir is None:
        return dataset
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir, directory=True) as staging:
        _save_to_disk(dataset, staging)
        plan.report.save(staging / CORPUS_REPORT_FILE)
    del dataset, parts  # memory-mapped from the folder about to be removed
    if cache_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return datasets.load_from_disk(str(output_dir))


_WORKING_PREFIX = ".scbert-dataset-"
# This process's working folders in the datasets cache, oldest first (removed by working_files and at exit).
_working_folders: list[Path] = []


def _new_working_folder(parent: Path) -> Path:
    """A new working folder of this process under ``parent``, named with :func:`process_tag`; the folders that
    killed processes of this host left there are removed first."""
    parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_working_folders(parent, _WORKING_PREFIX):
        logger.info("Removed %s, encoded cells left by a process that no longer runs.", stale)
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=f"{_WORKING_PREFIX}{process_tag()}-"))
    if not _working_folders:
        atexit.register(_remove_working_folders, 0)
    _working_folders.append(folder)
    return folder


def _remove_working_folders(keep: int) -> None:
    """Remove this process's working folders but the first ``keep``. Only this process's: another process (torchrun)
    encodes into folders of its own."""
    while len(_working_folders) > keep:
        shutil.rmtree(_working_folders.pop(), ignore_errors=True)


@contextlib.contextmanager
def working_files() -> Iterator[None]:
    """Remove the datasets that :func:`to_dataset` encodes into the ``datasets`` cache inside this block (no
    ``output_dir``, no ``cache_dir``) when it ends, by success or failure; usable as a decorator (``finetune``,
    ``pretrain``). Datasets made in the block that are still in use stay readable in this process (their files are
    memory-mapped; Linux keeps removed files for the maps that hold them), but cannot be mapped or reopened anew."""
    keep = len(_working_folders)
    try:
        yield
    finally:
        _remove_working_folders(keep)


def _cached_dataset(folder: Path, *, write: Any, features: Any):
    """The dataset in ``folder`` of a named cache: opened when it is there, else encoded into it and published whole
    (a run killed while encoding leaves no folder under that name; of two runs encoding it at once, one publishes and
    both open its)."""
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_path(folder, directory=True, replace=False) as staging:
                dataset = write(staging)
                del dataset  # memory-mapped from the staging folder, about to be renamed
        except FileExistsError:
            if not folder.is_dir():
                raise
            logger.info("%s was encoded by another run meanwhile; using it.", folder)
    else:
        logger.info("Reusing the cells encoded in %s.", folder)
    return _open_shards(sorted(folder.glob("shard-*.arrow")), features=features)


def _open_shards(paths: Sequence[Path], *, features: Any):
    """Arrow files written by :func:`_write_shards`, memory-mapped as one dataset."""
    import datasets

    info = datasets.DatasetInfo(features=features)
    return datasets.concatenate_datasets([datasets.Dataset.from_file(str(path), info=info) for path in paths])


def _write_shards(
    directory: Path,
    *,
    chunks: Iterator[tuple[int, int, Any]],
    features: Any,
    cell_ids: Sequence[str],
    labels: np.ndarray | None,
    max_shard_bytes: int,
    source: str | None = None,
):
    """Stream record batches into Arrow files of at most about ``max_shard_bytes`` each; open them as one dataset."""
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
            batch_ids, batch_labels = cell_ids[start:end], None if labels is None else labels[start:end]
            if batch_labels is not None and (batch_labels < 0).any():  # cells without a label, left out
                kept = batch_labels >= 0
                tokens, batch_ids, batch_labels = tokens[kept], batch_ids[kept], batch_labels[kept]
            writer.write_batch(record_batch(schema, tokens, batch_ids, batch_labels, source))
        if writer is None:  # no cells: still write one empty shard so the dataset has its columns
            paths.append(directory / "shard-00000.arrow")
            sink = pa.OSFile(str(paths[-1]), "wb")
            writer = pa.ipc.new_stream(sink, schema)
    finally:
        if writer is not None:
            writer.close()
            sink.close()
    return _open_shards(paths, features=features)


def _generate_cells(
    shards: list[tuple[int, int]], *, tokenizer: ScBertTokenizer, plan: Any, chunk_cells: int, cell_ids, labels
) -> Iterator[dict[str, Any]]:
    """The rows of :func:`to_iterable_dataset`, one cell at a time, for the given shards (row ranges)."""
    for shard_start, shard_end in shards:
        for start, _, tokens in encode_chunks(
            plan, tokenizer=tokenizer, chunk_cells=chunk_cells, progress=False, start=shard_start, end=shard_end
        ):
            indptr = tokens.indptr
            for i in range(tokens.shape[0]):
                if labels is not None and labels[start + i] < 0:  # a cell without a label, left out
                    continue
                row = {
                    GENE_INDICES: tokens.indices[indptr[i] : indptr[i + 1]],
                    BINS: tokens.data[indptr[i] : indptr[i + 1]],
                    CELL_ID: str(cell_ids[start + i]),
                }
                if labels is not None:
                    row[LABEL] = int(labels[start + i])
                yield row


@takes_reading_options
def to_iterable_dataset(
    adata: AnnData,
    *,
    tokenizer: ScBertTokenizer,
    label_key: str | None = None,
    label_names: Sequence[str] | None = None,
    drop_missing_labels: bool = False,
    merge_label_variants: bool = False,
    num_shards: int | None = None,
    batch_size: int = ENCODING_CHUNK_CELLS,
    reading: ScBertReadingArguments | None = None,
    **read_options: Any,
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
    label_key, label_names, drop_missing_labels, merge_label_variants
        As for :func:`to_dataset`.
    num_shards
        Contiguous row ranges to split the cells into; one per ``batch_size`` cells by default.
    batch_size
        Cells read and encoded at a time within a shard (:data:`ENCODING_CHUNK_CELLS` by default); it bounds the
        memory used and never changes the rows. Not a training batch.
    {reading_options}

    Returns
    -------
    The iterable dataset, with the columns of :func:`to_dataset`.

    Raises
    ------
    ValueError
        For ``num_shards`` or ``batch_size`` below 1, label problems (as :func:`to_dataset`), and whatever
        :meth:`ScBertTokenizer.__call__` refuses; raised here, before any cell is streamed.
    TypeError
        For reading options that do not fit the input, an unknown keyword, and ``reading`` together with reading
        options by name.
    """
    import datasets

    reading = ScBertReadingArguments.from_kwargs(read_options, caller="to_iterable_dataset", reading=reading)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of cells per chunk; got {batch_size}.")
    label_names, labels = cell_labels(
        adata,
        label_key=label_key,
        label_names=label_names,
        drop_missing_labels=drop_missing_labels,
        merge_label_variants=merge_label_variants,
    )
    plan = plan_encoding(adata, tokenizer=tokenizer, reading=reading)
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
        chunk_cells=batch_size,
        cell_ids=np.asarray(adata.obs_names),
        labels=labels,
    )
    return datasets.IterableDataset.from_generator(
        generator, features=dataset_features(label_names), gen_kwargs={"shards": shards}
    )


# ---------------------------------------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------------------------------------


def stratified_eval_mask(labels: np.ndarray, eval_fraction: float, *, seed: int) -> np.ndarray:
    """The cells :func:`stratified_split` holds out, as a boolean mask over ``labels`` ``(cells,)`` (its rule)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    eval_mask = np.zeros(len(labels), dtype=bool)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        n = len(members)
        if n < 2:
            continue
        n_eval = min(n - 1, max(1, math.floor(n * eval_fraction + 0.5)))
        eval_mask[rng.choice(members, size=n_eval, replace=False)] = True
    return eval_mask


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
    eval_mask = stratified_eval_mask(dataset.data.column(label_column).to_numpy(), eval_fraction, seed=seed)
    return datasets.DatasetDict(
        {"train": dataset.select(np.flatnonzero(~eval_mask)), "eval": dataset.select(np.flatnonzero(eval_mask))}
    )


# ---------------------------------------------------------------------------------------------------------------------
# Densifying a batch: the collators
# ---------------------------------------------------------------------------------------------------------------------


# The label of positions the loss ignores (not selected for masking), as transformers' losses expect.
IGNORE_INDEX = -100


def _gather(features: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate a batch's sparse rows: (cell of each entry, gene position, token)."""
    indices = [np.asarray(f[GENE_INDICES], dtype=np.int64) for f in features]
    bins = [np.asarray(f[BINS], dtype=np.int64) for f in features]
    lengths = np.fromiter((len(i) for i in indices), dtype=np.int64, count=len(indices))
    for i, (idx, b) in enumerate(zip(indices, bins, strict=True)):
        if len(idx) != len(b):
            raise ValueError(f"Cell {i} of the batch has {len(idx)} gene_indices but {len(b)} bins.")
    cells = np.repeat(np.arange(len(features)), lengths)
    if not indices:
        return cells, np.zeros(0, np.int64), np.zeros(0, np.int64)
    return cells, np.concatenate(indices), np.concatenate(bins)


def _dense(cells: np.ndarray, genes: np.ndarray, bins: np.ndarray, *, num_cells: int, num_genes: int) -> np.ndarray:
    """The dense ``input_ids`` of a batch from its concatenated sparse rows (see :func:`_gather`)."""
    if genes.size and (genes.min() < 0 or genes.max() >= num_genes):
        raise ValueError(
            f"gene_indices must lie in [0, {num_genes}) for a panel of {num_genes} genes; got values from "
            f"{genes.min()} to {genes.max()}. Was the dataset built with a different tokenizer?"
        )
    input_ids = np.zeros((num_cells, num_genes + 1), dtype=np.int64)
    input_ids.reshape(-1)[cells * (num_genes + 1) + genes] = bins
    return input_ids


def densify(features: Sequence[Mapping[str, Any]], *, num_genes: int) -> torch.Tensor:
    """Turn sparse rows (``gene_indices``, ``bins``) into ``input_ids`` of shape ``(len(features), num_genes + 1)``.

    Parameters
    ----------
    features
        Rows of a dataset from :func:`~tokenization.data.to_dataset`.
    num_genes
        Panel length.

    Returns
    -------
    int64 tensor; the appended last token is ``0``.

    Raises
    ------
    ValueError
        For a row whose ``gene_indices`` and ``bins`` differ in length, or gene indices outside the panel (a dataset
        built with another tokenizer).
    """
    cells, genes, bins = _gather(features)
    return torch.from_numpy(_dense(cells, genes, bins, num_cells=len(features), num_genes=num_genes))


@dataclass
class DataCollatorForMaskedExpression:
    """Densify a batch and mask it for masked-expression pretraining, with the published rule.

    Per cell, only non-zero tokens are eligible; ``ceil(mask_probability * n_nonzero)`` of them are selected
    uniformly at random; each selected token becomes ``mask_token_id`` with probability ``replace_probability`` and
    otherwise keeps its value (no random tokens). ``labels`` hold the original token at selected positions and
    ``-100`` elsewhere. The appended last token is zero and so never selected.

    Parameters
    ----------
    num_genes
        Panel length (``tokenizer.num_genes``); sequences have ``num_genes + 1`` tokens.
    mask_probability
        Fraction of each cell's non-zero tokens selected (rounded up).
    replace_probability
        Probability that a selected token is replaced by the mask token.
    mask_token_id
        The mask token (``tokenizer.mask_token_id``).
    seed
        Seed of the collator's generator, for reproducible masks; random when ``None``.
    generator
        A ``torch.Generator`` to draw from instead (``seed`` is then ignored).

    Raises
    ------
    ValueError
        When built, for probabilities out of range; when called, as :func:`densify`.
    """

    num_genes: int
    mask_probability: float = 0.15
    replace_probability: float = 0.9
    mask_token_id: int = 6
    seed: int | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.mask_probability <= 1:
            raise ValueError(f"mask_probability must lie in (0, 1]; got {self.mask_probability}.")
        if not 0 <= self.replace_probability <= 1:
            raise ValueError(f"replace_probability must lie in [0, 1]; got {self.replace_probability}.")
        if self.generator is None:
            self.generator = torch.Generator()
            if self.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.seed)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Densify and mask a batch of rows.

        Parameters
        ----------
        features
            Rows of a dataset from :func:`to_dataset` (``gene_indices`` and ``bins``; other columns are ignored).

        Returns
        -------
        ``input_ids`` (masked) and ``labels`` (the original token at selected positions, ``-100`` elsewhere), int64
        tensors of shape ``(len(features), num_genes + 1)``.

        Raises
        ------
        ValueError
            As :func:`densify`.
        """
        cells, genes, bins = _gather(features)
        input_ids = _dense(cells, genes, bins, num_cells=len(features), num_genes=self.num_genes)
        nonzero = bins != 0
        if not nonzero.all():
            cells, genes, bins = cells[nonzero], genes[nonzero], bins[nonzero]
        lengths = np.bincount(cells, minlength=len(features))
        # Python float arithmetic, so a count like 0.15 * 20 rounds up exactly as math.ceil would.
        num_selected = np.ceil(self.mask_probability * lengths).astype(np.int64)

        # Sorting (cell + uniform score) shuffles each cell's entries independently while keeping cells apart;
        # the first num_selected entries of each cell are then a uniform random subset of its non-zero tokens.
        draws = torch.rand(2, len(cells), generator=self.generator, dtype=torch.float64).numpy()
        order = np.argsort(cells + draws[0])
        starts = np.cumsum(lengths) - lengths
        rank = np.arange(len(cells)) - starts[cells]
        selected = np.zeros(len(cells), dtype=bool)
        selected[order[rank < num_selected[cells]]] = True
        replace = selected & (draws[1] < self.replace_probability)

        stride = self.num_genes + 1
        labels = np.full_like(input_ids, IGNORE_INDEX)
        labels.reshape(-1)[cells[selected] * stride + genes[selected]] = bins[selected]
        input_ids.reshape(-1)[cells[replace] * stride + genes[replace]] = self.mask_token_id
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}


@dataclass
class DataCollatorForCellClassification:
    """Densify a batch for cell-type classification.

    Parameters
    ----------
    num_genes
        Panel length (``tokenizer.num_genes``).
    label_column
        Feature holding the class id; when absent from the batch (prediction), no ``labels`` are returned.

    Raises
    ------
    ValueError
        When called, as :func:`densify`.
    """

    num_genes: int
    label_column: str = LABEL

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Densify a batch of rows.

        Parameters
        ----------
        features
            Rows of a dataset from :func:`to_dataset`.

        Returns
        -------
        ``input_ids`` (int64, shape ``(len(features), num_genes + 1)``) and, when the rows have ``label_column``,
        ``labels`` (int64, shape ``(len(features),)``).

        Raises
        ------
        ValueError
            As :func:`densify`.
        """
        batch = {"input_ids": densify(features, num_genes=self.num_genes)}
        if features and self.label_column in features[0]:
            batch["labels"] = torch.tensor([int(f[self.label_column]) for f in features], dtype=torch.int64)
        return batch


__all__ = [
    "DataCollatorForCellClassification",
    "DataCollatorForMaskedExpression",
    "IGNORE_INDEX",
    "MAX_SHARD_BYTES",
    "dataset_features",
    "densify",
    "record_batch",
    "stratified_eval_mask",
    "stratified_split",
    "to_dataset",
    "to_iterable_dataset",
    "working_files",
]
