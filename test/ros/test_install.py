"""The installed package is the first-class citizen: a colcon-style prefix and `pip install .`.

Every process here runs from a fresh virtual environment that sees the project's
dependencies but NOT this checkout (its editable .pth is left out, cwd is a temp dir),
so a file found only in the source tree fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from install_prefix import SITE_REL, clean_env, clean_venv

ROOT = Path(__file__).resolve().parents[2]

# The module's CMake build (messages for 10 interfaces) runs in the first test's setup: ~1-2 min alone,
# it passed 600 s on this project's 2-core machine with a dozen other builds running.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


# What every clean process checks first: nothing of ovsam_ros comes from the checkout.
NOT_FROM_SOURCE = (
    "import os, sys, ovsam_ros; root = {root!r}; norm = lambda p: os.path.abspath(p or '.');"
    "assert root not in [norm(p) for p in sys.path], sys.path;"
    "assert os.path.join(root, 'ovsam_ros') not in [norm(p) for p in ovsam_ros.__path__], ovsam_ros.__path__;"
)


@pytest.fixture(scope="module")
def colcon_prefix(install_prefix) -> Path:
    return install_prefix


def test_colcon_install_exposes_code_messages_configs_and_training(colcon_prefix, prefix_python, tmp_path):
    python, overlay = prefix_python
    env = clean_env(**overlay)
    site = colcon_prefix / SITE_REL
    probe = NOT_FROM_SOURCE.format(root=str(ROOT)) + (
        "import ovsam_ros.msg, ovsam_ros.srv, ovsam_ros.ros.messages as m, training.stage2, training.data.rosbag as rb;"
        "from ovsam_ros.loading import bundled_model_names, resolve_config_path, load_specs;"
        "from ovsam_ros.resources import config_dir;"
        "print(ovsam_ros.msg.__file__); print(m.__file__); print(training.stage2.__file__);"
        "print(config_dir()); print(resolve_config_path('tiny')); print(','.join(bundled_model_names()));"
        "print(rb._msg_dirs()[0]); print(ovsam_ros.srv.SetVocabulary.Request().vocabulary == '');"
        "print(load_specs('jetson_onnx')[0].backend)"
    )
    out = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    msg_file, messages_file, stage2, configs, tiny, names, msg_dir, ok, backend = out.stdout.split()
    for path in (msg_file, messages_file, stage2):
        assert path.startswith(str(site)), path
    share = colcon_prefix / "share" / "ovsam_ros"
    assert Path(configs) == share / "config" and Path(tiny) == share / "config" / "models" / "tiny.yaml"
    assert {"tiny", "rn50x16", "jetson_onnx"} <= set(names.split(","))
    assert Path(msg_dir) == share / "msg" and ok == "True" and backend == "onnx"
    # The CLI and the training entry points are on PATH after `source install/setup.bash`.
    setup_py = (ROOT / "setup.py").read_text()
    scripts = dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', setup_py))
    assert len(scripts) >= 10
    for script, target in scripts.items():
        path = colcon_prefix / "bin" / script
        assert os.access(path, os.X_OK), path
        module, func = target.split(":")
        assert f"from {module} import {func}" in path.read_text(), path
    for script in ("ovsam", "ovsam-train-stage2"):  # two run for real (each import costs seconds)
        result = subprocess.run([str(colcon_prefix / "bin" / script), "--help"], cwd=tmp_path, capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0 and "usage:" in result.stdout, (script, result.stderr[-2000:])


def test_colcon_test_targets_unit_apart_from_e2e_and_lint(tmp_path):
    """`colcon test` runs ctest in the build folder: the unit tests alone by default (minutes on a Jetson),
    the end-to-end ones only when asked; the lint targets run and pass."""
    import json

    from install_prefix import configure, copy_sources

    src = copy_sources(tmp_path / "src", extra=("test", "tools"))
    tests = {}
    for e2e in ("OFF", "ON"):
        build = tmp_path / f"build_{e2e}"
        configure(src, build, "-DBUILD_TESTING=ON", "-DOVSAM_INSTALL_PYTHON=OFF", f"-DOVSAM_E2E_TESTS={e2e}")
        listed = subprocess.run(["ctest", "--show-only=json-v1"], cwd=build, capture_output=True, text=True, check=True)
        tests[e2e] = {t["name"]: " ".join(t["command"]) for t in json.loads(listed.stdout)["tests"]}
    assert "ovsam_ros_unit" in tests["OFF"] and "ovsam_ros_e2e" not in tests["OFF"], sorted(tests["OFF"])
    assert "ovsam_ros_e2e" in tests["ON"]
    assert "PYTEST_ADDOPTS=-m 'not e2e'" in tests["OFF"]["ovsam_ros_unit"]
    assert "PYTEST_ADDOPTS=-m e2e" in tests["ON"]["ovsam_ros_e2e"]
    assert "ROS_LOCALHOST_ONLY=1" in tests["OFF"]["ovsam_ros_unit"]
    assert "ovsam_ros_ruff" in tests["OFF"]  # ruff is in the environment
    lint = subprocess.run(["ctest", "-R", "ovsam_ros_ruff|ovsam_ros_xmllint", "--output-on-failure"],
                          cwd=tmp_path / "build_OFF", capture_output=True, text=True)
    assert lint.returncode == 0 and "tests passed" in lint.stdout, lint.stdout[-3000:]


def test_pip_install_into_a_fresh_venv_runs_ovsam_segment_on_a_sample(tmp_path):
    """`pip install .` (no deps: they come from the project's venv) in a fresh venv, then `ovsam segment`."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "package.xml"):
        shutil.copy(ROOT / name, src / name)
    for name in ("ovsam_ros", "training", "config", "launch", "msg", "srv"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    python = clean_venv(venv)
    env = clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", AMENT_PREFIX_PATH="")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-build-isolation", "--no-index", "--quiet", str(src)],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    shutil.rmtree(src)
    where = subprocess.run(
        [str(python), "-c", NOT_FROM_SOURCE.format(root=str(ROOT)) +
         "from ovsam_ros.resources import SAMPLES_DIR, config_dir; print(SAMPLES_DIR); print(config_dir())"],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    samples, configs = (Path(line) for line in where.stdout.split())
    assert str(samples).startswith(str(venv)) and configs == venv / "share" / "ovsam_ros" / "config"
    result = subprocess.run(
        [str(venv / "bin" / "ovsam"), "segment", str(samples / "chelsea.png"), "--model", "tiny", "--point",
         "200,150", "--box", "50,40,300,250", "--threads", "1", "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "r.json").read_text())
    instances = data["instances"] if isinstance(data, dict) else data
    assert len(instances) == 2
