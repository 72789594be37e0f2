"""Issue #28 items 3-4: a stage-2 model remembers the classes it was trained on, one base/novel
rule for a split-less annotation file (training and evaluation), and your own classes with
the RN50x16 recipe (data.vocabulary=null).

A tiny stage 2 runs 2 steps on a generated one-class ("ball") COCO file without 'split' keys
(about a second on a CPU); its model.pt must label with 'ball' wherever a model YAML, the CLI
or the node (build_predictor with vocabulary=None) loads it without an explicit vocabulary.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from training import stage2
from training.config import load_config
from training.data.coco import CocoInstances
from training.data.common import DataError

from training_helpers import ROOT, subprocess_env


def _ball_dataset(root: Path) -> Path:
    """4 images, one red disc each, category 'ball' (id 7) with no 'split' key."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128]
    for i in range(4):
        cx, cy, r = int(rng.integers(30, 98)), int(rng.integers(30, 66)), int(rng.integers(12, 24))
        rgb = np.full((96, 128, 3), 200, np.uint8)
        rgb[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (220, 40, 40)
        Image.fromarray(rgb).save(root / "images" / f"{i}.png")
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        polygon = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().tolist()
        images.append({"id": i, "file_name": f"{i}.png", "height": 96, "width": 128})
        annotations.append({"id": i + 1, "image_id": i, "category_id": 7, "segmentation": [polygon],
                            "bbox": [cx - r, cy - r, 2 * r, 2 * r], "area": 3.14 * r * r, "iscrowd": 0})
    path = root / "balls.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 7, "name": "ball"}]}))
    return path


@pytest.fixture(scope="module")
def ball_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("balls")
    annotations = _ball_dataset(root)
    cfg = load_config(stage2.DEFAULTS, "stage2_tiny", [
        f"data.annotations={annotations}", f"data.images={root / 'images'}", "model.init_checkpoint=null",
        f"output_dir={root / 'run'}", "train.progress=false", "train.tensorboard=false", "train.max_steps=2",
        "train.batch_size=2", "train.checkpoint_every=1", "train.device=cpu", "train.warmup_steps=0"])
    info = stage2.train(cfg, quiet=True)
    return {"root": root, "annotations": annotations, "images": root / "images", "model": Path(info.final_model)}


def _yaml(folder: Path, model: Path, **predictor) -> Path:
    path = folder / f"model_{len(list(folder.glob('model_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"model": {"ovsam_checkpoint": str(model)},
                                    "predictor": {"device": "cpu", "text_cache_dir": None, **predictor}}))
    return path


def _stored_vocabulary(path: Path):
    from ovsam_ros.model.checkpoints import read_ovsam_checkpoint

    return read_ovsam_checkpoint(path)[2]["extra"].get("vocabulary")


def test_model_pt_and_step_checkpoints_store_the_training_vocabulary(ball_run):
    step_models = sorted((ball_run["model"].parent / "checkpoints").glob("step-*/model.pt"))
    assert step_models, "checkpoint_every=1 writes step checkpoints"
    for path in [ball_run["model"], *step_models]:
        stored = _stored_vocabulary(path)
        assert stored is not None, path
        assert [c["name"] for c in stored["classes"]] == ["ball"]
        assert [c["synonyms"] for c in stored["classes"]] == [["ball"]]
        assert [c["split"] for c in stored["classes"]] == ["base"]  # split-less file: base (the one rule)


