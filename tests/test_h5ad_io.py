"""Every .h5ad that anndata reads can be annotated and embedded: the input is copied and patched
where its layout allows, written with anndata's own writer where it does not (anndata < 0.7), and a failure leaves
no file behind."""

import hashlib

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import save_tiny_annotator

from modeling_scbert import h5ad_io
from modeling_scbert.annotation import inference
from modeling_scbert.cli import main as cli_main
from modeling_scbert.h5ad_io import plan_h5ad_output, write_h5ad_with_slots
from tokenization.reading import read_h5ad

pytestmark = pytest.mark.filterwarnings("ignore:Element .* was written without encoding metadata")

GENES = [f"GENE{j}" for j in range(12)]
N_CELLS = 9
CLUSTERS = np.arange(N_CELLS) % 3


def counts() -> np.ndarray:
    return np.random.default_rng(0).poisson(3.0, size=(N_CELLS, len(GENES))).astype(np.float32)


def write_current(path):
    obs = pd.DataFrame({"louvain": pd.Categorical(CLUSTERS.astype(str))}, index=[f"cell_{i}" for i in range(N_CELLS)])
    ad.AnnData(X=sp.csr_matrix(counts()), obs=obs, var=pd.DataFrame(index=GENES)).write_h5ad(path)


def write_anndata_06(path):
    """The layout before anndata 0.7: .obs / .var as compound (structured) datasets, categories in .uns."""
    with h5py.File(path, "w") as file:
        file.create_dataset("X", data=counts())
        obs = np.array(
            [(f"cell_{i}".encode(), c) for i, c in enumerate(CLUSTERS)], dtype=[("index", "S16"), ("louvain", "i1")]
        )
        file.create_dataset("obs", data=obs)
        file.create_dataset("var", data=np.array([(g.encode(),) for g in GENES], dtype=[("index", "S16")]))
        file.create_group("uns").create_dataset("louvain_categories", data=np.array([b"0", b"1", b"2"]))


def write_anndata_07(path):
    """The anndata 0.7 layout: dataframes as groups (encoding 0.1.0), categories under __categories."""
    csr = sp.csr_matrix(counts())
    text = h5py.special_dtype(vlen=str)
    with h5py.File(path, "w") as file:
        x = file.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": np.array(csr.shape)})
        for name in ("data", "indices", "indptr"):
            x.create_dataset(name, data=getattr(csr, name))
        for name, index, columns in (("obs", [f"cell_{i}" for i in range(N_CELLS)], ["louvain"]), ("var", GENES, [])):
            group = file.create_group(name)
            group.attrs.update(
                {
                    "encoding-type": "dataframe",
                    "encoding-version": "0.1.0",
                    "_index": "_index",
                    "column-order": np.array(columns, dtype=object).astype(text),
                }
            )
            group.create_dataset("_index", data=np.array(index, dtype=object), dtype=text)
        categories = file["obs"].create_group("__categories")
        categories.create_dataset("louvain", data=np.array(["0", "1", "2"], dtype=object), dtype=text)
        codes = file["obs"].create_dataset("louvain", data=CLUSTERS.astype(np.int8))
        codes.attrs["categories"] = categories["louvain"].ref
        file.create_group("uns")


LAYOUTS = {"current": (write_current, "copy"), "0.7": (write_anndata_07, "copy"), "0.6": (write_anndata_06, "rewrite")}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_annotator(tmp_path_factory.mktemp("annotator"), GENES))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_case_14_every_layout_anndata_reads_is_annotated_and_embedded(layout, model_dir, tmp_path):
    """Case 14: a file of anndata < 0.7 was annotated in full, then failed at the write ("no field of name
    scbert_cell_type"); now it is written with anndata's writer, and the 0.7 and current layouts are patched."""
    writer, plan = LAYOUTS[layout]
    path = tmp_path / "cells.h5ad"
    writer(path)
    before, original = digest(path), ad.read_h5ad(path)
    assert plan_h5ad_output(path) == plan

    out = tmp_path / "annotated.h5ad"
    assert (
        cli_main(
            ["annotate", "--model", model_dir, "--input", str(path), "--output", str(out), "--label-key", "louvain"]
        )
        == 0
    )
    result = ad.read_h5ad(out)
    assert result.n_obs == N_CELLS and list(result.obs_names) == list(original.obs_names)
    assert set(result.obs["scbert_cell_type"].astype(str)) <= {"B", "T"}
    assert list(result.obs["louvain"].astype(str)) == list(original.obs["louvain"].astype(str))
    np.testing.assert_array_equal(np.asarray(result.X.todense() if sp.issparse(result.X) else result.X), counts())

    embedded = tmp_path / "embedded.h5ad"
    assert cli_main(["embed", "--model", model_dir, "--input", str(path), "--output", str(embedded)]) == 0
    assert ad.read_h5ad(embedded).obsm["X_scbert"].shape == (N_CELLS, 16)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.h5ad", "cells.h5ad", "embedded.h5ad"]


