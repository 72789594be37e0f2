"""Free disk space: one clear line instead of a buried ENOSPC.

A write that runs out of space deep inside ``torch.save`` surfaces as a
``RuntimeError: ... unexpected pos`` from the zip writer, with the real ``OSError:
[Errno 28] No space left on device`` only in its ``__context__``.
:func:`find_disk_full` finds that cause in an exception chain and
:class:`DiskSpaceError` says in one line which folder, how much is needed and how much is
free. :func:`free_bytes` is what a non-root writer may use (``shutil.disk_usage``).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Optional, Union

#: errno values that mean "the disk (or the user's quota) is full".
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskSpaceError(OSError):
    """Not enough free disk space; ``str()`` is one line naming the folder, the need and what is free."""

    def __init__(self, message: str, folder: Union[str, Path], needed: Optional[int] = None,
                 free: Optional[int] = None) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message, self.folder, self.needed, self.free = message, Path(folder), needed, free

    def __str__(self) -> str:
        return self.message


def size_text(n: Optional[float]) -> str:
    """``1.5 GB`` style (powers of 1024, as ``df -h``); ``?`` for None."""
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def existing_ancestor(path: Union[str, Path]) -> Path:
    """``path`` or its nearest existing parent (a run folder may not exist yet)."""
    path = Path(os.path.abspath(os.path.expanduser(str(path))))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Union[str, Path]) -> int:
    """Bytes an unprivileged process may still write on the file system holding ``path``."""
    return int(shutil.disk_usage(existing_ancestor(path)).free)


def find_disk_full(error: BaseException) -> Optional[OSError]:
    """The ENOSPC / EDQUOT ``OSError`` in ``error``'s cause/context chain (``error`` itself
    included), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def disk_full_error(folder: Union[str, Path], what: str, needed: Optional[int], hint: str = "") -> DiskSpaceError:
    """The one-line error for ``what`` (e.g. ``checkpoint step-00000005``) not fitting in ``folder``."""
    free = None
    try:
        free = free_bytes(folder)
    except OSError:
        pass
    need = f"it needs about {size_text(needed)}, " if needed is not None else ""
    return DiskSpaceError(f"no space left on the disk of {folder} for {what}: {need}{size_text(free)} free"
                          + (f". {hint}" if hint else ""), folder, needed, free)


__all__ = ["DiskSpaceError", "FULL_ERRNOS", "disk_full_error", "existing_ancestor", "find_disk_full", "free_bytes",
           "size_text"]
