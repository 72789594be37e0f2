"""Input frames: the newest-frame slot between the image callbacks and the worker, and decoding.

The image callbacks only store the message (no decoding, no copying of
pixels); the worker decodes the newest one. A frame that arrives while one is
still pending replaces it and counts as dropped, so the node never works
through a backlog of stale frames.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ovsam_ros.ros.image_conversion import compressed_to_numpy, image_to_numpy, to_model_rgb


@dataclass
class Frame:
    msg: Any  # sensor_msgs/Image or sensor_msgs/CompressedImage
    compressed: bool
    received: float  # time.monotonic() at arrival
    encoded: Any = None  # the predictor's image state once encoded (kept for the newest few frames)
    seq: int = 0  # arrival order (the node counts from 1): results are published in this order, never back


def frame_bytes(frame: Frame) -> int:
    """The memory a buffered frame holds: its pixel data (headers are noise next to it)."""
    return message_bytes(frame.msg)


def message_bytes(msg: Any) -> int:
    """The pixel data an Image / CompressedImage message holds."""
    data = getattr(msg, "data", b"")
    try:
        return len(data) * getattr(data, "itemsize", 1)
    except TypeError:
        return 0


class LatestFrameSlot:
    """Holds at most one pending frame; ``put`` replaces, ``take`` waits for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Optional[Frame] = None
        self._closed = False
        self._woken = False

    def put(self, frame: Frame) -> bool:
        """Store ``frame``; True if it replaced a pending (now dropped) frame."""
        with self._cond:
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[Frame]:
        """The pending frame (removing it), waiting up to ``timeout`` s; None on timeout/close."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._frame is None and not self._closed and not self._woken:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            self._woken = False
            frame, self._frame = self._frame, None
            return frame

    def wake(self) -> None:
        """Make the current (or next) ``take`` return now, with the pending frame or None."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def clear(self) -> Optional[Frame]:
        with self._cond:
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        """Wake every waiter; later ``take`` calls return the pending frame or None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._frame is not None


def decode_frame(msg: Any, compressed: bool, *, input_bits: int = 16, float_max: float = 1.0,
                 source: str = "camera image", warn: Optional[Callable[[str, str], object]] = None) -> np.ndarray:
    """Any supported Image / CompressedImage -> (H, W, 3) uint8 RGB; ImageConversionError if unusable.

    The range follows the encoding, never the pixels (:func:`ovsam_ros.image_input.to_uint8_rgb`):
    8-bit as it is, 16-bit encodings hold ``input_bits`` bits (0..2^N-1 is black..white; a 12-bit
    camera in mono16 needs ``input_bits=12``), 32FC1 is 0..``float_max``. A frame using a tiny part
    of its range is converted and reported through ``warn(source, message)``. mono is repeated to
    RGB, alpha dropped, BGR reordered; lying ``step``/size fields and truncated or corrupt data
    raise with the reason.
    """
    if compressed:
        pixels, encoding = compressed_to_numpy(msg)
    else:
        # A view of the message's pixels where possible: to_model_rgb copies only when it converts.
        pixels, encoding = image_to_numpy(msg, copy=False), msg.encoding
    return to_model_rgb(pixels, encoding, input_bits=input_bits, float_max=float_max, source=source, warn=warn)


def stamp_tuple(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)


def stamp_seconds(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9
