"""Persistent instance ids across frames: mask-IoU association with constant-velocity prediction.

Each frame's instances are matched to the live tracks by the IoU between the
instance's mask and the track's last mask shifted by the track's velocity
(pixels per second, from box-centre motion); greedy, best IoU first, pairs
below ``iou_threshold`` never match (and, with ``match_label``, pairs whose
labels differ never match). Instances carrying a ``key`` (a persistent prompt)
keep the track of that key whatever the IoU.

* A new instance starts a new track with a new id; ids start at 1 and are
  never reused, so an id that disappeared never comes back on another object.
* A track ends when a processed frame does not match it and it has not been matched for
  more than ``lifetime`` seconds; until then it can be matched again (an object hidden for a
  few frames keeps its id). Matching comes first: the time between two processed frames is
  never "unseen" time, so a slow pipeline (CPU everything mode, ~2 s per frame) keeps ids.
  The velocity prediction spans the whole gap (constant velocity): at a steady slow rate the
  velocity is measured over gaps of the same length, so it predicts the next one.
* A track is reported (``track_id != 0``) from its ``min_hits``-th hit on; before
  that its instances get 0 ("tentative").
* Partial occlusion: an instance much smaller than a track (< :data:`PARTIAL_AREA` of
  its area) that lies almost entirely (>= :data:`PARTIAL_INSIDE`) inside the track's
  predicted mask continues that track even below ``iou_threshold`` (ranked after
  every ordinary match); the track keeps its full mask and velocity, moved on by
  the prediction, so the object is recognised when it re-emerges.

Masks are kept cropped to their box, so the cost per pair is the overlap area,
not the frame size. Before any mask is compared, :func:`candidate_pairs` rules out,
for all instance x track pairs at once in numpy, every pair whose boxes cannot give a
match (no overlap, or too little to reach the threshold); the ids are the same as
comparing every pair (pinned by test/robot/test_tracking_equivalence.py), at a cost of
~30 ms for 1,000 instances against ~1,500 tracks instead of seconds
(``python -m ovsam_ros.benchmark.tracker_scaling``). Pure numpy, no ROS.
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
    # Called once per candidate pair: plain comparisons instead of max()/min() calls.
    ac, bc = a.crop, b.crop
    (ah, aw), (bh, bw) = ac.shape, bc.shape
    ax, ay, bx, by = a.x + dx, a.y + dy, b.x, b.y
    x0, y0 = (ax if ax > bx else bx), (ay if ay > by else by)
    x1 = ax + aw if ax + aw < bx + bw else bx + bw
    y1 = ay + ah if ay + ah < by + bh else by + bh
    if x1 <= x0 or y1 <= y0:
        return 0
    return int(np.count_nonzero(ac[y0 - ay:y1 - ay, x0 - ax:x1 - ax] & bc[y0 - by:y1 - by, x0 - bx:x1 - bx]))


def shifted_iou(a: CroppedMask, b: CroppedMask, dx: int = 0, dy: int = 0) -> float:
    """IoU of mask ``a`` moved by (dx, dy) pixels and mask ``b``."""
    area_a, area_b = a.area, b.area
    if area_a == 0 or area_b == 0:
        return 0.0
    inter = shifted_intersection(a, b, dx, dy)
    return inter / float(area_a + area_b - inter)


PARTIAL_AREA = 0.7  # an instance below this fraction of a track's area may be a partly hidden view of it
PARTIAL_INSIDE = 0.85  # ... when at least this fraction of it lies inside the track's predicted mask

#: Pairs whose boxes are compared in one numpy block: bounds the temporary arrays (a few of this
#: many elements) whatever the instance and track counts.
PAIR_BLOCK = 1 << 18
_FAR = 1 << 40
_CLAMP32 = (1 << 31) - 1


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


def _boxes(masks: Sequence[CroppedMask], shifts: Optional[Sequence[tuple[int, int]]] = None) -> np.ndarray:
    """(N, 5) int64: x0, y0, x1, y1 (exclusive) of each crop, moved by its shift, and its pixel count."""
    out = np.array([(m.x, m.y, m.crop.shape[1], m.crop.shape[0], m.area) for m in masks], np.int64).reshape(-1, 5)
    if shifts is not None:
        # A shift beyond 2**40 px overlaps nothing either way; clamped, it fits int64 arithmetic.
        out[:, :2] += np.array([(max(-_FAR, min(_FAR, dx)), max(-_FAR, min(_FAR, dy))) for dx, dy in shifts],
                               np.int64).reshape(-1, 2)
    out[:, 2:4] += out[:, :2]
    return out


def candidate_pairs(observations: Sequence[Observation], tracks: Sequence[Track],
                    shifts: Sequence[tuple[int, int]], config: TrackerConfig) -> list[tuple[int, int]]:
    """The (observation, track) index pairs that may match, row-major; every other pair cannot.

    A pair is ruled out, for all pairs at once in numpy, when its boxes (the track's moved by its
    shift) do not overlap, when its labels differ (``match_label``), or when even an intersection
    as large as the box overlap (and both areas) allows could not reach ``iou_threshold`` nor make
    a partial view. These are upper bounds, so no pair that :meth:`InstanceTracker.update` would
    accept is ever dropped; the surviving pairs get the exact mask comparison.
    """
    if not observations or not tracks:
        return []
    ob, tb = _boxes([o.mask for o in observations]), _boxes([t.mask for t in tracks], shifts)
    ol = tl = None
    if config.match_label:
        try:  # labels as integer codes (update() still compares the survivors with !=)
            codes: dict = {}
            ol = np.array([codes.setdefault(o.label, len(codes)) for o in observations])
            tl = np.array([codes.setdefault(t.label, len(codes)) for t in tracks])
        except TypeError:  # an unhashable label: no label pre-filter
            ol = tl = None
    out: list[tuple[int, int]] = []
    # The all-pairs box test runs on int32 copies (half the memory traffic of int64): clamping keeps
    # a < b as a <= b, so the test below passes every overlapping pair (and touching ones, which the
    # exact int64 test after it removes).
    o32 = np.ascontiguousarray(np.clip(ob[:, :4], -_CLAMP32, _CLAMP32).T, np.int32)[:, :, None]  # (4, N, 1)
    t32 = np.ascontiguousarray(np.clip(tb[:, :4], -_CLAMP32, _CLAMP32).T, np.int32)[:, None, :]  # (4, 1, M)
    block = max(1, PAIR_BLOCK // len(tracks))
    for start in range(0, len(ob), block):
        o = ob[start:start + block]
        ox0, oy0, ox1, oy1 = o32[:, start:start + block]
        overlap = ox0 <= t32[2]
        overlap &= t32[0] <= ox1
        overlap &= oy0 <= t32[3]
        overlap &= t32[1] <= oy1
        r, c = np.divmod(np.flatnonzero(overlap), len(tracks))
        if r.size == 0:
            continue
        width = np.minimum(o[r, 2], tb[c, 2]) - np.maximum(o[r, 0], tb[c, 0])
        height = np.minimum(o[r, 3], tb[c, 3]) - np.maximum(o[r, 1], tb[c, 1])
        area_o, area_t = o[r, 4], tb[c, 4]
        # The intersection can exceed neither the box overlap nor either area.
        inter = np.minimum(np.minimum(np.clip(height, 0, None) * width, area_o), area_t)
        keep = inter > 0  # (so both areas are > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            # IoU grows with the intersection, so the bound's IoU bounds the pair's (a tiny slack: the
            # exact test decides).
            ordinary = inter / (area_o + area_t - inter) >= config.iou_threshold - 1e-9
            partial = (area_o < PARTIAL_AREA * area_t) & (inter / area_o >= PARTIAL_INSIDE - 1e-9)
        keep &= ordinary | partial
        if ol is not None:
            keep &= ol[r + start] == tl[c]
        out.extend(zip((r[keep] + start).tolist(), c[keep].tolist()))
    return out


@dataclass
class InstanceTracker:
    config: TrackerConfig = field(default_factory=TrackerConfig)
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1
    last_time: Optional[float] = None
    last_pairs_checked: int = 0  # mask comparisons in the last update (the rest ruled out by their boxes)

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
        # No expiry here: a track last seen > lifetime ago (frames that far apart) may match first.
        assigned: dict[int, Track] = {}
        # 1. Keyed observations (persistent prompts) keep their key's track (the oldest free one).
        by_key: dict[Hashable, list[Track]] = {}
        for tr in reversed(self.tracks):
            if tr.key is not None:
                by_key.setdefault(tr.key, []).append(tr)  # oldest last: pop() takes it
        for i, obs in enumerate(observations):
            if obs.key is not None and by_key.get(obs.key):
                assigned[i] = by_key[obs.key].pop()
        taken_by_key = {id(tr) for tr in assigned.values()}
        free = [tr for tr in self.tracks if id(tr) not in taken_by_key]
        # 2. The rest by shifted-mask IoU, best pair first; partial (occluded) views after those. Only
        # pairs whose boxes could give a match get a mask comparison (see candidate_pairs).
        rows = [i for i, obs in enumerate(observations) if i not in assigned and obs.key is None]
        cols = [j for j, tr in enumerate(free) if tr.key is None]
        shifts = {j: free[j].shift_at(t) for j in cols}
        pairs = []
        candidates = candidate_pairs([observations[i] for i in rows], [free[j] for j in cols],
                                     [shifts[j] for j in cols], cfg)
        self.last_pairs_checked = len(candidates)
        for r, c in candidates:
            i, j = rows[r], cols[c]
            obs, tr = observations[i], free[j]
            if cfg.match_label and tr.label != obs.label:
                continue
            inter = shifted_intersection(tr.mask, obs.mask, *shifts[j])
            area_tr, area_obs = tr.mask.area, obs.mask.area
            iou = inter / float(area_tr + area_obs - inter)  # = shifted_iou (both areas > 0 here)
            if iou >= cfg.iou_threshold and iou > 0.0:
                pairs.append((-1, -iou, i, j))  # stored as the sort key: best first, then i, j
            elif 0 < area_obs < PARTIAL_AREA * area_tr:
                inside = inter / area_obs
                if inside >= PARTIAL_INSIDE:
                    pairs.append((0, -inside, i, j))  # ranked after every ordinary match
        taken: set[int] = set()
        partial: set[int] = set()
        for rank, _, i, j in sorted(pairs):
            if i in assigned or j in taken:
                continue
            assigned[i] = free[j]
            taken.add(j)
            if rank == 0:
                partial.add(i)
        # 3. Update matched tracks, start new ones.
        ids = []
        seen = {id(tr) for tr in assigned.values()}
        for i, obs in enumerate(observations):
            tr = assigned.get(i)
            if tr is None:
                tr = Track(self.next_id, obs.mask, obs.label, obs.key, t)
                self.next_id += 1
                self.tracks.append(tr)
                seen.add(id(tr))
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
        # 4. End the tracks this frame did not see that were last seen more than lifetime ago.
        self.tracks = [tr for tr in self.tracks if id(tr) in seen or self.last_time - tr.last_seen <= cfg.lifetime]
        return ids

    @property
    def live_ids(self) -> list[int]:
        return [tr.id for tr in self.tracks]


def track_id_pixel(track_id: int) -> int:
    """A track id as a mono16 pixel value 1..65535 (ids above 65535 wrap; 0 stays 'none')."""
    return 0 if track_id <= 0 else (track_id - 1) % 65535 + 1
