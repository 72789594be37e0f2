"""Instance masks on the wire: encode a cropped mask for a ``LabeledMask``, decode it back.

A ``LabeledMask`` carries its mask cropped to ``bbox`` (``bbox.height x bbox.width``) in the
form its ``mask_encoding`` field names; every form is lossless:

* ``coco_rle`` (the node's default): ``mask_data`` = the COCO RLE "counts" string of the crop
  (pycocotools' compressed ASCII form, column-major), size ``[bbox.height, bbox.width]``;
* ``png``: ``mask_data`` = a 1-bit greyscale PNG file of the crop (``cv::imdecode`` reads it);
* ``raw``: ``mask`` = a mono8 ``sensor_msgs/Image`` of the crop, 0 or 255 (the old form).

``decode_mask(instance, (height, width))`` gives the full-frame boolean mask whatever the
encoding; ``decode_mask_crop(instance)`` the crop alone. The decoders take rclpy messages and
rosbags' dataclasses alike, and a message without ``mask_encoding`` (recorded with the old
definition) is read as ``raw``.

Anything on the DDS domain can send anything, so decoding bounds its work by the message's
own ``bbox`` (at most :data:`MAX_MASK_PIXELS`) and checks a payload before a C decoder sees
it: pycocotools' ``rleDecode`` writes as many pixels as the runs say (a run list longer than
the box overruns its buffer) and a PNG header may claim any size.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

import numpy as np

from ovsam_ros.ros.image_conversion import MAX_PIXELS, image_to_numpy

RAW, COCO_RLE, PNG = "raw", "coco_rle", "png"
MASK_ENCODINGS = (COCO_RLE, PNG, RAW)
# Chosen by measurement (python -m ovsam_ros.benchmark.mask_encoding): the smallest and the
# fastest to encode at 720p and 1080p, 20 and 100 instances.
DEFAULT_MASK_ENCODING = COCO_RLE
MAX_MASK_PIXELS = MAX_PIXELS
# OpenCV's default PNG level; 9 saves ~25% of the bytes for ~9x the encoding time.
PNG_LEVEL = 1

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A count of at most MAX_MASK_PIXELS (2**28) needs at most 6 characters (5 bits each with
# the sign); longer values also overflow the int shifts in pycocotools' rleFrString.
_RLE_MAX_CHARS = 6


class MaskDecodeError(ValueError):
    """A ``LabeledMask``'s mask cannot be decoded; the message says why."""


def check_mask_encoding(encoding: str) -> str:
    """``encoding`` if it is one of :data:`MASK_ENCODINGS`, else a ValueError naming them."""
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"unknown mask encoding {encoding!r}; use one of {', '.join(MASK_ENCODINGS)}")
    return encoding


# ------------------------------------------------------------------------------------------ encode
def encode_crop(crop: np.ndarray, encoding: str) -> bytes:
    """The ``mask_data`` payload of a boolean crop: COCO RLE counts or PNG bytes (``raw``: the
    crop's 0/255 bytes, row-major, as the mono8 image holds them). A crop of zero area: b""."""
    check_mask_encoding(encoding)
    crop = np.asarray(crop)
    if crop.ndim != 2:
        raise ValueError(f"a mask crop must be 2-D, got shape {crop.shape}")
    if crop.size == 0:
        return b""
    pixels = np.ascontiguousarray(crop, dtype=bool).view(np.uint8)  # 0/1, no copy for a bool array
    if encoding == COCO_RLE:
        from pycocotools import mask as mask_utils

        return mask_utils.encode(np.asfortranarray(pixels))["counts"]
    if encoding == PNG:
        import cv2

        # 1-bit greyscale: libpng packs nonzero bytes as 1; decoders expand 1 back to 255.
        ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {crop.shape[1]}x{crop.shape[0]} mask as PNG")
        return buf.tobytes()
    return (pixels * np.uint8(255)).tobytes()


# ------------------------------------------------------------------------------------------ decode
def rle_counts(counts: bytes, height: int, width: int) -> np.ndarray:
    """Run lengths (int64) of a COCO RLE counts string, checked to cover ``height x width`` exactly.

    The same arithmetic as pycocotools' ``rleFrString`` (5 bits per character from '0', 0x20 =
    more characters follow, 0x10 on the last = negative, counts after the second one are deltas
    to the count two before), vectorised; raises :class:`MaskDecodeError` for any string that
    function would read past its end on, or whose runs do not cover the box exactly.
    """
    chars = np.frombuffer(bytes(counts), dtype=np.uint8)
    if chars.size == 0:
        if height * width:
            raise MaskDecodeError(f"empty COCO RLE for a {width}x{height} box")
        return np.zeros(0, np.int64)
    if chars.min() < 48 or chars.max() > 111:
        bad = int(chars[(chars < 48) | (chars > 111)][0])
        raise MaskDecodeError(f"COCO RLE counts hold byte {bad}; pycocotools writes only '0'..'o' (48..111)")
    v = chars.astype(np.int64) - 48
    more = (v & 0x20) != 0
    if more[-1]:
        raise MaskDecodeError("COCO RLE counts end inside a value (truncated)")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _RLE_MAX_CHARS:
        raise MaskDecodeError(f"COCO RLE value of {int(lengths.max())} characters (at most {_RLE_MAX_CHARS})")
    shift = 5 * (np.arange(chars.size) - np.repeat(starts, lengths))
    x = np.add.reduceat((v & 0x1F) << shift, starts)
    x = np.where((v[ends] & 0x10) != 0, x - (np.int64(1) << (5 * lengths)), x)  # sign-extend
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])  # counts[i] += counts[i - 2] for i > 2
    runs[2::2] = np.cumsum(x[2::2])
    if runs.size and runs.min() < 0:
        raise MaskDecodeError(f"COCO RLE has a negative run ({int(runs.min())})")
    total = int(runs.sum())
    if total != height * width:
        raise MaskDecodeError(f"COCO RLE runs cover {total} pixels, the {width}x{height} box {height * width}")
    return runs


