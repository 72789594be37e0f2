from __future__ import annotations

import pytest
import torch
from torch import nn

from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Block

from ovsam_ros.model import OVSAMConfig, SAM2CLIP, SAM2CLIPConfig

RN_CHANNELS = [64, 128, 256, 512]


def _tiny() -> SAM2CLIP:
    torch.manual_seed(0)
    return SAM2CLIP(OVSAMConfig.tiny().sam2clip, RN_CHANNELS, image_size=256).eval()


def _feats(batch: int = 2):
    return [torch.randn(batch, c, 256 // s, 256 // s) for c, s in zip(RN_CHANNELS, (4, 8, 16, 32))]


def test_output_is_sam_embedding_shape():
    neck = _tiny()
    out = neck(_feats(2))
    assert out.shape == (2, 32, 16, 16)


def test_patch_embeds_kernels_and_transposed_last_level():
    neck = _tiny()
    projections = [pe.projection for pe in neck.patch_embeds]
    assert [type(p) for p in projections] == [nn.Conv2d, nn.Conv2d, nn.Conv2d, nn.ConvTranspose2d]
    assert [p.kernel_size for p in projections] == [(4, 4), (2, 2), (1, 1), (2, 2)]
    assert [p.stride for p in projections] == [(4, 4), (2, 2), (1, 1), (2, 2)]


def test_reuses_segment_anything_blocks_and_neck():
    neck = _tiny()
    assert all(isinstance(b, Block) for b in neck.blocks)
    assert [b.window_size for b in neck.blocks] == [4, 0]  # last block global
    assert all(b.attn.use_rel_pos for b in neck.blocks)
    assert [type(m) for m in neck.neck] == [nn.Conv2d, LayerNorm2d, nn.Conv2d, LayerNorm2d]


def test_pos_embed_is_frozen_buffer_in_state_dict():
    neck = _tiny()
    assert "pos_embed" in dict(neck.named_buffers())
    assert "pos_embed" not in dict(neck.named_parameters())
    assert neck.state_dict()["pos_embed"].shape == (1, 16, 16, 64)


def test_level_and_position_embeddings_are_added():
    """With every level's conv zeroed, the block input is sum(level codes) + pos_embed."""
    neck = _tiny()
    with torch.no_grad():
        for pe in neck.patch_embeds:
            pe.projection.weight.zero_()
            pe.projection.bias.zero_()
        neck.pos_embed.normal_()
    captured = {}
    neck.blocks[0].register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    neck(_feats(1))
    expected = neck.level_encoding.weight.sum(0) + neck.pos_embed
    torch.testing.assert_close(captured["x"], expected.expand(1, -1, -1, -1))


def test_reference_key_names():
    keys = set(_tiny().state_dict())
    for k in [
        "patch_embeds.0.projection.weight",
        "patch_embeds.3.projection.bias",
        "level_encoding.weight",
        "pos_embed",
        "blocks.0.attn.rel_pos_h",
        "blocks.1.mlp.lin2.weight",
        "neck.0.weight",
        "neck.3.bias",
    ]:
        assert k in keys


def test_wrong_grid_is_a_clear_error():
    neck = _tiny()
    feats = [torch.randn(1, c, 512 // s, 512 // s) for c, s in zip(RN_CHANNELS, (4, 8, 16, 32))]
    with pytest.raises(ValueError, match="position embedding"):
        neck(feats)


def test_published_size_is_about_129M_params():
    with torch.device("meta"):
        neck = SAM2CLIP(SAM2CLIPConfig(), [384, 768, 1536, 3072], image_size=1024)
    n = sum(p.numel() for p in neck.parameters())
    assert 125e6 < n < 133e6
    assert neck.pos_embed.shape == (1, 64, 64, 1280)
    assert [b.window_size for b in neck.blocks] == [14, 14, 14, 14, 0]
