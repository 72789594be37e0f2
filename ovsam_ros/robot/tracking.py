"""Persistent instance ids across frames: mask-IoU association with constant-velocity prediction.

Each frame's instances are matched to the live tracks by the IoU between the
instance's mask and the track's last mask shifted by the track's velocity
(pixels per second, from box-centre motion); greedy, best IoU first, pairs
below ``iou_threshold`` never match (and, with ``match_label``, pairs whose
labels differ never match). Instances carrying a ``key`` (a persistent prompt)
keep the track of that key whatever the IoU.

* A new instance starts a new track with a new id; ids start at 1 and are
  never reused, so an id that disappeared never comes back on another object.
* A track unmatched for more than ``lifetime`` seconds expires; until then it can
  be matched again (an object hidden for a few frames keeps its id).
* A track is reported (``track_id != 0``) from its ``min_hits``-th hit on; before
  that its instances get 0 ("tentative").
* Partial occlusion: an instance much smaller than a track (< :data:`PARTIAL_AREA` of
  its area) that lies almost entirely (>= :data:`PARTIAL_INSIDE`) inside the track's
  predicted mask continues that track even below ``iou_threshold`` (ranked after
  every ordinary match); the track keeps its full mask and velocity, moved on by
  the prediction, so the object is recognised when it re-emerges.

Masks are kept cropped to their box, so the cost per pair is the overlap area,
not the frame size. Pure numpy, no ROS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Optional, Sequence

import numpy as np

from ovsam_ros.results import mask_box


@dataclass(frozen=True)
class TrackerConfig:
    iou_threshold: float = 0.3
    lifetime: float = 1.0  # seconds a track survives unmatched
    min_hits: int = 1
    match_label: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in 0..1, got {self.iou_threshold}")
        if not self.lifetime >= 0.0:
            raise ValueError(f"lifetime must be >= 0 s, got {self.lifetime}")
        if self.min_hits < 1:
            raise ValueError(f"min_hits must be >= 1, got {self.min_hits}")


@dataclass
class CroppedMask:
    """A boolean mask stored as its tight crop and the crop's top-left corner."""

    crop: np.ndarray  # (h, w) bool
    x: int
    y: int

    @classmethod
    def from_full(cls, mask: np.ndarray) -> "CroppedMask":
        mask = np.asarray(mask, dtype=bool)
        x0, y0, x1, y1 = mask_box(mask)
        return cls(mask[y0:y1, x0:x1].copy(), x0, y0)

    @property
    def area(self) -> int:
        # Counted once: matching reads it several times per pair, and a 720p mask is ~1 MB of bools
        # (``sum`` would widen every element to int64 first). The crop is never modified in place.
        area = self.__dict__.get("_area")
        if area is None or area[0] is not self.crop:
            area = (self.crop, int(np.count_nonzero(self.crop)))
            self.__dict__["_area"] = area
        return area[1]

    @property
    def center(self) -> tuple[float, float]:
        h, w = self.crop.shape
        return self.x + w / 2.0, self.y + h / 2.0


