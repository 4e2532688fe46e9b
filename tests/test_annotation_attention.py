"""Gene attention per cell type into AnnData, and `scbert attention`."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from modeling_scbert import ScBertForSequenceClassification, ScBertTokenizer, gene_attention
from modeling_scbert.annotation.attention import gene_attention_scores, top_attention_genes
from modeling_scbert.cli import main as cli_main
from tests.test_annotation_annotate import CLASSES, GENES, save_annotator


def make_adata(n_cells=30, seed=0):
    """The panel's genes in another order, one gene outside the panel, a label column with a missing value."""
    rng = np.random.default_rng(seed)
    genes = list(reversed(GENES)) + ["NOT_IN_PANEL"]
    counts = rng.poisson(3.0, size=(n_cells, len(genes))).astype(np.float32)
    truth = rng.choice(CLASSES, n_cells).astype(object)
    truth[0] = None
    obs = pd.DataFrame({"truth": truth}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_annotator(tmp_path_factory.mktemp("annotator"))


def expected_scores(adata, model_dir, groups):
    """Per-gene means computed the long way: encode all cells, score them, average per group, map to var order."""
    tokenizer = ScBertTokenizer.from_pretrained(model_dir)
    model = ScBertForSequenceClassification.from_pretrained(model_dir).eval()
    ids = torch.from_numpy(tokenizer(adata)["input_ids"])
    scores = gene_attention(model, ids).numpy()
    if groups is None:
        with torch.no_grad():
            groups = model(ids).logits.argmax(-1).numpy()
    panel = np.full((len(GENES) + 1, len(CLASSES)), np.nan)
    for g in range(len(CLASSES)):
        if (groups == g).any():
            panel[:, g] = scores[groups == g].mean(0)
    position = {name: i for i, name in enumerate(GENES)}
    per_gene = np.full((adata.n_vars, len(CLASSES)), np.nan)
    for j, name in enumerate(adata.var_names):
        if name in position:
            per_gene[j] = panel[position[name]]
    return per_gene, np.bincount(groups[groups >= 0], minlength=len(CLASSES))


def test_scores_by_predicted_type_are_the_per_cell_scores_averaged(model_dir):
    adata = make_adata()
    x_before, obs_before = adata.X.copy(), adata.obs.copy()
    assert gene_attention_scores(adata, str(model_dir), batch_size=7, progress=False) is None
    expected, counts = expected_scores(adata, model_dir, None)
    scores = adata.varm["scbert_attention"]
    assert scores.shape == (adata.n_vars, len(CLASSES)) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-7)
    assert np.isnan(scores[-1]).all()  # the gene outside the panel
    info = adata.uns["scbert_attention"]
    assert list(info["cell_types"]) == CLASSES
    np.testing.assert_array_equal(info["n_cells"], counts)
    assert info["n_cells"].sum() == adata.n_obs
    assert info["params"]["groupby"] == "predicted" and info["params"]["attention_layer"] == -1
    assert abs(adata.X - x_before).sum() == 0 and adata.obs.equals(obs_before)
    assert set(adata.obsm) == set() and set(adata.obs.columns) == {"truth"}