def png_size(payload: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR, read before decoding."""
    if len(payload) < 33 or payload[:8] != _PNG_SIGNATURE or payload[12:16] != b"IHDR":
        raise MaskDecodeError(f"mask_data is not a PNG file ({len(payload)} bytes, starts {payload[:8]!r})")
    width, height, depth, colour = struct.unpack(">IIBB", payload[16:26])
    return width, height, depth, colour


def decode_crop(payload: bytes, encoding: str, height: int, width: int) -> np.ndarray:
    """A ``mask_data`` payload -> (height, width) bool crop; checked against the box first."""
    check_mask_encoding(encoding)
    payload = bytes(payload)
    _check_box(height, width)
    if height * width == 0:
        if payload:
            raise MaskDecodeError(f"{encoding} mask of {len(payload)} bytes for a box of zero area ({width}x{height})")
        return np.zeros((height, width), dtype=bool)
    if encoding == COCO_RLE:
        from pycocotools import mask as mask_utils

        rle_counts(payload, height, width)  # before the C decoder: it trusts the runs
        return mask_utils.decode({"size": [height, width], "counts": payload}).view(bool)
    if encoding == PNG:
        import cv2

        w, h, depth, colour = png_size(payload)
        if (h, w) != (height, width):
            raise MaskDecodeError(f"PNG mask is {w}x{h}, its box {width}x{height}")
        if colour != 0 or depth not in (1, 2, 4, 8):
            raise MaskDecodeError(f"PNG mask must be 1..8-bit greyscale (colour type 0), got colour type {colour}, "
                                  f"bit depth {depth}")
        pixels = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None or pixels.shape != (height, width):
            raise MaskDecodeError(f"OpenCV could not decode the {width}x{height} PNG mask ({len(payload)} bytes)")
        return pixels > 0
    if len(payload) != height * width:
        raise MaskDecodeError(f"raw mask of {len(payload)} bytes for a {width}x{height} box")
    return np.frombuffer(payload, np.uint8).reshape(height, width) > 0


def mask_encoding_of(instance: Any) -> str:
    """The instance's ``mask_encoding``; ``raw`` for a message of the old definition (no such field)."""
    encoding = getattr(instance, "mask_encoding", RAW)
    if encoding not in MASK_ENCODINGS:
        raise MaskDecodeError(f"LabeledMask.mask_encoding {encoding!r} is unknown; "
                              f"known: {', '.join(MASK_ENCODINGS)}")
    return encoding


def decode_mask_crop(instance: Any) -> np.ndarray:
    """A ``LabeledMask``'s mask as a (bbox.height, bbox.width) bool array, whatever its encoding."""
    box = instance.bbox
    height, width = int(box.height), int(box.width)
    encoding = mask_encoding_of(instance)
    payload = getattr(instance, "mask_data", b"")
    if encoding != RAW:
        return decode_crop(payload, encoding, height, width)
    if len(payload):
        raise MaskDecodeError(f"raw LabeledMask carries {len(payload)} bytes of mask_data (set mask_encoding)")
    _check_box(height, width)
    image = instance.mask
    if height * width == 0:
        if int(image.height) * int(image.width):
            raise MaskDecodeError(f"mask of {image.width}x{image.height} for a box of zero area ({width}x{height})")
        return np.zeros((height, width), dtype=bool)
    if (int(image.height), int(image.width)) != (height, width):
        raise MaskDecodeError(f"mask of shape ({image.height}, {image.width}) does not match its box {width}x{height}")
    if image.encoding not in ("mono8", "8UC1"):
        raise MaskDecodeError(f"raw mask must be mono8, got {image.encoding!r}")
    return image_to_numpy(image, copy=False) > 0


def decode_mask(instance: Any, image_hw: Sequence[int]) -> np.ndarray:
    """A ``LabeledMask``'s full-frame (height, width) bool mask: its crop pasted at the box.

    ``image_hw`` = (``image_height``, ``image_width``) of the parent ``LabeledMaskArray``.
    """
    height, width = (int(v) for v in image_hw)
    if height < 0 or width < 0 or height * width > MAX_MASK_PIXELS:
        raise MaskDecodeError(f"image size {width}x{height} is out of range (at most {MAX_MASK_PIXELS} pixels)")
    box = instance.bbox
    x, y, w, h = int(box.x_offset), int(box.y_offset), int(box.width), int(box.height)
    if x + w > width or y + h > height:
        raise MaskDecodeError(f"box {w}x{h} at ({x}, {y}) does not fit the {width}x{height} image")
    crop = decode_mask_crop(instance)
    full = np.zeros((height, width), dtype=bool)
    full[y : y + h, x : x + w] = crop
    return full


def decode_masks(array: Any) -> list[np.ndarray]:
    """Every instance of a ``LabeledMaskArray`` as a full-frame bool mask, in order."""
    hw = (int(array.image_height), int(array.image_width))
    return [decode_mask(instance, hw) for instance in array.instances]


def _check_box(height: int, width: int) -> None:
    if height < 0 or width < 0 or height * width > MAX_MASK_PIXELS:
        raise MaskDecodeError(f"mask box {width}x{height} is out of range (at most {MAX_MASK_PIXELS} pixels)")