def test_yaml_without_vocabulary_labels_with_the_trained_class(ball_run, tmp_path, caplog):
    from ovsam_ros.loading import build_predictor

    path = _yaml(tmp_path, ball_run["model"])
    with caplog.at_level(logging.INFO, logger="ovsam_ros.load"):
        predictor = build_predictor(path, vocabulary=None)  # the node's call with vocabulary '' (= None)
    assert predictor.vocabulary.classes == ["ball"]
    assert predictor.vocabulary.split == ["base"]
    lines = [r for r in caplog.records if "was trained with" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "ball" in lines[0].getMessage()
    image = np.asarray(Image.open(ball_run["images"] / "0.png").convert("RGB"))
    predictor.set_image(image)
    from ovsam_ros.prompts import Prompt

    result = predictor.predict([Prompt(box=[10, 10, 100, 80])])[0]
    assert result.labels and result.labels[0].name == "ball"


def test_a_checkpoint_path_as_model_uses_the_same_rule(ball_run):
    from ovsam_ros.loading import build_predictor

    predictor = build_predictor(str(ball_run["model"]), device="cpu", text_cache_dir=None)
    assert predictor.vocabulary.classes == ["ball"]


def test_an_explicit_vocabulary_still_wins(ball_run, tmp_path, caplog):
    from ovsam_ros.loading import build_predictor

    with caplog.at_level(logging.INFO, logger="ovsam_ros.load"):
        in_yaml = build_predictor(_yaml(tmp_path, ball_run["model"], vocabulary="cup, door handle"))
        by_caller = build_predictor(_yaml(tmp_path, ball_run["model"]), vocabulary="coco")
        yaml_coco = build_predictor(_yaml(tmp_path, ball_run["model"], vocabulary="coco"))
    assert in_yaml.vocabulary.classes == ["cup", "door handle"]
    assert len(by_caller.vocabulary) == 80 and len(yaml_coco.vocabulary) == 80
    assert "was trained with" not in caplog.text


def test_ovsam_segment_labels_with_the_trained_class(ball_run, tmp_path):
    path = _yaml(tmp_path, ball_run["model"])
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "ovsam_ros.cli", "segment", str(ball_run["images"] / "0.png"),
                           "--model", str(path), "--box", "10,10,100,80", "--out", str(out)],
                          cwd=str(tmp_path), env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "was trained with" in proc.stderr
    result = json.loads(out.read_text())
    names = [label["name"] for inst in result["instances"] for label in inst["labels"]]
    assert names and set(names) == {"ball"}, result
    assert " ball " in proc.stdout


def test_split_less_file_is_base_in_training_and_evaluation(ball_run):
    """ONE rule: training keeps every class of a split-less file as base (trained on); evaluation
    reports the same classes as base and the CLIP ensemble weighs them as base."""
    from training.evaluate import build_eval_predictor, evaluate

    coco = CocoInstances(ball_run["annotations"], ball_run["images"])
    predictor = build_eval_predictor(str(ball_run["model"]), None, "cpu", "fp32", "single", clip_ensemble=True)
    metrics = evaluate(predictor, coco, prompts=("box",), progress=False)
    assert metrics["prompts"]["box"]["per_class"]["ball"]["split"] == "base"
    assert "novel" not in metrics["prompts"]["box"]
    assert predictor.text.vocab.split == ["base"]  # the ensemble's alpha (base), not beta (novel)
    assert coco.vocab.split == ["base"] and coco.split_of(0) == "base"
    trained = _stored_vocabulary(ball_run["model"])  # what training used: the same rule
    assert trained is not None and trained["classes"][0]["split"] == "base"


def test_split_rule_is_said_once(ball_run, caplog):
    with caplog.at_level(logging.WARNING):
        CocoInstances(ball_run["annotations"], ball_run["images"], keep_splits=["base"])
    said = [r for r in caplog.records if "no base/novel split" in r.getMessage()]
    assert len(said) == 1 and "count as base" in said[0].getMessage()


def test_unknown_category_error_suggests_the_files_own_classes(ball_run):
    with pytest.raises(DataError) as error:
        CocoInstances(ball_run["annotations"], ball_run["images"], vocabulary="coco")
    message = str(error.value)
    assert "'ball'" in message and "data.vocabulary=null" in message
    assert message.index("data.vocabulary=null") < message.index("unknown_category")


def test_rn50x16_recipe_takes_your_own_classes():
    cfg = load_config(stage2.DEFAULTS, "stage2_coco_rn50x16", ["data.vocabulary=null"])
    assert cfg["data"]["vocabulary"] is None
    recipe = (ROOT / "training" / "configs" / "stage2_coco_rn50x16.yaml").read_text()
    assert "data.vocabulary=null" in recipe


# ----------------------------------------------------------------------------- prompt templates
# stage2_tiny trains with `text.templates: single`; the predictor default is vild (14 templates).
# CLIP2SAM learned to match text embeddings averaged over the training templates: before, a model YAML
# naming the checkpoint (or the checkpoint itself as --model, or ovsam-evaluate --checkpoint) labelled
# against vild-averaged embeddings, which the head never saw.
def test_checkpoints_store_the_training_templates(ball_run):
    from ovsam_ros.model.checkpoints import read_ovsam_checkpoint
    from ovsam_ros.model.vocabulary import SINGLE_TEMPLATES

    step_models = sorted((ball_run["model"].parent / "checkpoints").glob("step-*/model.pt"))
    for path in [ball_run["model"], *step_models]:
        assert read_ovsam_checkpoint(path)[2]["extra"]["text_templates"] == list(SINGLE_TEMPLATES), path


