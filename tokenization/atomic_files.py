"""One atomic writer for every file and folder the package writes.

A crash, a full disk or Ctrl-C mid-write must never leave a half-written file under its final name, nor touch what
was there before: everything is written beside the destination (same folder, so the same filesystem) under a hidden
temporary name and then renamed over it with :func:`os.replace`, which POSIX and Windows make atomic for files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path


@contextmanager
def atomic_path(destination: str | PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success rename it over ``destination``.

    Args:
        destination: The final file or folder. Its parent folder must exist.
        directory: Yield a fresh empty folder instead of a (just created, empty) file. An existing folder at
            ``destination`` is replaced as a whole; for a file, ``os.replace`` replaces it in one step.

    Yields:
        The temporary path to write to. It is removed, with anything in it, when the block raises.

    Raises:
        FileNotFoundError: The parent folder of ``destination`` does not exist.
        OSError: From the filesystem, for example a full disk or a folder in the way of a file.
    """
    destination = Path(destination)
    prefix = f".{destination.name}."
    if directory:
        temporary = Path(tempfile.mkdtemp(dir=destination.parent, prefix=prefix, suffix=".tmp"))
    else:
        handle, name = tempfile.mkstemp(dir=destination.parent, prefix=prefix, suffix=".tmp")
        os.close(handle)
        temporary = Path(name)
    try:
        yield temporary
        if directory and destination.is_dir():
            # A folder cannot be renamed over a non-empty one: move the old one aside first, drop it after.
            old = Path(tempfile.mkdtemp(dir=destination.parent, prefix=prefix, suffix=".old"))
            os.replace(destination, old / destination.name)
            os.replace(temporary, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, destination)
    except BaseException:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


__all__ = ["atomic_path", "write_text_atomically"]
