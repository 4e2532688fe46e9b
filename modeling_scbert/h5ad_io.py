"""Reading and writing ``.h5ad`` files for the command line: clear errors, atomic writes, the input never touched.

:func:`~tokenization.reading.read_h5ad` (in ``tokenization``, which reads the files of a corpus too) turns every
failure into an error that names the file. :func:`write_h5ad_with_slots` writes a copy
of the input with the new ``.obs`` / ``.obsm`` / ``.varm`` / ``.uns`` slots of an annotated AnnData, through the
package's one atomic writer (``tokenization.atomic_files``), so a failure leaves no partial output.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Literal

from anndata import AnnData

from tokenization.atomic_files import atomic_paths
from tokenization.reading import is_zarr_store

logger = logging.getLogger(__name__)


def check_output_path(
    path: str | PathLike,
    *,
    overwrite: bool,
    inputs: tuple[str | PathLike, ...] = (),
    outputs: tuple[str | PathLike, ...] = (),
) -> Path:
    """Refuse an output that cannot be written, before any work.

    Refused: an output that is an input, or another output of the same command (``--csv`` equal to ``--output``);
    an existing output (unless ``overwrite``); a folder; a missing parent folder; a parent folder where no file can
    be created (read-only, forbidden, or full), found by creating and removing a file there.

    Returns
    -------
    ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    ValueError
        When ``path`` is one of ``inputs`` or ``outputs``.
    FileExistsError
        When ``path`` exists and ``overwrite`` is false.
    IsADirectoryError
        When ``path`` is a folder.
    FileNotFoundError
        When the folder of ``path`` does not exist.
    OSError
        When no file can be created in the folder of ``path`` (the cause and the folder named).
    """
    path = Path(path)
    for role, others in (("the input", inputs), ("another output of this command", outputs)):
        for other in others:
            if other is not None and path.resolve() == Path(other).resolve():
                raise ValueError(f"The output {str(path)!r} is also {role}; give each its own path.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"The output {str(path)!r} already exists; pass --overwrite to replace it.")
    if path.is_dir():
        raise IsADirectoryError(f"The output {str(path)!r} is a folder; give a file path.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The output's folder {str(path.parent)!r} does not exist; create it first.")
    # Permission bits do not say it all (root, read-only mounts, a full disk): try, as the writer will.
    probe, probe_path = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    os.close(probe)
    os.unlink(probe_path)
    return path


COPY_LAYOUT, REWRITE_LAYOUT, ZARR_LAYOUT = "copy", "rewrite", "zarr"


def plan_h5ad_output(source: str | PathLike) -> Literal["copy", "rewrite", "zarr"]:
    """Decide how :func:`write_h5ad_with_slots` will write a copy of ``source`` with new slots, and check that it can.

    ``"copy"``: the file is copied byte for byte and the new slots are written into the copy (``.X`` is never
    loaded). This needs the layout of anndata 0.7 and later, where ``obs`` is a dataframe group and ``obsm`` and
    ``uns`` are groups (or absent). ``"rewrite"``: older layouts (anndata < 0.7: ``obs`` as a compound, structured
    dataset, categories in ``uns``) are read whole with ``anndata.read_h5ad`` and written with anndata's own writer,
    in the current layout; this needs the file in memory. Call it before the model runs, so that a file that cannot
    be written is refused before any work.

    ``"zarr"``: a zarr store is read whole with ``anndata.read_zarr`` and the output written as an ``.h5ad`` with
    anndata's writer.

    Raises
    ------
    ValueError
        When ``source`` is not an HDF5 file, or its ``obs`` cannot be read.
    """
    import h5py
    from anndata.io import read_elem

    if is_zarr_store(source):
        return ZARR_LAYOUT

    try:
        with h5py.File(source, "r") as file:
            obs = file.get("obs")
            groups = all(file.get(key) is None or isinstance(file[key], h5py.Group) for key in ("obsm", "uns"))
            if isinstance(obs, h5py.Group) and obs.attrs.get("encoding-type") == "dataframe" and groups:
                read_elem(obs)  # the copy path rewrites .obs from this; a failure here costs no model run
                return COPY_LAYOUT
    except Exception as error:  # h5py and anndata raise many types for a damaged or foreign file
        raise ValueError(
            f"Could not read the .obs of {str(source)!r} to write a copy with new columns ({type(error).__name__}: "
            f"{error}); the file needs to be an .h5ad that anndata.read_h5ad reads."
        ) from error
    logger.info(
        "%s has the layout of anndata < 0.7 (obs is not a dataframe group): the output is written with anndata's "
        "own writer, in the current layout, from a copy read into memory.",
        source,
    )
    return REWRITE_LAYOUT


def write_h5ad_with_slots(
    source: str | PathLike,
    destination: str | PathLike,
    adata: AnnData,
    *,
    obs_columns: list[str] = (),
    obsm_keys: list[str] = (),
    uns_keys: list[str] = (),
    layout: Literal["copy", "rewrite", "zarr"] | None = None,
    varm_keys: list[str] = (),
    overwrite: bool = True,
    also: dict[str | PathLike, str] | None = None,
) -> None:
    """Write ``source`` plus the given slots of ``adata`` to ``destination``, atomically.

    With the ``"copy"`` layout (files of anndata 0.7 and later) the input file is copied byte for byte to a
    temporary file in the destination's folder and the new ``.obs`` columns, ``.obsm``, ``.varm`` and ``.uns`` entries are
    written into that copy, in bounded memory (``.X`` is never loaded). With ``"rewrite"`` (older layouts, which
    cannot be patched in place) the input is read with ``anndata.read_h5ad``, given the new slots and written with
    anndata's own writer; a zarr store (``"zarr"``) is read with ``anndata.read_zarr`` and written the same way, as an
    ``.h5ad``. Either way the temporary file is then renamed over ``destination`` (``os.replace``), so
    a failure leaves no partial output; the input is never modified. ``layout=None`` asks
    :func:`plan_h5ad_output`. ``also`` maps other files (a CSV of the same results) to their text: they are written
    and published with the ``.h5ad`` as one result (``tokenization.atomic_files.atomic_paths``), so a failure leaves
    neither. With ``overwrite=False``, a ``destination`` that another run wrote meanwhile is left
    as it is (checked in the same step as the rename where the system allows).

    Raises
    ------
    ValueError
        When the input cannot be read (see :func:`plan_h5ad_output`), or ``layout`` is not one of the two.
    FileExistsError
        With ``overwrite=False``, when ``destination`` exists by the time the copy is complete.
    OSError
        From the filesystem (a full disk, say); nothing is left at ``destination``.
    """
    layout = plan_h5ad_output(source) if layout is None else layout
    if layout not in (COPY_LAYOUT, REWRITE_LAYOUT, ZARR_LAYOUT):
        raise ValueError(f"layout must be {COPY_LAYOUT!r}, {REWRITE_LAYOUT!r} or {ZARR_LAYOUT!r}; got {layout!r}.")
    also = {Path(path): text for path, text in (also or {}).items()}
    with atomic_paths([destination, *also], replace=overwrite) as (temporary, *others):
        for other, text in zip(others, also.values()):
            other.write_text(text, encoding="utf-8")
        if layout == COPY_LAYOUT:
            _patch_copy(
                source,
                temporary,
                adata,
                obs_columns=obs_columns,
                obsm_keys=obsm_keys,
                varm_keys=varm_keys,
                uns_keys=uns_keys,
            )
        else:
            import anndata

            full = anndata.read_zarr(source) if layout == ZARR_LAYOUT else anndata.read_h5ad(source)
            for column in obs_columns:
                full.obs[column] = adata.obs[column].values
            for key in obsm_keys:
                full.obsm[key] = adata.obsm[key]
            for key in varm_keys:
                full.varm[key] = adata.varm[key]
            for key in uns_keys:
                full.uns[key] = adata.uns[key]
            full.write_h5ad(temporary)


def _patch_copy(
    source: str | PathLike,
    temporary: str | PathLike,
    adata: AnnData,
    *,
    obs_columns: Sequence[str],
    obsm_keys: Sequence[str],
    varm_keys: Sequence[str],
    uns_keys: Sequence[str],
) -> None:
    import h5py
    from anndata.io import read_elem, write_elem

    shutil.copyfile(source, temporary)
    with h5py.File(temporary, "r+") as file:
        if obs_columns:
            obs = read_elem(file["obs"])
            for column in obs_columns:
                obs[column] = adata.obs[column].values
            del file["obs"]
            write_elem(file, "obs", obs)
        slots = [("obsm", obsm_keys, adata.obsm), ("varm", varm_keys, adata.varm), ("uns", uns_keys, adata.uns)]
        for group, keys, values in slots:
            for key in keys:
                if group not in file:
                    file.create_group(group)
                if key in file[group]:
                    del file[group][key]
                write_elem(file[group], key, values[key])


__all__ = [
    "check_output_path",
    "plan_h5ad_output",
    "write_h5ad_with_slots",
]
