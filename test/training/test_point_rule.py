"""The point* evaluation prompt: kornia's distance transform, exactly as the reference evaluation runs it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("kornia")


def _reference_get_center_coords(mask: np.ndarray, img_shape: tuple) -> tuple:
    """HarborYuan/ovsam ``seg/models/data_preprocessor/ovsam_preprocessor.py::get_center_coords`` for one
    mask, transcribed: mmdet ``BitmapMasks.rescale(img_shape)`` (mmcv ``imrescale``, nearest), then kornia on
    the whole padded mask and ``argmax / w``, ``argmax % w``."""
    import cv2
    import torch
    import torch.nn.functional as F
    from kornia.contrib import distance_transform

    oh, ow = mask.shape
    factor = min(max(img_shape) / max(oh, ow), min(img_shape) / min(oh, ow))  # mmcv rescale_size
    size = (int(ow * float(factor) + 0.5), int(oh * float(factor) + 0.5))
    rescaled = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    m = torch.from_numpy(rescaled).to(torch.bool)[None, None]
    n, _, h, w = m.shape
    mask_dt = distance_transform((~F.pad(m, pad=(1, 1, 1, 1), mode="constant", value=0)).float())[:, :, 1:-1, 1:-1]
    selected = torch.tensor([mask_dt.argmax() / w, mask_dt.argmax() % w]).long().flip(0)
    return float(selected[0]), float(selected[1])


def _input_size(oh: int, ow: int, long_side: int) -> tuple:
    scale = long_side / max(oh, ow)
    return int(oh * scale + 0.5), int(ow * scale + 0.5)


def generated_masks(count: int, shape: tuple, seed: int = 0) -> list:
    """Thin bars, rotated rectangles and rotated ellipses (the fidelity benchmark's masks)."""
    from ovsam_ros.benchmark.fidelity import point_rule_masks

    return [m for _, m in point_rule_masks(count, shape, seed)]


def test_mmcv_rescale_size_can_be_a_pixel_narrower_than_the_image():
    from training.data.transforms import mmcv_rescale_size

    # A 640x212 image resizes to 1024x339 (mmdet Resize, keep_ratio); its masks, rescaled to that
    # (h, w), come out 1023 wide: 339 / 212 < 1024 / 640 and 640 * 339 / 212 = 1023.4.
    assert _input_size(212, 640, 1024) == (339, 1024)
    assert mmcv_rescale_size((640, 212), (339, 1024)) == (1023, 339)
    assert mmcv_rescale_size((640, 480), (768, 1024)) == (1024, 768)


@pytest.mark.parametrize("shape, long_side", [((120, 160), 256), ((52, 160), 256), ((90, 60), 128)])
def test_reference_point_is_kornias_first_maximum_as_the_reference_runs_it(shape, long_side):
    from training.data.transforms import reference_point

    input_size = _input_size(shape[0], shape[1], long_side)
    masks = generated_masks(18, shape, seed=long_side + shape[0])
    for index, mask in enumerate(masks):
        assert reference_point(mask, input_size) == _reference_get_center_coords(mask, input_size), index


def test_reference_point_differs_from_the_exact_transform_where_kornia_does():
    """kornia's transform is an approximation: on thin bars and rotated rectangles its first maximum is
    often not OpenCV's exact one (the reason a hand-written exact rule is not the reference's)."""
    from training.data.transforms import exact_edt_point, reference_point

    masks = generated_masks(12, (120, 160), seed=3)
    differ = sum(reference_point(m, (192, 256)) != exact_edt_point(m, (192, 256)) for m in masks)
    assert differ >= 3


def test_first_maximum_of_a_plateau_and_the_empty_mask():
    import torch
    from kornia.contrib import distance_transform

    from training.data.transforms import reference_point

    mask = np.zeros((20, 20), bool)
    mask[2:8, 3:13] = True  # rows 2..7, cols 3..12: a plateau of maxima on rows 4-5
    dt = distance_transform(1.0 - torch.from_numpy(np.pad(mask, 1)).float()[None, None])[0, 0, 1:-1, 1:-1]
    top = dt.max()
    rows, cols = np.nonzero((dt == top).numpy())
    assert len(rows) > 1  # a real tie: the rule must pick the first in row-major order
    assert reference_point(mask, (20, 20)) == (float(cols[0]), float(rows[0]))
    big = np.kron(mask, np.ones((2, 2), bool))  # resized (nearest) to the 20 x 20 input first
    assert reference_point(big, (20, 20)) == (float(cols[0]), float(rows[0]))
    tiny = np.zeros((40, 40), bool)
    tiny[13, 13] = True  # vanishes in the nearest resize to 10 x 10: the reference's argmax of zeros
    assert reference_point(tiny, (10, 10)) == (0.0, 0.0)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_reference_point_on_cuda_transforms_the_whole_mask():
    from training.data.transforms import reference_point

    masks = generated_masks(9, (120, 160), seed=5)
    for mask in masks:
        assert reference_point(mask, (192, 256), device="cuda") == _reference_get_center_coords(mask, (192, 256))
