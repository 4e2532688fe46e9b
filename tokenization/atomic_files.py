"""One atomic writer for every file and folder the package writes.

A crash, a full disk or Ctrl-C mid-write must never leave a half-written file under its final name, nor touch what
was there before: everything is staged beside the destination (same folder, so the same filesystem) under a hidden
temporary name, given the permissions the umask asks for, and then published in one step:

- a file with :func:`os.replace`, which POSIX makes atomic;
- a folder over an existing folder with ``renameat2(RENAME_EXCHANGE)`` (Linux): the two folders swap names in one
  step, then the old one, now under the temporary name, is removed. Where the filesystem or the system has no such
  exchange, see :func:`_merge_into` for what the fallback guarantees.

Temporaries are named ``.<name>.<host>-<pid>-<random>.tmp`` (``host``: 8 hex digits of a hash of the host name). The
next writer to the same destination removes those of processes on this host that no longer exist, so a killed run
leaves nothing that a rerun does not clean up.

Fault injection: :data:`_fault_point` is called with the name of each step reached (:data:`FAULT_POINTS`); it does
nothing unless a test replaces it (for example with a function that SIGKILLs the process at one point).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import re
import secrets
import shutil
import socket
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

__all__ = [
    "FAULT_POINTS",
    "atomic_path",
    "atomic_paths",
    "current_umask",
    "exchange_paths",
    "process_tag",
    "remove_stale_temporaries",
    "remove_stale_working_folders",
    "write_text_atomically",
]

# The steps of a write, in order; a process killed at any of them leaves the destination old or new, never partial.
FAULT_POINTS = (
    "created",  # the temporary exists (empty); nothing written yet
    "staged",  # the caller's block has written the temporary
    "permissions_set",  # the umask's permissions are applied to the staged tree
    "exchanged",  # folders only: the new folder is in place, the old one sits under the temporary name
    "merging",  # folders, fallback without an exchange: the first entry of the new folder is moved in
    "assembled",  # folders with update=True: the new version (old entries linked, new ones moved in) is complete
    "published",  # the destination is the new version; the old version is removed
)


def _no_fault(point: str) -> None:
    """The default fault hook: nothing happens at any point."""


# Replaced by tests only: called with each point of FAULT_POINTS as a write reaches it.
_fault_point: Callable[[str], None] = _no_fault

_HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _temporary_name(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.{_HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _pid_is_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(destination: str | PathLike) -> list[Path]:
    """Remove the temporaries that dead writers to ``destination`` left beside it.

    A temporary is stale when its name carries this host's tag and the id of a process that no longer exists.
    Temporaries of live processes, of other hosts (a shared filesystem) and of other destinations are kept.

    Returns
    -------
    The paths removed.
    """
    destination = Path(destination)
    pattern = re.compile(rf"\.{re.escape(destination.name)}\.{_HOST_TAG}-(\d+)-[0-9a-f]+\.tmp")
    return _remove_stale(destination.parent, pattern)


def process_tag() -> str:
    """This process's tag, ``<host>-<pid>``, in the names of what it writes for itself alone (temporaries, working
    folders), so that :func:`remove_stale_working_folders` recognises them once it is gone."""
    return f"{_HOST_TAG}-{os.getpid()}"


def remove_stale_working_folders(parent: str | PathLike, prefix: str) -> list[Path]:
    """Remove the working folders ``<prefix><process_tag()>-...`` in ``parent`` of processes of this host that no
    longer exist (a run killed before it could remove them); those of live processes and other hosts are kept.

    Returns
    -------
    The paths removed.
    """
    return _remove_stale(Path(parent), re.compile(rf"{re.escape(prefix)}{_HOST_TAG}-(\d+)-.+"))


def _remove_stale(parent: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Remove the entries of ``parent`` whose names match ``pattern`` with the id of a dead process as group 1."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _pid_is_alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting it, racing threads).

    Linux reports it in ``/proc/self/status``; elsewhere a probe folder created with mode ``0o777`` shows it.
    """
    try:
        with open("/proc/self/status", "rb") as status:  # binary: the process name there may be any bytes
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    import tempfile

    probe = Path(tempfile.mkdtemp(prefix=".scbert-umask-"))
    try:
        os.rmdir(probe)
        os.mkdir(probe, 0o777)
        return 0o777 & ~stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.rmdir(probe)