def test_a_file_that_cannot_be_written_is_refused_before_the_model_loads(model_dir, tmp_path, monkeypatch, capsys):
    path = tmp_path / "cells.h5ad"
    write_current(path)
    loaded = []
    monkeypatch.setattr(inference, "load_annotator", lambda *args, **kwargs: loaded.append(args))

    def unwritable(source):
        raise ValueError(f"Could not read the .obs of {str(source)!r}")

    monkeypatch.setattr(h5ad_io, "plan_h5ad_output", unwritable)
    for command in ("annotate", "embed"):
        out = tmp_path / "out.h5ad"
        assert cli_main([command, "--model", model_dir, "--input", str(path), "--output", str(out)]) == 2
        assert "Could not read the .obs" in capsys.readouterr().err
        assert loaded == [] and not out.exists()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_failed_write_leaves_no_file(layout, tmp_path, monkeypatch):
    writer, plan = LAYOUTS[layout]
    path = tmp_path / "cells.h5ad"
    writer(path)
    before = digest(path)
    adata = ad.read_h5ad(path, backed="r")
    adata.obs["scbert_cell_type"] = "B"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    if plan == "copy":
        import anndata.io

        monkeypatch.setattr(anndata.io, "write_elem", fail)
    else:
        monkeypatch.setattr(ad.AnnData, "write_h5ad", fail)
    with pytest.raises(OSError, match="disk full"):
        write_h5ad_with_slots(path, tmp_path / "out.h5ad", adata, obs_columns=["scbert_cell_type"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]
    assert digest(path) == before


# --- zarr stores, and files whose shapes disagree ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["annotate", "embed"])
def test_a_zarr_store_is_read_and_the_output_is_an_h5ad(model_dir, tmp_path, command):
    source = tmp_path / "cells.h5ad"
    write_current(source)
    store = tmp_path / "cells.zarr"
    ad.read_h5ad(source).write_zarr(store)
    output = tmp_path / "out.h5ad"
    assert cli_main([command, "--model", model_dir, "--input", str(store), "--output", str(output)]) == 0
    written = ad.read_h5ad(output)
    assert written.n_obs == N_CELLS and list(written.obs_names) == list(ad.read_zarr(store).obs_names)
    assert "scbert_cell_type" in written.obs if command == "annotate" else "X_scbert" in written.obsm


def test_a_folder_that_is_not_a_zarr_store_is_named_as_such(model_dir, tmp_path, capsys):
    folder = tmp_path / "cells.zarr"
    folder.mkdir()
    out = tmp_path / "out.h5ad"
    assert cli_main(["annotate", "--model", model_dir, "--input", str(folder), "--output", str(out)]) == 2
    assert "not an AnnData zarr store" in capsys.readouterr().err


def _shrink_obs(path, rows):
    """Replace the .obs of an .h5ad by one with fewer rows, as a damaged or hand-edited file has it."""
    from anndata.io import read_elem, write_elem

    with h5py.File(path, "r+") as file:
        obs = read_elem(file["obs"]).iloc[:rows]
        del file["obs"]
        write_elem(file, "obs", obs)


@pytest.mark.parametrize("command", ["annotate", "embed"])
def test_an_obs_shorter_than_x_is_refused_before_the_model_loads(model_dir, tmp_path, monkeypatch, capsys, command):
    path = tmp_path / "cells.h5ad"
    write_current(path)
    _shrink_obs(path, N_CELLS - 7)
    before = digest(path)
    loaded = []
    monkeypatch.setattr(inference, "load_annotator", lambda *args, **kwargs: loaded.append(args))
    out = tmp_path / "out.h5ad"
    assert cli_main([command, "--model", model_dir, "--input", str(path), "--output", str(out)]) == 2
    message = capsys.readouterr().err
    assert f".obs has {N_CELLS - 7:,} rows" in message and f".X is {N_CELLS:,} x" in message
    assert loaded == [] and not out.exists() and digest(path) == before


def test_a_raw_whose_matrix_and_genes_disagree_is_refused(tmp_path):
    path = tmp_path / "cells.h5ad"
    adata = ad.AnnData(X=sp.csr_matrix(counts()), var=pd.DataFrame(index=GENES))
    adata.raw = adata
    adata.write_h5ad(path)
    with h5py.File(path, "r+") as file:  # drop one gene from .raw.var only
        from anndata.io import read_elem, write_elem

        var = read_elem(file["raw/var"]).iloc[:-1]
        del file["raw/var"]
        write_elem(file["raw"], "var", var)
    with pytest.raises(ValueError, match=r"\.raw\.X is"):
        read_h5ad(path)


def test_an_output_folder_where_nothing_can_be_written_is_refused_before_the_model_loads(
    model_dir, tmp_path, monkeypatch, capsys
):
    import errno
    import tempfile

    path = tmp_path / "cells.h5ad"
    write_current(path)
    loaded = []
    monkeypatch.setattr(inference, "load_annotator", lambda *args, **kwargs: loaded.append(args))

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "out.h5ad"
    assert cli_main(["annotate", "--model", model_dir, "--input", str(path), "--output", str(out)]) == 2
    assert "read-only" in capsys.readouterr().err and loaded == [] and not out.exists()


def test_a_csv_at_the_output_s_path_is_refused_before_any_work(model_dir, tmp_path, monkeypatch, capsys):
    path = tmp_path / "cells.h5ad"
    write_current(path)
    out = tmp_path / "out.h5ad"
    argv = ["annotate", "--model", model_dir, "--input", str(path), "--output", str(out), "--csv", str(out)]
    assert cli_main(argv) == 2
    assert "is also" in capsys.readouterr().err and not out.exists()
    assert cli_main([*argv, "--overwrite"]) == 2 and not out.exists()


def test_an_output_another_run_wrote_meanwhile_is_left_as_it_is(tmp_path):
    path = tmp_path / "cells.h5ad"
    write_current(path)
    adata = ad.read_h5ad(path, backed="r")
    adata.obs["scbert_cell_type"] = "B"
    out = tmp_path / "out.h5ad"
    out.write_text("the other run's output")  # after this run's up-front check, before its rename
    with pytest.raises(FileExistsError, match="appeared while this run was writing it"):
        write_h5ad_with_slots(path, out, adata, obs_columns=["scbert_cell_type"], overwrite=False)
    assert out.read_text() == "the other run's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad", "out.h5ad"]


