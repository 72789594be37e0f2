"""The work one message can cause is bounded (issue #24 item 1).

Any DDS participant can publish a PromptArray, a Detection2DArray or call ``~/segment``. Prompts
past ``max_prompts`` per message and prompts with more than ``max_prompt_points`` points are
rejected (never silently truncated): counted in ``prompts_over_limit`` / ``prompts_rejected``, with
a warning naming the limit and its parameter; the prompts within the limits still run, with their
original ``prompt_index``.
"""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
from ros_node_helpers import full_masks, make_image, test_image

pytest.importorskip("rclpy")

from rclpy.parameter import Parameter  # noqa: E402

from ovsam_ros.prompts import Prompt  # noqa: E402
from ovsam_ros.ros.diagnostics import values_of  # noqa: E402
from ovsam_ros.ros.parameters import SPECS, validate  # noqa: E402
from ovsam_ros.ros.prompt_input import prompt_array_msg  # noqa: E402


def feed(node, msg):
    node._receive(msg, False)
    return node.process_pending()


def grid_points(n: int, width: int = 128, height: int = 96) -> list[Prompt]:
    """n one-point prompts spread over the image (all valid)."""
    return [Prompt(points=[[float(4 + (i * 7) % (width - 8)), float(4 + (i * 13) % (height - 8))]]) for i in range(n)]


def test_prompts_past_max_prompts_are_rejected_counted_and_named(make_node):
    node = make_node(max_prompts=3)
    node._on_prompts(prompt_array_msg(grid_points(10)))
    out = feed(node, make_image(test_image()))
    assert [m.prompt_index for m in out.masks.instances] == [0, 1, 2]
    snap = node.stats.snapshot()
    assert snap["prompts_over_limit"] == 7 and snap["prompts_rejected"] == 7
    warning = node._last_warnings["prompt_limit"][0]
    assert "10 prompts" in warning and "max_prompts" in warning and "3" in warning and "3..9" in warning
    values = values_of(node.publish_diagnostics())
    assert values["prompts_over_limit"] == "7"
    # The kept prompts give the masks they give alone (an independent run of the same three).
    node._on_prompts(prompt_array_msg(grid_points(3)))
    alone = feed(node, make_image(test_image()))
    assert all((a == b).all() for a, b in zip(full_masks(out.masks), full_masks(alone.masks)))


def test_a_5000_prompt_array_runs_only_the_default_limit(make_node):
    """The issue's stall: 5,000 point prompts in one array. Default limit, real node."""
    node = make_node(tracking=False)
    limit = SPECS["max_prompts"].default
    node._on_prompts(prompt_array_msg(grid_points(5000)))
    out = feed(node, make_image(test_image()))
    assert len(out.masks.instances) == limit
    assert node.stats.snapshot()["prompts_over_limit"] == 5000 - limit


def test_persistent_prompts_are_bounded_too_and_warned_once_per_array(make_node):
    node = make_node(max_prompts=2)
    node._on_prompts(prompt_array_msg(grid_points(5), persistent=True))
    for _ in range(3):  # counted when the array arrives, not again every frame
        assert len(feed(node, make_image(test_image())).masks.instances) == 2
    assert node.stats.snapshot()["prompts_over_limit"] == 3


def test_a_prompt_with_too_many_points_is_rejected_alone(make_node):
    node = make_node(max_prompt_points=4)
    many = Prompt(points=[[float(10 + i), 20.0] for i in range(50)], point_labels=[1] * 50)
    node._on_prompts(prompt_array_msg([Prompt(points=[[20.0, 20.0]]), many, Prompt(box=[5.0, 5.0, 50.0, 40.0])]))
    out = feed(node, make_image(test_image()))
    assert [m.prompt_index for m in out.masks.instances] == [0, 2]
    snap = node.stats.snapshot()
    assert snap["prompts_over_limit"] == 1 and snap["prompts_rejected"] == 1
    warning = node._last_warnings["prompt_limit"][0]
    assert "prompt 1" in warning and "50 points" in warning and "max_prompt_points 4" in warning


def test_detections_past_max_prompts_are_rejected(make_node):
    from std_msgs.msg import Header

    node = make_node(max_prompts=2)
    header = Header(frame_id="camera_optical_frame")
    header.stamp.sec = 400
    msg = make_image(test_image(), stamp=(400, 0))
    node._receive(msg, False)
    node.process_pending()
    detections = [NS(header=header, id=f"d{i}", bbox=NS(center=NS(position=NS(x=30.0 + 5 * i, y=40.0), theta=0.0),
                                                        size_x=20.0, size_y=20.0),
                     results=[NS(hypothesis=NS(class_id="cup", score=0.9), pose=None)]) for i in range(6)]
    node.on_detections(NS(header=header, detections=detections))
    out = node.process_pending()
    assert [m.source_id for m in out.masks.instances] == ["d0", "d1"]
    assert node.stats.snapshot()["prompts_over_limit"] == 4


def test_segment_service_refuses_a_request_over_the_limits(make_node):
    from ovsam_ros.msg import PromptPoint, SegmentationPrompt
    from ovsam_ros.srv import Segment

    node = make_node(max_prompts=2, max_prompt_points=3)
    image = make_image(test_image())
    prompts = [SegmentationPrompt(points=[PromptPoint(x=20.0 + i, y=20.0, label=1)]) for i in range(3)]
    response = node._on_segment(Segment.Request(image=image, prompts=prompts), Segment.Response())
    assert not response.success and "3 prompts" in response.message and "max_prompts 2" in response.message
    crowded = SegmentationPrompt(points=[PromptPoint(x=20.0 + i, y=20.0, label=1) for i in range(5)])
    response = node._on_segment(Segment.Request(image=image, prompts=[crowded]), Segment.Response())
    assert not response.success and "max_prompt_points 3" in response.message
    response = node._on_segment(Segment.Request(image=image, prompts=prompts[:2]), Segment.Response())
    assert response.success and len(response.result.instances) == 2
    assert node.stats.snapshot()["prompts_over_limit"] == 2


def test_limits_are_parameters_with_ranges(make_node):
    for name in ("max_prompts", "max_prompt_points"):
        assert validate(name, 0) and "must be >= 1" in validate(name, 0)
        assert validate(name, 100_000) and "must be <=" in validate(name, 100_000)
    node = make_node()
    assert node.set_parameters([Parameter("max_prompts", value=1)])[0].successful
    node._on_prompts(prompt_array_msg(grid_points(2)))
    assert len(feed(node, make_image(test_image())).masks.instances) == 1
