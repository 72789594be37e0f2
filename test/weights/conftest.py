"""Fixtures of the weights tests: the loopback server (weights_server.py), and a guard that refuses
every host but loopback, so no test can reach a real publisher."""

from __future__ import annotations

import socket

import pytest
from weights_server import LOOPBACK, WeightServer


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Name resolution fails for every host but loopback: the real URLs of the sources table fail
    here as they do on a machine without a network, and nothing leaves this machine."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: blocked by the weights tests (loopback only)")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # urllib would send even loopback requests to a proxy
    monkeypatch.delenv("OVSAM_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture
def server():
    srv = WeightServer()
    yield srv
    srv.close()
