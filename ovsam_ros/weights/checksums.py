"""sha256 of files, and the ``SHA256SUMS`` file (``sha256sum`` format) kept beside downloaded weights.

``ovsam weights download`` records the sum of every file it fetched there, so ``sha256sum -c
SHA256SUMS`` works, ``ovsam weights check`` can say a file is unchanged since its download, and a
folder copied to a mirror carries the sums with it."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Optional

SUMS_FILE = "SHA256SUMS"
CHUNK = 4 << 20
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def file_sha256(path: os.PathLike | str, hasher: Optional["hashlib._Hash"] = None, limit: Optional[int] = None) -> str:
    """Hex sha256 of a file (of its first ``limit`` bytes; fed into ``hasher`` when given)."""
    hasher = hasher or hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            hasher.update(chunk)
            if left is not None:
                left -= len(chunk)
    return hasher.hexdigest()


def sum_matches(actual: str, published: str) -> bool:
    """Whether a file's sha256 is the published one (open_clip's URLs state only a prefix for some files)."""
    return actual.lower().startswith(published.lower()) if published else False


def parse_sums(text: str) -> dict[str, str]:
    """``name -> sha256`` from ``sha256sum`` output; other lines are ignored."""
    sums = {}
    for line in text.splitlines():
        match = _LINE.match(line.rstrip("\r"))
        if match and "/" not in match.group(2):
            sums[match.group(2)] = match.group(1).lower()
    return sums


def read_sums(folder: os.PathLike | str) -> dict[str, str]:
    """The ``SHA256SUMS`` of a folder (empty when there is none or it cannot be read)."""
    try:
        return parse_sums((Path(folder) / SUMS_FILE).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}


def record_sums(folder: os.PathLike | str, items: Iterable[tuple[str, str]]) -> Path:
    """Set ``name -> sha256`` entries in the folder's ``SHA256SUMS`` (written whole, then renamed)."""
    folder = Path(folder)
    path = folder / SUMS_FILE
    sums = read_sums(folder)
    sums.update(items)
    body = "".join(f"{sha}  {name}\n" for name, sha in sorted(sums.items()))
    fd, tmp = tempfile.mkstemp(prefix=f".{SUMS_FILE}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, path)
    except BaseException:
        with_suppressed_unlink(tmp)
        raise
    return path


def with_suppressed_unlink(path: os.PathLike | str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
