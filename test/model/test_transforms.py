from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segment_anything.modeling import Sam

from ovsam_ros.model import PIXEL_MEAN, PIXEL_STD, ImageTransform

H, W = 300, 500
TOP, BOTTOM, LEFT, RIGHT = 50, 150, 100, 350  # rectangle rows [50, 150), cols [100, 350)


def _rect_image() -> np.ndarray:
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[TOP:BOTTOM, LEFT:RIGHT] = 255
    return img


def _rect_mask() -> torch.Tensor:
    m = torch.zeros(H, W, dtype=torch.bool)
    m[TOP:BOTTOM, LEFT:RIGHT] = True
    return m


def _identity_mask_logits(tr: ImageTransform, x: torch.Tensor) -> torch.Tensor:
    """A "perfect model": the rectangle read back from the preprocessed input, as +-1 logits (S x S)."""
    red = x[0, 0] * PIXEL_STD[0] + PIXEL_MEAN[0]
    return (red > 127.5).float() * 2 - 1


def test_round_trip_is_exact_for_integer_scale():
    tr = ImageTransform(1000)  # 300x500 -> 600x1000: scale exactly 2
    x = tr.apply_image(_rect_image())
    assert x.shape == (1, 3, 1000, 1000)
    assert tr.original_size == (H, W) and tr.input_size == (600, 1000)
    back = tr.postprocess_masks(_identity_mask_logits(tr, x)) > 0
    assert back.shape == (H, W)
    assert torch.equal(back, _rect_mask())


def test_round_trip_for_model_sizes_and_low_res_masks():
    """1024 / 256 inputs, masks coming back through the 4G x 4G low-res resolution."""
    for size in (1024, 256):
        tr = ImageTransform(size)
        x = tr.apply_image(_rect_image())
        low = nn.functional.interpolate(_identity_mask_logits(tr, x)[None, None], size=(size // 4, size // 4), mode="area")
        back = tr.postprocess_masks(low[0], (H, W))[0] > 0
        rect = _rect_mask()
        iou = (back & rect).sum() / (back | rect).sum()
        assert iou > 0.97, (size, float(iou))
        rows = torch.nonzero(back.any(1)).flatten()
        cols = torch.nonzero(back.any(0)).flatten()
        tol = 2 if size == 256 else 1  # one low-res pixel is ~2 original pixels at 256
        assert abs(rows[0] - TOP) <= tol and abs(rows[-1] - (BOTTOM - 1)) <= tol
        assert abs(cols[0] - LEFT) <= tol and abs(cols[-1] - (RIGHT - 1)) <= tol


def test_coords_and_boxes_follow_the_resize():
    tr = ImageTransform(1024)
    x = tr.apply_image(_rect_image())
    assert tr.input_size == (614, 1024)  # round(300 * 1024 / 500)
    sx, sy = 1024 / 500, 614 / 300  # SAM scales each axis by its own rounded size
    box = tr.apply_boxes([[LEFT, TOP, RIGHT, BOTTOM]])
    torch.testing.assert_close(box, torch.tensor([[LEFT * sx, TOP * sy, RIGHT * sx, BOTTOM * sy]]))
    pts = tr.apply_coords(np.array([[[LEFT, TOP], [RIGHT, BOTTOM]]], dtype=np.float64))
    torch.testing.assert_close(pts, box.view(1, 2, 2))
    # The box lands on the rectangle in the preprocessed image.
    red = x[0, 0] * PIXEL_STD[0] + PIXEL_MEAN[0]
    ys, xs = torch.nonzero(red > 127.5, as_tuple=True)
    assert abs(xs.min() - box[0, 0]) <= 1 and abs(xs.max() + 1 - box[0, 2]) <= 1
    assert abs(ys.min() - box[0, 1]) <= 1 and abs(ys.max() + 1 - box[0, 3]) <= 1
    # Inverses.
    torch.testing.assert_close(tr.boxes_to_original(box), torch.tensor([[LEFT, TOP, RIGHT, BOTTOM]], dtype=torch.float32))
    torch.testing.assert_close(tr.coords_to_original(pts, (H, W)), torch.tensor([[[LEFT, TOP], [RIGHT, BOTTOM]]], dtype=torch.float32))


def test_normalisation_padding_and_channel_order():
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 200, 90
    tr = ImageTransform(256)
    x = tr.apply_image(img)
    h, w = tr.input_size
    expected = torch.tensor([(10 - PIXEL_MEAN[0]) / PIXEL_STD[0], (200 - PIXEL_MEAN[1]) / PIXEL_STD[1], (90 - PIXEL_MEAN[2]) / PIXEL_STD[2]])
    torch.testing.assert_close(x[0, :, h // 2, w // 2], expected)
    assert (x[0, :, h:, :] == 0).all() and (x[0, :, :, w:] == 0).all()  # zero padding after normalisation
    bgr = tr.apply_image(img[..., ::-1].copy(), channel_order="BGR")
    torch.testing.assert_close(bgr, x)


@pytest.mark.parametrize("hw", [(300, 451), (720, 1280), (480, 640), (1024, 700)])
def test_cv2_resize_is_the_references_bilinear_rescale(hw):
    """resize='cv2': mmcv.imrescale(img, (1024, 1024), interpolation='bilinear') as the reference's
    test pipeline runs it: size int(side * 1024 / long + 0.5), cv2.resize INTER_LINEAR, by hand."""
    import cv2

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    img[hw[0] // 3:, : hw[1] // 2] = (250, 10, 90)
    scale = 1024 / max(hw)
    size_wh = (int(hw[1] * scale + 0.5), int(hw[0] * scale + 0.5))
    by_hand = cv2.resize(img, size_wh, interpolation=cv2.INTER_LINEAR) if size_wh != hw[::-1] else img
    tr = ImageTransform(1024, resize="cv2")
    assert np.array_equal(tr.resize_image(img), by_hand)
    x = tr.apply_image(img)
    expected = (torch.from_numpy(by_hand).permute(2, 0, 1).float() - tr.pixel_mean) / tr.pixel_std
    assert torch.equal(x[0, :, : size_wh[1], : size_wh[0]], expected)
    assert tr.input_size == (size_wh[1], size_wh[0])
    if max(hw) > 1024:  # shrinking: PIL antialiases, cv2's INTER_LINEAR does not
        assert not np.array_equal(ImageTransform(1024).resize_image(img), by_hand)
    with pytest.raises(ValueError, match="resize"):
        ImageTransform(1024, resize="bicubic")


def test_postprocess_matches_segment_anything(tiny_sam_factory):
    from ovsam_ros.model import OVSAMConfig

    sam: Sam = tiny_sam_factory(OVSAMConfig.tiny().decoder)
    tr = ImageTransform(256)
    low = torch.randn(2, 3, 64, 64)
    input_size = tr.get_input_size((H, W))
    torch.testing.assert_close(tr.postprocess_masks(low, (H, W)), sam.postprocess_masks(low, input_size, (H, W)))


def test_invalid_images_and_missing_sizes():
    tr = ImageTransform(256)
    with pytest.raises(ValueError, match="HxWx3"):
        tr.apply_image(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        tr.apply_image(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(RuntimeError, match="original_size"):
        tr.apply_coords([[1.0, 2.0]])
