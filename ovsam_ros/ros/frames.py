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
from typing import Any, Optional

import numpy as np

from ovsam_ros.image_input import to_uint8_rgb
from ovsam_ros.ros.image_conversion import ImageConversionError, compressed_to_numpy, image_to_numpy, to_rgb


@dataclass
class Frame:
    msg: Any  # sensor_msgs/Image or sensor_msgs/CompressedImage
    compressed: bool
    received: float  # time.monotonic() at arrival
    encoded: Any = None  # the predictor's image state once encoded (kept for the newest few frames)


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


def decode_frame(msg: Any, compressed: bool) -> np.ndarray:
    """Any supported Image / CompressedImage -> (H, W, 3) uint8 RGB; ImageConversionError if unusable.

    mono and 16-bit images are converted (16-bit scaled by 1/257), alpha is
    dropped, BGR is reordered; lying ``step``/size fields and truncated or
    corrupt data raise with the reason.
    """
    if compressed:
        pixels, encoding = compressed_to_numpy(msg)
    else:
        # A view of the message's pixels where possible: to_rgb / to_uint8_rgb copy only when they convert.
        pixels, encoding = image_to_numpy(msg, copy=False), msg.encoding
    try:
        return to_uint8_rgb(to_rgb(pixels, encoding), "RGB")
    except ValueError as error:
        raise ImageConversionError(str(error)) from None


def stamp_tuple(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)


def stamp_seconds(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9
