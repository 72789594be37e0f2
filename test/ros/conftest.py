"""Fixtures for in-process node tests: one rclpy context per module, nodes driven by direct calls."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Callable

import pytest


@pytest.fixture(scope="module")
def ros_context() -> Iterator[Any]:
    """An rclpy context whose DDS traffic stays on this machine (as tools/test.sh configures)."""
    # In-process nodes still create a DDS participant: never let discovery leave loopback.
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
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