def test_scores_by_an_obs_column_skip_missing_labels(model_dir):
    adata = make_adata(seed=1)
    names = sorted(CLASSES)  # a plain (not categorical) column: its values in sorted order
    groups = pd.Categorical(adata.obs["truth"], categories=names).codes.astype(np.int64)
    result = gene_attention_scores(adata, str(model_dir), groupby="truth", key_added="by_truth", copy=True)
    assert "by_truth" not in adata.varm  # copy=True leaves the input alone
    expected, counts = expected_scores(adata, model_dir, groups)
    assert list(result.uns["by_truth"]["cell_types"]) == names
    np.testing.assert_allclose(result.varm["by_truth"], expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(result.uns["by_truth"]["n_cells"], counts)
    assert result.uns["by_truth"]["n_cells"].sum() == adata.n_obs - 1  # the cell without a label
    # Categorical columns keep their categories' order, including categories without cells (NaN columns).
    adata.obs["truth"] = pd.Categorical(adata.obs["truth"], categories=[*CLASSES, "DC"])
    gene_attention_scores(adata, str(model_dir), groupby="truth", progress=False)
    assert list(adata.uns["scbert_attention"]["cell_types"]) == [*CLASSES, "DC"]
    assert np.isnan(adata.varm["scbert_attention"][:, -1]).all()


def test_top_genes_table_is_sorted_per_type(model_dir):
    adata = make_adata()
    gene_attention_scores(adata, str(model_dir), groupby="truth", progress=False)
    table = top_attention_genes(adata, n_genes=3)
    assert list(table.columns) == ["cell_type", "rank", "gene", "attention", "relative_to_uniform", "n_cells"]
    scores = adata.varm["scbert_attention"]
    for column, cell_type in enumerate(sorted(CLASSES)):
        rows = table[table["cell_type"] == cell_type]
        assert list(rows["rank"]) == [1, 2, 3]
        best = np.argsort(-np.nan_to_num(scores[:, column], nan=-1.0), kind="stable")[:3]
        assert list(rows["gene"]) == [adata.var_names[j] for j in best]
        np.testing.assert_allclose(rows["relative_to_uniform"], rows["attention"] * (len(GENES) + 1))
    with pytest.raises(KeyError, match="run gene_attention_scores"):
        top_attention_genes(adata, key="other")


def test_refusals_name_what_exists(model_dir):
    adata = make_adata()
    with pytest.raises(ValueError, match=r"groupby='cell_type' is not a column of .obs; the columns are \['truth'\]"):
        gene_attention_scores(adata, str(model_dir), groupby="cell_type")
    with pytest.raises(ValueError, match=r"attention_layer=1 does not exist: the model has 1 layers"):
        gene_attention_scores(adata, str(model_dir), attention_layer=1)
    assert "scbert_attention" not in adata.varm


def test_cli_writes_varm_and_the_top_genes_csv_and_keeps_the_input(model_dir, tmp_path, capsys):
    source = tmp_path / "cells.h5ad"
    make_adata().write_h5ad(source)
    before = source.read_bytes()
    output, csv = tmp_path / "out.h5ad", tmp_path / "top.csv"
    argv = ["attention", "--model", str(model_dir), "--input", str(source), "--output", str(output)]
    assert cli_main([*argv, "--csv", str(csv), "--top", "4", "--groupby", "truth"]) == 0
    assert source.read_bytes() == before
    written = ad.read_h5ad(output)
    assert written.varm["scbert_attention"].shape == (len(GENES) + 1, len(CLASSES))
    assert list(written.uns["scbert_attention"]["cell_types"]) == sorted(CLASSES)
    assert written.obs.equals(ad.read_h5ad(source).obs)
    table = pd.read_csv(csv)
    assert len(table) == 4 * len(CLASSES) and set(table["cell_type"]) == set(CLASSES)
    # The in-memory function on the same cells gives the same matrix.
    again = ad.read_h5ad(source)
    gene_attention_scores(again, str(model_dir), groupby="truth", progress=False)
    np.testing.assert_allclose(written.varm["scbert_attention"], again.varm["scbert_attention"], rtol=1e-6)
    # An existing output is refused, and so is a bad column, before any work.
    assert cli_main([*argv, "--csv", str(csv)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main([*argv[:-1], str(tmp_path / "new.h5ad"), "--groupby", "nope"]) == 2
    assert "is not a column of .obs" in capsys.readouterr().err
    assert not (tmp_path / "new.h5ad").exists()


def test_attention_markers_script_counts_markers_among_the_top_genes(model_dir, tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "attention_markers.py"
    spec = importlib.util.spec_from_file_location("attention_markers", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.markers_for("CD14+ Monocytes")[:2] == ["LYZ", "CD14"]
    assert module.markers_for("FCGR3A+ Monocytes")[0] == "FCGR3A" and module.markers_for("B cells")[0] == "MS4A1"
    assert module.markers_for("CD8 T cells")[0] == "CD8A" and module.markers_for("NK cells")[0] == "GNLY"

    source = tmp_path / "cells.h5ad"
    make_adata(seed=2).write_h5ad(source)
    markers = tmp_path / "markers.json"
    markers.write_text(json.dumps({"B": ["GENE0", "GENE1", "GENE2"], "T": ["GENE3", "NOT_IN_PANEL"], "NK": []}))
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--input", str(source), "--label-key", "truth", "--top", "3"]
    result = module.main([*argv, "--markers", str(markers), "--output-dir", str(out)])
    top = pd.read_csv(out / "top_genes.csv")
    expected = json.loads(markers.read_text())
    for _, row in result.iterrows():
        in_panel = [m for m in expected[row["cell_type"]] if m in GENES]
        hits = [m for m in in_panel if m in set(top.loc[top["cell_type"] == row["cell_type"], "gene"])]
        assert row["attention_hits"].split(" ")[0] == f"{len(hits)}/{len(in_panel)}"
        assert row["chance_hits"] == round(3 * len(in_panel) / len(GENES), 2)
    assert (out / "marker_hits.md").read_text().strip()
