"""Which vocabulary files the ``set_vocabulary`` service and the ``vocabulary`` parameter may read.

ROS 2 topics and services are open to every participant of the DDS domain unless SROS2
is on. A service that loads any path it is given would let any participant make the node
read a ``.txt``/``.json`` file and publish its lines as class labels on ``~/masks``: a
file-disclosure channel. So the service reads files only from configured directories
(parameter ``vocabulary_dirs``, read-only; default: the package's vocabularies and
``~/.cache/ovsam_ros/vocabularies``). Built-in names and inline lists stay allowed.

A path outside those directories is refused before the file system is touched: no read,
and no ``stat`` either (a "not found" vs. "refused" difference would reveal which files
exist). Symlinks are resolved first, so a link inside an allowed directory that points
outside is refused too. The ``vocabulary`` parameter (read at configure, settable over the
network like any parameter) follows the same rule through :func:`parameter_spec`. No ROS imports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

from ovsam_ros.model.vocabulary import (
    BUILTIN_VOCABULARIES,
    INLINE_PREFIX,
    VOCABULARY_DIR,
    classify_spec,
    looks_like_path,
    unknown_vocabulary_error,
)

__all__ = ["VocabularyAccessError", "allowed_dirs", "default_dirs", "inside", "parameter_spec", "resolve_request"]


class VocabularyAccessError(PermissionError):
    """The request names a file outside the allowed directories."""


def default_dirs() -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [VOCABULARY_DIR, cache / "ovsam_ros" / "vocabularies"]


def allowed_dirs(setting: str) -> list[Path]:
    """Parameter ``vocabulary_dirs`` (``:``-separated; '' = :func:`default_dirs`), resolved."""
    parts = [p for p in setting.split(os.pathsep) if p.strip()] if setting.strip() else default_dirs()
    return [Path(os.path.realpath(os.path.expanduser(str(p).strip()))) for p in parts]


def inside(path: str, dirs: Sequence[Path]) -> bool:
    """Whether the resolved ``path`` is one of ``dirs`` or below one."""
    return any(path == str(d) or path.startswith(str(d).rstrip(os.sep) + os.sep) for d in dirs)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        return False


def resolve_request(text: str, dirs: Sequence[Path]) -> Union[str, Path]:
    """The spec to load for a ``set_vocabulary`` string, or :class:`VocabularyAccessError`.

    Order: ``inline:`` lists and built-in names; a bare file name found in an allowed
    directory; a path whose real location is inside one; any other string with a class
    separator is an inline list (never a file). Everything else is refused unread.
    """
    spec = text.strip()
    if spec[:len(INLINE_PREFIX)].lower() == INLINE_PREFIX or spec.lower().replace("-", "_") in BUILTIN_VOCABULARIES:
        return spec
    listed = any(sep in spec for sep in (",", ";", "\n"))
    if spec and not listed and os.sep not in spec and not spec.startswith("~"):  # a bare file name
        for folder in dirs:
            candidate = folder / spec
            if _is_file(candidate) and inside(os.path.realpath(candidate), dirs):
                return Path(os.path.realpath(candidate))
    real = os.path.realpath(os.path.expanduser(spec)) if spec else ""
    if spec and (os.path.isabs(os.path.expanduser(spec)) or looks_like_path(spec)) and inside(real, dirs):
        kind, value = classify_spec(real)  # FileNotFoundError inside the allowed dirs is fine to report
        return Path(value) if kind == "file" else value
    if listed:
        return INLINE_PREFIX + spec  # an inline list, even if a part looks like a path
    if looks_like_path(spec):
        raise VocabularyAccessError(
            f"refused: {spec!r} is outside the directories this node reads vocabulary files from "
            f"({', '.join(str(d) for d in dirs)}). Copy the file into one of them (then give its name), "
            "or start the node with parameter vocabulary_dirs. Built-in names and inline lists "
            "('cup, door handle') are always allowed.")
    # A lone unknown name. Not handed to load_vocabulary: it would open a same-named file in
    # the node's working directory.
    raise unknown_vocabulary_error(spec)


def parameter_spec(text: str, dirs: Sequence[Path]) -> str:
    """What to load for the ``vocabulary`` parameter: '' (the model's), the value as given (built-in
    name, inline list) or the real path of an allowed file. Raises like :func:`resolve_request`."""
    if not text.strip():
        return ""
    resolved = resolve_request(text, dirs)
    return str(resolved) if isinstance(resolved, Path) else text
