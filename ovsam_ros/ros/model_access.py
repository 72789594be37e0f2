"""Which model files the node's ``model`` parameter may read.

Parameters are open to every participant of the DDS domain (``ros2 param set``, then the
lifecycle services), like the ``set_vocabulary`` service (:mod:`ovsam_ros.ros.vocabulary_access`).
A ``model`` parameter that loads any path would make the node parse any file and quote it in
its error and in ``/diagnostics``. So it follows the same rule as vocabulary files: bundled
model names (``config/models/<name>.yaml``) are always allowed; files only from configured
directories (parameter ``model_dirs``, read-only; default ``~/ovsam_weights``, ``~/ovsam_onnx``
and ``~/.cache/ovsam_ros/models``), by path or bare file name. Any other path is refused
before it is read or checked for existence; symlinks are resolved first.

A bare name that is neither bundled nor in a model directory is "not found": the node's
working directory is never searched (``model: passwd`` started in ``/etc`` would read it).
No ROS imports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from ovsam_ros.resources import model_config_dir
from ovsam_ros.ros.vocabulary_access import inside

__all__ = ["ModelAccessError", "allowed_model_dirs", "default_model_dirs", "resolve_model_request"]

MODEL_SUFFIXES = (".yaml", ".yml", ".pt", ".pth")


class ModelAccessError(PermissionError):
    """The ``model`` value names a file outside the allowed directories."""


def default_model_dirs() -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [Path.home() / "ovsam_weights", Path.home() / "ovsam_onnx", cache / "ovsam_ros" / "models"]


def allowed_model_dirs(setting: str) -> list[Path]:
    """Parameter ``model_dirs`` (``:``-separated; '' = :func:`default_model_dirs`), resolved, plus the
    bundled config/models/ folder (its YAMLs may also be named by path)."""
    parts = [p for p in setting.split(os.pathsep) if p.strip()] if setting.strip() else default_model_dirs()
    dirs = [Path(os.path.realpath(os.path.expandvars(os.path.expanduser(str(p).strip())))) for p in parts]
    bundled = _bundled_dir()
    return dirs + ([bundled] if bundled is not None and bundled not in dirs else [])


def _bundled_dir() -> Optional[Path]:
    folder = model_config_dir()
    return Path(os.path.realpath(folder)) if folder is not None else None


def _bundled_names() -> list[str]:
    folder = model_config_dir()
    return [] if folder is None else sorted(p.stem for p in folder.glob("*.yaml"))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def resolve_model_request(text: str, dirs: Sequence[Path]) -> str:
    """The model source to load for a ``model`` value: a bundled YAML's path, or the real path of
    a file inside ``dirs``. Raises :class:`ModelAccessError` for any other path (unread) and
    FileNotFoundError for a bare name found nowhere."""
    spec = text.strip()
    if not spec:
        raise ValueError("model must name a model YAML (e.g. 'tiny' or a file in model_dirs)")
    shown = ", ".join(str(d) for d in dirs)
    bare = os.sep not in spec and "/" not in spec and not spec.startswith(("~", ".", "$"))
    if bare:
        folder = model_config_dir()
        if folder is not None and spec in _bundled_names():
            return str(folder / f"{spec}.yaml")  # by path: never a same-named file in the working directory
        for directory in dirs:
            for name in (spec, spec + ".yaml"):
                candidate = directory / name
                if _is_file(candidate) and inside(os.path.realpath(candidate), dirs):
                    return os.path.realpath(candidate)
        raise FileNotFoundError(
            f"model {spec!r} not found: not a bundled model ({', '.join(_bundled_names()) or 'none installed'}) "
            f"and not a file in the model directories ({shown}). Give a bundled name, or put the file in one "
            "of them (parameter model_dirs, set at start).")
    if inside(os.path.realpath(os.path.expandvars(os.path.expanduser(spec))), dirs):
        return os.path.realpath(os.path.expandvars(os.path.expanduser(spec)))
    raise ModelAccessError(
        f"refused: model {spec!r} is outside the directories this node reads models from ({shown}). "
        "Put the model's files in one of them (a link pointing outside is refused too), or start the node with parameter model_dirs "
        "(read-only: params file, -p or launch). Bundled names (e.g. 'shapes', 'tiny') are always allowed.")
