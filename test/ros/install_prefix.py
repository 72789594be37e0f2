"""Build the package the way ``colcon build`` does (CMake configure, build, install into a prefix).

Used by the install tests and the real-launch tests: ``ros2 launch ovsam_ros ...`` finds the
package through ``AMENT_PREFIX_PATH`` (``share/ovsam_ros``, ``lib/ovsam_ros/<executable>``, the
ament index), exactly as on a robot after ``colcon build && source install/setup.bash``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SITE_REL = Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix)


SOURCES = ("msg", "srv", "launch", "config", "scripts", "ovsam_ros", "training")


def copy_sources(src: Path, extra: tuple[str, ...] = ()) -> Path:
    """What CMake builds from, copied: CMake refuses exported include paths inside the source tree,
    and this checkout's .venv (holding the numpy headers) lives inside it."""
    src.mkdir(parents=True)
    for name in ("package.xml", "CMakeLists.txt", "setup.py", "pyproject.toml"):  # console scripts: setup.py
        shutil.copy(ROOT / name, src / name)
    for name in (*SOURCES, *extra):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def cmake(*args: str) -> subprocess.CompletedProcess:
    """cmake ARGS with the ROS environment's prefixes (raises with the output's tail on failure)."""
    env = {**os.environ, "AMENT_PREFIX_PATH": sys.prefix, "CMAKE_PREFIX_PATH": sys.prefix}
    result = subprocess.run(["cmake", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"cmake {' '.join(args[:2])} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def configure(src: Path, build: Path, *options: str) -> None:
    cmake("-S", str(src), "-B", str(build), "-Wno-dev", f"-DPython3_EXECUTABLE={sys.executable}", *options)


def build_install_prefix(tmp: Path) -> Path:
    """Configure, build and install this checkout into ``tmp/install``; returns the prefix."""
    prefix, build = tmp / "install", tmp / "build"
    src = copy_sources(tmp / "src")
    configure(src, build, f"-DCMAKE_INSTALL_PREFIX={prefix}", "-DBUILD_TESTING=OFF", "-DOVSAM_INSTALL_PYTHON=ON")
    cmake("--build", str(build), "-j", str(os.cpu_count() or 2))
    cmake("--install", str(build))
    shutil.rmtree(src)  # the installed package must not need its sources
    shutil.rmtree(build)
    return prefix


def clean_venv(where: Path, with_pip: bool = False) -> Path:
    """A new venv whose only extra path is the project's site-packages (minus the editable checkout)."""
    cmd = [sys.executable, "-m", "venv", str(where)]
    subprocess.run(cmd if with_pip else [*cmd, "--without-pip"], check=True, capture_output=True)
    deps = sysconfig.get_paths()["purelib"]
    lines = [deps]
    for pth in sorted(Path(deps).glob("*.pth")):
        if "ovsam" in pth.name:  # __editable__.ovsam_ros-*.pth: the checkout
            continue
        lines += [line for line in pth.read_text().splitlines() if line.startswith("import")]
    (where / SITE_REL).mkdir(parents=True, exist_ok=True)
    (where / SITE_REL / "zz_project_dependencies.pth").write_text("\n".join(lines) + "\n")
    return where / "bin" / "python"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def overlay_env(prefix: Path, python: Path) -> dict[str, str]:
    """What ``source install/setup.bash`` adds on top of the ROS environment, ``python`` first on PATH
    (the executables in lib/ovsam_ros start with ``#!/usr/bin/env python3``)."""
    return {"PYTHONPATH": str(prefix / SITE_REL),
            "AMENT_PREFIX_PATH": f"{prefix}{os.pathsep}{sys.prefix}",
            "PATH": f"{prefix / 'bin'}{os.pathsep}{python.parent}{os.pathsep}{os.environ['PATH']}"}


def ros2_command(python: Path) -> list[str]:
    """The ``ros2`` command line run by ``python`` (its script's shebang names another interpreter)."""
    return [str(python), "-c", "import sys; from ros2cli.cli import main; sys.argv[0] = 'ros2'; sys.exit(main())"]


if __name__ == "__main__":  # python test/ros/install_prefix.py DIR: a prefix to try things by hand
    print(build_install_prefix(Path(sys.argv[1])))