def _apply_umask(path: Path, umask: int) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes a plain ``open``/``mkdir`` would give.

    Files get ``0o666 & ~umask`` (``0o777 & ~umask`` when they were executable), folders ``0o777 & ~umask``. Without
    this, what libraries write into a staged folder through :mod:`tempfile` would be published private
    (``0600``/``0700``). Symbolic links, and files with several hard links (their mode is shared with a name outside
    the staged tree, an input perhaps), are left alone.
    """

    def chmod(item: str | Path, mode: int) -> None:
        status = os.lstat(item)
        if not stat.S_ISLNK(status.st_mode) and (stat.S_ISDIR(status.st_mode) or status.st_nlink == 1):
            os.chmod(item, mode & ~umask)

    if not path.is_dir() or path.is_symlink():
        executable = os.lstat(path).st_mode & 0o111
        chmod(path, 0o777 if executable else 0o666)
        return
    chmod(path, 0o777)
    for root, folders, files in os.walk(path):
        for name in folders:
            chmod(os.path.join(root, name), 0o777)
        for name in files:
            item = os.path.join(root, name)
            executable = os.lstat(item).st_mode & 0o111
            chmod(item, 0o777 if executable else 0o666)


# ----------------------------------------------------------------------------------------------- swapping folders
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_RENAMEAT2_SYSCALL = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276}


def _renameat2_function() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function = getattr(libc, "renameat2", None)  # glibc >= 2.28, musl >= 1.2.5
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
        return function
    number = _RENAMEAT2_SYSCALL.get(platform.machine().lower())
    if number is None:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def via_syscall(olddirfd, oldpath, newdirfd, newpath, flags):
        return syscall(
            ctypes.c_long(number),
            ctypes.c_int(olddirfd),
            ctypes.c_char_p(oldpath),
            ctypes.c_int(newdirfd),
            ctypes.c_char_p(newpath),
            ctypes.c_uint(flags),
        )

    return via_syscall


_renameat2 = _renameat2_function()


def _rename_with_flags(source: str | PathLike, target: str | PathLike, flags: int) -> bool:
    """``renameat2(source, target, flags)``: ``False`` where this system or filesystem lacks it (nothing changed)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # EINVAL: the filesystem (NFS, some FUSE) lacks the flag; ENOSYS: a kernel before 3.15
    raise OSError(code, os.strerror(code), os.fspath(source), None, os.fspath(target))


def exchange_paths(first: str | PathLike, second: str | PathLike) -> bool:
    """Swap the names of two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns
    -------
    ``True`` when swapped; ``False`` when this system or filesystem cannot exchange (the paths are untouched).

    Raises
    ------
    OSError
        For any other failure (a path missing, no permission).
    """
    return _rename_with_flags(first, second, _RENAME_EXCHANGE)


