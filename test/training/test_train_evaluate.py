"""The paper's evaluation protocol: box / point* prompts, IoU and accuracy per split and class, baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data import CocoInstances
from training.evaluate import evaluate, format_table, main, mask_iou, summarize


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, ~a) == 0.0


def test_summary_by_split_and_class():
    from ovsam_ros.model.vocabulary import Vocabulary

    vocab = Vocabulary("v", "", ["a", "b"], [["a"], ["b"]], split=["base", "novel"])
    rows = [{"label": 0, "split": "base", "iou": 0.5, "pred": 0, "pred_feature-crop": 1},
            {"label": 0, "split": "base", "iou": 1.0, "pred": 1, "pred_feature-crop": 0},
            {"label": 1, "split": "novel", "iou": 0.0, "pred": 1, "pred_feature-crop": 1}]
    s = summarize(rows, vocab, ["feature-crop"])
    assert s["overall"] == {"count": 3, "iou": 0.5, "accuracy": pytest.approx(2 / 3)}
    assert s["base"]["iou"] == 0.75 and s["base"]["accuracy"] == 0.5 and s["novel"]["accuracy"] == 1.0
    assert s["per_class"]["b"]["split"] == "novel" and s["class_mean_accuracy"] == 0.75
    assert s["baselines"]["feature-crop"] == {"overall": pytest.approx(2 / 3), "base": 0.5, "novel": 1.0}


def test_evaluate_untrained_tiny_model(synth, stage1_checkpoint):
    from training.evaluate import build_eval_predictor

    coco = CocoInstances(synth["val"], synth["images"])
    predictor = build_eval_predictor(stage1_checkpoint, None, "cpu", "fp32", "single")
    metrics = evaluate(predictor, coco, ["box", "point"], ["feature-crop", "image-crop"], progress=False)
    for kind in ("box", "point"):
        m = metrics["prompts"][kind]
        assert m["overall"]["count"] == coco.num_instances
        assert 0.0 <= m["overall"]["iou"] <= 1.0 and set(m) >= {"base", "novel", "per_class", "baselines"}
        assert set(m["baselines"]) == {"feature-crop", "image-crop"}
    table = format_table(metrics)
    assert "IoU_b" in table and "feature-crop" in table and "per class" in table


def test_cli_writes_json_and_reports_bad_input(tmp_path, synth, stage1_checkpoint, capsys):
    out = tmp_path / "eval.json"
    assert main(["--checkpoint", stage1_checkpoint, "--annotations", synth["val"], "--images", synth["images"],
                 "--prompts", "box", "--max-images", "2", "--templates", "single", "--out", str(out),
                 "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["images"] == 2 and list(data["prompts"]) == ["box"]
    assert "ovsam" in capsys.readouterr().out
    assert main(["--checkpoint", stage1_checkpoint, "--annotations", str(tmp_path / "none.json"),
                 "--no-progress"]) == 2
    assert "none.json" in capsys.readouterr().err
