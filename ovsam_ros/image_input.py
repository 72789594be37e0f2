"""Turn whatever a camera or a file gives us into the uint8 RGB image the model expects.

Robots send mono, 16-bit, RGBA and float images; each gets one defined conversion here
instead of an error deep inside the model. The range rule is fixed by the data type and two
options, never guessed from the pixel values (one bright pixel must not change a frame):

* uint8 as is; bool as 0 / 255;
* uint16: ``input_bits`` (8..16, default 16) bits hold the data: 0 .. 2**input_bits - 1 maps
  onto 0..255 (12-bit machine-vision data in mono16: ``input_bits=12``); larger values clip;
* float: 0 .. ``float_max`` maps onto 0..255 (default 1.0; 255.0 for 0..255 float data);
  values outside clip, NaN / inf become 0;
* other integer types are clipped to 0..255.

A frame that looks mis-scaled under this rule (16-bit data using under 1/16 of its range,
float data far above ``float_max``) is converted all the same and WARNED about, once per
source and then at most once per period (:class:`RangeWarnings`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
import warnings
from typing import Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

INPUT_BITS_MIN, INPUT_BITS_MAX = 8, 16
#: A frame whose brightest value is below full scale / LOW_RANGE_FRACTION draws a warning.
LOW_RANGE_FRACTION = 16


def check_input_bits(input_bits: int) -> int:
    """``input_bits`` as an int, or ValueError saying what is allowed."""
    if isinstance(input_bits, bool) or not isinstance(input_bits, (int, np.integer)) \
            or not INPUT_BITS_MIN <= int(input_bits) <= INPUT_BITS_MAX:
        raise ValueError(f"input_bits must be an integer from {INPUT_BITS_MIN} to {INPUT_BITS_MAX} (the bits of "
                         f"16-bit data that hold the picture: 16, or 12 / 10 for machine-vision cameras), "
                         f"got {input_bits!r}")
    return int(input_bits)


def check_float_max(float_max: float) -> float:
    """``float_max`` as a float, or ValueError saying what is allowed."""
    number = isinstance(float_max, (int, float, np.integer, np.floating)) and not isinstance(float_max, bool)
    value = float(float_max) if number else math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"float_max must be a finite number > 0 (the float value shown as white: 1.0, or 255.0 "
                         f"for 0..255 float data), got {float_max!r}")
    return value


class RangeWarnings:
    """Rate-limited warnings about input ranges, per source (a camera topic, a file, a folder).

    The first warning of a source is emitted at once; later ones of the same source at most
    once per ``period`` seconds, saying how many were held back. Thread-safe.
    """

    def __init__(self, period: float = 60.0, emit: Optional[Callable[[str], None]] = None) -> None:
        self.period = float(period)
        self.emit = emit or log.warning
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # source -> (last emitted, held back since)

    def __call__(self, source: str, message: str) -> bool:
        """Emit ``message`` for ``source`` unless one was emitted within ``period``; True if emitted."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(source)
            if last is not None and now - last[0] < self.period:
                self._last[source] = (last[0], last[1] + 1)
                return False
            held = last[1] if last is not None else 0
            self._last[source] = (now, 0)
        self.emit(message + (f" ({held} more frame(s) like it since the last warning)" if held else ""))
        return True


#: Used when a caller passes none (the CLI, training reads, Python API callers).
DEFAULT_RANGE_WARNINGS = RangeWarnings()


def range_warning(array: np.ndarray, input_bits: int = 16, float_max: float = 1.0) -> Optional[str]:
    """Why ``array`` looks mis-scaled under the range rule (see the module doc), or None.

    Only advice: the conversion is the same whatever this says.
    """
    if array.size == 0:
        return None
    if array.dtype == np.uint16:
        top = (1 << input_bits) - 1
        peak = int(array.max())
        if peak > top:
            over = int(np.count_nonzero(array > top))
            return (f"16-bit image has {over} pixel(s) above {top}, the largest {input_bits}-bit value "
                    f"(up to {peak}; clipped to white): is input_bits={input_bits} right?")
        if 0 < peak and peak * LOW_RANGE_FRACTION <= top:
            bits = max(INPUT_BITS_MIN, peak.bit_length())
            return (f"16-bit image uses only 0..{peak} of 0..{top} ({input_bits}-bit): it becomes near-black "
                    f"(brightest {round(peak * 255 / top)} of 255); looks like {bits}-bit data, set "
                    f"input_bits={bits}")
        return None
    if np.issubdtype(array.dtype, np.floating):
        usable = np.isfinite(array)
        finite = array if usable.all() else array[usable]
        if finite.size == 0:
            return None
        peak = float(finite.max())
        if peak > 2 * float_max:
            guess = 255 if peak <= 255 else 65535 if peak <= 65535 else None
            hint = f"; if it holds 0..{guess} data, set float_max={guess}" if guess else ""
            return (f"float image has values up to {peak:g}, far above float_max {float_max:g} "
                    f"(clipped to white){hint}")
        if 0 < peak and peak * LOW_RANGE_FRACTION <= float_max:
            return (f"float image uses only 0..{peak:g} of 0..{float_max:g} (float_max): it becomes near-black; "
                    f"set float_max to the value that is white")
    return None