def _publish_new(temporary: Path, destination: Path) -> None:
    """Rename ``temporary`` to ``destination`` only if nothing is there, deciding in one step where possible.

    ``renameat2(RENAME_NOREPLACE)`` (Linux; not NFS) or, for a file, a hard link (which fails on an existing name;
    NFS has it) make the check and the rename one step, so of two runs writing the same new output exactly one
    succeeds. Elsewhere the check comes just before the rename, and two runs finishing within that moment can still
    both succeed.

    Raises
    ------
    FileExistsError
        When ``destination`` exists (written by another run while this one worked).
    """
    try:
        if _rename_with_flags(temporary, destination, _RENAME_NOREPLACE):
            return
        if not temporary.is_dir():
            try:
                os.link(temporary, destination)
            except FileExistsError:
                raise
            except OSError:  # no hard links on this filesystem (FAT, some FUSE)
                pass
            else:
                temporary.unlink()
                return
        if os.path.lexists(destination):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(destination))
        os.rename(temporary, destination)  # for a folder, fails on any non-empty folder there meanwhile
    except FileExistsError as error:
        raise FileExistsError(
            errno.EEXIST,
            f"{str(destination)!r} appeared while this run was writing it (another run?) and was left as it is; "
            "pass overwrite to replace it",
        ) from error
    except OSError as error:
        if error.errno == errno.ENOTEMPTY:
            raise FileExistsError(
                errno.EEXIST, f"{str(destination)!r} appeared while this run was writing it and was left as it is"
            ) from error
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _merge_into(staged: Path, destination: Path, *, keep_others: bool = False) -> None:
    """Publish ``staged`` over the existing folder ``destination`` without an exchange, never leaving it empty.

    Each entry of the new folder is renamed over its namesake (one step per file), then entries that only the old
    folder had are removed (kept with ``keep_others``: a folder update, see :func:`_update_folder`). What this guarantees: ``destination`` is a folder at every moment, and every file in it
    is complete (an old or a new version). What it does not: a kill during the merge can leave a mix of old and new
    files; the staged folder of the killed run is then removed by the next writer, which publishes a whole new
    version. Only used where ``renameat2(RENAME_EXCHANGE)`` is unsupported (NFS, non-Linux systems).
    """
    new_names = {entry.name for entry in staged.iterdir()}
    first = True
    for name in sorted(new_names):
        entry, target = staged / name, destination / name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge_into(entry, target)
        else:
            if entry.is_dir() and os.path.lexists(target):
                _remove(target)  # a folder cannot be renamed over a file or a non-empty folder
            os.replace(entry, target)
        if first:
            _fault_point("merging")
            first = False
    if not keep_others:
        for entry in list(destination.iterdir()):
            if entry.name not in new_names:
                _remove(entry)
    os.rmdir(staged)


# ------------------------------------------------------------------------------------------------------ the writer
def _create(temporary: Path, directory: bool) -> None:
    # Created as open() and mkdir() create anything: the kernel applies the umask.
    if directory:
        os.mkdir(temporary, 0o777)
    else:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))


def _link_tree(source: Path, target: Path, *, skip: frozenset[str] = frozenset()) -> None:
    """Recreate ``source``'s tree (less the top-level names in ``skip``) at ``target``: files as hard links, folders
    and symbolic links as new ones.

    Raises
    ------
    OSError
        When the filesystem has no hard links (the caller then falls back to merging).
    """
    for entry in source.iterdir():
        if entry.name in skip:
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target / entry.name)
        elif entry.is_dir():
            os.mkdir(target / entry.name, stat.S_IMODE(entry.stat().st_mode))
            _link_tree(entry, target / entry.name)
        else:
            os.link(entry, target / entry.name)


def _update_folder(staged: Path, destination: Path) -> None:
    """Publish the entries of ``staged`` into the existing folder ``destination`` together, keeping its other entries.

    A complete new version is assembled beside it (its other entries as hard links, which cost no space and leave
    the old files untouched; the staged entries moved in), then swapped in by :func:`_publish` in one step. On a
    filesystem without hard links the staged entries are merged one by one instead (each file complete, but a kill
    can leave some new and some old ones; see :func:`_merge_into`).
    """
    new_names = frozenset(entry.name for entry in staged.iterdir())
    combined = _temporary_name(destination)
    os.mkdir(combined, 0o777)
    try:
        _link_tree(destination, combined, skip=new_names)
    except OSError:
        _remove(combined)
        _merge_into(staged, destination, keep_others=True)
        return
    try:
        for entry in staged.iterdir():
            os.rename(entry, combined / entry.name)
        os.rmdir(staged)
        _fault_point("assembled")
        _publish(combined, destination, directory=True, replace=True)
    except BaseException:
        if os.path.lexists(combined):
            _remove(combined)
        raise


def _publish(temporary: Path, destination: Path, directory: bool, replace: bool, update: bool = False) -> None:
    if not replace:
        _publish_new(temporary, destination)
    elif directory and update and destination.is_dir():
        _update_folder(temporary, destination)
    elif directory and destination.is_dir():
        if exchange_paths(temporary, destination):
            _fault_point("exchanged")
            _remove(temporary)  # the old folder, now under the temporary's name (a dead run's is removed later)
        else:
            _merge_into(temporary, destination)
    else:
        os.replace(temporary, destination)


def _new_temporary(destination: Path, directory: bool) -> Path:
    """A new, empty temporary beside ``destination``, after removing those that dead runs left for it."""
    remove_stale_temporaries(destination)
    while True:
        temporary = _temporary_name(destination)
        try:
            _create(temporary, directory)
            return temporary
        except FileExistsError:
            continue


