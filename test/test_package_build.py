"""The ROS package is well formed and builds the way colcon builds it."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_a_valid_format_3_manifest():
    from catkin_pkg.package import parse_package

    package = parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.name == "ovsam_ros" and package.package_format == 3
    assert [e.content for e in package.exports if e.tagname == "build_type"] == ["ament_cmake"]
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]
    setup_py = (ROOT / "setup.py").read_text()
    assert f'version="{package.version}"' in setup_py, "package.xml and setup.py versions differ"


def test_every_interface_file_is_generated():
    listed = set(re.findall(r'"((?:msg|srv)/\w+\.(?:msg|srv))"', (ROOT / "CMakeLists.txt").read_text()))
    on_disk = {str(p.relative_to(ROOT)) for p in [*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv")]}
    assert listed == on_disk


@pytest.mark.e2e
def test_colcon_style_install_exposes_model_code_and_messages(tmp_path):
    """What `colcon build` does: one prefix with the Python package beside the generated messages."""
    prefix, build, src = tmp_path / "install", tmp_path / "build", tmp_path / "src"
    # Build from a copy: CMake refuses exported include paths inside the source tree,
    # and this checkout's .venv (holding the numpy headers) lives inside it.
    src.mkdir()
    for name in ("package.xml", "CMakeLists.txt"):
        shutil.copy(ROOT / name, src / name)
    for name in ("msg", "srv", "launch", "config", "scripts", "ovsam_ros"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "AMENT_PREFIX_PATH": sys.prefix, "CMAKE_PREFIX_PATH": sys.prefix}
    for cmd in (
        ["cmake", "-S", str(src), "-B", str(build), "-Wno-dev", f"-DCMAKE_INSTALL_PREFIX={prefix}",
         f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF", "-DOVSAM_INSTALL_PYTHON=ON"],
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
        ["cmake", "--install", str(build)],
    ):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    site = prefix / Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix)
    assert (site / "ovsam_ros" / "ros" / "messages.py").is_file()
    assert (prefix / "share" / "ovsam_ros" / "package.xml").is_file()
    probe = (
        "import ovsam_ros, ovsam_ros.msg, ovsam_ros.srv, ovsam_ros.ros.messages as m;"
        "print(ovsam_ros.msg.__file__); print(m.__file__);"
        "print(ovsam_ros.srv.SetVocabulary.Request().vocabulary == '')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env={**env, "PYTHONPATH": str(site), "AMENT_PREFIX_PATH": f"{prefix}{os.pathsep}{sys.prefix}"},
    )
    assert out.returncode == 0, out.stderr
    msg_file, messages_file, ok = out.stdout.split()
    assert msg_file.startswith(str(site)) and messages_file.startswith(str(site)) and ok == "True"
