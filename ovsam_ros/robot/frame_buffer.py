"""A ring buffer of recent frames keyed by ``(frame_id, stamp)``, and stamp matching.

A detector answers tens of milliseconds after the frame it looked at; its boxes
belong to THAT frame, not to whatever frame is newest when they arrive. The node
keeps the last few frames here and looks up the one a stamped prompt names.

Stamps are integer nanoseconds (``sec * 10**9 + nanosec``) so equality is exact.
``frame_id`` "" in a lookup matches any camera. Entries leave the buffer, oldest
first, when it holds more than ``capacity`` entries, more than ``max_bytes`` (with a
``size_of`` function; the newest entry always stays, so one frame larger than the
budget is still usable), or when they are older than ``max_age`` seconds by the
receive clock (monotonic). Age is checked on every push and lookup and by
:meth:`StampedBuffer.expire` (the node calls it from a timer), so a burst of large
frames does not stay in memory until the next stamped prompt.

:meth:`StampedBuffer.find` says what happened, so the caller can count it:

* ``matched``: an entry within ``tolerance`` of the stamp (nearest one);
* ``pending``: the stamp is newer than every buffered entry of that camera, or nothing of
  that camera is buffered, and the request (``requested``) is younger than ``max_age``: the
  frame may still be on its way; ask again. Once the request is ``max_age`` old: ``missing``;
* ``expired``: the stamp is older than the oldest buffered entry (it left the buffer);
* ``missing``: inside the buffered range but no entry within tolerance (the frame
  never reached us, e.g. dropped by best-effort DDS, or the stamp was made up);
* ``empty``: nothing buffered for that camera, for a lookup without ``requested`` (the depth
  pairing, which has its own short wait for an image newer than every buffered one).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")

MATCHED, PENDING, EXPIRED, MISSING, EMPTY = "matched", "pending", "expired", "missing", "empty"


def stamp_ns(sec: int, nanosec: int) -> int:
    return int(sec) * 1_000_000_000 + int(nanosec)


def header_stamp_ns(header) -> int:
    """``std_msgs/Header``-shaped object -> integer nanoseconds."""
    return stamp_ns(header.stamp.sec, header.stamp.nanosec)


@dataclass
class Entry(Generic[T]):
    stamp: int  # ns
    frame_id: str
    item: T
    received: float  # monotonic seconds


@dataclass
class Lookup(Generic[T]):
    status: str  # MATCHED | PENDING | EXPIRED | MISSING | EMPTY
    entry: Optional[Entry[T]] = None  # the match (MATCHED only)
    offset_ns: int = 0  # entry.stamp - requested stamp (MATCHED only)
    detail: str = ""  # human-readable reason for anything but MATCHED


class StampedBuffer(Generic[T]):
    """Thread-safe bounded buffer of stamped items (frames, depth images, ...)."""

    def __init__(self, capacity: int = 30, max_age: float = 2.0, max_bytes: Optional[int] = None,
                 size_of: Optional[Callable[[T], int]] = None) -> None:
        _check_limits(capacity, max_age, max_bytes)
        self.capacity, self.max_age = int(capacity), float(max_age)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._size_of = size_of
        self._entries: deque[Entry[T]] = deque()
        self._sizes: deque[int] = deque()  # bytes of each entry (0 without size_of)
        self._bytes = 0
        self._lock = threading.Lock()

    def configure(self, capacity: int, max_age: float, max_bytes: Optional[int] = None) -> None:
        """Change the limits (parameters changed at runtime); trims at once."""
        _check_limits(capacity, max_age, max_bytes)
        with self._lock:
            self.capacity, self.max_age = int(capacity), float(max_age)
            self.max_bytes = None if max_bytes is None else int(max_bytes)
            self._trim()

    def push(self, stamp: int, frame_id: str, item: T, received: float) -> None:
        """Add an item; entries are kept in arrival order (stamps may arrive out of order).
        Entries older than ``max_age`` at ``received`` leave now, not at the next lookup."""
        size = int(self._size_of(item)) if self._size_of is not None else 0
        with self._lock:
            self._entries.append(Entry(int(stamp), frame_id, item, float(received)))
            self._sizes.append(size)
            self._bytes += size
            self._expire(float(received))
            self._trim()

    def expire(self, now: float) -> int:
        """Drop entries older than ``max_age`` at ``now`` (monotonic s); how many left."""
        with self._lock:
            before = len(self._entries)
            self._expire(now)
            return before - len(self._entries)

    def _pop_oldest(self) -> None:
        self._entries.popleft()
        self._bytes -= self._sizes.popleft()

    def _trim(self) -> None:
        while len(self._entries) > self.capacity:
            self._pop_oldest()
        if self.max_bytes is not None:
            while len(self._entries) > 1 and self._bytes > self.max_bytes:
                self._pop_oldest()

    def _expire(self, now: float) -> None:
        while self._entries and now - self._entries[0].received > self.max_age:
            self._pop_oldest()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held, as ``size_of`` counts them (0 without it)."""
        with self._lock:
            return self._bytes

    def entries(self) -> list[Entry[T]]:
        """A copy of the entries, oldest first."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._bytes = 0

    def newest(self, frame_id: str = "", now: Optional[float] = None) -> Optional[Entry[T]]:
        """The most recently received entry (of camera ``frame_id`` unless "")."""
        with self._lock:
            if now is not None:
                self._expire(now)
            for entry in reversed(self._entries):
                if not frame_id or entry.frame_id == frame_id:
                    return entry
            return None

    def find(self, stamp: int, frame_id: str, tolerance_ns: int, now: float,
             requested: Optional[float] = None) -> Lookup[T]:
        """The entry nearest ``stamp`` within ``tolerance_ns``, or why there is none.

        ``requested``: when the request was made (monotonic); a request for a
        stamp newer than everything buffered, or made while nothing of that camera
        is buffered, stays PENDING until it is ``max_age`` old, then MISSING.
        """
        with self._lock:
            self._expire(now)
            entries = [e for e in self._entries if not frame_id or e.frame_id == frame_id]
        camera = f"camera {frame_id!r}" if frame_id else "any camera"
        if not entries:
            if requested is None:
                return Lookup(EMPTY, detail=f"no frame of {camera} is buffered")
            # A request that can wait: its frame may still come (a slow or triggered camera, a pause
            # longer than max_age), as for a stamp newer than every buffered frame.
            if now - requested < self.max_age:
                return Lookup(PENDING, detail=f"no frame of {camera} is buffered yet")
            return Lookup(MISSING, detail=f"no frame with stamp {_fmt(stamp)} s arrived within {self.max_age:g} s; "
                                         f"no frame of {camera} is buffered")
        best = min(entries, key=lambda e: abs(e.stamp - stamp))
        offset = best.stamp - stamp
        if abs(offset) <= tolerance_ns:
            return Lookup(MATCHED, best, offset)
        oldest = min(e.stamp for e in entries)
        newest = max(e.stamp for e in entries)
        span = f"buffered stamps {_fmt(oldest)}..{_fmt(newest)} s ({len(entries)} frames of {camera})"
        if stamp > newest:
            waited = 0.0 if requested is None else now - requested
            if waited < self.max_age:
                return Lookup(PENDING, detail=f"stamp {_fmt(stamp)} s is newer than every {span}")
            return Lookup(MISSING, detail=f"no frame with stamp {_fmt(stamp)} s arrived within "
                                         f"{self.max_age:g} s; {span}")
        if stamp < oldest:
            return Lookup(EXPIRED, detail=f"stamp {_fmt(stamp)} s is older than the {span}")
        return Lookup(MISSING, detail=f"no frame within {tolerance_ns / 1e6:g} ms of stamp {_fmt(stamp)} s "
                                      f"(nearest is {offset / 1e6:+.1f} ms away); {span}")


def _check_limits(capacity: int, max_age: float, max_bytes: Optional[int]) -> None:
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if not max_age > 0:
        raise ValueError(f"max_age must be > 0 seconds, got {max_age}")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 (or None for no byte limit), got {max_bytes}")


def _fmt(stamp: int) -> str:
    return f"{stamp // 1_000_000_000}.{stamp % 1_000_000_000:09d}"
