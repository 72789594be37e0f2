from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovsam_ros.model import ImageTransform, OVSAM, OVSAMConfig, masks_to_boxes
from ovsam_ros.model.ovsam import largest_component_boxes
from ovsam_ros.model.config import BackboneConfig


def test_config_round_trip_and_presets():
    for cfg in (OVSAMConfig.tiny("rn"), OVSAMConfig.tiny("convnext"), OVSAMConfig.rn50x16("/x/rn.bin"), OVSAMConfig.convnext_large()):
        plain = cfg.to_dict()
        assert isinstance(plain["sam2clip"]["global_attn_indexes"], list)  # YAML-friendly
        assert OVSAMConfig.from_dict(plain) == cfg
    big = OVSAMConfig.rn50x16()
    assert big.backbone == BackboneConfig("RN50x16", None)
    assert (big.image_size, big.embedding_size, big.low_res_mask_size) == (1024, 64, 256)
    assert (big.sam2clip.embed_dim, big.sam2clip.depth, big.sam2clip.num_heads, big.sam2clip.window_size) == (1280, 5, 16, 14)
    assert OVSAMConfig.convnext_large().backbone.model_name == "convnext_large_d_320"
    tiny = OVSAMConfig.tiny()
    assert (tiny.image_size, tiny.embedding_size) == (256, 16)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown key"):
        OVSAMConfig.from_dict({"decoder": {"transformer_dims": 3}})
    with pytest.raises(ValueError, match="transformer_dim"):
        d = OVSAMConfig.tiny().to_dict()
        d["decoder"]["transformer_dim"] = 64
        OVSAMConfig.from_dict(d)
    with pytest.raises(ValueError, match="multiple of 32"):
        OVSAMConfig(image_size=1000)


