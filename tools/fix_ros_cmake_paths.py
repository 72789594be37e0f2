"""Point the ROS wheels' exported CMake files at this interpreter.

The PyPI ROS 2 wheels were built in a manylinux container and their exported
``*.cmake`` files hard-code that container's Python include and NumPy include
directories. CMake refuses to configure against a path that does not exist, so
message generation fails until those paths are rewritten. Idempotent.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

import numpy

BUILDER_PYTHON_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
BUILDER_NUMPY_INCLUDE = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"


def fix_tree(share_dir: Path) -> int:
    replacements = {
        BUILDER_PYTHON_INCLUDE: sysconfig.get_paths()["include"],
        BUILDER_NUMPY_INCLUDE: numpy.get_include(),
    }
    changed = 0
    for path in share_dir.rglob("*.cmake"):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        new = text
        for old, real in replacements.items():
            new = new.replace(old, real)
        if new != text:
            path.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed += 1
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", type=Path, help="install prefix of the ROS wheels (the venv)")
    args = parser.parse_args()
    share = args.prefix / "share"
    if not share.is_dir():
        print(f"error: {share} does not exist; are the ROS wheels installed?", file=sys.stderr)
        return 1
    changed = fix_tree(share)
    print(f"fixed builder paths in {changed} CMake file(s) under {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
