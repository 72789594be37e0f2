"""What loading a training checkpoint says (probe findings): a stage-1 checkpoint used as a model names
regions with a label head nobody trained; a chosen vocabulary silently replaced a stage-2 checkpoint's own."""

from __future__ import annotations

import logging

import yaml


def _records(caplog, text):
    return [r for r in caplog.records if r.name == "ovsam_ros.load" and text in r.getMessage()]


def test_a_stage1_checkpoint_as_a_model_warns_that_its_label_head_is_untrained(stage1_checkpoint, caplog):
    """Before: `ovsam segment --model runs/s1/model.pt` printed 'giraffe 0.996' without a word."""
    from ovsam_ros.loading import build_predictor

    with caplog.at_level(logging.INFO, logger="ovsam_ros.load"):
        build_predictor(stage1_checkpoint, device="cpu", text_cache_dir=None)
    [warning] = _records(caplog, "is a stage-1 checkpoint")
    assert warning.levelno == logging.WARNING and "label head (CLIP2SAM) is not" in warning.getMessage()


def test_a_stage2_checkpoint_is_not_called_stage1(stage1_checkpoint, synth, tmp_path, caplog):
    from ovsam_ros.loading import build_predictor
    from training import stage2
    from training.config import load_config

    cfg = load_config(stage2.DEFAULTS, "stage2_tiny", [
        f"data.annotations={synth['train']}", f"data.images={synth['images']}",
        f"model.init_checkpoint={stage1_checkpoint}", f"output_dir={tmp_path / 's2'}", "train.max_steps=1",
        "train.batch_size=2", "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0",
        "data.class_folders.root=null"])
    model = stage2.train(cfg, quiet=True).final_model
    with caplog.at_level(logging.INFO, logger="ovsam_ros.load"):
        build_predictor(str(model), device="cpu", text_cache_dir=None)
        assert not _records(caplog, "stage-1") and not _records(caplog, "class(es)")
        # a vocabulary chosen in the YAML replaces the trained classes: said once, naming both
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({"model": {"ovsam_checkpoint": str(model)},
                                        "predictor": {"vocabulary": "coco", "device": "cpu", "text_cache_dir": None}}))
        predictor = build_predictor(path)
    assert len(predictor.vocabulary) == 80
    [line] = _records(caplog, "class(es)")
    assert line.levelno == logging.INFO and "vocabulary 'coco' (80 classes)" in line.getMessage()
    assert str(model) in line.getMessage()
