"""Majority voting over over-clusters, as CellTypist does it: every cell of a cluster gets the cluster's dominant label.

Per-cell predictions are noisy where types are close; cells that are neighbours in expression usually share a type. An
over-clustering (many small clusters, finer than the cell types) groups such neighbours, and the dominant predicted
label of each cluster replaces the per-cell label. The clustering is the user's (an ``.obs`` column) or, by default,
Leiden on a neighbour graph built from the model's own view of each cell: its expression tokens (the panel-aligned,
normalised, log2-binned expression), reduced by PCA.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

NUM_NEIGHBORS = 15
NUM_COMPONENTS = 50


def leiden_resolution(n_cells: int) -> float:
    """CellTypist's over-clustering resolution, growing with the number of cells (5 below 5,000 cells ... 30)."""
    for limit, resolution in ((5_000, 5.0), (20_000, 10.0), (40_000, 15.0), (100_000, 20.0), (200_000, 25.0)):
        if n_cells < limit:
            return resolution
    return 30.0


def over_cluster(tokens: sp.csr_matrix, *, resolution: float | None = None, seed: int = 0) -> np.ndarray:
    """Leiden over-clusters of cells from their expression tokens: PCA, a neighbour graph, Leiden (igraph).

    Parameters
    ----------
    tokens
        ``(n_cells, num_genes)`` expression tokens (0 to 5), as the tokenizer makes them.
    resolution
        Leiden resolution; :func:`leiden_resolution` of the number of cells when ``None``.
    seed
        Random state of PCA and Leiden.

    Returns
    -------
    Cluster names (strings), one per cell.

    Raises
    ------
    ImportError
        When ``igraph`` is not installed (``pip install 'scbert-hf[clustering]'``).
    """
    import anndata
    import scanpy as sc

    try:
        import igraph  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "Over-clustering for majority voting needs igraph: pip install 'scbert-hf[clustering]' (or igraph), or "
            "pass over_clustering= an .obs column of clusters you already have."
        ) from error
    n_cells = tokens.shape[0]
    if n_cells < 3:
        return np.zeros(n_cells, dtype=np.int64).astype(str)
    resolution = leiden_resolution(n_cells) if resolution is None else resolution
    cells = anndata.AnnData(X=sp.csr_matrix(tokens, dtype=np.float32))
    components = min(NUM_COMPONENTS, n_cells - 1, cells.n_vars - 1)
    sc.pp.pca(cells, n_comps=components, random_state=seed)
    sc.pp.neighbors(cells, n_neighbors=min(NUM_NEIGHBORS, n_cells - 1), random_state=seed)
    sc.tl.leiden(cells, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    clusters = cells.obs["leiden"].astype(str).to_numpy()
    logger.info(
        "Over-clustered %d cells into %d Leiden clusters (resolution %g).", n_cells, len(set(clusters)), resolution
    )
    return clusters


def majority_vote(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Each cell's cluster's most frequent label (ties: the label that comes first in sorted order).

    Cells whose cluster is missing (NaN) keep their own label.
    """
    labels = np.asarray(labels, dtype=object)
    frame = pd.DataFrame({"label": labels, "cluster": pd.Series(clusters, dtype=object)})
    voted = labels.copy()
    for _, members in frame.dropna(subset=["cluster"]).groupby("cluster", sort=False):
        counts = members["label"].value_counts()
        winners = sorted(counts.index[counts == counts.max()])
        voted[members.index.to_numpy()] = winners[0]
    return voted
