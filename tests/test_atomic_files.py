import errno
import os
import resource
import signal
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from tokenization import atomic_files
from tokenization.atomic_files import atomic_path, current_umask, exchange_paths, write_text_atomically


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


# ------------------------------------------------------------------------------------------------------ permissions
@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_umask_is_read_without_changing_it(umask_022):
    assert current_umask() == 0o022
    assert os.umask(0o022) == 0o022


def test_written_files_and_folders_carry_the_umask_permissions(tmp_path, umask_022):
    write_text_atomically(tmp_path / "labels.csv", "cell_id,label\n")
    assert _mode(tmp_path / "labels.csv") == 0o644
    with atomic_path(tmp_path / "model", directory=True) as staging:
        (staging / "sub").mkdir(mode=0o700)
        (staging / "sub" / "weights.bin").write_bytes(b"w")
        handle, name = tempfile.mkstemp(dir=staging)  # a library writing a private temporary into the folder
        os.close(handle)
        os.rename(name, staging / "config.json")
    model = tmp_path / "model"
    assert (_mode(model), _mode(model / "sub")) == (0o755, 0o755)
    assert (_mode(model / "config.json"), _mode(model / "sub" / "weights.bin")) == (0o644, 0o644)
    # Over an existing folder, too; and a stricter umask gives stricter modes.
    os.umask(0o077)
    with atomic_path(model, directory=True) as staging:
        (staging / "config.json").write_text("{}")
    assert (_mode(model), _mode(model / "config.json")) == (0o700, 0o600)


def test_an_input_hard_linked_into_a_staged_folder_keeps_its_mode(tmp_path, umask_022):
    source = tmp_path / "input.h5ad"
    source.write_bytes(b"cells")
    source.chmod(0o600)
    with atomic_path(tmp_path / "out", directory=True) as staging:
        os.link(source, staging / "input.h5ad")
    assert _mode(source) == 0o600


def test_a_tokenizer_folder_is_readable_by_the_group_and_others(tmp_path, umask_022):
    from tokenization import ScBertTokenizer

    paths = ScBertTokenizer(["CD3E", "MS4A1", "NKG7"]).save_pretrained(tmp_path / "tok")
    assert {_mode(Path(p)) for p in paths} == {0o644}


# ------------------------------------------------------------------------------------- folders published in one step
def test_a_folder_is_swapped_in_one_step_with_renameat2(tmp_path, monkeypatch):
    if atomic_files._renameat2 is None:
        pytest.skip("no renameat2 on this system")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one").write_text("1")
    (tmp_path / "b").mkdir()
    assert exchange_paths(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "one").read_text() == "1" and not any((tmp_path / "a").iterdir())
    with pytest.raises(FileNotFoundError):
        exchange_paths(tmp_path / "a", tmp_path / "missing")
    # The writer uses the exchange: the merge fallback is never reached.
    monkeypatch.setattr(atomic_files, "_merge_into", lambda *args: pytest.fail("fell back to merging"))
    target = _old_folder(tmp_path / "model")
    with atomic_path(target, directory=True) as staging:
        _fill_new(staging)
    assert _version(target) == "new"


def test_without_renameat2_in_libc_the_system_call_swaps_the_folders(tmp_path, monkeypatch):
    import ctypes
    import platform

    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "aarch64"):
        pytest.skip("the system call number is known for Linux on x86_64 and aarch64")
    real = ctypes.CDLL

    class LibcWithoutRenameat2:  # an older glibc (< 2.28)
        def __init__(self, *args, **kwargs):
            self._libc = real(*args, **kwargs)

        def __getattr__(self, name):
            if name == "renameat2":
                raise AttributeError(name)
            return getattr(self._libc, name)

    monkeypatch.setattr(ctypes, "CDLL", LibcWithoutRenameat2)
    monkeypatch.setattr(atomic_files, "_renameat2", atomic_files._renameat2_function())
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one").write_text("1")
    (tmp_path / "b").mkdir()
    assert exchange_paths(tmp_path / "a", tmp_path / "b")
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["one"] and not any((tmp_path / "a").iterdir())


def test_without_an_exchange_the_folder_is_merged_and_never_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_files, "_renameat2", None)
    target = _old_folder(tmp_path / "model")
    seen = []
    monkeypatch.setattr(atomic_files, "_fault_point", lambda point: seen.append((point, target.is_dir())))
    with atomic_path(target, directory=True) as staging:
        _fill_new(staging)
    assert _version(target) == "new"
    assert ("merging", True) in seen and all(present for _, present in seen)
    assert _leftovers(tmp_path, {"model"}) == []


