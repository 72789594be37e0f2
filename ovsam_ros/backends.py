"""Model backends by name: what a model YAML's ``backend:`` key selects.

``torch`` (the model code in ``ovsam_ros.model``) is built by :mod:`ovsam_ros.loading`
itself. Other backends register here, so the loader never imports them by name:
``ovsam_ros.export.backend`` registers ``onnx`` when it is imported, and
:data:`PROVIDERS` says which module to import the first time a name is asked for.
This module imports neither the loader nor any backend at import time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

TORCH = "torch"


@dataclass(frozen=True)
class Backend:
    name: str
    load: Callable[[Any], Any]  # ModelSpec -> model (an nn.Module with ``.trained``)
    trained: Callable[[Any], bool]  # ModelSpec -> whether its weights are trained (without loading them)


_REGISTRY: dict[str, Backend] = {}
# name -> module that registers it on import (kept lazy: onnxruntime is optional)
PROVIDERS: dict[str, str] = {"onnx": "ovsam_ros.export.backend"}


def register(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


def names() -> list[str]:
    return sorted({TORCH, *_REGISTRY, *PROVIDERS})


def get(name: str) -> Backend:
    """The registered backend ``name`` (importing its provider on first use); ValueError naming the choices."""
    if name not in _REGISTRY and name in PROVIDERS:
        importlib.import_module(PROVIDERS[name])
    if name not in _REGISTRY:
        raise ValueError(f"model.backend must be one of {names()}, got {name!r}")
    return _REGISTRY[name]