def test_a_predictor_of_the_checkpoint_uses_the_text_embeddings_it_was_trained_against(ball_run, tmp_path, caplog):
    from ovsam_ros.loading import build_predictor
    from ovsam_ros.model.vocabulary import SINGLE_TEMPLATES, VILD_TEMPLATES

    with caplog.at_level(logging.INFO, logger="ovsam_ros.load"):
        from_yaml = build_predictor(_yaml(tmp_path, ball_run["model"]), vocabulary="ball, cube")
        as_model = build_predictor(str(ball_run["model"]), device="cpu", text_cache_dir=None)
    assert from_yaml.templates == SINGLE_TEMPLATES and as_model.templates == SINGLE_TEMPLATES
    lines = [r.getMessage() for r in caplog.records if "prompt templates" in r.getMessage()]
    assert len(lines) == 2 and all("the 1 template(s)" in m for m in lines)
    # the same embeddings stage 2 computed for these classes (independent: the training code's encoder)
    want = stage2.encode_text(from_yaml.model, from_yaml.vocabulary, "single", None, torch.device("cpu"))
    torch.testing.assert_close(from_yaml.text.embeddings.cpu(), want.embeddings.cpu())
    # a YAML or caller naming templates still wins
    assert build_predictor(_yaml(tmp_path, ball_run["model"], templates="vild")).templates == VILD_TEMPLATES
    assert build_predictor(_yaml(tmp_path, ball_run["model"]), templates="vild").templates == VILD_TEMPLATES


def test_ovsam_evaluate_checkpoint_uses_and_names_the_training_templates(ball_run, tmp_path):
    out = tmp_path / "metrics.json"
    base = [sys.executable, "-m", "training.evaluate", "--checkpoint", str(ball_run["model"]),
            "--annotations", str(ball_run["annotations"]), "--images", str(ball_run["images"]), "--out", str(out)]
    proc = subprocess.run(base, cwd=str(ROOT), env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads(out.read_text())["settings"]
    assert settings["templates"] == {"value": "single", "from": "the checkpoint (the templates it was trained with)"}
    proc = subprocess.run(base + ["--templates", "vild"], cwd=str(ROOT), env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["settings"]["templates"] == {"value": "vild", "from": "--templates"}


def test_an_onnx_export_of_the_checkpoint_keeps_its_classes_and_templates(ball_run, tmp_path):
    """Before: the export's model.yaml said `vocabulary: coco` (the PredictorSpec default) for a checkpoint
    YAML naming no vocabulary, so the Jetson (ONNX) model named COCO classes where the PyTorch one said
    'ball', and used the 14 vild templates."""
    pytest.importorskip("onnxruntime")
    from ovsam_ros import cli
    from ovsam_ros.loading import build_predictor
    from ovsam_ros.model.vocabulary import SINGLE_TEMPLATES
    from ovsam_ros.prompts import Prompt

    out = tmp_path / "onnx"
    assert cli.main(["export", "--model", str(_yaml(tmp_path, ball_run["model"])), "--out", str(out),
                     "--no-check", "--no-multimask", "--threads", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "vocabulary.json" in manifest["sha256"]  # owned and checked like the graphs
    onnx = build_predictor(out / "model.yaml")
    torch_model = build_predictor(_yaml(tmp_path, ball_run["model"]))
    assert onnx.vocabulary.classes == torch_model.vocabulary.classes == ["ball"]
    assert onnx.templates == torch_model.templates == SINGLE_TEMPLATES
    image = np.asarray(Image.open(ball_run["images"] / "0.png").convert("RGB"))
    onnx.set_image(image)
    assert onnx.predict([Prompt(box=[10, 10, 100, 80])])[0].labels[0].name == "ball"
    # a YAML naming a vocabulary keeps it (no vocabulary.json written)
    out2 = tmp_path / "onnx_named"
    assert cli.main(["export", "--model", str(_yaml(tmp_path, ball_run["model"], vocabulary="cup, plate")),
                     "--out", str(out2), "--no-check", "--no-multimask", "--threads", "2"]) == 0
    assert not (out2 / "vocabulary.json").exists()
    assert build_predictor(out2 / "model.yaml").vocabulary.classes == ["cup", "plate"]
