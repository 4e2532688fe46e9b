"""Majority voting over over-clusters (CellTypist's), in annotate and `scbert annotate`."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from modeling_scbert.annotation.annotate import annotate
from modeling_scbert.annotation.majority_voting import leiden_resolution, majority_vote
from modeling_scbert.cli import main as cli_main
from tests.test_annotation_annotate import GENES, save_annotator


def clustered_cells(per_group: int = 40, seed: int = 0) -> ad.AnnData:
    """Three well-separated groups: each expresses its own block of four genes, the rest is nearly silent."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(["g0", "g1", "g2"], per_group)
    means = np.full((groups.size, len(GENES)), 0.2)
    for k in range(3):
        means[groups == f"g{k}", 4 * k : 4 * k + 4] = 20.0
    counts = rng.poisson(means).astype(np.float32)
    order = rng.permutation(groups.size)  # groups interleaved, so nothing depends on the cell order
    return ad.AnnData(
        X=sp.csr_matrix(counts[order]),
        obs=pd.DataFrame({"group": pd.Categorical(groups[order])}, index=[f"c{i}" for i in range(groups.size)]),
        var=pd.DataFrame(index=GENES),
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_annotator(tmp_path_factory.mktemp("annotator"))


def modes(labels, clusters):
    frame = pd.DataFrame({"label": np.asarray(labels, dtype=object), "cluster": np.asarray(clusters, dtype=object)})
    return {
        cluster: sorted(counts.index[counts == counts.max()])[0]
        for cluster, counts in ((c, m["label"].value_counts()) for c, m in frame.groupby("cluster"))
    }


def test_majority_vote_takes_each_clusters_most_frequent_label():
    labels = np.array(["B", "T", "B", "T", "T", "NK", "B"], dtype=object)
    clusters = np.array(["a", "a", "a", "b", "b", "b", None], dtype=object)
    assert list(majority_vote(labels, clusters)) == ["B", "B", "B", "T", "T", "T", "B"]
    assert list(majority_vote(np.array(["T", "B"]), np.array(["x", "x"]))) == ["B", "B"]  # a tie: sorted first
    assert leiden_resolution(700) == 5.0 and leiden_resolution(30_000) == 15.0 and leiden_resolution(10**6) == 30.0


def test_majority_voting_over_a_given_clustering(model_dir):
    adata = clustered_cells()
    annotate(adata, str(model_dir), majority_voting=True, over_clustering="group", progress=False)
    predicted = adata.obs["scbert_cell_type"].astype(str).to_numpy()
    voted = adata.obs["scbert_majority_voting"]
    assert list(voted.cat.categories) == list(adata.obs["scbert_cell_type"].cat.categories)
    expected = modes(predicted, adata.obs["group"])
    assert list(voted.astype(str)) == [expected[g] for g in adata.obs["group"]]
    assert len(set(predicted)) > 1 and (voted.astype(str).to_numpy() != predicted).any()  # the vote changed cells
    params = adata.uns["scbert"]["params"]
    assert params["majority_voting"] and params["over_clustering"] == "group" and "leiden_resolution" not in params
    assert "scbert_over_clustering" not in adata.obs


def test_majority_voting_over_leiden_clusters_of_the_tokens(model_dir):
    adata = clustered_cells()
    before = adata.copy()
    result = annotate(adata, str(model_dir), majority_voting=True, copy=True, progress=False)
    assert "scbert_majority_voting" not in adata.obs and np.array_equal(adata.X.toarray(), before.X.toarray())
    clusters = result.obs["scbert_over_clustering"].astype(str).to_numpy()
    # Over-clusters: finer than the groups, and each one inside a single group.
    assert len(set(clusters)) >= 3
    for cluster in set(clusters):
        assert result.obs["group"][clusters == cluster].nunique() == 1
    expected = modes(result.obs["scbert_cell_type"].astype(str), clusters)
    assert list(result.obs["scbert_majority_voting"].astype(str)) == [expected[c] for c in clusters]
    params = result.uns["scbert"]["params"]
    assert params["over_clustering"] == "leiden" and params["leiden_resolution"] == 5.0


def test_majority_voting_refusals(model_dir):
    adata = clustered_cells(5)
    with pytest.raises(ValueError, match="pass majority_voting=True"):
        annotate(adata, str(model_dir), over_clustering="group")
    with pytest.raises(
        ValueError, match=r"over_clustering='leiden' is not a column of .obs; the columns are \['group'\]"
    ):
        annotate(adata, str(model_dir), majority_voting=True, over_clustering="leiden")
    assert "scbert_cell_type" not in adata.obs


def test_cli_majority_voting(model_dir, tmp_path):
    source, output, csv = tmp_path / "cells.h5ad", tmp_path / "out.h5ad", tmp_path / "out.csv"
    clustered_cells().write_h5ad(source)
    argv = ["annotate", "--model", str(model_dir), "--input", str(source), "--output", str(output)]
    assert cli_main([*argv, "--over-clustering", "group", "--csv", str(csv)]) == 0
    written = ad.read_h5ad(output)
    expected = modes(written.obs["scbert_cell_type"].astype(str), written.obs["group"])
    assert list(written.obs["scbert_majority_voting"].astype(str)) == [expected[g] for g in written.obs["group"]]
    assert "scbert_majority_voting" in pd.read_csv(csv).columns
