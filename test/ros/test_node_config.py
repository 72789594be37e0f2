"""Parameters declared once and everything else in sync with them; launch file, scripts, entry points."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ovsam_ros.ros.parameters import PARAMETERS, SPECS, NodeSettings, defaults, descriptor, markdown_table, validate

ROOT = Path(__file__).resolve().parents[2]


def test_settings_mirror_the_parameter_table():
    assert [f.name for f in dataclasses.fields(NodeSettings)] == [p.name for p in PARAMETERS]
    assert dataclasses.asdict(NodeSettings()) == defaults()
    for spec in PARAMETERS:
        assert spec.description and validate(spec.name, spec.default) is None, spec.name


@pytest.mark.parametrize("config", ["ovsam.yaml", "jetson.yaml"])
def test_config_files_set_every_parameter_with_valid_values(config):
    data = yaml.safe_load((ROOT / "config" / config).read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) == set(SPECS)
    for name, value in params.items():
        assert validate(name, value) is None, (name, value, validate(name, value))
        # rclpy does not turn an int from a YAML file into a double parameter: write 5.0, not 5
        assert type(value) is SPECS[name].type, (name, value)


def test_desktop_config_defaults_equal_the_table():
    params = yaml.safe_load((ROOT / "config" / "ovsam.yaml").read_text())["/**"]["ros__parameters"]
    assert params == defaults()


def test_jetson_config_is_tuned_for_the_jetson():
    params = yaml.safe_load((ROOT / "config" / "jetson.yaml").read_text())["/**"]["ros__parameters"]
    assert params["device"] == "cuda" and params["precision"] == "fp16"
    assert params["max_rate_hz"] > 0 and params["points_per_side"] < defaults()["points_per_side"]
    # the model's own vocabulary: a fleet's stage-2 checkpoint names its trained classes (coco here replaced them)
    assert params["vocabulary"] == ""


@pytest.mark.parametrize("name, value, reason", [
    ("mode", "dance", "one of"), ("precision", "fp8", "one of"), ("device", "gpu0", "device"),
    ("top_k", 0, ">="), ("top_k", 1.5, "int"), ("max_rate_hz", float("nan"), "finite"),
    ("pred_iou_thresh", 2.0, "<="), ("publish_overlay", 1, "bool"), ("model", " ", "model"),
    ("nonsense", 1, "unknown"),
])
def test_validation_reasons(name, value, reason):
    assert reason in validate(name, value)


def test_validation_accepts_integers_for_floats():
    assert validate("max_rate_hz", 5) is None


def test_descriptors_carry_ranges_and_choices():
    rclpy = pytest.importorskip("rclpy")  # noqa: F841
    top_k = descriptor(SPECS["top_k"])
    assert (top_k.integer_range[0].from_value, top_k.integer_range[0].to_value) == (1, 100)
    thresh = descriptor(SPECS["pred_iou_thresh"])
    assert (thresh.floating_point_range[0].from_value, thresh.floating_point_range[0].to_value) == (0.0, 1.0)
    assert "everything" in descriptor(SPECS["mode"]).additional_constraints
    assert "configure" in descriptor(SPECS["model"]).additional_constraints


def test_readme_documents_the_node_and_every_parameter():
    readme = (ROOT / "README.md").read_text()
    assert "## The ROS 2 node" in readme
    assert markdown_table() in readme


def test_launch_file_is_valid_python_with_the_documented_arguments():
    source = (ROOT / "launch" / "ovsam.launch.py").read_text()
    tree = ast.parse(source)
    compile(tree, "ovsam.launch.py", "exec")
    names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in names
    arguments = {node.args[0].value for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"}
    assert arguments == {"config", "namespace", "camera", "model", "device", "precision", "autostart",
                         "image_transport", "input_reliability", "input_depth", "output_reliability",
                         "depth_image", "depth_camera_info", "detection_prompts"}
    assert '"ovsam_node"' in source  # the executable installed from scripts/


def test_scripts_for_ros2_run_are_executable_wrappers():
    for name, module in (("ovsam_node", "ovsam_ros.ros.node_cli"), ("ovsam_demo_camera", "ovsam_ros.ros.camera_demo"),
                         ("ovsam_demo_prompts", "ovsam_ros.ros.prompt_source")):
        path = ROOT / "scripts" / name
        assert os.access(path, os.X_OK), path
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env python3") and f"from {module} import main" in text
        ast.parse(text)


def test_console_entry_points():
    setup = (ROOT / "setup.py").read_text()
    for entry in ("ovsam-node = ovsam_ros.ros.node_cli:main", "ovsam-demo-camera = ovsam_ros.ros.camera_demo:main",
                  "ovsam-demo-prompts = ovsam_ros.ros.prompt_source:main"):
        assert entry in setup
    bindir = Path(sys.executable).parent
    for script in ("ovsam-node", "ovsam-demo-camera", "ovsam-demo-prompts"):
        # --help exits before rclpy starts: safe outside a network namespace. ovsam-node parses before it
        # imports rclpy or torch (test/test_cli_imports.py): the timeout is only a hang guard.
        result = subprocess.run([str(bindir / script), "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout


def test_node_arguments_become_ros_arguments():
    from ovsam_ros.ros.node_cli import ros_args_for

    assert ros_args_for([]) == []
    assert ros_args_for(["a.yaml", "b.yaml"], ["-r", "image:=/cam"]) == [
        "--ros-args", "--params-file", "a.yaml", "--params-file", "b.yaml", "-r", "image:=/cam"]