def shifted_intersection(a: CroppedMask, b: CroppedMask, dx: int = 0, dy: int = 0) -> int:
    """Pixels shared by mask ``a`` moved by (dx, dy) and mask ``b``."""
    ax, ay = a.x + dx, a.y + dy
    x0, y0 = max(ax, b.x), max(ay, b.y)
    x1 = min(ax + a.crop.shape[1], b.x + b.crop.shape[1])
    y1 = min(ay + a.crop.shape[0], b.y + b.crop.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0
    return int(np.count_nonzero(a.crop[y0 - ay:y1 - ay, x0 - ax:x1 - ax] & b.crop[y0 - b.y:y1 - b.y, x0 - b.x:x1 - b.x]))


def shifted_iou(a: CroppedMask, b: CroppedMask, dx: int = 0, dy: int = 0) -> float:
    """IoU of mask ``a`` moved by (dx, dy) pixels and mask ``b``."""
    area_a, area_b = a.area, b.area
    if area_a == 0 or area_b == 0:
        return 0.0
    inter = shifted_intersection(a, b, dx, dy)
    return inter / float(area_a + area_b - inter)


PARTIAL_AREA = 0.7  # an instance below this fraction of a track's area may be a partly hidden view of it
PARTIAL_INSIDE = 0.85  # ... when at least this fraction of it lies inside the track's predicted mask


@dataclass
class Observation:
    """One instance of the current frame."""

    mask: CroppedMask
    label: Hashable = None  # compared only with match_label
    key: Optional[Hashable] = None  # e.g. ("prompt", generation, index): same key -> same track


@dataclass
class Track:
    id: int
    mask: CroppedMask
    label: Hashable
    key: Optional[Hashable]
    last_seen: float
    hits: int = 1
    velocity: tuple[float, float] = (0.0, 0.0)  # pixels / second

    def shift_at(self, t: float) -> tuple[int, int]:
        dt = max(0.0, t - self.last_seen)
        return int(round(self.velocity[0] * dt)), int(round(self.velocity[1] * dt))


@dataclass
class InstanceTracker:
    config: TrackerConfig = field(default_factory=TrackerConfig)
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1
    last_time: Optional[float] = None

    def reset(self) -> None:
        """Forget every track (ids keep counting up: an old id is never handed out again)."""
        self.tracks = []
        self.last_time = None

    def update(self, observations: Sequence[Observation], t: float) -> list[int]:
        """Associate this frame's instances (time ``t`` in seconds); their track ids (0 = tentative)."""
        cfg = self.config
        if self.last_time is not None and t < self.last_time - max(1.0, 2.0 * cfg.lifetime):
            # Time jumped back (bag loop, sim reset): motion and lifetimes are meaningless. A slightly
            # older frame is fine: stamped prompts may run on a frame from a moment ago.
            self.reset()
        self.last_time = t if self.last_time is None else max(self.last_time, t)
        self.tracks = [tr for tr in self.tracks if self.last_time - tr.last_seen <= cfg.lifetime]
        assigned: dict[int, Track] = {}
        free = list(self.tracks)
        # 1. Keyed observations (persistent prompts) keep their key's track.
        for i, obs in enumerate(observations):
            if obs.key is None:
                continue
            for tr in free:
                if tr.key == obs.key:
                    assigned[i] = tr
                    free.remove(tr)
                    break
        # 2. The rest by shifted-mask IoU, best pair first; partial (occluded) views after those.
        pairs = []
        for i, obs in enumerate(observations):
            if i in assigned or obs.key is not None:
                continue
            for j, tr in enumerate(free):
                if tr.key is not None or (cfg.match_label and tr.label != obs.label):
                    continue
                shift = tr.shift_at(t)
                iou = shifted_iou(tr.mask, obs.mask, *shift)
                if iou >= cfg.iou_threshold and iou > 0.0:
                    pairs.append((1, iou, i, j))
                elif 0 < obs.mask.area < PARTIAL_AREA * tr.mask.area:
                    inside = shifted_intersection(tr.mask, obs.mask, *shift) / obs.mask.area
                    if inside >= PARTIAL_INSIDE:
                        pairs.append((0, inside, i, j))  # ranked after every ordinary match
        taken: set[int] = set()
        partial: set[int] = set()
        for ordinary, _, i, j in sorted(pairs, key=lambda p: (-p[0], -p[1], p[2], p[3])):
            if i in assigned or j in taken:
                continue
            assigned[i] = free[j]
            taken.add(j)
            if not ordinary:
                partial.add(i)
        # 3. Update matched tracks, start new ones.
        ids = []
        for i, obs in enumerate(observations):
            tr = assigned.get(i)
            if tr is None:
                tr = Track(self.next_id, obs.mask, obs.label, obs.key, t)
                self.next_id += 1
                self.tracks.append(tr)
            elif i in partial:
                # A partly hidden view: keep the full mask, moved on by the prediction; keep the velocity.
                dx, dy = tr.shift_at(t)
                tr.mask = CroppedMask(tr.mask.crop, tr.mask.x + dx, tr.mask.y + dy)
                tr.last_seen = max(tr.last_seen, t)
                tr.hits += 1
            else:
                dt = t - tr.last_seen
                ratio = obs.mask.area / tr.mask.area if tr.mask.area else 0.0
                # Box-centre motion means motion only while the shape stays the same size (not while
                # it is being covered or uncovered).
                if dt > 0 and 0.8 <= ratio <= 1.25:
                    (x0, y0), (x1, y1) = tr.mask.center, obs.mask.center
                    measured = ((x1 - x0) / dt, (y1 - y0) / dt)
                    # Smooth: one bad mask should not throw the prediction far off.
                    tr.velocity = measured if tr.hits == 1 else tuple(
                        0.5 * m + 0.5 * v for m, v in zip(measured, tr.velocity))
                if t >= tr.last_seen:  # an older frame does not roll the track back
                    tr.mask, tr.label, tr.last_seen = obs.mask, obs.label, t
                tr.hits += 1
            ids.append(tr.id if tr.hits >= cfg.min_hits else 0)
        return ids

    @property
    def live_ids(self) -> list[int]:
        return [tr.id for tr in self.tracks]


def track_id_pixel(track_id: int) -> int:
    """A track id as a mono16 pixel value 1..65535 (ids above 65535 wrap; 0 stays 'none')."""
    return 0 if track_id <= 0 else (track_id - 1) % 65535 + 1
