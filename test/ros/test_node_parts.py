"""Pieces of the node without a node: prompt fitting, the newest-frame slot, frame decoding, diagnostics."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from ovsam_ros.prompts import Prompt
from ovsam_ros.ros.diagnostics import NodeStats, StageClock, summary_line
from ovsam_ros.ros.frames import Frame, LatestFrameSlot
from ovsam_ros.ros.prompt_input import ASPECT_TOLERANCE, PromptSet, fit_prompts, scale_factors


@pytest.mark.parametrize("source, frame_hw, expected", [
    ((0, 0), (480, 640), (1.0, 1.0)),  # 0x0 = this frame
    ((640, 480), (480, 640), (1.0, 1.0)),
    ((1280, 960), (480, 640), (0.5, 0.5)),
    ((600, 400), (300, 451), (451 / 600, 300 / 400)),  # 0.2 % off: still rescaled
])
def test_scale_factors(source, frame_hw, expected):
    assert scale_factors(source, frame_hw) == pytest.approx(expected)


@pytest.mark.parametrize("source", [(640, 640), (640, 0), (0, 480), (1280, 700)])
def test_scale_factors_reject_other_aspect_ratios(source):
    with pytest.raises(ValueError):
        scale_factors(source, (480, 640))


def test_aspect_tolerance_is_one_percent():
    assert ASPECT_TOLERANCE == 0.01
    scale_factors((640, int(480 * 1.009)), (480, 640))
    with pytest.raises(ValueError, match="differ by"):
        scale_factors((640, int(480 * 1.02)), (480, 640))


def test_fit_prompts_rescales_and_keeps_original_indices():
    prompt_set = PromptSet([Prompt(points=[[100, 50]]), Prompt(points=[[float("nan"), 1]]),
                            Prompt(box=[20, 40, 200, 160], points=[[50, 60]], point_labels=[0])], (320, 240))
    fitted = fit_prompts(prompt_set, (120, 160))
    assert fitted.indices == [0, 2]
    assert fitted.prompts[0].points == [[50.0, 25.0]]
    assert fitted.prompts[1].box == [10.0, 20.0, 100.0, 80.0] and fitted.prompts[1].point_labels == [0]
    assert len(fitted.rejected) == 1 and "prompt 1" in fitted.rejected[0] and "rescaled from 320x240" in fitted.rejected[0]


def test_slot_keeps_only_the_newest_frame():
    slot = LatestFrameSlot()
    assert slot.put(Frame("a", False, 0.0)) is False
    assert slot.put(Frame("b", False, 0.0)) is True  # "a" dropped
    assert slot.take(timeout=0).msg == "b"
    assert slot.take(timeout=0) is None


def test_slot_take_waits_and_close_wakes_the_waiter():
    slot = LatestFrameSlot()
    got = []
    waiter = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    waiter.start()
    time.sleep(0.05)
    slot.put(Frame("x", False, 0.0))
    waiter.join(2)
    assert got[0].msg == "x"
    waiter = threading.Thread(target=lambda: got.append(slot.take(timeout=30)))
    waiter.start()
    t0 = time.monotonic()
    slot.close()
    waiter.join(2)
    assert got[1] is None and time.monotonic() - t0 < 1.0


def test_stats_and_summary_line():
    stats = NodeStats()
    stats.received(0.010)
    stats.received(None)
    stats.dropped()
    clock = StageClock()
    with clock.stage("encode"):
        time.sleep(0.01)
    stats.processed(clock.finish(), (5, 6), 0.02, 3)
    snap = stats.snapshot()
    assert (snap["frames_received"], snap["frames_dropped"], snap["zero_stamps"]) == (2, 1, 1)
    assert snap["stages"]["encode"]["mean"] >= 0.01 and snap["last_stamp"] == (5, 6)
    line = summary_line(snap)
    assert "2 received, 1 processed, 1 dropped" in line and "encode" in line


def test_decode_frame_converts_every_layout_to_rgb():
    pytest.importorskip("sensor_msgs")
    from ovsam_ros.ros.camera_demo import image_message
    from ovsam_ros.ros.frames import decode_frame

    rgb = (np.random.default_rng(0).random((6, 8, 3)) * 255).astype(np.uint8)
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        out = decode_frame(image_message(rgb, encoding, None), False)
        assert out.dtype == np.uint8 and np.array_equal(out, rgb), encoding
    grey = decode_frame(image_message(rgb, "mono16", None), False)
    assert grey.shape == (6, 8, 3) and np.array_equal(grey[..., 0], grey[..., 2])


def test_world_camera_can_skip_to_a_scene_with_a_novel_object(ros_context):
    """The demo's novel-class text queries: the next scene that has a novel object, chosen by the
    ground truth alone; scenes are otherwise drawn in order and each is published once."""
    from ovsam_ros.ros.camera_demo import make_camera_node, world_frames

    scenes = list(itertools.islice(world_frames((160, 120)), 40))
    has_novel = [any(split == "novel" for _, split, _ in truth) for _, _, truth in scenes]
    assert not all(has_novel) and any(has_novel)
    first_plain = has_novel.index(False)
    camera = make_camera_node(source="world", size=(160, 120), context=ros_context)
    try:
        for i in range(first_plain):
            camera.publish_next()
        truth = camera.prepare_next(with_split="novel")
        expected = has_novel.index(True, first_plain)
        assert [n for n, _, _ in truth] == [n for n, _, _ in scenes[expected][2]]
        assert camera.publish_next()[0] == scenes[expected][0]
        assert camera.prepare_next() is not None and camera.publish_next()[0] == scenes[expected + 1][0]
    finally:
        camera.destroy_node()


def test_a_prompt_message_carries_a_non_finite_source_score_as_zero():
    """prompt_array_msg (tools, detectors that build PromptArrays in Python) follows the output rule:
    a source without a finite score sends 0.0 (the message field's 'no score'), finite ones as given."""
    pytest.importorskip("rclpy")
    from ovsam_ros.robot.detections import PromptSource
    from ovsam_ros.ros.prompt_input import prompt_array_msg

    sources = [PromptSource("a", "cup", float("nan")), PromptSource("b", "cup", float("-inf")),
               PromptSource("c", "cup", 0.75), None]
    msg = prompt_array_msg([Prompt(points=[[1.0, 2.0]])] * 4, sources=sources)
    assert [(p.source_id, p.source_score) for p in msg.prompts] == [("a", 0.0), ("b", 0.0), ("c", 0.75), ("", 0.0)]
