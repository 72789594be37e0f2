"""Stage 0 reads its training and validation scenes by ``data.input_bits`` / ``data.float_max``, as
stages 1 and 2 do: 12-bit PNGs must not become crops 16x too dark. Expected pixels are the 8-bit
picture each 12-bit file was made of (round(v8 * 4095 / 255) maps back to v8)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ovsam_ros.image_input import to_uint8_rgb
from training import stage0
from training.config import ConfigError, load_config


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two 12-bit PNG scenes with one square each; one JSON for training, one for validation."""
    root = tmp_path_factory.mktemp("stage0bits")
    (root / "images").mkdir()
    pictures = []
    for i in range(2):
        v8 = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        v12 = np.round(v8.astype(np.float64) * 4095 / 255).astype(np.uint16)
        assert cv2.imwrite(str(root / "images" / f"s{i}.png"), v12[:, :, ::-1])
        assert np.array_equal(to_uint8_rgb(v12, input_bits=12), v8)
        pictures.append(v8)
    coco = {"images": [{"id": i + 1, "file_name": f"s{i}.png", "height": 48, "width": 64} for i in range(2)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [8, 8, 20, 20], "area": 400,
                             "iscrowd": 0, "segmentation": [[8, 8, 28, 8, 28, 28, 8, 28]]} for i in range(2)],
            "categories": [{"id": 1, "name": "red square", "split": "base"}]}
    for name in ("train.json", "val.json"):
        (root / name).write_text(json.dumps(coco))
    return root, pictures


class _Stop(Exception):
    """Raised where training would start: the data is what these tests look at."""


def _datasets(monkeypatch, scenes, tmp_path, *sets):
    root, _ = scenes
    made = []
    real = stage0.CocoInstances

    def build(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(stage0, "CocoInstances", build)
    monkeypatch.setattr(stage0, "BatchMaker", stop)
    cfg = load_config(stage0.DEFAULTS, "stage0_shapes", [
        f"data.annotations={root / 'train.json'}", f"data.val_annotations={root / 'val.json'}",
        f"data.images={root / 'images'}", f"output_dir={tmp_path / 'r'}", *sets])
    with pytest.raises(_Stop):
        stage0.train(cfg, quiet=True)
    return made


def test_stage0_reads_its_scenes_by_data_input_bits(scenes, tmp_path, monkeypatch):
    _, pictures = scenes
    train, val = _datasets(monkeypatch, scenes, tmp_path, "data.input_bits=12")
    for coco in (train, val):
        for i, v8 in enumerate(pictures):
            assert np.array_equal(coco.load(i)[0], v8)
    default_train, _ = _datasets(monkeypatch, scenes, tmp_path / "d")
    assert int(default_train.load(0)[0].max()) <= 16  # 12-bit data read as 16-bit: near black


@pytest.mark.parametrize("key, value", [("input_bits", 7), ("float_max", 0)])
def test_stage0_refuses_a_bad_range_option_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^data\.{key} must be"):
        load_config(stage0.DEFAULTS, "stage0_shapes", [f"data.{key}={value}"])


def test_stage0_command_line_refuses_input_bits_7_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        stage0.main(["--set", "data.input_bits=7", "--output-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "data.input_bits must be an integer from 8 to 16" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
