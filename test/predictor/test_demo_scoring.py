"""The demo's scoreboard against hand-made ground truth (no ROS, no model)."""

import numpy as np

from ovsam_ros.demo_scoring import Scoreboard, TruthObject, mask_iou


def square(y0: int, x0: int, size: int, shape=(40, 60)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y0 + size, x0:x0 + size] = True
    return mask


def test_scoreboard_reports_labels_per_prompt_kind_and_split():
    red_circle = TruthObject("red circle", "base", square(2, 2, 10))
    red_star = TruthObject("red star", "novel", square(20, 30, 10))
    board = Scoreboard()
    # box prompts: the circle found with half its area (IoU 50/100 = 0.5), labelled right; the star labelled wrong
    half = square(2, 2, 10)
    half[2:7] = False
    lines = board.score_prompts("box", [red_circle, red_star], [(0, half, "red circle"), (1, red_star.mask, "red cross")])
    assert lines[0].split() == ["red", "circle", "base", "IoU", "0.50", "label", "OK"]
    assert "WRONG (said 'red cross')" in lines[1]
    # point prompts: no result for the circle (counts as IoU 0 and a wrong label)
    lines = board.score_prompts("point", [red_circle, red_star], [(1, red_star.mask, "red star")])
    assert "no result" in lines[0]
    scores = board.as_dict()
    assert scores["iou_box"] == 0.75 and scores["iou_point"] == 0.5
    assert (scores["box_accuracy_base"], scores["box_accuracy_novel"]) == (1.0, 0.0)
    assert (scores["point_accuracy_base"], scores["point_accuracy_novel"]) == (0.0, 1.0)
    summary = "\n".join(board.summary())
    assert "label accuracy, base      box 100.0% (1/1)   point   0.0% (0/1)" in summary


def test_text_query_hit_needs_half_overlap_with_an_object_of_that_class():
    star = TruthObject("red star", "novel", square(20, 30, 10))
    board = Scoreboard()
    shifted = square(20, 35, 10)  # IoU 50 / 150 = 0.33
    assert mask_iou(shifted, star.mask) == 50 / 150
    assert board.score_query("red star", [star], [shifted])[0].endswith("MISSED")
    assert board.score_query("red star", [star], [square(21, 30, 10)])[0].endswith("FOUND")  # IoU 90/110
    assert "not in this scene" in board.score_query("blue star", [star], [star.mask])[0]
    assert board.as_dict()["query_hit_novel"] == 0.5 and board.as_dict()["query_hit_base"] is None
