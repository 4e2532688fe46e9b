"""What a tokenizer is: an ordered gene panel and the binning contract, validated, and the files that hold them.

:class:`~tokenization.tokenization_scbert.ScBertTokenizer` validates its options here; the contract keys are the ones
``tokenizer_config.json`` records next to the panel (``genes.txt``).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from pathlib import PurePosixPath, PureWindowsPath

from .genes import strip_ensembl_version

__all__ = [
    "CONTRACT_KEYS",
    "GENES_NAME",
    "TOKENIZER_CONFIG_NAME",
    "GenesFileOutsideFolderError",
    "check_binning_contract",
    "check_gene_file_names",
    "checked_genes_file",
    "checked_panel",
    "panel_hash",
]

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
GENES_NAME = "genes.txt"
CONTRACT_KEYS = ("normalization_target", "log_base", "max_bin", "mask_token_id", "min_gene_overlap")


def checked_panel(genes: Sequence[str]) -> tuple[str, ...]:
    """The panel with Ensembl versions stripped, refused when it is not a list of unique, non-empty names.

    Raises
    ------
    TypeError
        For a single string instead of a sequence of names.
    ValueError
        For an empty panel, blank names, repeated names (with examples), and names the gene file cannot hold (see
        :func:`check_gene_file_names`).
    """
    if isinstance(genes, str):
        raise TypeError(
            "genes must be a sequence of gene names, got a single string; to read a file, use "
            "ScBertTokenizer.from_gene_file(path)."
        )
    panel = strip_ensembl_version(genes)
    if not panel:
        raise ValueError("The gene panel is empty; pass the model's genes in token order.")
    if any(not name for name in panel):
        raise ValueError("The gene panel contains empty names; remove blank entries.")
    check_gene_file_names(panel)
    seen: set[str] = set()
    duplicates = sorted({name for name in panel if name in seen or seen.add(name)})
    if duplicates:
        raise ValueError(
            f"The gene panel must name each gene once; {len(duplicates)} names repeat, e.g. {duplicates[:5]}. "
            "Build a panel from data with ScBertTokenizer.from_adata, which keeps the first occurrence."
        )
    return tuple(panel)


def _breaks_the_line_format(name: str) -> bool:
    # genes.txt holds one name per line and its reader skips "#" comments and strips surrounding whitespace; control
    # characters (newline, carriage return, NUL, tab, ...) and Unicode line separators have no place in a gene name.
    return (
        name.startswith("#")
        or name != name.strip()
        or any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in name)
    )


def check_gene_file_names(genes: Sequence[str]) -> None:
    """Refuse gene names that would not read back as the same panel from ``genes.txt`` (one name per line).

    Raises
    ------
    ValueError
        Naming (with ``repr``) the names that hold a control character (newline, carriage return, NUL, tab, ...) or a
        line separator, start with ``#`` (read as a comment), or have surrounding whitespace.
    """
    bad = [name for name in genes if _breaks_the_line_format(name)]
    if bad:
        raise ValueError(
            f"{len(bad)} of the panel's gene names cannot be saved one per line in {GENES_NAME} and read back "
            "unchanged, e.g. "
            f"{', '.join(repr(name) for name in bad[:5])}: names must not hold control characters (newline, carriage "
            "return, NUL, tab) or line separators, start with '#', or begin or end with whitespace. Clean them "
            "(for example in adata.var_names) before building the tokenizer."
        )


class GenesFileOutsideFolderError(ValueError):
    """A ``tokenizer_config.json`` names a gene file outside the tokenizer's folder."""


def checked_genes_file(value: object, config_path: object) -> str:
    """The ``genes_file`` of a ``tokenizer_config.json``, refused unless it names a file inside the tokenizer's folder.

    The check is on the name (no absolute path, drive or ``..``): a Hub cache keeps files as links into its blob
    store, so a link's target is not checked.

    Raises
    ------
    GenesFileOutsideFolderError
        A ``ValueError``, quoting the value and the config file.
    """
    if isinstance(value, str) and value.strip():
        posix, windows = PurePosixPath(value), PureWindowsPath(value)
        if not (posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in windows.parts):
            return value
    raise GenesFileOutsideFolderError(
        f"{config_path} names its gene file {value!r} (key 'genes_file'); it must be a file inside the tokenizer's folder (a relative "
        f"path without '..', normally {GENES_NAME!r}). Restore the file ScBertTokenizer.save_pretrained wrote."
    )


def check_binning_contract(
    *, normalization_target: float, log_base: float, max_bin: int, mask_token_id: int, min_gene_overlap: float
) -> None:
    """Refuse binning options no tokenizer can use (see :class:`ScBertTokenizer` for their meaning).

    Raises
    ------
    ValueError
        For a non-positive ``normalization_target``, ``log_base <= 1``, ``max_bin`` outside ``1..254``, a
        ``mask_token_id`` not above ``max_bin``, or ``min_gene_overlap`` outside ``[0, 1]``; quoting the value.
    """
    if normalization_target <= 0:
        raise ValueError(f"normalization_target must be positive; got {normalization_target}.")
    if log_base <= 1:
        raise ValueError(f"log_base must be greater than 1; got {log_base}.")
    if not 1 <= max_bin <= 254:
        raise ValueError(f"max_bin must be between 1 and 254 (tokens are stored as uint8); got {max_bin}.")
    if mask_token_id <= max_bin:
        raise ValueError(
            f"mask_token_id ({mask_token_id}) must lie above the expression bins 0..{max_bin} (max_bin); "
            "the published model uses max_bin=5, mask_token_id=6."
        )
    if not 0 <= min_gene_overlap <= 1:
        raise ValueError(f"min_gene_overlap is a fraction of panel genes in [0, 1]; got {min_gene_overlap}.")


def panel_hash(genes: Sequence[str]) -> str:
    """SHA-256 (hex) of the newline-joined panel; identifies a panel in model cards and ``tokenizer_config.json``."""
    return hashlib.sha256("\n".join(genes).encode("utf-8")).hexdigest()
