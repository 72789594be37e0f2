"""Stamp matching in the frame ring buffer: which frame a stamped prompt runs on, and why not."""

from __future__ import annotations

import pytest

from ovsam_ros.robot.frame_buffer import EMPTY, EXPIRED, MATCHED, MISSING, PENDING, StampedBuffer, stamp_ns

MS = 1_000_000


def camera_30hz(buffer: StampedBuffer, n: int, start: float = 100.0, frame_id: str = "cam") -> list[int]:
    """n frames 33.3 ms apart, each received 20 ms after its stamp (monotonic clock = stamp + 0.02)."""
    stamps = []
    for i in range(n):
        t = start + i / 30.0
        stamp = stamp_ns(int(t), round((t - int(t)) * 1e9))
        buffer.push(stamp, frame_id, f"frame{i}", received=t + 0.02)
        stamps.append(stamp)
    return stamps


def test_a_prompt_100ms_late_finds_its_frame():
    buffer = StampedBuffer(capacity=30, max_age=2.0)
    stamps = camera_30hz(buffer, 10)
    # A detector looked at frame 5 and answers 100 ms later (3 frames newer have arrived).
    now = 100.0 + 5 / 30 + 0.1
    found = buffer.find(stamps[5], "cam", tolerance_ns=1 * MS, now=now)
    assert found.status == MATCHED and found.entry.item == "frame5" and found.offset_ns == 0


def test_tolerance_picks_the_nearest_frame_within_it():
    buffer = StampedBuffer()
    stamps = camera_30hz(buffer, 5)
    found = buffer.find(stamps[2] + 4 * MS, "cam", tolerance_ns=5 * MS, now=100.2)
    assert found.status == MATCHED and found.entry.item == "frame2" and found.offset_ns == -4 * MS
    missing = buffer.find(stamps[2] + 4 * MS, "cam", tolerance_ns=1 * MS, now=100.2)
    assert missing.status == MISSING and "nearest is -4.0 ms away" in missing.detail


def test_frames_leave_by_capacity_and_by_age():
    buffer = StampedBuffer(capacity=3, max_age=2.0)
    stamps = camera_30hz(buffer, 10)
    assert len(buffer) == 3
    gone = buffer.find(stamps[5], "cam", 0, now=100.4)
    assert gone.status == EXPIRED and "older than" in gone.detail
    assert buffer.find(stamps[9], "cam", 0, now=100.4).status == MATCHED
    # 2 s after the last frame arrived, nothing is usable any more.
    assert buffer.find(stamps[9], "cam", 0, now=100.3 + 2.1).status == EMPTY


def test_a_stamp_newer_than_every_frame_waits_then_gives_up():
    buffer = StampedBuffer(capacity=30, max_age=0.5)
    stamps = camera_30hz(buffer, 3)
    future = stamps[-1] + 33 * MS
    assert buffer.find(future, "cam", MS, now=100.1, requested=100.09).status == PENDING
    late = buffer.find(future, "cam", MS, now=100.1 + 0.6, requested=100.09)
    assert late.status in (MISSING, EMPTY)
    # The frame arrives: matched.
    buffer.push(future, "cam", "frame3", received=100.12)
    assert buffer.find(future, "cam", MS, now=100.13, requested=100.09).entry.item == "frame3"


def test_a_stamp_newer_than_every_frame_is_missing_after_max_age_while_frames_stay_buffered():
    """The give-up branch itself: the camera keeps streaming (so frames are buffered, not EMPTY)
    but the requested stamp (a detector 5 s ahead, clock skew) never arrives. PENDING until the
    request is max_age old, then exactly MISSING naming the wait; never PENDING forever."""
    buffer = StampedBuffer(capacity=30, max_age=0.5)
    stamps = camera_30hz(buffer, 10)  # received 100.02 .. 100.32
    future = stamps[-1] + 5_000 * MS
    requested = 100.33
    assert buffer.find(future, "cam", MS, now=100.34, requested=requested).status == PENDING
    camera_30hz(buffer, 10, start=100.0 + 10 / 30)  # the stream goes on: received 100.353 .. 100.653
    pending = buffer.find(future, "cam", MS, now=requested + 0.49, requested=requested)
    assert pending.status == PENDING and "newer than every" in pending.detail
    now = requested + 0.51  # the request is older than max_age; the second ten frames are not
    late = buffer.find(future, "cam", MS, now=now, requested=requested)
    assert len(buffer) > 0 and all(now - e.received <= 0.5 for e in buffer.entries())
    assert late.status == MISSING and late.entry is None
    assert "arrived within 0.5 s" in late.detail and "(10 frames of camera 'cam')" in late.detail


def test_frame_id_selects_the_camera_and_empty_matches_any():
    buffer = StampedBuffer()
    buffer.push(stamp_ns(5, 0), "left", "L", received=1.0)
    buffer.push(stamp_ns(5, 0), "right", "R", received=1.0)
    assert buffer.find(stamp_ns(5, 0), "right", 0, now=1.1).entry.item == "R"
    assert buffer.find(stamp_ns(5, 0), "left", 0, now=1.1).entry.item == "L"
    assert buffer.find(stamp_ns(5, 0), "", 0, now=1.1).status == MATCHED
    assert buffer.find(stamp_ns(5, 0), "rear", 0, now=1.1).status == EMPTY
    assert buffer.newest("left").item == "L" and buffer.newest().item == "R"


