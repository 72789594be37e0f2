from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ovsam_ros.model import CLIP2SAM, CLIP2SAMConfig

CHANNELS = [64, 128, 256, 512]
STRIDES = (4, 8, 16, 32)


def _head(**overrides) -> CLIP2SAM:
    torch.manual_seed(0)
    cfg = CLIP2SAMConfig(fpn_channels=32, roi_size=7, **overrides)
    return CLIP2SAM(cfg, CHANNELS, embed_dim=64).eval()


def _clip_feats(batch: int = 1, size: int = 256):
    torch.manual_seed(1)
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip(CHANNELS, STRIDES)]


def test_fpn_shapes():
    fpn = _head().fpn_features(_clip_feats(2))
    assert [tuple(f.shape) for f in fpn] == [(2, 32, 64, 64), (2, 32, 32, 32), (2, 32, 16, 16), (2, 32, 8, 8)]


def test_fpn_matches_mmdet_fpn_math():
    """torchvision FPN == mmdet FPN (lateral 1x1, nearest top-down sum, 3x3 output convs)."""
    head = _head()
    feats = _clip_feats(1)
    laterals = [F.conv2d(f, b[0].weight, b[0].bias) for f, b in zip(feats, head.fpn.inner_blocks)]
    for i in range(3, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
    expected = [F.conv2d(x, b[0].weight, b[0].bias, padding=1) for x, b in zip(laterals, head.fpn.layer_blocks)]
    for got, want in zip(head.fpn_features(feats), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_level_assignment_follows_mmdet_scale_rule():
    head = _head()
    sides = torch.tensor([20.0, 111.0, 113.0, 224.0, 447.0, 449.0, 1000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    expected = [min(3, max(0, math.floor(math.log2(s / 56 + 1e-6)))) for s in sides.tolist()]
    assert head.map_levels(boxes).tolist() == expected == [0, 0, 1, 2, 2, 3, 3]
    assert _head(roi_level=2).map_levels(boxes).tolist() == [2] * 7


def test_region_embedding_shape_and_relu():
    head = _head()
    fpn = head.fpn_features(_clip_feats(1))
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 256.0, 256.0], [100.0, 100.0, 101.0, 101.0]])
    emb = head(fpn, boxes)
    assert emb.shape == (3, 64)
    assert (emb >= 0).all()  # ReLU before the spatial mean


def test_whole_map_box_pools_exactly_the_level():
    """Aligned RoIAlign of a box covering the stride-32 map at its own size returns the map itself."""
    head = CLIP2SAM(CLIP2SAMConfig(fpn_channels=32, roi_size=8, roi_level=3), CHANNELS, embed_dim=64).eval()
    fpn = head.fpn_features(_clip_feats(1))
    emb = head(fpn, torch.tensor([[0.0, 0.0, 256.0, 256.0]]))
    expected = head.roi_conv(fpn[3]).mean(dim=(-2, -1))
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)


def test_batch_indices_select_the_image():
    head = _head()
    fpn = head.fpn_features(_clip_feats(2))
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [30.0, 5.0, 200.0, 250.0]])
    batched = head(fpn, boxes, batch_indices=torch.tensor([1, 1]))
    single = head([f[1:2] for f in fpn], boxes)
    torch.testing.assert_close(batched, single)
    assert not torch.allclose(batched, head([f[0:1] for f in fpn], boxes))


def test_label_weight_combination():
    region = torch.rand(2, 3, 8)
    label = torch.rand(2, 8)
    assert torch.equal(_head().combine(region, label), region)  # reference: label output x 0
    torch.testing.assert_close(_head(label_weight=0.5).combine(region, label), region + 0.5 * label[:, None])
