from pathlib import Path

import pytest

from tokenization.atomic_files import atomic_path, write_text_atomically


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_a_file_is_replaced_whole_and_no_temporary_stays(tmp_path):
    target = tmp_path / "panel.txt"
    target.write_text("old")
    write_text_atomically(target, "new\n")
    assert target.read_text() == "new\n"
    assert _leftovers(tmp_path, {"panel.txt"}) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.h5ad"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, {"out.h5ad"}) == []


def test_a_folder_replaces_an_existing_folder_or_leaves_it_untouched(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("stale")
    with atomic_path(target, directory=True) as temporary:
        (temporary / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    with pytest.raises(KeyboardInterrupt), atomic_path(target, directory=True) as temporary:
        (temporary / "half.bin").write_text("x")
        raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert _leftovers(tmp_path, {"model"}) == []
