"""ovsam-evaluate keeps the model YAML's predictor settings unless a flag names one, says which it used,
and offers the reference point configs' frozen-CLIP box frame as an explicit option."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.data import CocoInstances
from training.evaluate import evaluate, main
from training.synthetic import make_dataset


@pytest.fixture(scope="module")
def big_scenes(tmp_path_factory):
    """Two val images with a 512 px long side: twice the tiny model's 256 px input (boxes scale by 0.5)."""
    return make_dataset(tmp_path_factory.mktemp("big"), train=1, val=2, seed=5, size_range=(384, 512), max_objects=3)


def _yaml(tmp_path, **predictor) -> str:
    spec = {"model": {"preset": "tiny", "seed": 0},
            "predictor": {"vocabulary": "coco", "device": "cpu", "precision": "fp32", "text_cache_dir": None,
                          **predictor}}
    path = tmp_path / "model.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return str(path)


@pytest.mark.parametrize("flags, expected", [
    ([], {"templates": "single", "clip_ensemble": "off", "synonyms": "names"}),
    (["--templates", "vild", "--clip-ensemble", "on", "--synonyms", "all"],
     {"templates": "vild", "clip_ensemble": "on", "synonyms": "all"}),
])
def test_model_yaml_settings_hold_unless_a_flag_is_given(flags, expected, tmp_path, synth, monkeypatch, capsys):
    import training.evaluate as evaluate_module
    from ovsam_ros.model.vocabulary import get_templates

    model = _yaml(tmp_path, templates="single", clip_ensemble=False, names_only=True)
    used = {}
    real = evaluate_module.evaluate

    def spy(predictor, *args, **kwargs):
        used["predictor"] = predictor
        return real(predictor, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    out = tmp_path / "eval.json"
    assert main(["--model", model, "--annotations", str(synth["val"]), "--images", str(synth["images"]),
                 "--prompts", "box", "--max-images", "1", "--no-progress", "--out", str(out), *flags]) == 0
    predictor = used["predictor"]
    assert predictor.templates == get_templates(expected["templates"])
    assert predictor.clip_ensemble is (expected["clip_ensemble"] == "on")
    assert predictor.names_only is (expected["synonyms"] == "names")
    settings = json.loads(out.read_text())["settings"]
    printed = capsys.readouterr().out.splitlines()[0]
    for key, value in expected.items():
        assert settings[key]["value"] == value
        assert settings[key]["from"] == (f"--{key.replace('_', '-')}" if flags else "model YAML")
        assert f"{key.replace('_', ' ')} {value} ({settings[key]['from']})" in printed


def test_shapes_model_is_evaluated_with_its_own_settings(synth, monkeypatch):
    """The bundled model: learned head only and the single template it trained with (issue #24 item 10)."""
    import training.evaluate as evaluate_module

    seen = {}
    one_instance = {"prompts": {"box": {"overall": {"count": 1}}}, "skipped": {}, "images": 1}
    monkeypatch.setattr(evaluate_module, "evaluate",
                        lambda predictor, *a, **k: seen.setdefault("p", predictor) and one_instance)
    monkeypatch.setattr(evaluate_module, "format_table", lambda metrics: "")
    assert main(["--model", "shapes", "--annotations", str(synth["val"]), "--images", str(synth["images"]),
                 "--no-progress"]) == 0
    assert seen["p"].clip_ensemble is False and len(seen["p"].templates) == 1


def _recording_predictor():
    from ovsam_ros.model import OVSAMConfig
    from ovsam_ros.model.ovsam import OVSAM
    from ovsam_ros.predictor import OVSAMPredictor

    torch.manual_seed(0)
    predictor = OVSAMPredictor(OVSAM(OVSAMConfig.tiny()).eval(), vocabulary=None, templates=("a photo of a {}.",),
                               clip_ensemble=True, optimize=False)
    pooled = []
    backbone = predictor.model.backbone
    real = backbone.pool_regions

    def record(c5, boxes, *args, **kwargs):
        pooled.append(boxes.detach().cpu().double().numpy().copy())
        return real(c5, boxes, *args, **kwargs)

    backbone.pool_regions = record
    return predictor, pooled


@pytest.mark.parametrize("option", ["scaled", "unscaled"])
def test_point_clip_box_option_pools_the_box_the_reference_point_configs_pool(option, big_scenes):
    coco = CocoInstances(big_scenes["val"], big_scenes["images"])
    predictor, pooled = _recording_predictor()
    metrics = evaluate(predictor, coco, ["box", "point"], max_images=1, progress=False, point_clip_box=option)
    record = coco.images[0]
    assert max(record.width, record.height) == 512  # the tiny model's input is 256: scale 0.5
    gt = np.array([inst.box_xyxy() for inst in record.instances if coco.split_of(inst.label) != "unused"])
    assert len(pooled) == 2 and metrics["prompts"]["point"]["overall"]["count"] == len(gt)
    # By hand: box prompts pool the GT box in input pixels (x 256/512); point prompts the same with
    # 'scaled', and the ORIGINAL numbers (the reference point configs' frame) with 'unscaled'.
    np.testing.assert_allclose(pooled[0], gt * 0.5, atol=1e-4)
    np.testing.assert_allclose(pooled[1], gt * (0.5 if option == "scaled" else 1.0), atol=1e-4)


def test_point_clip_box_rejects_unknown_frames(synth):
    coco = CocoInstances(synth["val"], synth["images"])
    with pytest.raises(ValueError, match="point_clip_box"):
        evaluate(object(), coco, ["point"], progress=False, point_clip_box="original")
