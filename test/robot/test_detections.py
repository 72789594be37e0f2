"""Detection2DArray-shaped objects -> prompts (both vision_msgs layouts, bad detections one by one)."""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import pytest

from ovsam_ros.robot.detections import best_hypothesis, detection_box, prompts_from_detections


def detection_v4(cx, cy, w, h, hyps=(("cup", 0.9),), det_id=""):
    """vision_msgs >= 4 (Humble+): center.position, results[].hypothesis.class_id."""
    results = [NS(hypothesis=NS(class_id=c, score=s), pose=None) for c, s in hyps]
    return NS(header=None, id=det_id, results=results,
              bbox=NS(center=NS(position=NS(x=cx, y=cy), theta=0.0), size_x=w, size_y=h))


def detection_v3(cx, cy, w, h, hyps=(("cup", 0.9),), det_id=""):
    """vision_msgs 2-3 (Foxy): center.x, results[].id / .score."""
    results = [NS(id=c, score=s, pose=None) for c, s in hyps]
    return NS(header=None, id=det_id, results=results,
              bbox=NS(center=NS(x=cx, y=cy, theta=0.0), size_x=w, size_y=h))


@pytest.mark.parametrize("make", [detection_v4, detection_v3])
def test_box_from_centre_and_size(make):
    # Hand computation: centre (100, 50), 40 x 20 -> (80, 40) .. (120, 60).
    assert detection_box(make(100.0, 50.0, 40.0, 20.0)) == [80.0, 40.0, 120.0, 60.0]


@pytest.mark.parametrize("make", [detection_v4, detection_v3])
def test_array_to_box_and_point_prompts_with_sources(make):
    array = NS(header=None, detections=[
        make(100, 50, 40, 20, (("cup", 0.4), ("mug", 0.8)), det_id="a"),
        make(10, 10, 4, 4, (("door", 0.3),), det_id="b"),
    ])
    boxes = prompts_from_detections(array, "box")
    assert [p.box for p in boxes.prompts] == [[80, 40, 120, 60], [8, 8, 12, 12]]
    assert [(s.id, s.class_id, s.score) for s in boxes.sources] == [("a", "mug", 0.8), ("b", "door", 0.3)]
    assert boxes.indices == [0, 1] and boxes.rejected == []
    points = prompts_from_detections(array, "point")
    assert points.prompts[0].points == [[100.0, 50.0]] and points.prompts[0].point_labels == [1]
    assert points.prompts[0].box is None


def test_bad_detections_are_rejected_by_index_and_the_rest_keep_theirs():
    array = NS(detections=[
        detection_v4(float("nan"), 5, 4, 4),
        detection_v4(50, 50, 0, 10),
        detection_v4(50, 50, 10, 10, det_id="ok"),
        NS(id="nobox", results=[]),
    ])
    out = prompts_from_detections(array)
    assert out.indices == [2] and out.sources[0].id == "ok"
    assert len(out.rejected) == 3
    assert out.rejected[0].startswith("detection 0") and "not finite" in out.rejected[0]
    assert out.rejected[1].startswith("detection 1") and "no area" in out.rejected[1]
    assert out.rejected[2].startswith("detection 3")


def test_min_score_and_missing_hypotheses():
    array = NS(detections=[detection_v4(5, 5, 2, 2, (("a", 0.2),)), detection_v4(5, 5, 2, 2, ()),
                           detection_v4(5, 5, 2, 2, (("b", 0.7),))])
    out = prompts_from_detections(array, min_score=0.5)
    assert out.indices == [2] and out.below_score == 2
    class_id, score = best_hypothesis(detection_v4(1, 1, 1, 1, ()))
    assert class_id == "" and math.isnan(score)
    with pytest.raises(ValueError, match="box, point"):
        prompts_from_detections(array, "polygon")
