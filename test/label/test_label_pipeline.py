"""ovsam-label end to end: generated bags -> labels scored against the world's ground truth -> stage 2 ->
model YAML -> predictor; manifest and data report checked against independent computations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from label_helpers import ROOT


def _load(out: Path, name: str):
    return json.loads((out / name).read_text())


def test_labels_match_the_shapes_world_ground_truth(reference, world_bags):
    from training.label.scoring import score_labels

    coco = _load(reference["out"], "labels.json")
    assert len(coco["images"]) == 14
    # measured 2026-12-06 (default thresholds): mean best IoU ~0.9, label accuracy ~0.88 over 14 scenes
    score = score_labels(coco, world_bags["truth"])
    assert score["instances"] >= 14, score
    assert score["mean_best_iou"] > 0.8, score
    assert score["precision_at_iou"] > 0.9, score
    assert score["label_accuracy"] > 0.75, score
    # every image carries its source, topic and stamp; the stamps are the recorded ones
    assert {im["stamp_ns"] for im in coco["images"]} == set(world_bags["truth"])
    assert {Path(im["source"]).name for im in coco["images"]} == {"drive_a", "drive_b"}
    assert all(im["topic"] == "/camera/image_raw" for im in coco["images"])


def test_masks_decode_with_pycocotools_and_frames_are_the_recorded_pixels(reference, world_bags):
    from pycocotools.coco import COCO

    from ovsam_ros.shapes_world import world_scene
    from training.data.common import read_image

    out = reference["out"]
    api = COCO(str(out / "labels.json"))
    coco = _load(out, "labels.json")
    for ann in coco["annotations"][:20]:
        mask = api.annToMask(ann)
        assert mask.sum() == ann["area"]
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        assert 0.0 <= ann["score"] <= 1.0 and ann["predicted_iou"] > 0.8 and ann["stability_score"] >= 0.9
    first = coco["images"][0]  # drive_a holds raw rgb8 frames: lossless through the PNG
    rgb, _ = world_scene(4242, 0, (160, 120))
    assert np.array_equal(read_image(out / "images" / first["file_name"]), rgb)


def test_manifest_and_data_report_account_for_everything(reference):
    from ovsam_ros.loading import resolve_config_path

    out = reference["out"]
    manifest, report, coco = _load(out, "manifest.json"), _load(out, "data_report.json"), _load(out, "labels.json")
    weights = ROOT / "ovsam_ros" / "data" / "models" / "shapes.pt"
    files = manifest["settings"]["model_files"]
    assert files["weights"][0]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert files["yaml"]["sha256"] == hashlib.sha256(resolve_config_path("shapes").read_bytes()).hexdigest()
    assert manifest["settings"]["label"]["pred_iou_thresh"] == 0.8
    assert manifest["classes"] == [c["name"] for c in coco["categories"]] and len(manifest["classes"]) == 36
    assert report["frames_read"] == 14 and report["frames_labelled"] == 14
    assert report["instances_kept"] == len(coco["annotations"])
    inst = report["instances"]
    # every candidate mask is kept or dropped by exactly one filter
    everything_drops = sum(inst.get(k, 0) for k in ("below_pred_iou", "below_stability", "empty", "too_small",
                                                    "duplicates", "over_max_instances"))
    assert inst["candidates"] == everything_drops + inst["kept"] == 14 * 256
    assert inst["kept"] == inst["labelled_instances"] + inst.get("below_min_score", 0) + inst.get("unlabeled", 0)
    assert inst["below_pred_iou"] > 0  # the default threshold does work on this model


def test_stage2_trains_from_the_labels_and_the_model_yaml_serves_them(reference, tmp_path):
    """The README path: labels -> ovsam-train-stage2 (no editing) -> model YAML -> predictor."""
    import yaml

    from ovsam_ros.loading import build_predictor
    from ovsam_ros.shapes_world import world_scene
    from training import stage2
    from training.config import load_config

    out = reference["out"]
    weights = ROOT / "ovsam_ros" / "data" / "models" / "shapes.pt"
    cfg = load_config(stage2.DEFAULTS, "stage2_shapes", [
        f"model.init_checkpoint={weights}", f"data.annotations={out / 'labels.json'}", f"data.images={out / 'images'}",
        "data.vocabulary=null", f"output_dir={tmp_path / 's2'}", "train.max_steps=2", "train.batch_size=2",
        "train.warmup_steps=0", "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0",
        "train.device=cpu"])
    info = stage2.train(cfg, quiet=True)
    assert info.steps == 2 and all(np.isfinite(h["loss"]) for h in info.history)
    report = json.loads((tmp_path / "s2" / "data_report.json").read_text())
    with_instances = {a["image_id"] for a in _load(out, "labels.json")["annotations"]}
    assert report["detection"]["images"] == len(with_instances) >= 10  # stage 2 drops frames with no label
    model_yaml = tmp_path / "robot.yaml"
    model_yaml.write_text(yaml.safe_dump({"model": {"ovsam_checkpoint": str(info.final_model)},
                                          "predictor": {"device": "cpu", "templates": "single",
                                                        "everything_multimask": False, "clip_ensemble": False}}))
    predictor = build_predictor(str(model_yaml))
    # the checkpoint carries the labels' classes: the node would label with them
    assert list(predictor.vocabulary.classes) == _load(out, "manifest.json")["classes"]
    predictor.set_image(world_scene(4242, 0, (160, 120))[0])
    predictor.everything()


def test_review_sheets_show_each_bag(reference):
    import cv2

    sheets = sorted((reference["out"] / "review").glob("*.png"))
    assert [p.name for p in sheets] == ["drive_a_000.png", "drive_b_000.png"]
    for p in sheets:
        img = cv2.imread(str(p))
        assert img is not None and img.shape[1] == 4 * 320 and img.std() > 10
