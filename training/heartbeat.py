"""Periodic "still working" log lines for long silent operations (a ViT-H teacher forward on
many images, a big vocabulary's text encoding): the run says what it does while it does it."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional


def duration(seconds: float) -> str:
    """``42.0 s``, ``3 min 07 s``, ``1 h 02 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Heartbeat:
    """While the ``with`` block runs, log ``message(elapsed_s)`` every ``every_s`` seconds
    (a daemon thread; nothing is logged for a block shorter than ``every_s``)."""

    def __init__(self, logger: logging.Logger, message: Callable[[float], str], every_s: float = 30.0,
                 level: int = logging.INFO) -> None:
        self.logger, self.message, self.every_s, self.level = logger, message, float(every_s), level
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = 0.0
        self.beats = 0

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beats += 1
            try:
                self.logger.log(self.level, "%s", self.message(time.perf_counter() - self._t0))
            except Exception:  # a message that cannot be built must not break the work it reports on
                pass

    def __enter__(self) -> "Heartbeat":
        self._t0 = time.perf_counter()
        if self.every_s > 0 and self.logger.isEnabledFor(self.level):
            self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
