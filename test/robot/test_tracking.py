"""Track ids against known ground truth: a synthetic camera moving known shapes across frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ovsam_ros.robot.tracking import (CroppedMask, InstanceTracker, Observation, TrackerConfig, shifted_iou,
                                      track_id_pixel)

H, W, FPS = 240, 320, 10.0


def shape_mask(kind: str, x: float, y: float, size: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    if kind == "disc":
        cv2.circle(mask, (int(x), int(y)), size, 1, -1)
    elif kind == "square":
        cv2.rectangle(mask, (int(x), int(y)), (int(x) + size, int(y) + size), 1, -1)
    else:
        pts = np.array([[x, y], [x - size, y + 1.5 * size], [x + size, y + 1.5 * size]], np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


# name: (kind, start x, start y, vx px/frame, vy px/frame, size, frames visible)
SCENE = {
    "disc": ("disc", 40, 60, 7, 0, 22, set(range(30)) - {12, 13, 14, 15}),  # hidden 0.4 s
    "square": ("square", 260, 150, -6, 0, 40, set(range(30))),
    "triangle": ("triangle", 160, 20, 0, 3, 20, set(range(18))),  # removed for good at frame 18
    "fast": ("square", 5, 195, 11, 0, 24, set(range(26))),  # moves almost half its size per frame
}


def frame_masks(i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    masks = {}
    for name, (kind, x, y, vx, vy, size, visible) in SCENE.items():
        if i in visible:
            mask = shape_mask(kind, x + vx * i, y + vy * i, size)
            # Segmentation noise: the rim grows or shrinks by a pixel from frame to frame.
            op = rng.integers(3)
            if op:
                mask = (cv2.dilate if op == 1 else cv2.erode)(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            masks[name] = mask
    if i >= 25:  # a new object where the triangle was last seen, after the triangle's track expired
        masks["newcomer"] = shape_mask("triangle", 160, 20 + 3 * 17, 20)
    return masks


def run_scene(config: TrackerConfig, frames: int = 30, seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    tracker = InstanceTracker(config)
    seen: dict[str, list[tuple[int, int]]] = {}
    for i in range(frames):
        masks = frame_masks(i, rng)
        names = list(masks)
        rng.shuffle(names)  # instance order changes from frame to frame (as everything mode's does)
        ids = tracker.update([Observation(CroppedMask.from_full(masks[n])) for n in names], t=100.0 + i / FPS)
        for name, track_id in zip(names, ids):
            seen.setdefault(name, []).append((i, track_id))
    return seen


def test_ids_stay_with_their_shapes_for_20_plus_frames_and_are_never_reused():
    seen = run_scene(TrackerConfig(iou_threshold=0.3, lifetime=0.5))
    ids = {name: {t for _, t in frames} for name, frames in seen.items()}
    for name in ("disc", "square", "fast"):
        assert len(seen[name]) >= 20
        assert len(ids[name]) == 1, f"{name} changed id: {seen[name]}"
    assert len(ids["triangle"]) == 1 and len(seen["triangle"]) == 18
    # Every object its own id, and the newcomer (where the expired triangle was) a fresh one.
    one_each = [next(iter(ids[name])) for name in ("disc", "square", "triangle", "fast")]
    assert len(set(one_each)) == 4
    assert ids["newcomer"] == {5}, "a new object must get a new id, never the expired triangle's"
    # The disc was hidden for 4 frames (0.4 s < lifetime): same id before and after.
    assert {i for i, _ in seen["disc"]} & {11, 16} == {11, 16}


def test_recovering_the_hidden_disc_needs_the_velocity_prediction(monkeypatch):
    """The disc moves 35 px while hidden (its diameter is 45): without prediction it would get a new id."""
    from ovsam_ros.robot import tracking

    monkeypatch.setattr(tracking.Track, "shift_at", lambda self, t: (0, 0))
    seen = run_scene(TrackerConfig(iou_threshold=0.3, lifetime=0.5))
    before = {t for i, t in seen["disc"] if i < 12}
    after = {t for i, t in seen["disc"] if i > 15}
    assert len(before) == 1 and len(after) == 1 and before != after


def test_shifted_iou_hand_computed():
    a = CroppedMask(np.ones((10, 10), bool), 0, 0)
    b = CroppedMask(np.ones((10, 10), bool), 5, 0)
    assert shifted_iou(a, b) == pytest.approx(50 / 150)
    assert shifted_iou(a, b, dx=5) == 1.0
    assert shifted_iou(a, b, dx=-20) == 0.0
    assert shifted_iou(a, CroppedMask(np.zeros((0, 0), bool), 0, 0)) == 0.0


def test_min_hits_hides_tentative_tracks_and_labels_can_gate_matches():
    mask = CroppedMask(np.ones((8, 8), bool), 10, 10)
    tracker = InstanceTracker(TrackerConfig(min_hits=3))
    assert [tracker.update([Observation(mask)], t) for t in (0.0, 0.1, 0.2)] == [[0], [0], [1]]
    gated = InstanceTracker(TrackerConfig(match_label=True))
    first = gated.update([Observation(mask, label=3)], 0.0)
    second = gated.update([Observation(mask, label=7)], 0.1)
    assert first != second  # same pixels, another label: another object


def test_keyed_observations_keep_their_track_even_when_the_mask_jumps():
    tracker = InstanceTracker()
    a = tracker.update([Observation(CroppedMask(np.ones((5, 5), bool), 0, 0), key=("prompt", 1, 0))], 0.0)
    b = tracker.update([Observation(CroppedMask(np.ones((5, 5), bool), 200, 100), key=("prompt", 1, 0))], 0.1)
    assert a == b == [1]


def test_lifetime_expiry_and_time_jumps():
    mask = CroppedMask(np.ones((8, 8), bool), 10, 10)
    tracker = InstanceTracker(TrackerConfig(lifetime=1.0))
    assert tracker.update([Observation(mask)], 10.0) == [1]
    assert tracker.update([Observation(mask)], 10.9) == [1]
    assert tracker.update([], 12.0) == [] and tracker.live_ids == []
    assert tracker.update([Observation(mask)], 12.1) == [2]
    # A slightly older frame (a stamped prompt's) still matches; a big jump back starts over with new ids.
    assert tracker.update([Observation(mask)], 12.05) == [2]
    assert tracker.update([Observation(mask)], 3.0) == [3]


def test_track_id_pixel_wraps_into_mono16():
    assert [track_id_pixel(t) for t in (0, 1, 65535, 65536, 65537)] == [0, 1, 65535, 1, 2]


def test_a_partly_hidden_object_keeps_its_id_and_its_full_shape():
    """A 40x40 square slides behind an occluder: only an 8-px strip of it stays visible for 3 frames
    (IoU with the full square 0.2), then it comes out again, moved on as predicted."""
    tracker = InstanceTracker(TrackerConfig(iou_threshold=0.3))

    def square(x, visible_width=40):
        full = np.zeros((100, 200), bool)
        full[30:70, x:x + visible_width] = True
        return CroppedMask.from_full(full)

    ids = [tracker.update([Observation(square(10 + 5 * i))], t=i * 0.1)[0] for i in range(3)]
    ids += [tracker.update([Observation(square(10 + 5 * i, visible_width=8))], t=i * 0.1)[0] for i in range(3, 6)]
    assert shifted_iou(square(25), square(25, visible_width=8)) < 0.3
    ids += [tracker.update([Observation(square(10 + 5 * i))], t=i * 0.1)[0] for i in range(6, 9)]
    assert ids == [1] * 9
    assert tracker.tracks[0].velocity == pytest.approx((50.0, 0.0))  # not thrown off by the strip


def test_cropped_mask_area_counts_the_current_crop():
    rng = np.random.default_rng(1)
    crop = rng.random((30, 40)) < 0.3
    mask = CroppedMask(crop, 2, 3)
    assert mask.area == sum(bool(v) for v in crop.ravel())  # counted by hand
    mask.crop = np.ones((2, 5), bool)  # a replaced crop is counted again, not the cached count
    assert mask.area == 10
    assert CroppedMask(np.zeros((0, 0), bool), 0, 0).area == 0


# Frames processed more than track_lifetime apart (CPU everything mode: ~2 s per frame). Before, the gap
# between two processed frames counted as "unseen": every frame expired every track before matching.
def square_at(x: int, y: int = 40, size: int = 40) -> CroppedMask:
    return CroppedMask(np.ones((size, size), bool), x, y)


def test_frames_two_seconds_apart_keep_the_ids_of_objects_seen_in_every_frame():
    tracker = InstanceTracker(TrackerConfig(lifetime=1.0))
    rng = np.random.default_rng(3)
    ids = []
    for i in range(5):
        masks = [square_at(20), square_at(150), square_at(260, size=30)]
        order = rng.permutation(3)  # instance order changes from frame to frame
        got = tracker.update([Observation(masks[k]) for k in order], t=50.0 + 2.0 * i)
        ids.append([got[list(order).index(k)] for k in range(3)])
    assert ids == [ids[0]] * 5 and sorted(ids[0]) == [1, 2, 3]
    assert sorted(tracker.live_ids) == [1, 2, 3]


def test_keyed_tracks_keep_their_id_across_long_gaps():
    tracker = InstanceTracker(TrackerConfig(lifetime=1.0))
    keys = [("prompt", 0, 0), ("prompt", 0, 1)]
    ids = [tracker.update([Observation(square_at(20 + 7 * i), key=k) for k in keys], t=2.5 * i) for i in range(4)]
    assert ids == [[1, 2]] * 4


def test_a_track_ends_only_when_a_processed_frame_misses_it_after_lifetime():
    tracker = InstanceTracker(TrackerConfig(lifetime=1.0))
    other = square_at(200)
    assert tracker.update([Observation(square_at(20)), Observation(other)], 0.0) == [1, 2]
    # Missed by a frame 0.5 s later (< lifetime): kept; back 2 s after it was last seen: same id.
    assert tracker.update([Observation(other)], 0.5) == [2]
    assert tracker.update([Observation(square_at(20)), Observation(other)], 2.0) == [1, 2]
    # Missed by a frame 2 s later (> lifetime): ended at that frame, a new id when it comes back.
    assert tracker.update([Observation(other)], 4.0) == [2] and sorted(tracker.live_ids) == [2]
    assert tracker.update([Observation(square_at(20)), Observation(other)], 4.1) == [3, 2]


def run_slow_mover(tracker: InstanceTracker) -> list[int]:
    """A 40-px square at 15 px/s: seen at 0 s and 1 s, then processed every 2 s (30 px per frame)."""
    ids = [tracker.update([Observation(square_at(x))], t)[0] for x, t in ((20, 0.0), (35, 1.0))]
    return ids + [tracker.update([Observation(square_at(35 + 30 * k))], 1.0 + 2.0 * k)[0] for k in range(1, 5)]


def test_the_velocity_prediction_spans_a_long_gap(monkeypatch):
    """Frame to frame, unshifted, the square overlaps itself by IoU 10/70 < 0.3; the constant-velocity
    prediction over the whole 2 s gap (30 px) keeps its id. Without prediction it would get new ids."""
    from ovsam_ros.robot import tracking

    assert shifted_iou(square_at(35), square_at(65)) < 0.3 <= shifted_iou(square_at(20), square_at(35))
    tracker = InstanceTracker(TrackerConfig(lifetime=1.0, iou_threshold=0.3))
    assert run_slow_mover(tracker) == [1] * 6
    assert tracker.tracks[0].velocity == pytest.approx((15.0, 0.0))
    monkeypatch.setattr(tracking.Track, "shift_at", lambda self, t: (0, 0))
    assert run_slow_mover(InstanceTracker(TrackerConfig(lifetime=1.0, iou_threshold=0.3))) == [1, 1, 2, 3, 4, 5]
