"""The node's frame buffer is bounded in memory (issue #24 item 8): by count, age and bytes, and
absurd limits are refused with the reason."""

from __future__ import annotations

import time

import pytest
from ros_node_helpers import make_image, test_image

pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ovsam_ros.prompts import Prompt  # noqa: E402
from ovsam_ros.ros.diagnostics import values_of  # noqa: E402
from ovsam_ros.ros.parameters import SPECS, validate  # noqa: E402
from ovsam_ros.ros.prompt_input import prompt_array_msg  # noqa: E402

FRAME_BYTES = 240 * 320 * 3  # one rgb8 frame below: 230,400 bytes


def stamped(sec: int):
    return prompt_array_msg([Prompt(points=[[40.0, 30.0]])], stamp=Time(sec=sec), frame_id="camera_optical_frame")


def test_frames_past_the_byte_budget_leave_the_buffer(make_node):
    node = make_node(frame_buffer_max_mb=1)  # 1 MiB holds 4 of these frames
    for sec in range(6):
        node._receive(make_image(test_image(240, 320, seed=sec), stamp=(500 + sec, 0)), False)
    values = values_of(node.publish_diagnostics())
    assert values["frame_buffer_frames"] == "4"
    assert int(values["frame_buffer_bytes"]) == 4 * FRAME_BYTES
    node._on_prompts(stamped(501))  # left the buffer: runs on the newest frame, counted
    out = node.process_pending()
    assert out.masks.header.stamp.sec == 505
    snap = node.stats.snapshot()
    assert snap["prompts_on_newest_frame"] == 1 and "expired" in snap["last_error"]


def test_depth_images_past_the_byte_budget_leave_their_buffer(make_node):
    """Depth images are buffered for pairing by stamp (10 at most): before, with no byte cap, ten
    huge ones from anyone on the domain stayed in memory. Same budget as the frames, newest kept."""
    import numpy as np
    from sensor_msgs.msg import Image

    def depth(sec: int, height: int = 240, width: int = 320) -> Image:
        msg = Image(height=height, width=width, encoding="32FC1", step=width * 4)
        msg.header.stamp.sec, msg.header.frame_id = sec, "camera_depth_optical_frame"
        msg.data = np.full((height, width), 1.5, np.float32).tobytes()
        return msg

    depth_bytes = 240 * 320 * 4  # 307,200: 1 MiB holds 3
    node = make_node(frame_buffer_max_mb=1)
    for sec in range(6):
        node._on_depth(depth(700 + sec))
    values = values_of(node.publish_diagnostics())
    assert values["depth_buffer_images"] == "3" and int(values["depth_buffer_bytes"]) == 3 * depth_bytes
    assert [e.stamp // 10**9 for e in node.pipeline.depths.entries()] == [703, 704, 705]
    big = depth(800, 1024, 1024)  # 4 MiB, over the budget alone: still kept (the newest always stays)
    node._on_depth(big)
    assert [e.stamp // 10**9 for e in node.pipeline.depths.entries()] == [800]


def test_a_burst_leaves_memory_once_it_is_older_than_max_age(make_node):
    """Before: frames stayed until a stamped prompt looked them up."""
    node = make_node(frame_buffer_max_age=0.2, diagnostics_period=0.0)
    for sec in range(5):
        node._receive(make_image(test_image(seed=sec), stamp=(600 + sec, 0)), False)
    assert values_of(node.publish_diagnostics())["frame_buffer_frames"] == "5"
    time.sleep(0.3)
    node._on_diagnostics_tick()  # the node's 10 Hz timer expires stale frames, with no frame or prompt
    assert values_of(node.publish_diagnostics())["frame_buffer_frames"] == "0"


@pytest.mark.parametrize("name, value, words", [
    ("frame_buffer_size", 1000, ("frame_buffer_size", "<= 300")),
    ("frame_buffer_max_age", 3600.0, ("frame_buffer_max_age", "<= 10")),
    ("frame_buffer_max_mb", 100_000, ("frame_buffer_max_mb", "<=")),
    ("frame_buffer_max_mb", 0, ("frame_buffer_max_mb", ">= 1")),
])
def test_absurd_buffer_limits_are_refused_with_the_reason(make_node, name, value, words):
    reason = validate(name, value)
    assert reason and all(w in reason for w in words), reason
    assert "memory" in reason or "detector" in reason  # says why the limit exists
    node = make_node()
    result = node.set_parameters([Parameter(name, value=value)])[0]
    assert not result.successful
    # From a params file / -p: the node stays up and configure says why.
    bad = make_node(active=False, name="ovsam_bad_buffer", **{name: value})
    assert bad.trigger_configure() == TransitionCallbackReturn.FAILURE and name in bad.last_error


def test_buffer_limits_have_descriptor_ranges():
    from ovsam_ros.ros.parameters import descriptor

    assert descriptor(SPECS["frame_buffer_size"]).integer_range[0].to_value == 300
    assert descriptor(SPECS["frame_buffer_max_age"]).floating_point_range[0].to_value == 10.0
    assert descriptor(SPECS["frame_buffer_max_mb"]).integer_range[0].from_value == 1
