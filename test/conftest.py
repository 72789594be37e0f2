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


_PROJECT_LOGGERS = ("ovsam_ros", "training", "ovsam-node", "ovsam")


def _is_project_logger(name: str) -> bool:
    return name.split(".")[0] in _PROJECT_LOGGERS


@pytest.fixture(autouse=True)
def _project_logs_reach_caplog() -> Iterator[None]:
    """Records of the project's loggers propagate to the root logger, where ``caplog`` listens.

    On a machine with ROS 2's ``launch`` installed (apt, a ROS image, or ../shared/ros2-tools),
    launch_testing's pytest plugin imports ``launch`` in every run, and ``launch.logging``
    makes every logger created afterwards a ``LaunchLogger`` with ``propagate = False`` (the
    project creates some loggers lazily, inside the call that logs). Tests that read logs must
    not depend on whether that happened first: for the test's duration, project loggers that
    exist propagate, and new ones are made propagating; other loggers (launch's) are untouched.
    """
    import logging

    manager = logging.root.manager
    changed = []
    for name, logger in list(manager.loggerDict.items()):
        if _is_project_logger(name) and isinstance(logger, logging.Logger) and not logger.propagate:
            logger.propagate = True
            changed.append(logger)
    base = manager.loggerClass or logging.getLoggerClass()

    class _ProjectPropagates(base):  # type: ignore[misc, valid-type]
        def __init__(self, name: str, *args, **kwargs) -> None:
            super().__init__(name, *args, **kwargs)
            if _is_project_logger(name):
                self.propagate = True

    previous = manager.loggerClass
    manager.loggerClass = _ProjectPropagates
    yield
    manager.loggerClass = previous
    for logger in changed:
        logger.propagate = False


def _randomize_batchnorm(model, seed: int, rel_pos: bool = False):
    """Non-trivial BatchNorm statistics and affine terms in ``model`` (in place; returned).

    Random init has mean 0 / var 1 / bn3 gamma 0, under which a BN fold that dropped a term would
    still look right. ``rel_pos`` also randomises the (zero-initialised) relative-position tables,
    under which a wrong bias layout would go unnoticed.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.weight.copy_(torch.randn(n, generator=gen) * 0.5 + 1.0)
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.2)
        if rel_pos:
            for name, t in model.named_parameters():
                if "rel_pos" in name:
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
    return model


@pytest.fixture
def randomize_batchnorm():
    """``randomize_batchnorm(model, seed, rel_pos=False)``: see :func:`_randomize_batchnorm`."""
    return _randomize_batchnorm


@pytest.fixture
def ros_group(request: pytest.FixtureRequest, tmp_path) -> Iterator[IsolatedRosGroup]:
    """A private loopback network with a per-test ROS_DOMAIN_ID; kills its processes on exit."""
    ok, why = isolation_available()
    if not ok:
        pytest.skip(f"multi-process ROS tests need a private network namespace: {why}")
    domain_id = 1 + zlib.crc32(request.node.nodeid.encode()) % 100
    with IsolatedRosGroup(domain_id=domain_id, workdir=tmp_path / "ros") as group:
        yield group
