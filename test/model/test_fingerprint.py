"""Weights fingerprints (ovsam_ros.model.fingerprint): the keys of the text and teacher caches."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ovsam_ros.model.fingerprint import module_fingerprint, state_dict_fingerprint, text_weights_fingerprint


def test_text_fingerprint_of_a_real_open_clip_model(tiny_model_factory):
    """open_clip's CLIP carries a 0-dim ``logit_scale``: ``view(uint8)`` on it raised before (issue 16)."""
    clip = tiny_model_factory("rn").backbone.clip
    assert clip.state_dict()["logit_scale"].dim() == 0
    base = text_weights_fingerprint(clip)
    assert base.startswith("sha256:") and len(base) == len("sha256:") + 64

    with torch.no_grad():
        clip.visual.conv1.weight.add_(1.0)  # the image tower does not change text embeddings
    assert text_weights_fingerprint(clip) == base
    with torch.no_grad():
        clip.logit_scale.copy_(torch.nextafter(clip.logit_scale, torch.tensor(10.0)))  # one ulp, 0-dim
    changed = text_weights_fingerprint(clip)
    assert changed != base
    with torch.no_grad():
        clip.token_embedding.weight[5, 3] += 1e-3
    assert text_weights_fingerprint(clip) not in (base, changed)


def test_fingerprint_sees_dtype_shape_and_names():
    # Same bytes, other dtype / shape / name: all different keys (a cache entry must not cross them).
    a = torch.arange(8, dtype=torch.int32)
    ids = {
        state_dict_fingerprint({"w": a}),
        state_dict_fingerprint({"w": a.view(torch.float32)}),
        state_dict_fingerprint({"w": a.reshape(2, 4)}),
        state_dict_fingerprint({"v": a}),
    }
    assert len(ids) == 4
    # order-independent, bf16 and 0-dim tensors hash fine
    sd = {"b": torch.ones((), dtype=torch.bfloat16), "a": torch.zeros(3)}
    assert state_dict_fingerprint(sd) == state_dict_fingerprint(dict(reversed(list(sd.items()))))


def test_fingerprint_matches_a_hand_computed_sha256():
    # The documented layout (name, |dtype|shape|, little-endian bytes) computed independently with hashlib.
    w = torch.tensor([1.0, -2.0], dtype=torch.float32)
    s = torch.tensor(3, dtype=torch.int64)
    h = hashlib.sha256()
    h.update(b"s|torch.int64|()|" + (3).to_bytes(8, "little"))
    h.update(b"w|torch.float32|(2,)|" + bytes.fromhex("0000803f000000c0"))
    assert state_dict_fingerprint({"w": w, "s": s}) == "sha256:" + h.hexdigest()


def test_module_fingerprint_includes_buffers():
    bn = nn.BatchNorm2d(3)
    before = module_fingerprint(bn)
    bn.num_batches_tracked += 1  # a 0-dim buffer
    assert module_fingerprint(bn) != before
