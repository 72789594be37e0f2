"""Where the files shipped beside the Python code (model YAMLs, .msg definitions, node configs) are.

Three layouts must work, and the code cannot tell in advance which one it runs from:

* a source checkout (editable install, tools/setup.sh): ``<checkout>/config/...``;
* ``colcon build`` (ament_cmake, no symlinks): CMake installs ``config/`` to
  ``<prefix>/share/ovsam_ros/config``, the code to ``<prefix>/[local/]lib/pythonX.Y/{site,dist}-packages``;
* ``pip install .``: setup.py's ``data_files`` put the same tree under ``<prefix>/share/ovsam_ros``.

So: the checkout this module was imported from, then the install prefix holding this
module, then every prefix on ``AMENT_PREFIX_PATH`` (the ament index), then the
interpreter's data prefix. Bundled samples and vocabularies are package data
(``ovsam_ros/data``) and travel with the code in every layout.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Optional

PACKAGE = "ovsam_ros"
PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
SAMPLES_DIR = DATA_DIR / "samples"


def source_root() -> Optional[Path]:
    """The checkout this code runs from, if it does (its package.xml names this package)."""
    root = PACKAGE_DIR.parent
    manifest = root / "package.xml"
    try:
        if f"<name>{PACKAGE}</name>" in manifest.read_text(encoding="utf-8"):
            return root
    except OSError:
        pass
    return None


def share_dirs() -> list[Path]:
    """Directories that may hold ``config/``, ``msg/``, ``launch/``, best first (existing ones only)."""
    candidates: list[Path] = []
    root = source_root()
    if root is not None:
        candidates.append(root)
    # <prefix>/lib/python3.X/site-packages/ovsam_ros, or <prefix>/local/lib/python3.X/dist-packages/ovsam_ros
    # (Ubuntu's scheme, which colcon uses on Humble/Jazzy): the share dir is beside lib/.
    for up in (3, 4):
        if len(PACKAGE_DIR.parents) > up:
            candidates.append(PACKAGE_DIR.parents[up] / "share" / PACKAGE)
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / PACKAGE)
    candidates.append(Path(sysconfig.get_path("data")) / "share" / PACKAGE)
    seen, found = set(), []
    for path in candidates:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen and path.is_dir():
            seen.add(key)
            found.append(path)
    return found


def find_bundled(relative: str) -> Path:
    """The first ``<share dir>/<relative>`` that exists; FileNotFoundError naming every place looked in."""
    searched = []
    for base in share_dirs():
        path = base / relative
        if path.exists():
            return path
        searched.append(str(path))
    raise FileNotFoundError(
        f"bundled file {relative!r} of {PACKAGE} not found; looked in: {', '.join(searched) or '(no share directory)'}. "
        "Install the package (colcon build, or pip install .) or set AMENT_PREFIX_PATH to its prefix")


def config_dir() -> Optional[Path]:
    """``config/`` (parameter YAMLs and ``models/``) of this install; None if none was found."""
    try:
        return find_bundled("config/models").parent
    except FileNotFoundError:
        return None


def model_config_dir() -> Optional[Path]:
    """``config/models/``: the model YAMLs that ``model: <name>`` refers to."""
    folder = config_dir()
    return None if folder is None else folder / "models"