def to_uint8_rgb(
    image: np.ndarray,
    image_format: str = "RGB",
    *,
    input_bits: int = 16,
    float_max: float = 1.0,
    source: str = "image",
    warn: Optional[Callable[[str, str], object]] = None,
) -> np.ndarray:
    """Return ``image`` as a contiguous (H, W, 3) uint8 RGB array.

    * 2-D or (H, W, 1) arrays are grey and are repeated to three channels.
    * 4-channel arrays drop alpha (``image_format`` "RGBA"/"BGRA" tells the order).
    * the value range follows the module's rule (``input_bits`` for uint16, ``float_max`` for
      floats); a frame that looks mis-scaled is reported as ``warn(source, "<source>: why")``
      (default :data:`DEFAULT_RANGE_WARNINGS`: logged, rate-limited per source).
    * NaN and inf pixels become 0 (with a RuntimeWarning), never propagate into the model.

    Raises ValueError for empty images, layouts that are not an image and invalid options.
    """
    input_bits, float_max = check_input_bits(input_bits), check_float_max(float_max)
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

    if array.ndim == 3:
        array = array[:, :, :3]  # alpha is not looked at, not even by the range check
    if array.dtype != np.uint8:
        message = range_warning(array, input_bits, float_max)
        if message is not None:
            (warn or DEFAULT_RANGE_WARNINGS)(source, f"{source}: {message}")
    array = _to_uint8(array, input_bits, float_max)
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if fmt.startswith("BGR"):
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, input_bits: int, float_max: float) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _scale_uint16(array, input_bits)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        finite = np.isfinite(values)
        if not finite.all():
            warnings.warn(f"{int((~finite).sum())} non-finite pixel value(s) replaced by 0", RuntimeWarning, stacklevel=3)
            values = np.where(finite, values, 0.0)
        return np.clip(np.rint(values * np.float32(255.0 / float_max)), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {array.dtype}")


def _scale_uint16(array: np.ndarray, input_bits: int = 16) -> np.ndarray:
    return _uint16_table(input_bits)[array]  # one gather: faster than the arithmetic per pixel


@functools.lru_cache(maxsize=None)
def _uint16_table(input_bits: int) -> np.ndarray:
    """uint8 value of every uint16: round(v * 255 / top) in integers, (2 * 255 * v + top) // (2 * top)
    (top = 2**input_bits - 1; for 16 bits exactly the rounded division by 257); above top: 255."""
    top = (1 << input_bits) - 1
    values = np.minimum(np.arange(1 << 16, dtype=np.uint32), top)
    table = ((values * 510 + top) // (2 * top)).astype(np.uint8)
    table.flags.writeable = False
    return table


def decode_image_file(path: "str | os.PathLike[str]") -> Optional[np.ndarray]:
    """Pixels of an image file as stored (grey (H, W) or RGB (H, W, 3); uint8, uint16 or float),
    with the file's EXIF orientation applied (as the reference's mmcv loader does); alpha dropped.

    None if the file cannot be decoded. Reads through numpy so that any path works (cv2.imread
    also fails on TIFFs that carry an orientation tag in OpenCV 4.x; imdecode does not)."""
    import cv2

    # ANYDEPTH | ANYCOLOR keeps 16-bit / float data and grey / colour as stored (like IMREAD_UNCHANGED)
    # but, unlike IMREAD_UNCHANGED, lets OpenCV apply the EXIF orientation (a phone JPEG with
    # Orientation=6 would otherwise be segmented sideways). The decoder drops alpha, exactly as
    # to_uint8_rgb would.
    data = np.fromfile(os.fspath(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if image is None:
        return None
    if image.ndim == 3:  # BGR(A) -> RGB; slicing works for every depth (cvtColor has no float64)
        image = np.ascontiguousarray(image[:, :, 2::-1])
    return image
