"""Where to read in an AnnData: the expression matrix and the gene names that ``layer=``, ``use_raw=`` and
``gene_key=`` point at, and where raw counts probably are (for error messages)."""

from __future__ import annotations

from typing import Any

from anndata import AnnData

__all__ = ["adata_gene_names", "counts_hint", "expression_matrix", "raw_of"]


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
