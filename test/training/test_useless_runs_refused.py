"""Training runs that used to end "successfully" with a useless model (probe, fixD):

1. a diverged run (NaN loss) stops at that step with one line, exit status 2, and saves nothing
   non-finite; metrics.jsonl stays strict JSON; settings that make a loss undefined are refused;
2. a stage 2 whose masks hold no usable pixel (normalised polygons, all-zero RLE, polygons outside
   the image, min_mask_area above every mask) is refused before training, each reason counted;
3. a preset with a published CLIP and no model.clip_weights is refused (model.random_clip opts in);
4. a bad train.device / --device is a one-line error naming the caller's option.

Tiny stage-2 runs on a generated 4-image COCO file (about a second each on a CPU).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import engine, stage1, stage2
from training.config import ConfigError, load_config
from training.data.coco import CocoInstances, decode_segmentation
from training.data.common import DataError

H, W = 96, 128


def _square(x: float, y: float, side: float) -> list:
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def _dataset(root: Path, segmentations: list) -> Path:
    """One image per segmentation (a red square drawn at 20..60 px), category 'ball'."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, seg in enumerate(segmentations):
        rgb = np.full((H, W, 3), 200, np.uint8)
        rgb[20:60, 20:60] = (220, 40, 40)
        Image.fromarray(rgb).save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": H, "width": W})
        annotations.append({"id": i + 1, "image_id": i, "category_id": 7, "segmentation": seg,
                            "bbox": [20, 20, 40, 40], "area": 1600.0, "iscrowd": 0})
    path = root / "balls.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 7, "name": "ball"}]}))
    return path


def _sets(root: Path, annotations: Path, *extra: str) -> list:
    return [f"data.annotations={annotations}", f"data.images={root / 'images'}", "model.init_checkpoint=null",
            f"output_dir={root / 'run'}", "train.progress=false", "train.tensorboard=false", "train.max_steps=2",
            "train.batch_size=2", "train.device=cpu", "train.warmup_steps=0", *extra]


def _cfg(root: Path, annotations: Path, *extra: str):
    return load_config(stage2.DEFAULTS, "stage2_tiny", _sets(root, annotations, *extra))


def _zero_rle() -> dict:
    return {"size": [H, W], "counts": [H * W]}


GOOD = [[_square(20, 20, 40)]] * 4