def test_stale_temporaries_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "out.h5ad"
    dead = _dead_pid()
    stale_file = tmp_path / f".out.h5ad.{atomic_files._HOST_TAG}-{dead}-0a1b2c3d.tmp"
    stale_file.write_text("half")
    stale_folder = tmp_path / f".out.h5ad.{atomic_files._HOST_TAG}-{dead}-deadbeef.tmp"
    stale_folder.mkdir()
    (stale_folder / "x").write_text("x")
    live = tmp_path / f".out.h5ad.{atomic_files._HOST_TAG}-{os.getppid()}-00000000.tmp"
    other_host = tmp_path / f".out.h5ad.00000000-{dead}-00000000.tmp"
    other_target = tmp_path / f".other.h5ad.{atomic_files._HOST_TAG}-{dead}-00000000.tmp"
    for path in (live, other_host, other_target):
        path.write_text("keep")
    write_text_atomically(target, "new")
    assert target.read_text() == "new"
    assert _leftovers(tmp_path, {"out.h5ad"}) == sorted(p.name for p in (live, other_host, other_target))


# ------------------------------------------------------------------------------------------ two runs, one output
@pytest.mark.parametrize("path", ["renameat2", "fallback"])
@pytest.mark.parametrize("directory", [False, True], ids=["file", "folder"])
def test_of_two_runs_writing_one_new_output_without_replace_the_second_fails(tmp_path, monkeypatch, path, directory):
    if path == "renameat2" and atomic_files._renameat2 is None:
        pytest.skip("no renameat2 on this system")
    if path == "fallback":
        monkeypatch.setattr(atomic_files, "_renameat2", None)
    target = tmp_path / "out"

    def fill(staging: Path, text: str) -> None:
        (staging / "data.txt" if directory else staging).write_text(text)

    with (
        pytest.raises(FileExistsError, match="appeared while this run was writing it"),
        atomic_path(target, directory=directory, replace=False) as first,
    ):
        fill(first, "first")
        with atomic_path(target, directory=directory, replace=False) as second:
            fill(second, "second")
    assert (target / "data.txt" if directory else target).read_text() == "second"  # the first finished, whole
    assert _leftovers(tmp_path, {"out"}) == []
    with atomic_path(target, directory=directory) as third:  # replacing is still what replace=True asks for
        fill(third, "third")
    assert (target / "data.txt" if directory else target).read_text() == "third"


# ------------------------------------------------------------------------------------------------- fault injection
def _old_folder(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"version": "old"}')
    (path / "model.safetensors").write_bytes(b"old" * 1000)
    (path / "only_old.txt").write_text("old")
    return path


def _fill_new(staging: Path) -> None:
    (staging / "config.json").write_text('{"version": "new"}')
    (staging / "model.safetensors").write_bytes(b"new" * 2000)
    (staging / "tokenizer").mkdir()
    (staging / "tokenizer" / "genes.txt").write_text("CD3E\n")


def _version(path: Path) -> str:
    """ "old" or "new" when ``path`` holds one complete version; fails on anything else."""
    names = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    if names == ["config.json", "model.safetensors", "only_old.txt"]:
        assert (path / "model.safetensors").read_bytes() == b"old" * 1000
        assert (path / "config.json").read_text() == '{"version": "old"}'
        return "old"
    assert names == ["config.json", "model.safetensors", "tokenizer", "tokenizer/genes.txt"], names
    assert (path / "model.safetensors").read_bytes() == b"new" * 2000
    assert (path / "config.json").read_text() == '{"version": "new"}'
    return "new"


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _run_in_child(write, *, kill_at: str | None = None, setup=None) -> int:
    """Run ``write()`` in a forked child, SIGKILLed when the writer reaches ``kill_at``; return the wait status."""
    pid = os.fork()
    if pid == 0:  # the child never returns to pytest
        code = 0
        try:
            if setup is not None:
                setup()
            if kill_at is not None:

                def fault(point: str) -> None:
                    if point == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)

                atomic_files._fault_point = fault
            write()
        except OSError as error:
            code = 100 + (error.errno or 0) % 100
        except BaseException:
            code = 99
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


FILE_POINTS = ["created", "staged", "permissions_set", "published"]
FOLDER_CASES = [
    *((point, "exchange") for point in ["created", "staged", "permissions_set", "exchanged", "published"]),
    *((point, "merge-fallback") for point in ["staged", "permissions_set", "merging", "published"]),
]