def test_out_of_order_arrival_and_reconfigure():
    buffer = StampedBuffer(capacity=5)
    for sec in (3, 1, 2):
        buffer.push(stamp_ns(sec, 0), "cam", sec, received=0.0)
    assert buffer.find(stamp_ns(1, 0), "cam", 0, now=0.1).entry.item == 1
    buffer.configure(capacity=1, max_age=1.0)
    assert len(buffer) == 1 and buffer.newest().item == 2
    with pytest.raises(ValueError):
        StampedBuffer(capacity=0)


# ----------------------------------------------------------------------------- memory (issue #24 item 8)
def test_old_frames_expire_when_a_frame_is_pushed_not_only_on_lookup():
    """Before: only find()/newest() expired entries, so a burst stayed in memory until a stamped
    prompt looked frames up."""
    buffer = StampedBuffer(capacity=30, max_age=2.0)
    camera_30hz(buffer, 20)  # received 100.02 .. 100.65
    assert len(buffer) == 20
    buffer.push(stamp_ns(200, 0), "cam", "late", received=105.0)  # 4+ s later: the burst is stale
    assert len(buffer) == 1 and buffer.newest().item == "late"


def test_expire_drops_stale_frames_without_a_push():
    buffer = StampedBuffer(capacity=30, max_age=2.0)
    camera_30hz(buffer, 5)
    assert buffer.expire(now=100.5) == 0 and len(buffer) == 5
    assert buffer.expire(now=103.0) == 5 and len(buffer) == 0


def test_the_buffer_is_bounded_by_bytes_and_keeps_the_newest_frame():
    buffer = StampedBuffer(capacity=30, max_age=60.0, max_bytes=1000, size_of=len)
    for i in range(5):
        buffer.push(stamp_ns(i, 0), "cam", bytes(300), received=float(i))
    assert len(buffer) == 3 and buffer.nbytes == 900  # 4 x 300 > 1000: the two oldest left
    assert [e.stamp for e in buffer.entries()] == [stamp_ns(i, 0) for i in (2, 3, 4)]
    buffer.push(stamp_ns(9, 0), "cam", bytes(5000), received=9.0)  # larger than the budget alone
    assert len(buffer) == 1 and buffer.nbytes == 5000  # the newest frame is always kept
    buffer.configure(capacity=30, max_age=60.0, max_bytes=100)
    assert len(buffer) == 1
    with pytest.raises(ValueError, match="max_bytes"):
        StampedBuffer(max_bytes=0, size_of=len)


def test_a_stamped_request_on_an_empty_buffer_waits_like_one_newer_than_every_frame():
    """A slow or triggered camera, or a pause longer than max_age: nothing is buffered when a detector's
    answer comes. Before: EMPTY at once (dropped); now PENDING until the request is max_age old."""
    buffer = StampedBuffer(capacity=30, max_age=0.5)
    stamps = camera_30hz(buffer, 3)  # received 100.02 .. 100.087
    future = stamps[-1] + 2_000 * MS
    requested = 101.0  # every frame is older than max_age by now
    first = buffer.find(future, "cam", MS, now=requested, requested=requested)
    assert len(buffer) == 0 and first.status == PENDING and first.entry is None
    assert first.detail == "no frame of camera 'cam' is buffered yet"
    assert buffer.find(future, "cam", MS, now=requested + 0.49, requested=requested).status == PENDING
    late = buffer.find(future, "cam", MS, now=requested + 0.5, requested=requested)
    assert late.status == MISSING and late.entry is None
    assert late.detail == ("no frame with stamp 102.066666667 s arrived within 0.5 s; "
                           "no frame of camera 'cam' is buffered")
    # The frame arrives while the request waits: matched.
    buffer.push(future, "cam", "late frame", received=requested + 0.3)
    assert buffer.find(future, "cam", MS, now=requested + 0.31, requested=requested).entry.item == "late frame"


def test_a_request_for_one_camera_waits_while_only_another_camera_is_buffered():
    buffer = StampedBuffer(capacity=30, max_age=0.5)
    stamps = camera_30hz(buffer, 3, frame_id="left")
    assert buffer.find(stamps[1], "right", MS, now=100.1, requested=100.1).status == PENDING
    assert buffer.find(stamps[1], "right", MS, now=100.6, requested=100.1).status == MISSING


def test_a_lookup_without_a_request_time_on_an_empty_buffer_is_empty_at_once():
    """The depth pairing looks up without ``requested`` (it has its own short deadline): unchanged."""
    buffer = StampedBuffer(capacity=30, max_age=0.5)
    found = buffer.find(stamp_ns(100, 0), "", MS, now=100.0)
    assert found.status == EMPTY and found.detail == "no frame of any camera is buffered"
