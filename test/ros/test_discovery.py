"""Installed executables respect the user's discovery settings; only `ovsam demo` pins loopback.

Each entry point runs in a subprocess up to ``rclpy.init`` (replaced by a probe that
prints the discovery variables and exits), so no DDS participant is ever created.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys, rclpy
def init(*args, **kwargs):
    print("RANGE=" + os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "<unset>"), flush=True)
    print("LOCALHOST_ONLY=" + os.environ.get("ROS_LOCALHOST_ONLY", "<unset>"), flush=True)
    os._exit(0)
rclpy.init = init
from {module} import main
main({argv!r})
"""

ENTRY_POINTS = {
    "node": ("ovsam_ros.ros.node_cli", []),
    "camera": ("ovsam_ros.ros.camera_demo", ["--source", "shapes"]),
    "prompts": ("ovsam_ros.ros.prompt_source", ["--point", "1,1"]),
    "demo": ("ovsam_ros.cli", ["demo", "--frames", "1"]),
}


def discovery(entry: str, **env: str) -> tuple[str, str]:
    """(ROS_AUTOMATIC_DISCOVERY_RANGE, ROS_LOCALHOST_ONLY) as the entry point leaves them for rclpy.init."""
    module, argv = ENTRY_POINTS[entry]
    base = {k: v for k, v in os.environ.items() if k not in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY")}
    result = subprocess.run([sys.executable, "-c", PROBE.format(module=module, argv=argv)],
                            env={**base, **env}, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return found["RANGE"], found["LOCALHOST_ONLY"]


def discovery_range(entry: str, **env: str) -> str:
    return discovery(entry, **env)[0]


@pytest.mark.parametrize("entry", ["node", "camera", "prompts"])
def test_node_and_tools_leave_discovery_to_the_environment(entry):
    assert discovery_range(entry) == "<unset>"  # rmw's default (SUBNET): the robot's network
    assert discovery_range(entry, ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET") == "SUBNET"


def test_demo_defaults_to_localhost_but_respects_a_setting():
    assert discovery("demo") == ("LOCALHOST", "1")  # ROS_LOCALHOST_ONLY too: Humble ignores the range
    assert discovery("demo", ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET") == ("SUBNET", "<unset>")
    assert discovery("demo", ROS_LOCALHOST_ONLY="0") == ("<unset>", "0")


def test_node_leaves_ros_localhost_only_alone():
    assert discovery("node") == ("<unset>", "<unset>")
    assert discovery("node", ROS_LOCALHOST_ONLY="0") == ("<unset>", "0")
