"""Any camera image becomes uint8 RGB with one defined conversion."""

import numpy as np
import pytest

from ovsam_ros.image_input import to_uint8_rgb


def test_grey_and_single_channel_are_repeated():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for image in (grey, grey[:, :, None]):
        out = to_uint8_rgb(image)
        assert out.shape == (3, 4, 3) and np.array_equal(out[:, :, 1], grey)


def test_alpha_dropped_and_bgr_swapped():
    bgra = np.zeros((1, 1, 4), np.uint8)
    bgra[0, 0] = (1, 2, 3, 4)
    assert to_uint8_rgb(bgra, "BGRA")[0, 0].tolist() == [3, 2, 1]
    assert to_uint8_rgb(bgra, "RGBA")[0, 0].tolist() == [1, 2, 3]


def test_uint16_scaled_exactly():
    out = to_uint8_rgb(np.array([[0, 257, 65535]], dtype=np.uint16))
    assert out[0, :, 0].tolist() == [0, 1, 255]


def test_float_ranges_and_non_finite():
    assert to_uint8_rgb(np.array([[0.0, 0.5, 1.0]], np.float32))[0, :, 0].tolist() == [0, 128, 255]
    assert to_uint8_rgb(np.array([[0.0, 128.0, 300.0]], np.float64))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.warns(RuntimeWarning, match="2 non-finite"):
        out = to_uint8_rgb(np.array([[np.nan, 1.0, np.inf]], np.float32))
    assert out[0, :, 0].tolist() == [0, 255, 0]


@pytest.mark.parametrize("image", [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros(5, np.uint8)])
def test_non_images_are_rejected(image):
    with pytest.raises(ValueError):
        to_uint8_rgb(image)


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="image_format"):
        to_uint8_rgb(np.zeros((2, 2, 3), np.uint8), "YUV")
