"""Turn whatever a camera or a file gives us into the uint8 RGB image the model expects.

Robots send mono, 16-bit depth-like, RGBA and float images; each gets one
defined conversion here instead of an error deep inside the model.
"""

from __future__ import annotations

import warnings

import numpy as np


def to_uint8_rgb(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """Return ``image`` as a contiguous (H, W, 3) uint8 RGB array.

    * 2-D or (H, W, 1) arrays are grey and are repeated to three channels.
    * 4-channel arrays drop alpha (``image_format`` "RGBA"/"BGRA" tells the order).
    * uint16 is scaled by 1/257 (65535 -> 255); other integer types are clipped.
    * floats are taken as 0..1 if their finite maximum is <= 1, else as 0..255;
      NaN and inf pixels become 0 (with a warning), never propagate into the model.

    Raises ValueError for empty images or layouts that are not an image.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image has zero size {array.shape[:2]}")
    fmt = image_format.upper()
    if fmt not in ("RGB", "BGR", "RGBA", "BGRA"):
        raise ValueError(f"image_format must be RGB, BGR, RGBA or BGRA, got {image_format!r}")

    array = _to_uint8(array)
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    array = array[:, :, :3]
    if fmt.startswith("BGR"):
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _scale_uint16(array)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        finite = np.isfinite(values)
        if not finite.all():
            warnings.warn(f"{int((~finite).sum())} non-finite pixel value(s) replaced by 0", RuntimeWarning, stacklevel=3)
            values = np.where(finite, values, 0.0)
        peak = float(values.max()) if values.size else 0.0
        if peak <= 1.0:
            values = values * 255.0
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {array.dtype}")


def _scale_uint16(array: np.ndarray) -> np.ndarray:
    # Rounded division by 257 maps 0..65535 exactly onto 0..255.
    return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
