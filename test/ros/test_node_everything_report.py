"""The node says which everything-mode threshold removed every candidate (issue #28 item 8)."""

from __future__ import annotations

import pytest
from ros_node_helpers import make_image, test_image

pytest.importorskip("rclpy")

from ovsam_ros.ros.diagnostics import values_of  # noqa: E402


def test_an_empty_everything_frame_is_counted_and_explained(make_node):
    # the untrained tiny model's predicted IoUs fail SAM's default 0.8: before, 0 instances and no word
    node = make_node(mode="everything", points_per_side=3)
    node._receive(make_image(test_image()), False)
    out = node.process_pending()
    assert out is not None and len(out.masks.instances) == 0
    assert node.stats.snapshot()["everything_empty"] == 1
    message = node._last_warnings["everything"][0]
    assert message.startswith("everything mode kept 0 of 27 candidate mask(s): 27 at or below pred_iou_thresh 0.8")
    assert values_of(node.publish_diagnostics())["everything_empty"] == "1"
    # thresholds the model can meet: instances, nothing counted
    from rclpy.parameter import Parameter

    node.set_parameters([Parameter("pred_iou_thresh", value=0.0), Parameter("stability_score_thresh", value=0.0)])
    node._receive(make_image(test_image()), False)
    out = node.process_pending()
    assert len(out.masks.instances) > 0 and node.stats.snapshot()["everything_empty"] == 1