@contextmanager
def atomic_paths(destinations: Sequence[str | PathLike], *, replace: bool = True) -> Iterator[list[Path]]:
    """Several files written as one result: each staged like :func:`atomic_path`, none published unless every one
    was written, then all published one right after another.

    A failure while writing (an error, a full disk, a kill) publishes none of them. Publishing is one rename per
    file, back to back; if one of them fails (with ``replace=False``: another run wrote that path meanwhile), the
    files this call had already published at paths that were free are removed again, so a rerun is not refused.
    What it does not promise: a kill in the moment between two renames leaves the first file published alone.

    Parameters
    ----------
    destinations
        The final files, in the order they are published. Their parent folders must exist.
    replace
        As for :func:`atomic_path`.

    Yields
    ------
    The temporary paths to write to, in the order of ``destinations``.

    Raises
    ------
    FileExistsError
        With ``replace=False``, when one of the destinations exists at the time of publishing.
    OSError
        From the filesystem, for example a full disk.
    """
    destinations = [Path(destination) for destination in destinations]
    temporaries: list[Path] = []
    try:
        for destination in destinations:
            temporaries.append(_new_temporary(destination, directory=False))
        _fault_point("created")
        yield list(temporaries)
        _fault_point("staged")
        umask = current_umask()
        for temporary in temporaries:
            _apply_umask(temporary, umask)
        _fault_point("permissions_set")
        published: list[Path] = []
        try:
            for temporary, destination in zip(temporaries, destinations):
                was_free = not os.path.lexists(destination)
                _publish(temporary, destination, False, replace)
                if was_free:
                    published.append(destination)
        except BaseException:
            for destination in published:
                destination.unlink(missing_ok=True)
            raise
        _fault_point("published")
    except BaseException:
        for temporary in temporaries:
            if os.path.lexists(temporary):
                _remove(temporary)
        raise


@contextmanager
def atomic_path(
    destination: str | PathLike, *, directory: bool = False, replace: bool = True, update: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success publish it as ``destination`` in one step.

    Before creating the temporary, temporaries that dead runs left for the same destination are removed. Before
    publishing, the staged file or folder tree gets the permissions the umask asks for (``0o666 & ~umask`` for files,
    ``0o777 & ~umask`` for folders), whatever modes the writers inside gave it.

    Parameters
    ----------
    destination
        The final file or folder. Its parent folder must exist.
    directory
        Yield a fresh empty folder instead of a (just created, empty) file. An existing folder at
        ``destination`` is swapped with the new one in one step (``renameat2(RENAME_EXCHANGE)``) and then
        removed; for a file, ``os.replace`` replaces it in one step.
    update
        Folders only: the yielded folder's entries replace their namesakes in an existing folder at
        ``destination``, and the folder's other entries are kept (a model saved into a Trainer's output folder
        keeps its checkpoints); the result is still published in one step (see :func:`_update_folder`).
    replace
        Replace what is at ``destination``. With ``False``, publishing fails with ``FileExistsError`` when
        something is there by then (another run writing the same output), decided in the same step as the rename
        where the system allows (see :func:`_publish_new`); the temporary is removed and nothing is replaced.

    Yields
    ------
    The temporary path to write to. It is removed, with anything in it, when the block raises.

    Raises
    ------
    FileNotFoundError
        The parent folder of ``destination`` does not exist.
    FileExistsError
        With ``replace=False``, when ``destination`` exists at the time of publishing.
    OSError
        From the filesystem, for example a full disk or a folder in the way of a file.
    """
    destination = Path(destination)
    temporary = _new_temporary(destination, directory)
    try:
        _fault_point("created")
        yield temporary
        _fault_point("staged")
        _apply_umask(temporary, current_umask())
        _fault_point("permissions_set")
        _publish(temporary, destination, directory, replace, update)
        _fault_point("published")
    except BaseException:
        if os.path.lexists(temporary):
            _remove(temporary)
        raise


def write_text_atomically(path: str | PathLike, text: str, *, replace: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`, also for ``replace``)."""
    with atomic_path(path, replace=replace) as temporary:
        temporary.write_text(text, encoding="utf-8")
