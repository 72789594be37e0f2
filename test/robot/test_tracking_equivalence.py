"""The tracker's box pre-filter changes its cost, never its ids: pinned against a brute-force reference.

The reference below re-implements the matching rules of :mod:`ovsam_ros.robot.tracking` (its docstring)
in the most direct way: masks as sets of (x, y) pixels, every instance compared with every track, no
crops, no boxes, no numpy. Random scenes with many overlapping, nested, moving, hidden, partly hidden,
keyed, labelled and empty masks run through both for several frames; the ids must be the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from ovsam_ros.robot import tracking
from ovsam_ros.robot.tracking import (PARTIAL_AREA, PARTIAL_INSIDE, CroppedMask, InstanceTracker, Observation,
                                      TrackerConfig)

H, W = 90, 120


# ----------------------------------------------------------------------------- the reference matcher
@dataclass
class RefTrack:
    id: int
    pixels: frozenset  # {(x, y)}
    label: object
    key: object
    last_seen: float
    hits: int = 1
    velocity: tuple = (0.0, 0.0)

    def shift(self, t):
        dt = max(0.0, t - self.last_seen)
        return int(round(self.velocity[0] * dt)), int(round(self.velocity[1] * dt))


def moved(pixels, dx, dy):
    return frozenset((x + dx, y + dy) for x, y in pixels)


def box_centre(pixels):
    xs, ys = [x for x, _ in pixels], [y for _, y in pixels]
    return (min(xs) + max(xs) + 1) / 2.0, (min(ys) + max(ys) + 1) / 2.0


class ReferenceTracker:
    def __init__(self, config):
        self.config, self.tracks, self.next_id, self.last_time = config, [], 1, None
        self.partial_matches = self.ordinary_matches = 0

    def update(self, observations, t):  # observations: [(pixels, label, key)]
        cfg = self.config
        if self.last_time is not None and t < self.last_time - max(1.0, 2.0 * cfg.lifetime):
            self.tracks, self.last_time = [], None
        self.last_time = t if self.last_time is None else max(self.last_time, t)
        assigned, free = {}, list(self.tracks)  # every track may match; expiry comes after matching
        for i, (_, _, key) in enumerate(observations):  # keyed: the first free track with that key
            if key is not None:
                for tr in free:
                    if tr.key == key:
                        assigned[i] = tr
                        free.remove(tr)
                        break
        pairs = []
        predicted_masks = [moved(tr.pixels, *tr.shift(t)) for tr in free]
        for i, (pixels, label, key) in enumerate(observations):
            if key is not None:
                continue
            for j, tr in enumerate(free):  # every instance against every track
                if tr.key is not None or (cfg.match_label and tr.label != label):
                    continue
                predicted = predicted_masks[j]
                inter = len(predicted & pixels)
                union = len(predicted | pixels)
                iou = inter / float(union) if pixels and predicted else 0.0
                if iou >= cfg.iou_threshold and iou > 0.0:
                    pairs.append((1, iou, i, j))
                elif 0 < len(pixels) < PARTIAL_AREA * len(tr.pixels) and inter / len(pixels) >= PARTIAL_INSIDE:
                    pairs.append((0, inter / len(pixels), i, j))
        taken, partial = set(), set()
        for ordinary, _, i, j in sorted(pairs, key=lambda p: (-p[0], -p[1], p[2], p[3])):
            if i not in assigned and j not in taken:
                assigned[i] = free[j]
                taken.add(j)
                if not ordinary:
                    partial.add(i)
        ids, seen = [], list(assigned.values())
        for i, (pixels, label, key) in enumerate(observations):
            tr = assigned.get(i)
            if tr is None:
                tr = RefTrack(self.next_id, pixels, label, key, t)
                self.next_id += 1
                self.tracks.append(tr)
                seen.append(tr)
            elif i in partial:
                self.partial_matches += 1
                tr.pixels = moved(tr.pixels, *tr.shift(t))
                tr.last_seen = max(tr.last_seen, t)
                tr.hits += 1
            else:
                self.ordinary_matches += key is None
                dt = t - tr.last_seen
                ratio = len(pixels) / len(tr.pixels) if tr.pixels else 0.0
                if dt > 0 and 0.8 <= ratio <= 1.25:
                    (x0, y0), (x1, y1) = box_centre(tr.pixels), box_centre(pixels)
                    measured = ((x1 - x0) / dt, (y1 - y0) / dt)
                    tr.velocity = measured if tr.hits == 1 else tuple(
                        0.5 * m + 0.5 * v for m, v in zip(measured, tr.velocity))
                if t >= tr.last_seen:
                    tr.pixels, tr.label, tr.last_seen = pixels, label, t
                tr.hits += 1
            ids.append(tr.id if tr.hits >= cfg.min_hits else 0)
        # A track ends when this frame did not see it and it was last seen more than lifetime ago.
        self.tracks = [tr for tr in self.tracks
                       if any(tr is s for s in seen) or self.last_time - tr.last_seen <= cfg.lifetime]
        return ids


# ----------------------------------------------------------------------------- random scenes
def random_scene(seed: int, frames: int = 8, objects: int = 40):
    """Frames of (time, [(full mask, label, key)]): crowded, nested, moving, some hidden or cut."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, objects)
    size = rng.integers(3, 22, (objects, 2))
    pos = rng.uniform(0, (W, H), (objects, 2))
    vel = rng.uniform(-7, 7, (objects, 2))
    label = rng.integers(0, 3, objects)
    keyed = {k: ("prompt", 0, k % 2) for k in range(3)}  # objects 0 and 2 share a key (same prompt twice)
    t = 10.0
    for _ in range(frames):
        pos += vel
        t += float(rng.choice([0.1, 0.1, 0.25, -0.05]))  # a late frame, a skipped one, an older one
        instances = []
        for k in rng.permutation(objects):
            if rng.random() < 0.12:
                continue  # hidden this frame
            mask = np.zeros((H, W), np.uint8)
            (x, y), (a, b) = pos[k].astype(int), size[k]
            if kind[k]:
                cv2.ellipse(mask, (int(x), int(y)), (int(a), int(b)), 0, 0, 360, 1, -1)
            else:
                cv2.rectangle(mask, (int(x), int(y)), (int(x + a), int(y + b)), 1, -1)
            if rng.random() < 0.15:  # partly hidden: only a strip stays visible
                mask[:, int(x) + max(1, int(a) // 3):] = 0
            elif rng.random() < 0.5:  # segmentation noise on the rim
                mask = (cv2.dilate if rng.random() < 0.5 else cv2.erode)(mask, np.ones((3, 3), np.uint8))
            lab = int(label[k]) if rng.random() > 0.1 else int(rng.integers(0, 3))  # a label that flickers
            instances.append((mask > 0, lab, keyed.get(k)))
        for _ in range(int(rng.integers(0, 3))):  # clutter: a one-off blob inside another instance
            mask = np.zeros((H, W), bool)
            x, y = rng.integers(0, W - 5), rng.integers(0, H - 5)
            mask[y:y + rng.integers(2, 12), x:x + rng.integers(2, 12)] = True
            instances.append((mask, int(rng.integers(0, 3)), None))
        if rng.random() < 0.3:
            instances.append((np.zeros((H, W), bool), 0, None))  # an empty mask
        yield t, instances


def pixel_set(mask):
    ys, xs = np.nonzero(mask)
    return frozenset(zip(xs.tolist(), ys.tolist()))


CONFIGS = [
    TrackerConfig(iou_threshold=0.3, lifetime=0.35),
    TrackerConfig(iou_threshold=0.0, lifetime=1.0),  # any overlap matches
    TrackerConfig(iou_threshold=0.6, lifetime=0.5, min_hits=2),
    TrackerConfig(iou_threshold=0.2, lifetime=0.5, match_label=True),
]


@pytest.mark.parametrize("config, pair_block", [(c, None) for c in CONFIGS] + [(CONFIGS[0], 37)],
                         ids=["default", "any-overlap", "strict-min-hits", "match-label", "default-small-blocks"])
def test_ids_equal_the_brute_force_reference_on_crowded_random_scenes(config, pair_block, monkeypatch):
    if pair_block:  # many numpy blocks of pairs (one instance each) instead of one
        monkeypatch.setattr(tracking, "PAIR_BLOCK", pair_block)
    partial = ordinary = checked = all_pairs = 0
    for seed in range(3):
        tracker, reference = InstanceTracker(config), ReferenceTracker(config)
        for frame, (t, instances) in enumerate(random_scene(seed)):
            free_tracks = len(tracker.tracks)
            ids = tracker.update([Observation(CroppedMask.from_full(m), lab, key) for m, lab, key in instances], t)
            expected = reference.update([(pixel_set(m), lab, key) for m, lab, key in instances], t)
            assert ids == expected, f"seed {seed} frame {frame}"
            assert tracker.next_id == reference.next_id
            checked += tracker.last_pairs_checked
            all_pairs += len(instances) * free_tracks
        partial += reference.partial_matches
        ordinary += reference.ordinary_matches
    # The scenes exercise what they should: partial views, many ordinary matches, and a pre-filter
    # that ruled most pairs out (so the equality above is about it, not about a brute-force path).
    assert ordinary >= 100
    assert partial >= 3 or config.iou_threshold == 0.0  # with 0, any overlap is an ordinary match
    assert checked < all_pairs / 5


def test_odd_labels_gate_matches_exactly_like_the_reference():
    """match_label compares labels with ``!=``: a NaN label matches nothing (NaN != NaN, although one
    NaN object is one dict key), an unhashable label still works."""
    nan = float("nan")
    config = TrackerConfig(match_label=True)
    tracker, reference = InstanceTracker(config), ReferenceTracker(config)
    masks = [np.zeros((H, W), bool) for _ in range(3)]
    for k, mask in enumerate(masks):
        mask[10 + 20 * k:25 + 20 * k, 10:30] = True
    for frame in range(3):
        labels = [nan, [1, 2], "cup"]
        ids = tracker.update([Observation(CroppedMask.from_full(m), lab) for m, lab in zip(masks, labels)], frame * 0.1)
        assert ids == reference.update([(pixel_set(m), lab, None) for m, lab in zip(masks, labels)], frame * 0.1)
    assert ids[1:] == [2, 3] and ids[0] == 5  # the NaN-labelled mask got a new id each frame (1, 4, 5)
