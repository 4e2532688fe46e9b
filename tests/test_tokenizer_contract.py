"""The tokenizer's files hold exactly its panel: names that break the one-per-line file and gene-file paths that
leave the tokenizer's folder are refused, with a message that names them."""

from __future__ import annotations

import json
import os
import signal

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from tokenization import ScBertTokenizer, atomic_files


@pytest.mark.parametrize(
    "bad",
    ["CD3\nE", "CD3\rE", "CD3\x00E", "CD3\tE", "CD3\u2028E", "#CD3E"],
    ids=["newline", "carriage-return", "nul", "tab", "line-separator", "comment"],
)
def test_names_that_cannot_round_trip_through_the_gene_file_are_refused(bad):
    with pytest.raises(
        ValueError, match=r"1 of the panel.s gene names cannot be saved one per line in genes.txt"
    ) as error:
        ScBertTokenizer(["MS4A1", bad, "NKG7"])
    assert repr(bad) in str(error.value)


def test_names_from_an_anndata_are_checked_too():
    adata = ad.AnnData(np.ones((2, 3), np.float32), var=pd.DataFrame(index=["A", "B\nC", "D"]))
    with pytest.raises(ValueError, match=r"'B\\nC'"):
        ScBertTokenizer.from_adata(adata)


def test_a_panel_changed_after_construction_is_refused_at_save(tmp_path):
    tokenizer = ScBertTokenizer(["A", "B"])
    tokenizer._genes = ("A", "B\nC")
    with pytest.raises(ValueError, match=r"'B\\nC'"):
        tokenizer.save_pretrained(tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_unusual_but_line_safe_names_round_trip(tmp_path):
    genes = ["HLA-A", "gene with spaces", "Gène-ü", "A#B", "ENSG00000141510"]
    ScBertTokenizer(genes).save_pretrained(tmp_path)
    assert ScBertTokenizer.from_pretrained(tmp_path).genes == tuple(genes)


@pytest.mark.parametrize("genes_file", ["/etc/passwd", "../genes.txt", "sub/../../genes.txt", "C:\\genes.txt", "", 3])
def test_a_gene_file_outside_the_tokenizer_folder_is_refused_at_load(tmp_path, genes_file):
    folder = tmp_path / "tok"
    ScBertTokenizer(["A", "B"]).save_pretrained(folder)
    ScBertTokenizer(["A", "B"]).save_pretrained(tmp_path)  # a readable panel just outside the folder
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "genes_file": genes_file}))
    with pytest.raises(ValueError, match=r"names its gene file .*must be a file inside the tokenizer's folder"):
        ScBertTokenizer.from_pretrained(folder)


def test_a_gene_file_in_a_sub_folder_is_accepted(tmp_path):
    ScBertTokenizer(["A", "B"]).save_pretrained(tmp_path)
    (tmp_path / "panel").mkdir()
    (tmp_path / "genes.txt").rename(tmp_path / "panel" / "genes.txt")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "genes_file": "panel/genes.txt"}))
    assert ScBertTokenizer.from_pretrained(tmp_path).genes == ("A", "B")


def test_a_hub_tokenizer_naming_a_gene_file_outside_the_repository_is_refused(tmp_path, monkeypatch):
    import huggingface_hub

    ScBertTokenizer(["A", "B"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "genes_file": "../../../.ssh/id_rsa"}))
    downloads = []

    def fake_download(*, repo_id, filename, **kwargs):
        downloads.append(filename)
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(
        ValueError, match=r"user/scbert/tokenizer_config.json names its gene file '../../../.ssh/id_rsa'"
    ):
        ScBertTokenizer.from_pretrained("user/scbert")
    assert downloads == ["tokenizer_config.json"]


@pytest.mark.parametrize("point", ["created", "staged", "permissions_set", "assembled", "exchanged", "published"])
def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_tokenizer_never_a_mix(tmp_path, point):
    """The two files are published together: a kill anywhere leaves a tokenizer that loads, old or new."""
    (tmp_path / "model.safetensors").write_bytes(b"weights")  # what else the folder holds is kept
    ScBertTokenizer(["A", "B"]).save_pretrained(tmp_path)
    pid = os.fork()
    if pid == 0:  # the child: killed at the chosen point of the save
        try:

            def fault(reached: str) -> None:
                if reached == point:
                    os.kill(os.getpid(), signal.SIGKILL)

            atomic_files._fault_point = fault
            ScBertTokenizer(["A", "B", "C"]).save_pretrained(tmp_path)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert ScBertTokenizer.from_pretrained(tmp_path).genes in (("A", "B"), ("A", "B", "C"))
    ScBertTokenizer(["A", "B", "C"]).save_pretrained(tmp_path)  # a rerun works and cleans up the dead run's files
    assert ScBertTokenizer.from_pretrained(tmp_path).genes == ("A", "B", "C")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genes.txt", "model.safetensors", "tokenizer_config.json"]
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights"