# ----------------------------------------------------------------------------- 1. divergence
def _strict_json(line: str):
    def refuse(name):
        raise AssertionError(f"metrics.jsonl holds {name}, which is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_diverged_run_stops_at_the_nan_step_and_saves_nothing_non_finite(tmp_path, capsys):
    annotations = _dataset(tmp_path, GOOD)
    sets = _sets(tmp_path, annotations, "train.lr=1e8", "train.schedule=constant", "train.max_steps=8",
                 "train.checkpoint_every=1", "train.grad_clip=0")
    run = tmp_path / "run"
    assert stage2.main(["--config", "stage2_tiny", "--quiet"] + [a for s in sets for a in ("--set", s)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "training diverged at step" in err and "lr 1.000e+08" in err
    assert "non-finite loss term(s)" in err and "loss=nan" in err  # the loss names the step, not its gradient
    assert not (run / "model.pt").exists()
    records = [_strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    diverged = int(err.split("training diverged at step ")[1].split()[0])
    assert [r["step"] for r in records] == list(range(1, diverged))  # the NaN step is not logged
    assert all(math.isfinite(r["loss"]) for r in records)
    saved = sorted((run / "checkpoints").glob("step-*/model.pt"))
    assert saved and f"checkpoints/step-{diverged - 1:08d}" in err  # the last complete one, named
    from ovsam_ros.model.checkpoints import read_ovsam_checkpoint

    for path in saved:
        state = read_ovsam_checkpoint(path)[1]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path


def test_non_finite_gradient_without_grad_scaler_stops_before_the_step(tmp_path, monkeypatch):
    annotations = _dataset(tmp_path, GOOD)
    cfg = _cfg(tmp_path, annotations)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: torch.tensor(float("inf")))
    with pytest.raises(engine.TrainingDiverged, match=r"step 1 of 2: non-finite gradient norm grad_norm=inf"):
        stage2.train(cfg, quiet=True)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_save_refuses_a_model_with_non_finite_weights(tmp_path):
    from ovsam_ros.model.build import build_ovsam
    from ovsam_ros.model.config import OVSAMConfig

    model = build_ovsam(OVSAMConfig.tiny())
    ckpt = engine.CheckpointManager(tmp_path)
    engine.check_finite_weights(model, "model.pt", ckpt)  # finite: no error
    with torch.no_grad():
        model.clip2sam.state_dict(keep_vars=True)[next(iter(model.clip2sam.state_dict()))].view(-1)[0] = float("nan")
    with pytest.raises(engine.TrainingDiverged, match=r"not saving model.pt: 1 weight tensor\(s\) .*clip2sam\."):
        engine.check_finite_weights(model, "model.pt", ckpt)


def test_metrics_line_is_strict_json():
    line = engine.metrics_line({"step": 3, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-4})
    assert _strict_json(line) == {"step": 3, "loss": None, "grad_norm": None, "lr": 1e-4}


@pytest.mark.parametrize("setting", ["loss.num_points=0", "loss.num_points=-5", "loss.num_points=2.5",
                                     "data.instances_per_image=0", "data.instances_per_image=true"])
def test_counts_that_make_training_undefined_are_refused_at_config_load(setting):
    key = setting.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key} must be a whole number >= 1"):
        load_config(stage2.DEFAULTS, "stage2_tiny", [setting])
    load_config(stage2.DEFAULTS, "stage2_tiny", [f"{key}=1"])  # the smallest allowed


# ----------------------------------------------------------------------------- 2. no usable instance
@pytest.mark.parametrize("segmentations, expected", [
    ([[_square(0.1, 0.2, 0.5)]] * 4, "4 polygon_coordinates_look_normalised; the polygons' coordinates all lie in 0..1"),
    ([_zero_rle()] * 4, "4 mask_empty_after_decoding; masks that decode to no pixel"),
    ([[_square(500, 500, 40)]] * 4, "4 mask_empty_after_decoding"),
], ids=["normalised_polygons", "all_zero_rle", "polygons_outside_the_image"])
def test_stage2_without_a_usable_mask_is_refused_naming_the_reason(tmp_path, segmentations, expected):
    cfg = _cfg(tmp_path, _dataset(tmp_path, segmentations))
    with pytest.raises(DataError, match="0 of 4 instances usable for training: ") as err:
        stage2.train(cfg, quiet=True)
    assert expected in str(err.value)
    assert not engine.run_folder_contents(tmp_path / "run")  # refused before a run file was written


def test_min_mask_area_above_every_mask_is_refused_before_training(tmp_path):
    cfg = _cfg(tmp_path, _dataset(tmp_path, GOOD), "data.min_mask_area=100000")
    with pytest.raises(DataError, match=r"0 of 4 instances usable for training: 4 below data.min_mask_area 100000 "
                                        r"px at every scale of data.scale_range \[0.8, 1.25\]"):
        stage2.train(cfg, quiet=True)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_data_report_counts_each_unusable_mask_by_reason(tmp_path):
    # one all-zero RLE, one normalised polygon, one square of 2x2 px: at most (2 x 2.5 + 2)^2 = 49 px at the
    # largest scale (input 256 / side 128 x jitter 1.25), under min_mask_area 60
    segs = [[_square(20, 20, 40)], _zero_rle(), [_square(0.1, 0.1, 0.5)], [_square(30, 30, 2)]]
    info = stage2.train(_cfg(tmp_path, _dataset(tmp_path, segs), "train.max_steps=1", "train.batch_size=1",
                             "data.min_mask_area=60"), quiet=True)
    report = json.loads((info.output_dir / "data_report.json").read_text())["detection"]
    counts = report["skipped"]["counts"]
    assert counts["mask_empty_after_decoding"] == 1
    assert counts["polygon_coordinates_look_normalised"] == 1
    assert counts["below_min_mask_area"] == 1
    assert report["instances"] == 1 and report["images"] == 1


def test_steps_without_an_instance_still_step_and_are_flagged(tmp_path, monkeypatch, caplog):
    """A sample drawn at a small scale can lose every mask (min_mask_area): such steps run (zero loss, every
    parameter in the graph for DDP) and each is flagged. The up-front check is bypassed to force them."""
    from training.data.datasets import DetectionDataset

    monkeypatch.setattr(DetectionDataset, "never_big_enough", lambda self, record, inst: False)
    cfg = _cfg(tmp_path, _dataset(tmp_path, GOOD), "data.min_mask_area=1000000", "train.log_every=1")
    with caplog.at_level("WARNING", logger="training"):
        info = stage2.train(cfg, quiet=True)
    assert [r["count"] for r in info.history] == [0.0, 0.0] and all(r["loss"] == 0.0 for r in info.history)
    flagged = [r.getMessage() for r in caplog.records if "trained on nothing" in r.getMessage()]
    assert len(flagged) == 2 and flagged[0].startswith("[stage2] step 1 trained on nothing: its batch held 0")


def test_measured_mask_area_is_the_decoded_masks_pixel_count(tmp_path):
    segs = [[_square(20, 20, 40)], [_square(10.5, 5.5, 13)], {"size": [H, W], "counts": [100, 37, H * W - 137]},
            [_square(120, 90, 40)]]  # the last one is partly outside the image: clipped
    coco = CocoInstances(_dataset(tmp_path, segs), tmp_path / "images")
    for record in coco.images:
        for inst in record.instances:
            assert inst.mask_area == int(decode_segmentation(inst.segmentation, H, W).sum())
    assert coco.images[2].instances[0].mask_area == 37  # hand count of the uncompressed RLE
    assert coco.images[0].instances[0].mask_area == 40 * 40  # pycocotools rasterises [20, 60) x [20, 60)


# ----------------------------------------------------------------------------- 3. random CLIP
def test_published_clip_preset_without_weights_is_refused(tmp_path, capsys):
    out = tmp_path / "rn"
    code = stage1.main(["--config", "stage1_rn50x16", "--output-dir", str(out), "--set",
                        f"data.images={tmp_path}", "--set", "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.clip_weights is not set: preset 'rn50x16'" in err
    assert "ovsam weights download --model rn50x16" in err and "model.random_clip=true" in err
    assert not engine.run_folder_contents(out)


def test_random_clip_is_an_explicit_opt_in_and_tiny_presets_are_unaffected():
    base = dict(engine.MODEL_DEFAULTS)
    with pytest.raises(ValueError, match="model.clip_weights is not set"):
        engine.check_clip_weights({**base, "preset": "convnext_large"})
    engine.check_clip_weights({**base, "preset": "rn50x16", "random_clip": True})
    engine.check_clip_weights({**base, "preset": "rn50x16", "clip_weights": "/x/RN50x16-openai.pt"})
    engine.check_clip_weights({**base, "preset": "rn50x16", "init_checkpoint": "/x/model.pt"})  # brings its own
    for preset in ("tiny", "tiny-convnext"):
        engine.check_clip_weights({**base, "preset": preset})
    with pytest.raises(ValueError, match="model.random_clip must be true or false"):
        engine.check_clip_weights({**base, "preset": "rn50x16", "random_clip": "yes"})


# ----------------------------------------------------------------------------- 4. devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")
@pytest.mark.parametrize("spec, why", [
    ("cuda", "requested but CUDA is not available"), ("cuda:0", "requested but CUDA is not available"),
    ("gpu", "not a device name"), ("foo", "not a device name"), ("mps", "training runs on cpu or cuda only"),
])
@pytest.mark.parametrize("option", ["train.device", "--device"])
def test_bad_device_is_one_clear_error_naming_the_callers_option(spec, why, option):
    with pytest.raises(ValueError) as err:
        engine.setup_distributed(spec, option=option)
    text = str(err.value)
    assert text.startswith(f"{option}=") and why in text and "use auto, cpu, cuda or cuda:N" in text
    assert engine.setup_distributed("cpu", option=option).device == torch.device("cpu")
