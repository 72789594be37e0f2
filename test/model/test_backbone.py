from __future__ import annotations

import open_clip
import pytest
import torch

from ovsam_ros.model import BackboneConfig, CheckpointError, OVSAMConfig, build_backbone
from ovsam_ros.model.backbone import register_tiny_clip_configs

EXPECTED_CHANNELS = {"rn": [64, 128, 256, 512], "convnext": [40, 80, 160, 320]}


@pytest.fixture(scope="module", params=["rn", "convnext"])
def backbone(request):
    torch.manual_seed(0)
    bb = build_backbone(OVSAMConfig.tiny(request.param).backbone)
    bb.kind = request.param
    return bb


def test_four_taps_at_strides_4_to_32(backbone):
    x = torch.randn(2, 3, 256, 256)
    feats = backbone(x)
    assert backbone.channels == EXPECTED_CHANNELS[backbone.kind]
    assert [tuple(f.shape) for f in feats] == [(2, c, 256 // s, 256 // s) for c, s in zip(backbone.channels, (4, 8, 16, 32))]


def test_trunk_accepts_other_input_sizes(backbone):
    feats = backbone(torch.randn(1, 3, 320, 192))
    assert [tuple(f.shape[-2:]) for f in feats] == [(80, 48), (40, 24), (20, 12), (10, 6)]


def test_frozen_no_grad_and_eval(backbone):
    assert not any(p.requires_grad for p in backbone.parameters())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert not backbone(x)[-1].requires_grad  # no graph is built through a frozen backbone
    backbone.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())


def test_text_tower_and_tokenizer(backbone):
    tokens = backbone.tokenizer(["a photo of a dog", "a cup"])
    assert tokens.shape == (2, 77)
    emb = backbone.encode_text(tokens, normalize=True)
    assert emb.shape == (2, backbone.embed_dim) == (2, 64)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    # The real tower: same prompt -> same embedding, different prompts differ.
    again = backbone.encode_text(backbone.tokenizer(["a photo of a dog"]), normalize=True)
    assert torch.allclose(again[0], emb[0], atol=1e-6) and not torch.allclose(emb[0], emb[1], atol=1e-3)


def test_encode_image_crop_baseline(backbone):
    crops = torch.rand(3, 3, 40, 70) * 255
    x = backbone.normalize_for_clip(crops)
    assert x.shape == (3, 3, backbone.clip_image_size, backbone.clip_image_size)
    emb = backbone.encode_image(x, normalize=True)
    assert emb.shape == (3, 64)


def test_pool_regions_full_box_equals_clip_head(backbone):
    """A box covering the whole c5 map at the head's grid reproduces CLIP's own image head."""
    feats = backbone(torch.randn(1, 3, 256, 256))
    c5 = feats[-1]  # 8x8 == clip_image_size // 32 for the tiny models
    pooled = backbone.pool_regions(c5, torch.tensor([[0.0, 0.0, 256.0, 256.0]]))
    visual = backbone.clip.visual
    with torch.no_grad():
        direct = visual.attnpool(c5) if backbone.trunk_type == "resnet" else visual.head(visual.trunk.forward_head(c5))
    assert pooled.shape == (1, 64)
    torch.testing.assert_close(pooled, direct, atol=1e-5, rtol=1e-5)


def test_missing_pretrained_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "RN50x16.bin"
    with pytest.raises(FileNotFoundError, match="nope"):
        build_backbone(BackboneConfig("ovsam-tiny-rn", str(missing)))
    with pytest.raises(FileNotFoundError, match="openai"):
        build_backbone(BackboneConfig("ovsam-tiny-rn", "openai"))  # tags are never downloaded


def test_local_open_clip_weights_load(tmp_path):
    register_tiny_clip_configs()
    torch.manual_seed(5)
    reference = open_clip.create_model("ovsam-tiny-rn")
    path = tmp_path / "tiny_clip.pt"
    torch.save(reference.state_dict(), path)
    bb = build_backbone(BackboneConfig("ovsam-tiny-rn", str(path)))
    for (k, a), (_, b) in zip(reference.state_dict().items(), bb.clip.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_open_clip_weights_raise_checkpoint_error(tmp_path):
    register_tiny_clip_configs()
    sd = open_clip.create_model("ovsam-tiny-rn").state_dict()
    del sd["visual.layer1.0.conv1.weight"]
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="broken.pt"):
        build_backbone(BackboneConfig("ovsam-tiny-rn", str(path)))


def test_vit_towers_rejected():
    from open_clip import factory

    from ovsam_ros.model.backbone import CLIPBackbone

    factory._MODEL_CONFIGS.setdefault(
        "test-tiny-vit",
        {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
        },
    )
    vit = open_clip.create_model("test-tiny-vit")
    with pytest.raises(ValueError, match="four stages"):
        CLIPBackbone(vit, "test-tiny-vit")
