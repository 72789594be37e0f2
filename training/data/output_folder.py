"""Output folders of ``ovsam-extract-bag`` and ``ovsam-label``: never an input, replaced only when
they hold the same tool's earlier output.

* ``--out`` may not be an input, contain one, or lie inside one (compared as resolved real paths,
  so a symlink or ``..`` does not hide it): ``--overwrite`` would delete the recording.
* ``--overwrite`` replaces a folder only when it is empty or holds an earlier run of the same tool
  (its manifest / plan file) and nothing that tool does not write; anything else is refused
  naming a file the tool did not write (the rule of :mod:`ovsam_ros.export.folder`).
* Callers check every argument and input before anything is deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .common import DataError


def real_path(path: os.PathLike | str) -> Path:
    return Path(os.path.expanduser(os.fspath(path))).resolve()


def check_out_not_input(out: os.PathLike | str, inputs: Sequence[os.PathLike | str], option: str = "--out") -> None:
    """DataError when ``out`` is, contains, or lies inside one of ``inputs``."""
    o = real_path(out)
    for given in inputs:
        i = real_path(given)
        if o == i:
            why = "is the input"
        elif i.is_relative_to(o):
            why = "contains the input"
        elif o.is_relative_to(i):
            why = "lies inside the input"
        else:
            continue
        raise DataError(f"{option} {out} {why} {given}: writing (or --overwrite) there would destroy the input. "
                        f"Nothing was changed; choose an {option} folder outside every input")


def _names(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_replaceable(out: Path, tool: str, marker: str, is_own: Callable[[Path], bool],
                      written: Iterable[str]) -> None:
    """May ``--overwrite`` replace ``out``? Yes when it is missing or empty, or holds an earlier
    ``tool`` run (``is_own(out)``: its ``marker`` file is that tool's) and only entries named in
    ``written``; otherwise DataError naming what the tool did not write. Nothing is changed."""
    if not os.path.lexists(out):
        return
    if not out.is_dir() or out.is_symlink():
        raise DataError(f"--out {out} exists and is not a folder; choose a new or empty folder")
    entries = sorted(os.listdir(out))
    if not entries:
        return
    if not is_own(out):
        raise DataError(f"refusing to --overwrite {out}: it holds no earlier {tool} run (no {marker}) but "
                        f"{_names(entries)}. Nothing was changed; choose a new or empty --out, or move those files")
    foreign = [e for e in entries if e not in set(written)]
    if foreign:
        raise DataError(f"refusing to --overwrite {out}: it holds {_names(foreign)}, which {tool} did not write. "
                        "Nothing was changed; move those files, or choose another --out")


def remove_folder(out: Path) -> None:
    """Delete ``out``: first renamed aside (atomic), so a kill midway leaves either the whole old
    folder or a hidden ``.<name>.replaced-<pid>`` beside it, never a half-deleted run under ``out``."""
    aside = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if os.path.lexists(aside):
        shutil.rmtree(aside)
    os.rename(out, aside)
    shutil.rmtree(aside)


__all__ = ["check_out_not_input", "check_replaceable", "real_path", "remove_folder"]
