"""Shared pytest fixtures for ovsam_ros."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest

from ovsam_ros.ros.isolation import IsolatedRosGroup, isolation_available


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread():
    """Tiny models: intra-op threads only add wake-up latency (~5 ms per op on a busy 2-core VM)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def ros_group(request: pytest.FixtureRequest, tmp_path) -> Iterator[IsolatedRosGroup]:
    """A private loopback network with a per-test ROS_DOMAIN_ID; kills its processes on exit."""
    ok, why = isolation_available()
    if not ok:
        pytest.skip(f"multi-process ROS tests need a private network namespace: {why}")
    domain_id = 1 + zlib.crc32(request.node.nodeid.encode()) % 100
    with IsolatedRosGroup(domain_id=domain_id, workdir=tmp_path / "ros") as group:
        yield group
