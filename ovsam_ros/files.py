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
