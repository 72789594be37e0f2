"""Crash-safe file writes shared by checkpoints, caches and training state."""

from __future__ import annotations

import os
import tempfile
from typing import IO, Any, Callable, Union

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through ``write(fileobj)`` to a temp file next to ``path``, fsync, then ``os.replace``.

    A process killed at any moment leaves either the previous file or the new
    one at ``path``, never a truncated mix.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def fsync_path(path: PathLike, directory: bool = False) -> None:
    """Best-effort fsync of a file, or of a folder so that renames inside it are durable.

    File systems that cannot open or sync (some network mounts) are skipped: durability is a
    bonus there, never a reason to fail the write that already succeeded.
    """
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