def test_the_annotated_copy_carries_the_umask_permissions(tmp_path):
    import os
    import stat

    path = tmp_path / "cells.h5ad"
    write_current(path)
    path.chmod(0o600)  # a private input; the output follows the umask, not the input
    adata = ad.read_h5ad(path, backed="r")
    adata.obs["scbert_cell_type"] = "B"
    previous = os.umask(0o022)
    try:
        write_h5ad_with_slots(path, tmp_path / "out.h5ad", adata, obs_columns=["scbert_cell_type"])
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.h5ad").stat().st_mode) == 0o644


def test_the_h5ad_and_its_csv_are_one_result_a_failure_leaves_neither(model_dir, tmp_path, monkeypatch, capsys):
    import anndata.io

    path = tmp_path / "cells.h5ad"
    write_current(path)
    out, csv = tmp_path / "out.h5ad", tmp_path / "out.csv"
    argv = ["annotate", "--model", model_dir, "--input", str(path), "--output", str(out), "--csv", str(csv)]

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out))

    with monkeypatch.context() as patch:
        patch.setattr(anndata.io, "write_elem", fail)
        assert cli_main(argv) == 2
    assert "no space left" in capsys.readouterr().err
    assert not out.exists() and not csv.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]  # no temporary either
    assert cli_main(argv) == 0  # the rerun is not refused
    assert out.exists() and csv.exists()


def test_files_published_together_are_taken_back_when_one_of_them_cannot_be(tmp_path):
    from tokenization.atomic_files import atomic_paths

    first, second = tmp_path / "a.h5ad", tmp_path / "a.csv"
    with pytest.raises(FileExistsError), atomic_paths([first, second], replace=False) as (one, two):
        one.write_text("one")
        two.write_text("two")
        second.write_text("another run's")  # appears while this run writes
    assert not first.exists() and second.read_text() == "another run's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]
