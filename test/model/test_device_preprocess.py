"""Preprocessing on the model's device equals the PIL path (segment_anything's ResizeLongestSide)
within one intensity level (the resize kernels round differently)."""

import numpy as np
import pytest
import torch

from ovsam_ros.model.transforms import ImageTransform


def _frame(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    frame[h // 4 : h // 2, w // 4 : w // 2] = (200, 40, 40)
    return frame


@pytest.mark.parametrize("resize", ["pil", "cv2"])
@pytest.mark.parametrize("size", [(180, 320), (300, 200), (256, 256)])
def test_device_path_matches_pil_path_within_one_level(size, resize):
    transform = ImageTransform(256, resize=resize)
    frame = _frame(*size)
    host = transform.apply_image(frame)
    device = transform.apply_image_device(frame, "cpu")
    assert device.shape == host.shape == (1, 3, 256, 256) and device.dtype == torch.float32
    h, w = transform.get_input_size(size)
    levels = (device - host) * transform.pixel_std  # back to 0-255 units
    assert levels.abs().max() <= 1.0 + 1e-3
    assert (levels.abs() > 0.5).float().mean() < 0.25
    assert torch.count_nonzero(device[..., h:, :]) == 0 and torch.count_nonzero(device[..., :, w:]) == 0
    if (h, w) == size:  # no resize: bit-identical
        assert torch.equal(device, host)


def test_device_path_dtype_and_errors():
    transform = ImageTransform(256)
    frame = _frame(180, 320)
    half = transform.apply_image_device(frame, "cpu", torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="uint8"):
        transform.apply_image_device(frame.astype(np.float32), "cpu")
