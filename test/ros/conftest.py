"""Fixtures for in-process node tests: one rclpy context per module, nodes driven by direct calls."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest


@pytest.fixture(scope="module")
def ros_context() -> Iterator[Any]:
    """An rclpy context whose DDS traffic stays on this machine (as tools/test.sh configures)."""
    # In-process nodes still create a DDS participant: never let discovery leave loopback.
    from ovsam_ros.ros.discovery import LOCAL_ONLY

    os.environ.update(LOCAL_ONLY)
    os.environ.pop("ROS_STATIC_PEERS", None)
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context

    context = Context()
    rclpy.init(args=[], context=context)
    yield context
    rclpy.try_shutdown(context=context)


@pytest.fixture
def make_node(ros_context) -> Iterator[Callable[..., Any]]:
    """``make_node(active=True, **parameters)`` -> an OVSAMNode without its worker thread (tests call
    ``process_pending()``), tiny model, 1 torch thread; destroyed after the test."""
    from rclpy.parameter import Parameter

    from ovsam_ros.ros.node import OVSAMNode

    nodes = []

    def make(active: bool = True, start_worker: bool = False, name: str = "ovsam_test", **params: Any):
        values = {"num_threads": 1, "model": "tiny", **params}
        node = OVSAMNode(name, context=ros_context, start_worker=start_worker,
                         parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        nodes.append(node)
        if active:
            assert node.autostart(), node.last_error
        return node

    yield make
    for node in nodes:
        node.stop_worker()
        node.destroy_node()


@pytest.fixture(scope="session")
def install_prefix(tmp_path_factory) -> Path:
    """This checkout built and installed as ``colcon build`` does (~30 s; once per test session)."""
    from install_prefix import build_install_prefix

    return build_install_prefix(tmp_path_factory.mktemp("colcon"))


@pytest.fixture(scope="session")
def prefix_python(install_prefix, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(python, env) as a sourced colcon workspace gives them: the prefix overlays the ROS install, and
    ``python`` is a fresh venv with the dependencies but NOT this checkout."""
    from install_prefix import clean_venv, overlay_env

    python = clean_venv(tmp_path_factory.mktemp("venv") / "venv")
    return python, overlay_env(install_prefix, python)
