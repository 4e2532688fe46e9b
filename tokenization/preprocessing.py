"""Expression preprocessing: what a matrix holds (the input kind), the checks on its values, and the published
normalise-log-bin rule that turns a chunk of cells into tokens.

The published scBERT preprocessing, per cell, after the genes are aligned to the panel:

1. normalise to ``normalization_target`` (10,000) over the panel genes (scanpy's ``normalize_total``),
2. ``log2(1 + x)`` in float32 (scanpy's ``log1p(base=2)``),
3. clamp at ``max_bin`` (5) and truncate to an integer token.

The arithmetic in :func:`bin_expression` is scanpy's, step for step and in the same dtypes, so bin boundaries fall
exactly where the published pipeline put them.

Input kinds (:data:`INPUT_KINDS`): a matrix may hold raw or corrected counts, or values that were normalised and
maybe log-transformed. :func:`check_input_kind` detects the kind on a sample of cells, or verifies the one named,
and says how; transformed values are turned back into counts where that is exact (:func:`recover_counts`), then
renormalised over the panel genes, as the published pipeline normalised after alignment. :func:`check_chunk` refuses
NaN, infinite, negative and scaled values; :func:`low_signal` is the rule for cells with too few panel genes.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import scipy.sparse as sp

InputKind = Literal["counts", "corrected_counts", "normalized", "proportions", "log1p", "log1p_base2", "log1p_base10"]


# Every kind by name, with the words the log lines and errors use.
INPUT_KINDS: dict[str, str] = {
    "counts": "raw counts (non-negative integers)",
    "corrected_counts": "corrected counts (non-negative, non-integer, not log-transformed)",
    "normalized": "normalised values (each cell scaled to a constant total), not log-transformed",
    "proportions": "per-cell proportions (each cell scaled to a total of 1)",
    "log1p": "log1p-normalised values (natural log(1 + x) of normalised values, scanpy's default)",
    "log1p_base2": "log2(1 + x) of normalised values",
    "log1p_base10": "log10(1 + x) of normalised values",
}


# The log(1 + x) each transformed kind has to undo; None: linear values.
_LOG_BASES: dict[str, float | None] = {
    "normalized": None,
    "proportions": None,
    "log1p": math.e,
    "log1p_base2": 2.0,
    "log1p_base10": 10.0,
}


_LOG_KINDS = ("log1p", "log1p_base2", "log1p_base10")


_INVERSE_WORDS = {None: "", math.e: "expm1 ", 2.0: "2**x - 1 ", 10.0: "10**x - 1 "}


# Among the non-zero entries of scaled (z-scored) data, roughly half are negative.
_SCALED_NEGATIVE_FRACTION = 0.1


# Per-cell totals within this relative spread are one constant target (float32 storage loses ~1e-7).
_CONSTANT_TOTAL_TOLERANCE = 1e-3


# Cells whose values are not whole multiples of their smallest one (its count was not 1); more fail for a wrong kind.
_MAX_NON_MULTIPLE_FRACTION = 0.1


# log(1 + x) of a normalised value never exceeds log(1 + 1e12); larger values are not log-transformed.
_MAX_NORMALISED_VALUE = 1e12


# ---------------------------------------------------------------------------------------------------------------------
# Checking values and input kinds (on a sample of cells), and undoing transforms
# ---------------------------------------------------------------------------------------------------------------------


def check_chunk(values: np.ndarray, *, source: str, hint: str = "", start: int = 0) -> None:
    """Refuse non-finite or negative values with a message that says what to do.

    Parameters
    ----------
    values
        The stored (non-zero) values of a chunk.
    source
        Where the values came from, for the message (``"adata.X"``, ``"adata.layers['counts']"``).
    hint
        Extra advice, such as the name of a counts layer.
    start
        Index of the chunk's first cell, for the message.

    Raises
    ------
    ValueError
        For NaN, infinity or negative values (saying when the data looks scaled).
    """
    if values.size == 0:
        return
    finite = np.isfinite(values)
    if not finite.all():
        bad = values[~finite][0]
        raise ValueError(
            f"{source} contains NaN or infinite values (e.g. {bad} in the chunk starting at cell {start:,}); "
            f"scBERT needs counts or normalised values. Remove or fill them before encoding.{hint}"
        )
    minimum = values.min()
    if minimum < 0:
        negative_fraction = float((values < 0).mean())
        if negative_fraction > _SCALED_NEGATIVE_FRACTION:
            what = (
                f"looks scaled (z-scored, e.g. by sc.pp.scale): {negative_fraction:.0%} of its non-zero values are "
                f"negative (minimum {minimum:.3g})"
            )
        else:
            what = f"contains negative values (minimum {minimum:.3g})"
        raise ValueError(
            f"{source} {what}; scBERT needs counts or (log-)normalised values, not scaled or centred data. "
            f"Pass the unscaled data instead.{hint}"
        )


def _is_integer(values: np.ndarray) -> bool:
    return bool(np.all(values == np.floor(values)))


def _linear(data: np.ndarray, log_base: float | None) -> np.ndarray:
    """Undo ``log_base(1 + x)`` in float64 (``None``: the values are linear already)."""
    values = data.astype(np.float64)
    if log_base is None:
        return values
    return np.expm1(values * np.log(log_base))


def _storage_error(data: np.ndarray) -> np.ndarray:
    """How far each stored value may be from the exact one: float rounding, or the rounding of values written with
    a fixed number of decimals (scanpy's pbmc68k_reduced keeps 3), whichever is larger."""
    error = np.abs(data) * (2.0 * np.finfo(data.dtype).eps if data.dtype.kind == "f" else 0.0)
    probe = data[:10_000].astype(np.float64)
    for decimals in range(1, 7):
        scaled = probe * 10.0**decimals
        if probe.size and np.all(np.abs(scaled - np.rint(scaled)) <= 1e-2):
            return np.maximum(error, 0.5 * 10.0**-decimals)
    return error


def _whole_multiple_rows(
    rows: sp.csr_matrix, values: np.ndarray, log_base: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: are its values whole multiples of its smallest value; do they differ at all (can the test tell).

    The tolerance follows the error of the stored values through the transform, so rounded exports still pass and a
    wrong transform still fails.
    """
    lengths = np.diff(rows.indptr)
    nonempty = lengths > 0
    starts = rows.indptr[:-1][nonempty]
    row_min = np.ones(rows.shape[0])
    row_max = np.ones(rows.shape[0])
    if values.size:
        row_min[nonempty] = np.minimum.reduceat(values, starts)
        row_max[nonempty] = np.maximum.reduceat(values, starts)
    ratio = values / np.repeat(row_min, lengths)
    # Relative error of each linear value: d(b**x - 1) = (1 + v) ln(b) dx; for linear values, dv = dx.
    error = _storage_error(rows.data)
    if log_base is None:
        relative = error / np.maximum(values, 1e-300)
    else:
        relative = (1 + values) * np.log(log_base) * error / np.maximum(values, 1e-300)
    # ... and of each cell's smallest value, the divisor of its ratios
    row_relative = np.zeros(rows.shape[0])
    if values.size:
        at_min = values == np.repeat(row_min, lengths)
        row_relative[nonempty] = np.maximum.reduceat(np.where(at_min, relative, 0.0), starts)
    allowed = 1e-3 + 1e-5 * ratio + 2 * ratio * (relative + np.repeat(row_relative, lengths))
    off = np.abs(ratio - np.rint(ratio)) > allowed
    bad = np.zeros(rows.shape[0], dtype=bool)
    bad[np.repeat(np.arange(rows.shape[0]), lengths)[off]] = True
    varied = nonempty & (row_max > row_min * (1 + 1e-6))
    return bad, varied


def _check_transform(rows: sp.csr_matrix, log_base: float | None) -> tuple[bool, str]:
    """Whether undoing ``log_base(1 + x)`` gives normalised values; and what was seen, in words."""
    name = _INVERSE_WORDS[log_base]
    if log_base is not None:
        limit = math.log1p(_MAX_NORMALISED_VALUE) / math.log(log_base)
        maximum = float(rows.data.max())
        if maximum > limit:
            return (
                False,
                f"values up to {maximum:,.4g} are too large for {name.strip()} to undo a log of normalised values",
            )
    values = _linear(rows.data, log_base)
    lengths = np.diff(rows.indptr)
    nonempty = lengths > 0
    totals = np.add.reduceat(values, rows.indptr[:-1][nonempty])
    low, high, middle = float(totals.min()), float(totals.max()), float(np.median(totals))
    cells = int(nonempty.sum())
    if high - low <= _CONSTANT_TOTAL_TOLERANCE * middle:
        return (
            True,
            f"{name}row sums are constant at {middle:,.6g} ({low:,.6g} to {high:,.6g}) over {cells:,} sampled cells",
        )
    bad, varied = _whole_multiple_rows(rows, values, log_base)
    tested = int(varied.sum())
    failed = int((bad & varied).sum())
    if tested and failed <= _MAX_NON_MULTIPLE_FRACTION * tested:
        return True, (
            f"each cell's {name}values are whole multiples of its smallest one ({tested - failed:,} of {tested:,} "
            "sampled cells), so they are counts scaled per cell (normalised over more genes than these)"
        )
    if not tested:
        return True, "every sampled cell's values are all equal, which every kind encodes alike"
    return False, (
        f"{name}row sums range {low:,.4g} to {high:,.4g}, not a constant target, and only {tested - failed:,} of "
        f"{tested:,} sampled cells hold whole multiples of their smallest value"
    )


def check_input_kind(
    sample: sp.csr_matrix, kind: str = "auto", *, source: str = "adata.X", hint: str = ""
) -> tuple[InputKind, str]:
    """Detect the input kind of a sample of cells, or verify the one given; say how it was checked.

    Parameters
    ----------
    sample
        A sample of cells as :func:`read_rows` returns it (see :func:`sample_rows`).
    kind
        ``"auto"`` to detect, or one of :data:`INPUT_KINDS` to verify.
    source
        Where the values came from, for messages.
    hint
        Extra advice for error messages, such as the name of a counts layer.

    Returns
    -------
    The kind and the evidence, in words (for the log line).

    Raises
    ------
    ValueError
        For an unknown kind; NaN, infinity, negative or scaled values; a given kind the data contradicts; and, with
        ``"auto"``, non-integer values that match no kind (with what was seen for each and what to pass).
    """
    if kind != "auto" and kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be 'auto' or one of {list(INPUT_KINDS)}; got {kind!r}.")
    values = sample.data
    check_chunk(values, source=source, hint=hint)
    if values.size == 0:
        return ("counts" if kind == "auto" else kind), "the sampled cells hold no values, so there is nothing to check"
    cells = int((np.diff(sample.indptr) > 0).sum())
    if _is_integer(values):
        if kind in ("auto", "counts", "corrected_counts"):
            return ("counts" if kind == "auto" else kind), f"all values of {cells:,} sampled cells are integers"
        raise ValueError(
            f"input_kind={kind!r} was passed, but {source} holds only integers ({cells:,} sampled cells): raw "
            f"counts, not {INPUT_KINDS[kind]}. Pass input_kind='counts' (or 'auto').{hint}"
        )

    checks: dict[str, tuple[bool, str]] = {}

    def check(name: str) -> tuple[bool, str]:
        if name not in checks:
            checks[name] = _check_transform(sample, _LOG_BASES[name])
        return checks[name]

    def linear_kind() -> str:
        return "proportions" if float(values.max()) <= 1 + 1e-6 else "normalized"

    def first_verified() -> str | None:
        if check("normalized")[0]:
            return linear_kind()
        return next((name for name in _LOG_KINDS if check(name)[0]), None)

    if kind == "auto":
        found = first_verified()
        if found is not None:
            return found, check(found)[1]
        seen = "; ".join(check(name)[1] for name in ("normalized", *_LOG_KINDS))
        raise ValueError(
            f"{source} holds non-integer values that match no input kind scBERT can convert exactly (checked on "
            f"{cells:,} sampled cells): not raw counts (not integers); {seen}. If these are corrected (non-integer) "
            "counts, pass input_kind='corrected_counts'; if they were normalised or log-transformed another way, "
            f"pass the raw counts instead.{hint}"
        )
    if kind in ("counts", "corrected_counts"):
        logged = next((name for name in _LOG_KINDS if check(name)[0]), None)
        if logged is not None:
            raise ValueError(
                f"input_kind={kind!r} was passed, but {source} holds {INPUT_KINDS[logged]}: {check(logged)[1]}. "
                f"Pass input_kind={logged!r} (or 'auto').{hint}"
            )
        return kind, (
            f"non-integer values over {cells:,} sampled cells, used as corrected counts as asked; not a log of "
            "normalised values (" + "; ".join(check(name)[1] for name in _LOG_KINDS) + ")"
        )
    ok, evidence = check(kind)
    if ok:
        return kind, evidence
    found = first_verified()
    advice = f"Pass input_kind={found!r} (or 'auto')" if found else "Pass the raw counts instead"
    found_words = f"; it holds {INPUT_KINDS[found]}: {check(found)[1]}" if found else ""
    raise ValueError(
        f"input_kind={kind!r} was passed, but {source} does not hold {INPUT_KINDS[kind]}: {evidence}{found_words}. "
        f"{advice}.{hint}"
    )


def detect_input_kind(sample: sp.csr_matrix, *, source: str = "adata.X", hint: str = "") -> InputKind:
    """Detect the kind of a sample of cells (see :func:`check_input_kind`, which also says how it was verified).

    Parameters
    ----------
    sample
        A float CSR sample of cells (see :func:`sample_rows`).
    source
        Where the values came from, for messages.
    hint
        Extra advice for error messages, such as the name of a counts layer.

    Returns
    -------
    One of :data:`INPUT_KINDS`.

    Raises
    ------
    ValueError
        As :func:`check_input_kind`.
    """
    return check_input_kind(sample, "auto", source=source, hint=hint)[0]


def recover_counts(rows: sp.csr_matrix, *, log_base: float | None = math.e) -> np.ndarray:
    """Undo a per-cell normalisation (and a ``log(1 + x)`` in base ``log_base``) for a chunk of cells.

    Undoing the log gives back the normalised values only to within a few float32 units, and values that sat exactly
    on a bin boundary (``log2(1 + x)`` an integer, as when a cell's total is a multiple of 10,000) would then fall on
    either side of it. Normalised counts of one cell are all multiples of a common factor, so where a cell's values
    divided by their smallest value are integers (to within float32 error), those integers are used as the cell's
    counts: they renormalise to exactly what the counts would give whenever the cell's smallest count is 1, as it
    almost always is in single-cell data. This holds whatever the gene set the values were normalised over. Cells
    that are not integer multiples (corrected or otherwise transformed data) keep their linear values.

    Parameters
    ----------
    rows
        Float CSR chunk of normalised values (canonical, no explicit zeros: see :func:`read_rows`).
    log_base
        The base of the ``log(1 + x)`` to undo (``math.e`` for scanpy's ``log1p``); ``None`` for values that were
        normalised but not log-transformed.

    Returns
    -------
    The recovered values (float32), aligned with ``rows.data``.
    """
    values = _linear(rows.data, log_base)
    lengths = np.diff(rows.indptr)
    if values.size == 0:
        return values.astype(np.float32)
    nonempty = lengths > 0
    row_min = np.ones(rows.shape[0])
    row_min[nonempty] = np.minimum.reduceat(values, rows.indptr[:-1][nonempty])
    ratio = values / np.repeat(row_min, lengths)
    counts = np.rint(ratio)
    bad_rows, _ = _whole_multiple_rows(rows, values, log_base)
    if bad_rows.any():
        use_linear = np.repeat(bad_rows, lengths)
        counts[use_linear] = values[use_linear]
    return counts.astype(np.float32)


def linear_values(rows: sp.csr_matrix, *, input_kind: str) -> np.ndarray:
    """The chunk's values on a linear scale (float32, aligned with ``rows.data``): counts as they are, transformed
    kinds undone and turned back into counts where that is exact (:func:`recover_counts`).

    Raises
    ------
    ValueError
        For an ``input_kind`` that is not one of :data:`INPUT_KINDS`.
    """
    if input_kind in ("counts", "corrected_counts"):
        return rows.data.astype(np.float32)  # a copy: the arithmetic below writes into it
    if input_kind not in _LOG_BASES:
        raise ValueError(f"input_kind must be one of {list(INPUT_KINDS)}; got {input_kind!r}.")
    return recover_counts(rows, log_base=_LOG_BASES[input_kind])


# ---------------------------------------------------------------------------------------------------------------------
# Cells with too little signal in the panel
# ---------------------------------------------------------------------------------------------------------------------


# The published preprocessing dropped cells with fewer than 200 detected genes, over a 16,906-gene panel.
PUBLISHED_MIN_GENES = 200


PUBLISHED_NUM_GENES = 16_906


def default_min_genes(num_genes: int) -> int:
    """Fewest detected panel genes a cell needs by default: the published 200, scaled to the panel's size.

    200 for the published 16,906-gene panel; 10 for a 765-gene panel; at least 1.
    """
    return max(1, math.ceil(PUBLISHED_MIN_GENES * num_genes / PUBLISHED_NUM_GENES))


def low_signal(detected_genes: np.ndarray, *, min_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule for cells with too little signal in the panel, shared by the tokenizer, ``annotate`` and the pipeline.

    Parameters
    ----------
    detected_genes
        Each cell's number of detected panel genes (non-zero values after alignment).
    min_genes
        Fewest detected panel genes a cell needs.

    Returns
    -------
    Two boolean arrays over the cells: no counts in any panel gene; and some, but fewer detected panel genes than
    ``min_genes``.
    """
    empty = detected_genes == 0
    return empty, ~empty & (detected_genes < min_genes)


# ---------------------------------------------------------------------------------------------------------------------
# The binning rule
# ---------------------------------------------------------------------------------------------------------------------


def _drop_entries(indptr: np.ndarray, row_of: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Row pointers after dropping the entries where ``keep`` is False (counting the dropped ones is cheaper)."""
    dropped = np.bincount(row_of[~keep], minlength=len(indptr) - 1)
    return indptr - np.concatenate([[0], np.cumsum(dropped)])


def bin_expression(
    rows: sp.csr_matrix,
    *,
    data_to_panel: np.ndarray,
    num_genes: int,
    input_kind: InputKind,
    normalization_target: float,
    log_base: float,
    max_bin: int,
    merge_duplicates: bool = False,
    detected_out: np.ndarray | None = None,
    return_values: bool = False,
) -> sp.csr_matrix | tuple[sp.csr_matrix, sp.csr_matrix]:
    """Align, normalise, log-transform and bin a chunk of cells.

    Parameters
    ----------
    rows
        Chunk in the data's gene order, shape ``(n_cells, num_data_genes)``, as :func:`read_rows` returns it.
    data_to_panel
        Panel position of every data column, ``-1`` for columns to drop. Several columns may share a position
        (duplicated gene names) when ``merge_duplicates`` is set.
    num_genes
        Panel length.
    input_kind
        One of :data:`INPUT_KINDS` (verified beforehand).
    normalization_target
        Total each cell is scaled to over the panel genes.
    log_base
        Base of the ``log(1 + x)`` transform.
    max_bin
        Highest token; larger values are clamped to it.
    merge_duplicates
        Sum the values of data columns that map to the same panel gene (on the linear scale, before normalising).
    detected_out
        When given, receives each cell's number of detected panel genes (non-zero values after alignment), shape
        ``(n_cells,)``.
    return_values
        Also return the log-normalised values before binning (what the tokens truncate), for the novelty score of
        :mod:`tokenization.novelty`.

    Returns
    -------
    CSR matrix of shape ``(n_cells, num_genes)`` holding the non-zero tokens (uint8), column indices sorted; with
    ``return_values``, also the CSR matrix of the same shape holding the log-normalised values (float32).

    Raises
    ------
    ValueError
        For an ``input_kind`` that is not one of :data:`INPUT_KINDS`.
    """
    n_cells = rows.shape[0]
    values = linear_values(rows, input_kind=input_kind)
    panel_pos = data_to_panel[rows.indices]
    indptr = rows.indptr
    row_of = np.repeat(np.arange(n_cells), np.diff(indptr))
    keep = (panel_pos >= 0) & (values > 0)
    if not keep.all():
        indptr = _drop_entries(indptr, row_of, keep)
        values, panel_pos, row_of = values[keep], panel_pos[keep], row_of[keep]
    if merge_duplicates:
        merged = sp.csr_matrix((values, panel_pos.astype(np.int64), indptr), shape=(n_cells, num_genes))
        merged.sum_duplicates()
        values, panel_pos, indptr = merged.data, merged.indices, merged.indptr
        row_of = np.repeat(np.arange(n_cells), np.diff(indptr))
    if detected_out is not None:
        detected_out[:] = np.diff(indptr)

    # scanpy's normalize_total: float64 running sum per cell stored as float32, divided by the target; cells
    # without counts are divided by 1 instead of 0.
    totals = np.bincount(row_of, weights=values, minlength=n_cells).astype(np.float32)
    scale = totals / normalization_target
    scale += scale == 0
    np.divide(values, scale[row_of], out=values)
    # scanpy's log1p(base=b): natural log1p in float32, then divide by ln(b) into the same float32 array.
    np.log1p(values, out=values)
    np.divide(values, np.log(log_base), out=values)
    log_values = None
    if return_values:
        log_values = sp.csr_matrix(
            (values.copy(), panel_pos.astype(np.int32), indptr.copy()), shape=(n_cells, num_genes)
        )
        log_values.sort_indices()
    # The binning rule: clamp at the highest bin, then truncate towards zero (values are >= 0).
    tokens = np.minimum(values, max_bin).astype(np.uint8)

    nonzero = tokens > 0
    if not nonzero.all():
        indptr = _drop_entries(indptr, row_of, nonzero)
        tokens, panel_pos = tokens[nonzero], panel_pos[nonzero]
    out = sp.csr_matrix((tokens, panel_pos.astype(np.int32), indptr), shape=(n_cells, num_genes))
    out.sort_indices()
    return out if log_values is None else (out, log_values)


__all__ = [
    "INPUT_KINDS",
    "InputKind",
    "PUBLISHED_MIN_GENES",
    "PUBLISHED_NUM_GENES",
    "bin_expression",
    "check_chunk",
    "check_input_kind",
    "default_min_genes",
    "detect_input_kind",
    "linear_values",
    "low_signal",
    "recover_counts",
]