@pytest.mark.parametrize("backbone", ["rn", "convnext"])
def test_encode_image_shapes(tiny_model_factory, backbone):
    model = tiny_model_factory(backbone)
    with torch.no_grad():
        f = model.encode_image(torch.randn(2, 3, 256, 256))
    assert f.sam_embedding.shape == (2, 32, 16, 16)
    assert [tuple(x.shape[-2:]) for x in f.clip_features] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert [tuple(x.shape) for x in f.fpn_features] == [(2, 32, 64 // 2**i, 64 // 2**i) for i in range(4)]
    out = model.decode(f, boxes=torch.tensor([[10.0, 20.0, 120.0, 200.0]]))
    assert out["region_embeddings"].shape == (1, 3, 64)


def test_decode_outputs(tiny_model, tiny_features):
    pts = torch.tensor([[[100.0, 60.0], [30.0, 30.0]], [[200.0, 180.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    boxes = torch.tensor([[50.0, 20.0, 150.0, 110.0], [120.0, 100.0, 250.0, 250.0]])
    with torch.no_grad():
        multi = tiny_model.decode(tiny_features, pts, labels, boxes)
        single = tiny_model.decode(tiny_features, pts, labels, boxes, multimask_output=False)
        again = tiny_model.decode(tiny_features, pts, labels, boxes, mask_input=single["masks_lowres"])
    assert multi["masks_lowres"].shape == (2, 3, 64, 64) and multi["iou"].shape == (2, 3)
    assert single["masks_lowres"].shape == (2, 1, 64, 64) and single["iou"].shape == (2, 1)
    assert multi["region_embeddings"].shape == (2, 3, 64) and single["region_embeddings"].shape == (2, 1, 64)
    assert multi["label_embeddings"].shape == (2, 64)
    assert again["masks_lowres"].shape == (2, 3, 64, 64)
    # Region embeddings come from the box of each predicted mask (reference test-time behaviour).
    expected_boxes = masks_to_boxes(multi["masks_lowres"]) * 4  # 64 px low-res -> 256 px input
    torch.testing.assert_close(multi["roi_boxes"], expected_boxes)
    direct = tiny_model.clip2sam([f[:1] for f in tiny_features.fpn_features], expected_boxes.view(-1, 4))
    torch.testing.assert_close(multi["region_embeddings"], direct.view(2, 3, -1))


def test_decode_with_given_roi_boxes(tiny_model, tiny_features):
    boxes = torch.tensor([[50.0, 20.0, 150.0, 110.0]])
    with torch.no_grad():
        out = tiny_model.decode(tiny_features, boxes=boxes, roi_boxes=boxes, image_index=1)
        direct = tiny_model.clip2sam(tiny_features.fpn_features, boxes, torch.tensor([1]))
    for m in range(3):
        torch.testing.assert_close(out["region_embeddings"][:, m], direct)


def test_batched_image_index_equals_single_image_decode(tiny_model, tiny_features):
    boxes = torch.tensor([[50.0, 20.0, 150.0, 110.0], [120.0, 100.0, 250.0, 250.0], [10.0, 10.0, 60.0, 90.0]])
    index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        batched = tiny_model.decode(tiny_features, boxes=boxes, image_index=index)
        for i in range(3):
            one = tiny_model.decode(tiny_features.select(int(index[i])), boxes=boxes[i : i + 1])
            for key in ("masks_lowres", "iou", "region_embeddings", "label_embeddings"):
                torch.testing.assert_close(batched[key][i : i + 1], one[key], atol=1e-5, rtol=1e-5)


def test_label_weight_adds_label_embedding(tiny_model_factory):
    model = tiny_model_factory("rn")
    images = torch.randn(1, 3, 256, 256)
    boxes = torch.tensor([[50.0, 20.0, 150.0, 110.0]])
    with torch.no_grad():
        f = model.encode_image(images)
        base = model.decode(f, boxes=boxes)
        model.clip2sam.label_weight = 0.5
        mixed = model.decode(f, boxes=boxes)
    torch.testing.assert_close(mixed["region_embeddings"], base["region_embeddings"] + 0.5 * base["label_embeddings"][:, None])


def test_masks_to_boxes():
    m = torch.full((3, 8, 10), -1.0)
    m[0, 2:5, 3:7] = 1.0  # rows 2..4, cols 3..6
    m[1, 7, 9] = 2.0
    boxes = masks_to_boxes(m)
    assert boxes.tolist() == [[3, 2, 7, 5], [9, 7, 10, 8], [0, 0, 0, 0]]


def test_largest_component_boxes_by_hand():
    m = torch.full((4, 12, 16), -1.0)
    m[0, 1:4, 2:5] = 1.0    # 9 px piece
    m[0, 6:11, 8:15] = 1.0  # 35 px piece: its box wins
    m[0, 11, 0] = 1.0       # 1 px stray pixel in a corner
    m[1, 2:6, 3:9] = 1.0    # one piece: same box as masks_to_boxes
    m[2, 0, 0] = m[2, 1, 1] = m[2, 2, 2] = 1.0  # diagonal pixels are one 8-connected piece
    boxes = largest_component_boxes(m)
    assert boxes.tolist() == [[8, 6, 15, 11], [3, 2, 9, 6], [0, 0, 3, 3], [0, 0, 0, 0]]
    assert masks_to_boxes(m)[0].tolist() == [0, 1, 15, 12]  # what the whole mask's box would be
    torch.testing.assert_close(largest_component_boxes(m[1:2]), masks_to_boxes(m[1:2]))
    assert largest_component_boxes(m.view(2, 2, 12, 16)).shape == (2, 2, 4)


def test_decode_pools_the_largest_piece_when_asked(tiny_model, tiny_features):
    """roi_box="largest_component": the RoI head pools exactly the box of each mask's largest piece
    (what decode(roi_boxes=...) pools for that box); the default is the whole mask's box."""
    pts = torch.tensor([[[100.0, 60.0]], [[200.0, 180.0]], [[30.0, 200.0]]])
    labels = torch.ones(3, 1, dtype=torch.long)
    with torch.no_grad():
        whole = tiny_model.decode(tiny_features, pts, labels, multimask_output=False)
        largest = tiny_model.decode(tiny_features, pts, labels, multimask_output=False, roi_box="largest_component")
        lowres = whole["masks_lowres"]
        expected = largest_component_boxes(lowres) * 4  # 64 px low-res -> 256 px input
        pooled = tiny_model.decode(tiny_features, pts, labels, multimask_output=False, roi_boxes=expected[:, 0])
    torch.testing.assert_close(largest["masks_lowres"], lowres)
    torch.testing.assert_close(largest["roi_boxes"], expected)
    torch.testing.assert_close(largest["region_embeddings"], pooled["region_embeddings"])
    torch.testing.assert_close(whole["roi_boxes"], masks_to_boxes(lowres) * 4)
    with pytest.raises(ValueError, match="roi_box must be one of mask, largest_component"):
        tiny_model.decode(tiny_features, pts, labels, roi_box="largest")


def test_postprocess_and_input_checks(tiny_model, tiny_features):
    with torch.no_grad():
        out = tiny_model.decode(tiny_features, boxes=torch.tensor([[50.0, 20.0, 150.0, 110.0]]))
    tr = ImageTransform(256)
    full = tiny_model.postprocess_masks(out["masks_lowres"], tr.get_input_size((300, 500)), (300, 500))
    assert full.shape == (1, 3, 300, 500)
    torch.testing.assert_close(full, tr.postprocess_masks(out["masks_lowres"], (300, 500)))
    with pytest.raises(ValueError, match="256"):
        tiny_model.encode_image(torch.randn(1, 3, 224, 224))
    with pytest.raises(IndexError):
        tiny_model.decode(tiny_features, boxes=torch.zeros(1, 4), image_index=2)


def test_train_mode_keeps_clip_frozen(tiny_model_factory):
    model: OVSAM = tiny_model_factory("rn")
    model.train()
    assert model.decoder.training and model.sam2clip.training
    assert not model.backbone.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    f = model.encode_image(torch.randn(1, 3, 256, 256))
    out = model.decode(f, boxes=torch.tensor([[50.0, 20.0, 150.0, 110.0]]), multimask_output=False)
    loss = out["masks_lowres"].mean() + out["region_embeddings"].mean()
    loss.backward()
    assert model.decoder.mask_decoder.mask_tokens.weight.grad is not None
    assert model.clip2sam.roi_conv[0].weight.grad is not None
    assert model.sam2clip.blocks[0].attn.qkv.weight.grad is not None


def _hand_clip_text(clip, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower written out from its weights: token + position embedding, pre-LN blocks with
    CAUSAL multi-head attention (q/k/v split by hand), final LN, the EOT token's feature, projection, L2."""
    x = clip.token_embedding.weight[tokens] + clip.positional_embedding
    n = tokens.shape[1]
    causal = torch.full((n, n), float("-inf")).triu(1)
    for blk in clip.transformer.resblocks:
        attn = blk.attn
        heads, d = attn.num_heads, x.shape[-1]
        q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(t.shape[0], n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        w = (q @ k.transpose(-1, -2) / math.sqrt(d // heads) + causal).softmax(dim=-1)
        x = x + attn.out_proj((w @ v).transpose(1, 2).reshape(x.shape))
        h = blk.ln_2(x)
        x = x + blk.mlp.c_proj(F.gelu(blk.mlp.c_fc(h)))
    x = clip.ln_final(x)
    eot = (tokens == 49407).int().argmax(dim=1)  # CLIP's end-of-text id
    return F.normalize(x[torch.arange(len(tokens)), eot] @ clip.text_projection, dim=-1)


def test_text_path(tiny_model):
    tokens = tiny_model.tokenizer(["a cat", "a robot arm"])
    # CLIP's published BPE: <start> a cat <end> = 49406 320 2368 49407, then zero padding to 77
    assert tokens.shape == (2, 77) and tokens[0, :4].tolist() == [49406, 320, 2368, 49407]
    assert not tokens[0, 4:].any() and tokens[1, 0] == 49406 and tokens[1, 4] == 49407 and not tokens[1, 5:].any()
    with torch.no_grad():
        emb = tiny_model.encode_text(tokens, normalize=True)
        want = _hand_clip_text(tiny_model.backbone.clip, tokens)
    assert emb.shape == (2, tiny_model.clip_dim)
    torch.testing.assert_close(emb, want, atol=1e-5, rtol=1e-5)
    assert F.cosine_similarity(emb[0], emb[1], dim=0) < 0.999  # the two prompts really differ
