"""Requests the node cannot use are refused, counted and warned about, and never take a frame's
result away: one-shot prompts that do not apply to the frame, text queries with absurd thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ros_node_helpers import full_masks, make_image, test_image

pytest.importorskip("rclpy")

from ovsam_ros.prompts import Prompt  # noqa: E402
from ovsam_ros.ros.frame_pipeline import TextRequest  # noqa: E402
from ovsam_ros.ros.prompt_input import prompt_array_msg  # noqa: E402

PERSISTENT = [Prompt(box=[20.0, 15.0, 80.0, 70.0]), Prompt(points=[[90.0, 40.0]])]
ONESHOT = [Prompt(points=[[30.0, 30.0]])]


def direct_masks(node, rgb, prompts) -> list[np.ndarray]:
    node.predictor.set_image(rgb)
    return [r.mask for r in node.predictor.predict(prompts)]


@pytest.mark.parametrize("oneshot, why", [
    (prompt_array_msg(ONESHOT, frame_id="other_cam"), "other_cam"),  # unstamped, another camera
    (prompt_array_msg(ONESHOT, (640, 640)), "aspect ratios differ"),  # made for a square image
    (prompt_array_msg([Prompt(points=[[500.0, 10.0]])]), "outside"),  # every prompt off the image
])
def test_one_shot_prompts_that_cannot_apply_leave_the_frame_to_the_persistent_prompts(make_node, oneshot, why):
    """Before: the frame was published with 0 instances (the one-shot set took the frame, then every
    prompt in it was rejected)."""
    node = make_node()
    node._on_prompts(prompt_array_msg(PERSISTENT, persistent=True))
    node._on_prompts(oneshot)
    rgb = test_image(seed=2)
    msg = make_image(rgb)  # camera_optical_frame, 128 x 96
    node._receive(msg, False)
    out = node.process_pending()
    assert out.masks.header == msg.header and out.mode == "prompt"
    assert [m.prompt_index for m in out.masks.instances] == [0, 1]
    for mine, reference in zip(full_masks(out.masks), direct_masks(node, rgb, PERSISTENT), strict=True):
        assert np.array_equal(mine, reference)
    assert len(out.rejected) == 1 and why in out.rejected[0]
    snap = node.stats.snapshot()
    assert snap["prompts_rejected"] == 1 and why in snap["last_error"]
    # The one-shot set was used up: the next frame is the persistent prompts', nothing rejected.
    node._receive(make_image(rgb, stamp=(101, 0)), False)
    assert node.process_pending().rejected == [] and node.stats.snapshot()["prompts_rejected"] == 1


def test_one_shot_prompts_that_cannot_apply_leave_the_frame_to_everything_mode(make_node):
    node = make_node(mode="everything", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    node._on_prompts(prompt_array_msg(ONESHOT, frame_id="other_cam"))
    node._receive(make_image(test_image(seed=3)), False)
    out = node.process_pending()
    assert out.mode == "everything" and len(out.masks.instances) > 0
    assert "other_cam" in out.rejected[0] and node.stats.snapshot()["prompts_rejected"] == 1


def text_query(text: str, min_score: float = 0.0, max_instances: int = 0, persistent: bool = True):
    from ovsam_ros.msg import TextQuery

    return TextQuery(text=text, min_score=min_score, max_instances=max_instances, persistent=persistent)


@pytest.mark.parametrize("min_score", [math.nan, -0.5, 5.0, math.inf])
def test_a_text_query_with_a_threshold_outside_0_1_is_refused_and_the_old_query_stays(make_node, min_score):
    """Before: NaN or a negative min_score silently kept every match, 5 silently kept none."""
    node = make_node()
    node._on_text_query(text_query("cup", min_score=0.25))
    node._on_text_query(text_query("door", min_score=min_score))
    snap = node.stats.snapshot()
    assert snap["prompts_rejected"] == 1
    assert "min_score must be in 0..1" in snap["last_error"] and "'door'" in snap["last_error"]
    assert node.pipeline.board.persistent_query == TextRequest("cup", 0, 0.25)
    node._on_text_query(text_query("door", min_score=min_score, persistent=False))  # one-shot alike
    assert node.pipeline.board.oneshot_query is None and node.stats.snapshot()["prompts_rejected"] == 2
    out_query = text_query("door", min_score=1.0)  # the bounds themselves are fine
    node._on_text_query(out_query)
    assert node.pipeline.board.persistent_query == TextRequest("door", 0, 1.0)
    assert node.stats.snapshot()["prompts_rejected"] == 2


def test_text_request_problems():
    assert TextRequest("cup").problem() is None and TextRequest("cup", 3, 0.5).problem() is None
    assert "max_instances must be >= 0" in TextRequest("cup", -1, 0.5).problem()
    assert "min_score" in TextRequest("cup", 0, float("nan")).problem()


@pytest.mark.parametrize("size, why", [((640, 640), "aspect ratios differ"), ((0, 0), "outside")])
def test_a_stamped_set_that_cannot_apply_leaves_its_frame_to_the_persistent_prompts(make_node, size, why):
    """A stamped PromptArray matched to the pending frame took that frame's job even when every prompt in
    it was rejected (another aspect ratio, all off the image): the frame came back empty and the
    persistent prompts skipped it."""
    from builtin_interfaces.msg import Time

    node = make_node()
    node._on_prompts(prompt_array_msg(PERSISTENT, persistent=True))
    rgb = test_image(seed=4)
    msg = make_image(rgb, stamp=(300, 0))
    node._receive(msg, False)
    prompts = ONESHOT if size != (0, 0) else [Prompt(points=[[500.0, 10.0]])]
    node._on_prompts(prompt_array_msg(prompts, size, stamp=Time(sec=300), frame_id=msg.header.frame_id))
    out = node.process_pending()
    assert out is not None and out.masks.header == msg.header
    assert [m.prompt_index for m in out.masks.instances] == [0, 1]
    for mine, reference in zip(full_masks(out.masks), direct_masks(node, rgb, PERSISTENT), strict=True):
        assert np.array_equal(mine, reference)
    assert len(out.rejected) == 1 and why in out.rejected[0]
    assert node.stats.snapshot()["prompts_on_stamped_frame"] == 1
