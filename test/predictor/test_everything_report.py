"""Everything mode says which threshold removed what (issue #28 item 8): a labelling run that keeps
nothing names the filter, in the predictor's report, the CLI and (test/ros) the node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from segment_anything.utils.amg import build_point_grid

from ovsam_ros.predictor import EverythingOptions, OVSAMPredictor
from ovsam_ros.prompts import Prompt

from predictor_helpers import tiny_model

ROOT = Path(__file__).resolve().parents[2]


def test_report_counts_match_a_hand_count_over_every_candidate(image):
    """The candidates are the grid points' multimask answers (predict, keep='all'): count by hand which
    the IoU and stability thresholds remove, and compare with the report."""
    predictor = OVSAMPredictor(tiny_model(seed=3), vocabulary="cat, dog")
    predictor.set_image(image)
    side = 3
    grid = build_point_grid(side) * np.array([[image.shape[1], image.shape[0]]])
    every = predictor.predict([Prompt(points=[list(p)]) for p in grid], multimask_output=True, keep="all")
    ious = np.array([r.predicted_iou for r in every])
    iou_t = float(np.median(ious))  # half the candidates fail the IoU filter
    passed = [r for r in every if r.predicted_iou > iou_t and not r.empty]  # empty ones: counted apart
    stab_t = float(np.median([r.stability_score for r in passed]))
    options = EverythingOptions(points_per_side=side, pred_iou_thresh=iou_t, stability_score_thresh=stab_t,
                                box_nms_thresh=1.0, max_instances=1000)
    results = predictor.everything(options)
    report = predictor.last_everything_report
    assert report.candidates == len(every) == 3 * side * side
    assert report.below_pred_iou == int((ious <= iou_t).sum())
    assert report.empty == sum(r.predicted_iou > iou_t and r.empty for r in every)
    assert report.below_stability == sum(r.stability_score < stab_t for r in passed)
    assert report.kept == len(results) > 0
    assert (report.candidates == report.below_pred_iou + report.below_stability + report.empty + report.too_small
            + report.duplicates + report.over_max_instances + report.kept)
    text = report.explain()
    assert f"kept {report.kept} of {report.candidates}" in text
    assert f"{report.below_pred_iou} at or below pred_iou_thresh {iou_t:g}" in text


def test_nms_and_max_instances_are_counted(predictor, image):
    predictor.set_image(image)
    loose = dict(points_per_side=4, pred_iou_thresh=-1e9, stability_score_thresh=-1e9)
    results = predictor.everything(EverythingOptions(**loose, box_nms_thresh=1.0, max_instances=2))
    report = predictor.last_everything_report
    assert report.kept == len(results) == 2 and report.duplicates == 0
    assert report.over_max_instances == report.candidates - report.empty - report.too_small - 2 > 0
    assert "beyond max_instances 2" in report.explain()
    results = predictor.everything(EverythingOptions(**loose, box_nms_thresh=0.3, max_instances=1000))
    report = predictor.last_everything_report
    assert report.kept == len(results)
    assert report.duplicates == report.candidates - report.empty - report.too_small - len(results) > 0
    assert report.below_pred_iou == report.below_stability == report.over_max_instances == 0


def test_ovsam_everything_that_keeps_nothing_says_which_flag_removed_what(tmp_path):
    """The untrained tiny model's predicted IoUs all fail SAM's default 0.8: before, '0 instance(s)' alone."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ovsam"), "everything", str(ROOT / "ovsam_ros/data/samples/chelsea.png"),
         "--model", "tiny", "--threads", "1", "--points-per-side", "4"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 instance(s)" in result.stdout
    assert "everything mode kept 0 of 48 candidate mask(s): 48 at or below --iou-thresh 0.8 removed" in result.stderr



def test_empty_masks_are_counted_as_empty_not_blamed_on_stability(shapes_predictor):
    """A black frame: every grid mask is empty (stability 0 or NaN). Before, the report said
    '16 below stability_score_thresh' even at a threshold of -1e9 (NaN fails every comparison)."""
    shapes_predictor.set_image(np.zeros((120, 160, 3), np.uint8))
    grid = build_point_grid(4) * np.array([[160, 120]])
    by_hand = shapes_predictor.predict([Prompt(points=[list(p)]) for p in grid],
                                       multimask_output=shapes_predictor.everything_multimask, keep="all")
    assert by_hand and all(r.area == 0 for r in by_hand)
    for stability in (0.9, -1e9):
        results = shapes_predictor.everything(EverythingOptions(points_per_side=4, pred_iou_thresh=-1e9,
                                                                stability_score_thresh=stability))
        report = shapes_predictor.last_everything_report
        assert results == [] and report.candidates == len(by_hand)
        assert report.empty == len(by_hand) and report.below_stability == 0 == report.too_small
        assert report.explain().endswith(f"{len(by_hand)} empty (no pixel) removed")
        assert report.to_dict()["empty"] == len(by_hand)


@pytest.fixture(scope="module")
def shapes_predictor():
    from ovsam_ros.loading import build_predictor

    return build_predictor("shapes", text_cache_dir=None)
