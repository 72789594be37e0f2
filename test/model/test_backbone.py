from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

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


# CLIP's published (OpenAI) pixel statistics, 0..1 RGB: written out, not read from open_clip
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def test_encode_image_crop_baseline(backbone):
    """A crop (RGB 0..255) through normalize_for_clip + encode_image equals CLIP's image tower (open_clip's own
    forward) on the crop normalised by hand: at the native size (no resize), and for a one-colour crop of
    another size (any resize of a flat image is that flat image)."""
    s = backbone.clip_image_size
    visual = backbone.clip.visual
    native = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(4)) * 255
    colour = torch.tensor([200.0, 40.0, 90.0]).view(1, 3, 1, 1)
    flat = colour.expand(1, 3, 40, 70)
    with torch.no_grad():
        got = backbone.encode_image(backbone.normalize_for_clip(native), normalize=True)
        want = F.normalize(visual((native / 255 - CLIP_MEAN) / CLIP_STD), dim=-1)
        got_flat = backbone.encode_image(backbone.normalize_for_clip(flat), normalize=True)
        want_flat = F.normalize(visual(((colour / 255 - CLIP_MEAN) / CLIP_STD).expand(1, 3, s, s)), dim=-1)
        batch = backbone.encode_image(backbone.normalize_for_clip(torch.cat([native, native.flip(-1)])), normalize=True)
    assert got.shape == (1, 64) and backbone.normalize_for_clip(flat).shape == (1, 3, s, s)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_flat, want_flat, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch[:1], got, atol=1e-5, rtol=1e-4)  # a crop's embedding ignores its batch
    assert F.cosine_similarity(got, got_flat).item() < 0.999


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


# --- OpenAI weights: QuickGELU ----------------------------------------------------------------------
# A tiny RN CLIP whose head counts follow OpenAI's conventions (text heads = width // 64), so that
# open_clip's OpenAI loader can rebuild it from the weights alone.
_OPENAI_TINY = "ovsam-test-openai-rn"


def _openai_tiny_files(tmp_path):
    from open_clip import factory

    factory._MODEL_CONFIGS.setdefault(_OPENAI_TINY, {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 256, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    })
    torch.manual_seed(0)
    source = open_clip.create_model(_OPENAI_TINY).eval()
    with torch.no_grad():  # OpenAI weights are fp16 (open_clip's OpenAI path rounds to fp16): be exact in fp16
        for t in source.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    archive = tmp_path / "RN-tiny-openai.pt"  # OpenAI ships TorchScript archives
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(source), str(archive))
    plain = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.state_dict(), plain)
    return archive, plain


def test_openai_weights_get_quickgelu_like_open_clips_openai_loader(tmp_path):
    from open_clip.openai import load_openai_model

    archive, plain = _openai_tiny_files(tmp_path)
    with torch.no_grad():
        # Independent: open_clip's own OpenAI path (builds the model from the weights with QuickGELU).
        # (given the plain state dict: it rejects the attn_mask buffer our scripted test archive carries)
        reference = load_openai_model(str(plain), precision="fp32", device="cpu").eval()
        ours = build_backbone(BackboneConfig(_OPENAI_TINY, str(archive)))  # detected from the archive
        tokens = ours.tokenizer(["a photo of a cat.", "There is a door handle in the scene"])
        expected = reference.encode_text(tokens)
        torch.testing.assert_close(ours.encode_text(tokens), expected, rtol=0, atol=1e-5)
        explicit = build_backbone(BackboneConfig(_OPENAI_TINY, str(plain), quick_gelu=True))
        torch.testing.assert_close(explicit.encode_text(tokens), expected, rtol=0, atol=1e-5)
        # What open_clip.create_model(name, pretrained=<file>) gives by default: GELU, other embeddings.
        gelu = build_backbone(BackboneConfig(_OPENAI_TINY, str(plain)))
        assert (gelu.encode_text(tokens) - expected).abs().max() > 1e-3
        # The image taps use the same activation choice (ModifiedResNet has ReLU; attnpool none).
        images = torch.randn(1, 3, 256, 256)
        torch.testing.assert_close(ours(images)[-1], reference.visual.layer4(reference.visual.layer3(
            reference.visual.layer2(reference.visual.layer1(reference.visual.stem(images))))), rtol=0, atol=1e-5)


def test_quick_gelu_resolution():
    from ovsam_ros.model.backbone import resolve_quick_gelu

    assert resolve_quick_gelu(BackboneConfig("RN50x16", None))  # its only weights: OpenAI's
    assert resolve_quick_gelu(BackboneConfig("RN50", None))
    assert not resolve_quick_gelu(BackboneConfig("convnext_large_d_320", None))  # LAION, GELU
    assert not resolve_quick_gelu(BackboneConfig("RN50x16", None, quick_gelu=False))  # explicit wins
    register_tiny_clip_configs()
    assert not resolve_quick_gelu(BackboneConfig("ovsam-tiny-rn", None))