@pytest.mark.parametrize("point", FILE_POINTS)
def test_a_file_writer_killed_at_any_point_leaves_the_old_or_the_new_file(tmp_path, point):
    target = tmp_path / "annotated.csv"
    target.write_text("old\n")
    status = _run_in_child(lambda: write_text_atomically(target, "new\n" * 1000), kill_at=point)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert target.read_text() in ("old\n", "new\n" * 1000)
    assert target.read_text() == ("new\n" * 1000 if point == "published" else "old\n")
    write_text_atomically(target, "rerun\n")  # no hand cleaning
    assert target.read_text() == "rerun\n"
    assert _leftovers(tmp_path, {"annotated.csv"}) == []


@pytest.mark.parametrize(("point", "path"), FOLDER_CASES)
def test_a_folder_writer_killed_at_any_point_leaves_the_old_or_the_new_folder(tmp_path, monkeypatch, point, path):
    if path == "exchange" and atomic_files._renameat2 is None:
        pytest.skip("no renameat2 on this system")
    if path == "merge-fallback":
        monkeypatch.setattr(atomic_files, "_renameat2", None)
    target = _old_folder(tmp_path / "model")

    def write():
        with atomic_path(target, directory=True) as staging:
            _fill_new(staging)

    status = _run_in_child(write, kill_at=point)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert target.is_dir()  # never missing
    if point == "merging":
        # The documented limit of the fallback: every file complete, the folder a mix until the next write.
        assert (target / "config.json").read_text() in ('{"version": "old"}', '{"version": "new"}')
    else:
        expected = "new" if point in ("exchanged", "published") else "old"
        assert _version(target) == expected
    write()  # the rerun needs no hand cleaning, and removes what the killed run left
    assert _version(target) == "new"
    assert _leftovers(tmp_path, {"model"}) == []


def _limit_file_size(limit: int):
    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    status = _run_in_child(lambda: write_text_atomically(target, "x" * 100_000), setup=_limit_file_size(4096))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 100 + errno.EFBIG % 100
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path, {"out.csv"}) == []


def test_a_full_disk_while_writing_a_folder_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = _old_folder(tmp_path / "model")

    def write():
        with atomic_path(target, directory=True) as staging:
            _fill_new(staging)
            (staging / "model.safetensors").write_bytes(b"w" * 100_000)

    status = _run_in_child(write, setup=_limit_file_size(8192))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 100 + errno.EFBIG % 100
    assert _version(target) == "old"
    assert _leftovers(tmp_path, {"model"}) == []


@pytest.mark.parametrize("point", FILE_POINTS)
@pytest.mark.parametrize("replace", [True, False])
def test_files_written_as_one_result_and_killed_at_any_point_are_all_old_or_all_new(tmp_path, point, replace):
    from tokenization.atomic_files import atomic_paths

    h5ad, csv = tmp_path / "out.h5ad", tmp_path / "out.csv"
    if replace:
        h5ad.write_text("old h5ad")
        csv.write_text("old csv")

    def write():
        with atomic_paths([h5ad, csv], replace=replace) as (one, two):
            one.write_text("new h5ad")
            two.write_text("new csv")

    status = _run_in_child(write, kill_at=point)
    assert os.WIFSIGNALED(status)
    found = (h5ad.read_text() if h5ad.exists() else None, csv.read_text() if csv.exists() else None)
    before = ("old h5ad", "old csv") if replace else (None, None)
    assert found == (("new h5ad", "new csv") if point == "published" else before)
    if h5ad.exists():
        h5ad.unlink()
        csv.unlink()
    write()  # the rerun works without hand cleaning
    assert (h5ad.read_text(), csv.read_text()) == ("new h5ad", "new csv")
    assert _leftovers(tmp_path, {"out.h5ad", "out.csv"}) == []


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_folder_update_replaces_its_entries_and_keeps_the_others(tmp_path, monkeypatch, hard_links):
    def no_hard_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    if not hard_links:  # a filesystem without hard links: the entries are merged one by one
        monkeypatch.setattr(atomic_files.os, "link", no_hard_links)
    target = tmp_path / "model"
    (target / "checkpoint-5").mkdir(parents=True)
    (target / "checkpoint-5" / "optimizer.pt").write_text("state")
    (target / "config.json").write_text("old config")
    (target / "genes.txt").write_text("old genes")
    with atomic_path(target, directory=True, update=True) as staging:
        (staging / "config.json").write_text("new config")
        (staging / "model.safetensors").write_text("new weights")
    assert (target / "config.json").read_text() == "new config"
    assert (target / "model.safetensors").read_text() == "new weights"
    assert (target / "genes.txt").read_text() == "old genes"
    assert (target / "checkpoint-5" / "optimizer.pt").read_text() == "state"
    assert _leftovers(tmp_path, {"model"}) == []
