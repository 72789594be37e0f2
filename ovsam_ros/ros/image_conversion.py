"""sensor_msgs/Image <-> numpy without cv_bridge.

cv_bridge is not installable from PyPI for ROS 2, and the conversion is only a
few lines over the message fields, so it lives here with strict validation:
a camera driver that lies about ``step`` or sends truncated data must produce a
clear error, never a garbage frame or a crash of the node.
"""

from __future__ import annotations

import array as array_module
import sys
from typing import Any, Callable, Optional

import numpy as np

from ovsam_ros.image_input import to_uint8_rgb

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "8UC3": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "8UC4": (np.dtype(np.uint8), 4),
    "rgb16": (np.dtype(np.uint16), 3),
    "bgr16": (np.dtype(np.uint16), 3),
    "rgba16": (np.dtype(np.uint16), 4),
    "bgra16": (np.dtype(np.uint16), 4),
    "32FC1": (np.dtype(np.float32), 1),
}

# Guard against absurd headers before allocating (a 16k x 16k RGBA image is 1 GiB).
MAX_PIXELS = 16384 * 16384


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an array (or back)."""


def image_to_numpy(msg: Any, copy: bool = True) -> np.ndarray:
    """Return the pixels of a ``sensor_msgs/Image`` as an (H, W) or (H, W, C) array.

    Channel order is kept as encoded (``bgr8`` stays BGR); use :func:`to_rgb`
    for model input. The result is a copy that owns its memory, unless ``copy`` is
    False: then, where the layout allows (native byte order, no row padding), it is a
    view of ``msg.data`` (the node's decode path: saves one copy of the frame per frame;
    the view keeps the message's buffer alive).
    """
    encoding = msg.encoding
    if encoding not in ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(sorted(ENCODINGS))}"
        )
    dtype, channels = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has zero size ({width}x{height})")
    if height * width > MAX_PIXELS:
        raise ImageConversionError(f"image of {width}x{height} pixels exceeds the limit of {MAX_PIXELS}")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than one row of {width} x {encoding} pixels ({row_bytes} bytes)"
        )
    data = msg.data
    buffer = data if isinstance(data, (bytes, bytearray, memoryview)) else np.asarray(data, np.uint8)
    flat = np.frombuffer(buffer, dtype=np.uint8)
    if flat.size < step * height:
        raise ImageConversionError(
            f"image data is truncated: {flat.size} bytes for {height} rows of step {step} "
            f"(expected {step * height})"
        )
    rows = flat[: step * height].reshape(height, step)[:, :row_bytes]
    big_endian_data = bool(msg.is_bigendian)
    array_dtype = dtype.newbyteorder(">" if big_endian_data else "<") if dtype.itemsize > 1 else dtype
    pixels = np.ascontiguousarray(rows).view(array_dtype).reshape(height, width, channels)
    pixels = pixels.astype(dtype, copy=copy)  # native byte order; owned memory unless copy=False
    return pixels[:, :, 0] if channels == 1 else pixels


def to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """Convert decoded pixels of ``encoding`` to an (H, W, 3) RGB array of the same dtype."""
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if encoding.startswith("bgr"):
        pixels = pixels[:, :, [2, 1, 0]] if pixels.shape[2] == 3 else pixels[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(pixels[:, :, :3])


def to_model_rgb(
    pixels: np.ndarray,
    encoding: str,
    *,
    input_bits: int = 16,
    float_max: float = 1.0,
    source: str = "camera image",
    warn: Optional[Callable[[str, str], object]] = None,
) -> np.ndarray:
    """Decoded pixels of ``encoding`` -> the (H, W, 3) uint8 RGB image the model takes.

    The range follows the encoding (``ovsam_ros.image_input``): 8-bit encodings as they are;
    16-bit ones (mono16, 16UC1, rgb16 ...) hold ``input_bits`` bits of data (16; 12 or 10 for
    machine-vision cameras); 32FC1 is 0..``float_max``. A frame that uses a tiny part of its
    range is converted and reported through ``warn(source, message)`` (default: logged,
    rate-limited per ``source``; the node passes an :class:`ovsam_ros.image_input.RangeWarnings`
    that logs through its ROS logger).
    Raises ImageConversionError for pixels that are not an image.
    """
    try:
        # Grey stays one channel until it is uint8 (to_uint8_rgb repeats it): 3x less to scale.
        return to_uint8_rgb(pixels if pixels.ndim == 2 else to_rgb(pixels, encoding), "RGB", input_bits=input_bits, float_max=float_max,
                            source=source, warn=warn)
    except ValueError as error:
        raise ImageConversionError(str(error)) from None


def numpy_to_image(pixels: np.ndarray, encoding: str, header: Any = None) -> Any:
    """Build a ``sensor_msgs/Image`` from an array laid out as ``encoding`` expects."""
    from sensor_msgs.msg import Image  # imported late: this module is usable without ROS

    if encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding {encoding!r}")
    dtype, channels = ENCODINGS[encoding]
    array = np.asarray(pixels)
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim == 3 and channels == 1 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        raise ImageConversionError(
            f"array of shape {array.shape} does not fit encoding {encoding!r} ({channels} channel(s))"
        )
    if array.dtype != dtype:
        raise ImageConversionError(f"array dtype {array.dtype} does not fit encoding {encoding!r} ({dtype})")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big" and dtype.itemsize > 1)
    msg.step = msg.width * channels * dtype.itemsize
    set_uint8_data(msg, array)
    return msg


def new_image_msg(height: int, width: int, encoding: str, header: Any = None) -> tuple[Any, np.ndarray]:
    """An all-zero ``sensor_msgs/Image`` and a writable numpy view of its pixels: producers
    draw straight into the message (no full-frame temporary, no copy into the message)."""
    from sensor_msgs.msg import Image

    if encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported image encoding {encoding!r}")
    dtype, channels = ENCODINGS[encoding]
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = int(height), int(width), encoding
    msg.is_bigendian = int(sys.byteorder == "big" and dtype.itemsize > 1)
    msg.step = msg.width * channels * dtype.itemsize
    data = array_module.array("B", b"\0") * (msg.step * msg.height)
    _store_data(msg, data)
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return msg, np.frombuffer(data, dtype=dtype).reshape(shape)


def _store_data(msg: Any, data: "array_module.array") -> None:
    if "_data" in getattr(type(msg), "__slots__", ()):
        msg._data = data  # rosidl-generated messages keep the field in this slot; the setter would copy
    else:
        msg.data = data


def set_uint8_data(msg: Any, pixels: np.ndarray) -> None:
    """``msg.data = pixels``'s bytes, in one memcpy.

    rclpy's generated setter copies a ``bytes`` or ``array`` value into a new
    ``array('B')`` element by element (5-13 ms for a 720p mono16 image, the bulk of the
    node's per-frame ROS overhead); an ``array('B')`` filled by ``frombytes`` is stored
    as is when assigned to the generated ``_data`` slot.
    """
    data = array_module.array("B")
    data.frombytes(np.ascontiguousarray(pixels).reshape(-1).view(np.uint8).data)
    _store_data(msg, data)


def compressed_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) a compressed image's header claims, read without decoding the pixels
    (Pillow reads only the header on open); None when Pillow does not know the format (OpenCV
    then decodes it under its own limit of 2^30 pixels). A header past Pillow's own
    decompression-bomb limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, 179 Mpx: below MAX_PIXELS)
    raises :class:`ImageConversionError`."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return int(image.size[0]), int(image.size[1])
    except Image.DecompressionBombError as error:
        raise ImageConversionError(f"compressed image exceeds the pixel limit (not decoded): {error}") from None
    except Exception:  # not an image Pillow knows, or a broken header: OpenCV has the last word
        return None


def compressed_to_numpy(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG/PNG) to (pixels, encoding)."""
    import cv2

    data = bytes(msg.data)
    if not data:
        raise ImageConversionError("compressed image has no data")
    size = compressed_size(data)  # before decoding: a 1 MB PNG can claim 40,000 x 40,000 pixels
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageConversionError(f"compressed image of {size[0]}x{size[1]} pixels exceeds the limit of "
                                   f"{MAX_PIXELS} (not decoded)")
    raw = np.frombuffer(data, dtype=np.uint8)
    decoded = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageConversionError(f"could not decode compressed image (format {msg.format!r}, {raw.size} bytes)")
    if decoded.ndim == 2:
        return decoded, "mono16" if decoded.dtype == np.uint16 else "mono8"
    suffix = "16" if decoded.dtype == np.uint16 else "8"
    return decoded, ("bgra" if decoded.shape[2] == 4 else "bgr") + suffix
