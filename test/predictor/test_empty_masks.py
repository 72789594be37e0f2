"""A mask without a pixel is not an object (issue #24 item 3). Before: `ovsam segment` on a black,
white or 1x1 image printed 'red square 1.000 IoU 0.894 area 0 box (0,0,0,0)' as a found object.

The predictor keeps one result per prompt (prompt_index stays aligned) and marks empty ones
(``InstanceResult.empty``); the outputs (CLI table, JSON, overlay; query) leave them out and say
which prompts gave one; everything mode counts them (test_everything_report.py)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ovsam_ros.cli import main
from ovsam_ros.prompts import Prompt
from ovsam_ros.results import InstanceResult, LabelScore, decode_rle, results_to_json, split_empty
from ovsam_ros.shapes_world import world_scene
from ovsam_ros.visualize import draw_overlay


@pytest.fixture(scope="module")
def shapes():
    from ovsam_ros.loading import build_predictor

    return build_predictor("shapes", text_cache_dir=None)


@pytest.fixture(scope="module")
def scene():
    """A shapes-world frame and its first object's mask (the bundled model segments these)."""
    rgb, instances = world_scene(0, 3, (320, 240))
    return rgb, instances[1][1]


def _box(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("frame", [np.zeros((120, 160, 3), np.uint8), np.full((120, 160, 3), 255, np.uint8),
                                   np.full((1, 1, 3), 128, np.uint8)], ids=["black", "white", "1x1"])
def test_blank_frames_give_one_empty_result_per_prompt(shapes, frame):
    shapes.set_image(frame)
    prompts = [Prompt(box=[0, 0, 1, 1]), Prompt(points=[[0, 0]])]
    results = shapes.predict(prompts)
    assert [r.prompt_index for r in results] == [0, 1]
    for r in results:
        assert r.empty and r.area == 0 and not r.mask.any() and tuple(r.box) == (0, 0, 0, 0)


def test_objects_and_empty_results_are_told_apart(shapes, scene):
    rgb, mask = scene
    shapes.set_image(rgb)
    results = shapes.predict([Prompt(box=_box(mask))])
    assert not results[0].empty and results[0].area == int(results[0].mask.sum()) > 0
    shapes.set_image(np.zeros_like(rgb))
    blank = shapes.predict([Prompt(box=_box(mask))])
    objects, empty = split_empty([results[0], blank[0]])
    assert objects == [results[0]] and empty == [blank[0]]


def test_json_lists_objects_only_and_names_the_empty_prompts():
    full = np.zeros((6, 8), bool)
    full[1:3, 2:5] = True
    thing = InstanceResult(mask=full, predicted_iou=0.9, stability_score=0.95, box=(2, 1, 5, 3),
                           labels=[LabelScore(0, "cup", 0.8)], prompt_index=0)
    nothing = InstanceResult(mask=None, crop=np.zeros((0, 0), bool), image_size=(6, 8), predicted_iou=0.894,
                             stability_score=float("nan"), box=(0, 0, 0, 0),
                             labels=[LabelScore(1, "red square", 1.0)], prompt_index=1)
    data = results_to_json([thing, nothing], image_size=(6, 8))
    assert data["empty_prompts"] == [1]
    assert [(i["prompt_index"], i["label"], i["area"]) for i in data["instances"]] == [(0, "cup", 6)]
    assert np.array_equal(decode_rle(data["instances"][0]["segmentation"]), full)
    json.dumps(data, allow_nan=False)


def test_overlay_draws_nothing_for_an_empty_result():
    image = np.full((6, 8, 3), 90, np.uint8)
    nothing = InstanceResult(mask=None, crop=np.zeros((0, 0), bool), image_size=(6, 8), predicted_iou=0.9,
                             stability_score=0.0, box=(0, 0, 0, 0), labels=[LabelScore(1, "red square", 1.0)])
    assert np.array_equal(draw_overlay(image, [nothing]), image)  # no label box at (0, 0)


def test_query_never_returns_an_empty_candidate(shapes, scene):
    rgb, mask = scene
    shapes.set_image(rgb)
    real = shapes.predict([Prompt(box=_box(mask))])[0]
    shapes.set_image(np.zeros_like(rgb))
    empty = shapes.predict([Prompt(box=_box(mask))])[0]
    assert empty.empty and empty.embedding is not None  # the decoder still gave it an embedding
    found = shapes.query(real.label, candidates=[empty, real], max_instances=5)
    assert found == [real]


def test_ovsam_segment_on_a_black_image_reports_no_object(tmp_path, capsys, caplog):
    path, out = tmp_path / "black.png", tmp_path / "r.json"
    cv2.imwrite(str(path), np.zeros((120, 160, 3), np.uint8))
    assert main(["segment", str(path), "--box", "40,30,120,90", "--point", "80,60", "--threads", "1",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "0 instance(s), 2 empty mask(s)" in captured.out
    assert "prompt 0: empty mask (no pixel): not an object" in captured.out
    assert "red" not in captured.out and "square" not in captured.out  # no label of nothing
    assert "prompt(s) 0, 1 gave an empty mask" in caplog.text  # a WARNING on stderr
    data = json.loads(out.read_text())
    assert data["instances"] == [] and data["empty_prompts"] == [0, 1]


def test_ovsam_segment_keeps_the_object_and_drops_the_empty_one(tmp_path, capsys, scene):
    """One prompt on an object, one on a black corner painted over the frame: the JSON keeps the
    object with its own prompt index."""
    rgb, mask = scene
    frame = rgb.copy()
    frame[:, 300:] = 0
    path, out = tmp_path / "scene.png", tmp_path / "r.json"
    cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    box = ",".join(str(v) for v in _box(mask))
    assert main(["segment", str(path), "--box", "305,5,315,15", "--box", box, "--threads", "1", "-q",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["empty_prompts"] == [0]
    assert [i["prompt_index"] for i in data["instances"]] == [1] and data["instances"][0]["area"] > 0
