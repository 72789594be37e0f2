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
