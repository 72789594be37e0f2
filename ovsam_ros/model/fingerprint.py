"""Content fingerprints of weights: what on-disk caches key their entries by.

One function serves the predictor's text-embedding cache, stage 2's text
cache (the same folder can be shared, so both must agree bit for bit) and
stage 1's teacher-feature cache. Every tensor is hashed with its name, dtype,
shape and raw bytes; 0-dim tensors (CLIP's ``logit_scale``, BatchNorm's
``num_batches_tracked``) are flattened first, since ``Tensor.view(uint8)``
refuses them.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Mapping, Optional

import torch
from torch import nn


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor`` (any dtype, any shape including 0-dim), in C order, on the CPU."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def state_dict_fingerprint(state: Mapping[str, torch.Tensor],
                           include: Optional[Callable[[str], bool]] = None) -> str:
    """``sha256:<hex>`` over the (sorted) entries of ``state`` that ``include`` keeps."""
    digest = hashlib.sha256()
    for name in sorted(state):
        if include is not None and not include(name):
            continue
        tensor = state[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode("utf-8"))
        digest.update(tensor_bytes(tensor))
    return "sha256:" + digest.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """Fingerprint of every parameter and buffer of ``module``."""
    return state_dict_fingerprint(module.state_dict())


def text_weights_fingerprint(clip_model: nn.Module) -> str:
    """Fingerprint of an open_clip model's text side (everything but ``visual.*``).

    Text embeddings depend only on these weights, so a cache keyed by it stays
    valid when only the image tower changes.
    """
    return state_dict_fingerprint(clip_model.state_dict(), include=lambda name: not name.startswith("visual."))


def text_model_id(model_name: str, clip_model: Optional[nn.Module]) -> str:
    """Architecture id of a text tower for cache keys: ``model_name``, ``-quickgelu`` appended when
    the tower runs QuickGELU (the activation is not in the weights, but changes every embedding)."""
    from open_clip.transformer import QuickGELU

    if clip_model is None or model_name.endswith("-quickgelu"):
        return model_name
    return model_name + "-quickgelu" if any(isinstance(m, QuickGELU) for m in clip_model.modules()) else model_name
