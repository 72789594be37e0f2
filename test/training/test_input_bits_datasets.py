"""The training datasets read 16-bit files by the camera's bit depth (``data.input_bits``), as the
node (``input_bits``) and the CLI (``--input-bits``) do: a robot's 12-bit PNGs must not train
16x too dark. Expected pixels come from ``ovsam_ros.image_input.to_uint8_rgb`` itself and from
the 8-bit picture the 12-bit file was made of (round(v8 * 4095 / 255) maps back to v8)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

from ovsam_ros.image_input import to_uint8_rgb
from training import evaluate, stage1, stage2
from training.config import ConfigError, load_config
from training.data import ClassFolderDataset, CocoInstances, ImageFolderDataset
from training.data.transforms import to_model_input

SIZE = 64  # the files' long side: the datasets' resize-longest is then the identity


def _picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, SIZE, 3), dtype=np.uint8)


def _write_12bit(path, v8: np.ndarray) -> np.ndarray:
    v12 = np.round(v8.astype(np.float64) * 4095 / 255).astype(np.uint16)  # 0..4095 in a 16-bit PNG
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), v12[:, :, ::-1])
    return v12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two 12-bit PNGs in an image folder, a class folder and a one-instance COCO JSON."""
    root = tmp_path_factory.mktemp("bits12")
    pictures = {f"f{i}.png": _picture(i) for i in range(2)}
    for name, v8 in pictures.items():
        v12 = _write_12bit(root / "images" / name, v8)
        _write_12bit(root / "classes" / "cup" / name, v8)
        # the package's rule on the same 12-bit values gives the 8-bit picture back
        assert np.array_equal(to_uint8_rgb(v12, input_bits=12), v8)
    h, w = pictures["f0.png"].shape[:2]
    coco = {"images": [{"id": i + 1, "file_name": name, "height": h, "width": w} for i, name in enumerate(pictures)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [8, 8, 20, 20], "area": 400,
                             "iscrowd": 0, "segmentation": [[8, 8, 28, 8, 28, 28, 8, 28]]} for i in range(2)],
            "categories": [{"id": 1, "name": "cup"}]}
    (root / "instances.json").write_text(json.dumps(coco))
    return root, list(pictures.values())


def _dark(image: np.ndarray) -> bool:  # read as 16-bit data: 0..4095 becomes 0..16 of 255
    return int(image.max()) <= 16


def test_coco_instances_read_12bit_pngs_by_input_bits(data):
    root, pictures = data
    coco = CocoInstances(root / "instances.json", root / "images", input_bits=12, check_images=True)
    for i, v8 in enumerate(pictures):
        assert np.array_equal(coco.load(i)[0], v8)
    assert _dark(CocoInstances(root / "instances.json", root / "images").load(0)[0])  # the default: 16-bit data


def test_image_folder_reads_12bit_pngs_by_input_bits(data):
    root, pictures = data
    folder = ImageFolderDataset(str(root / "images"), SIZE, input_bits=12, check_images=True)
    for i, v8 in enumerate(pictures):
        assert torch_equal(folder[(0, i)]["image"], to_model_input(v8, SIZE))
    default = ImageFolderDataset(str(root / "images"), SIZE)
    dark = to_uint8_rgb(cv2.imread(str(root / "images" / "f0.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1])
    assert _dark(dark) and torch_equal(default[(0, 0)]["image"], to_model_input(dark, SIZE))


def test_class_folders_read_12bit_pngs_by_input_bits(data):
    root, pictures = data
    classes = ClassFolderDataset(str(root / "classes"), None, SIZE, input_bits=12)
    for i, v8 in enumerate(pictures):
        assert torch_equal(classes[(0, i)]["image"], to_model_input(v8, SIZE))


def test_a_teacher_cache_entry_belongs_to_one_range_rule(data, tmp_path):
    """Teacher features of the dark (16-bit) reading must not be served to a 12-bit run."""
    from training.data import TeacherFeatureCache

    root, _ = data
    cache = TeacherFeatureCache(tmp_path / "cache", "teacher", "float32")
    keys = {}
    for bits in (16, 12, 10):
        folder = ImageFolderDataset(str(root / "images"), SIZE, input_bits=bits, cache=cache)
        keys[bits] = folder[(0, 0)]["cache_key"]
    assert keys[16] == cache.key(folder.files[0], SIZE, False)  # caches written before the option stay valid
    assert len(set(keys.values())) == 3


class _Stop(Exception):
    """Raised where the model would be built: the data is what these tests look at."""


def _capture(monkeypatch, module, name):
    made = []
    real = getattr(module, name)

    def build(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(module, name, build)
    return made


@pytest.fixture
def no_model(monkeypatch):
    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(stage1.engine, "build_model", stop)
    monkeypatch.setattr(evaluate, "build_eval_predictor", stop)


def test_stage1_passes_data_input_bits_to_its_images(data, tmp_path, monkeypatch, no_model):
    root, pictures = data
    made = _capture(monkeypatch, stage1, "ImageFolderDataset")
    cfg = load_config(stage1.DEFAULTS, "stage1_tiny", [f"data.images={root / 'images'}", f"output_dir={tmp_path / 'r'}",
                                                       "data.input_bits=12", "train.progress=false"])
    with pytest.raises(_Stop):
        stage1.train(cfg, quiet=True)
    [folder] = made
    folder.set_image_size(SIZE)
    assert torch_equal(folder[(0, 1)]["image"], to_model_input(pictures[1], SIZE))


def test_stage2_passes_data_input_bits_to_its_annotations_and_class_folders(data, tmp_path, monkeypatch, no_model):
    root, pictures = data
    coco = _capture(monkeypatch, stage2, "CocoInstances")
    classes = _capture(monkeypatch, stage2, "ClassFolderDataset")
    cfg = load_config(stage2.DEFAULTS, "stage2_tiny", [
        f"data.annotations={root / 'instances.json'}", f"data.images={root / 'images'}", "data.input_bits=12",
        f"data.class_folders.root={root / 'classes'}", f"output_dir={tmp_path / 'r'}", "model.init_checkpoint=null"])
    with pytest.raises(_Stop):
        stage2.train(cfg, quiet=True)
    assert np.array_equal(coco[0].load(1)[0], pictures[1])
    classes[0].set_image_size(SIZE)
    assert torch_equal(classes[0][(0, 0)]["image"], to_model_input(pictures[0], SIZE))


def test_evaluate_passes_input_bits_to_its_annotations(data, monkeypatch, no_model):
    root, pictures = data
    coco = _capture(monkeypatch, evaluate, "CocoInstances")
    with pytest.raises(_Stop):
        evaluate.main(["--checkpoint", "unused.pt", "--annotations", str(root / "instances.json"),
                       "--images", str(root / "images"), "--input-bits", "12"])
    assert np.array_equal(coco[0].load(0)[0], pictures[0])


@pytest.mark.parametrize("key, value", [("input_bits", 7), ("input_bits", 17), ("input_bits", 12.5),
                                        ("input_bits", True), ("float_max", 0), ("float_max", -1.0),
                                        ("float_max", "bright")])
@pytest.mark.parametrize("stage", [stage1, stage2])
def test_a_config_with_a_bad_range_option_is_refused_naming_the_key(tmp_path, key, value, stage):
    path = tmp_path / "bits.yaml"
    path.write_text(yaml.safe_dump({"data": {key: value}}))
    with pytest.raises(ConfigError, match=rf"^data\.{key} must be"):
        load_config(stage.DEFAULTS, str(path))
    with pytest.raises(ConfigError, match=rf"data\.{key} must be"):
        load_config(stage.DEFAULTS, None, [f"data.{key}={json.dumps(value)}"])


def test_the_command_line_refuses_input_bits_7_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        stage1.main(["--set", "data.input_bits=7", "--output-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "data.input_bits must be an integer from 8 to 16" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert load_config(stage2.DEFAULTS, "stage2_tiny", ["data.input_bits=10", "data.float_max=255"])["data"] \
        == {**load_config(stage2.DEFAULTS, "stage2_tiny")["data"], "input_bits": 10, "float_max": 255}


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) and a.shape == b.shape
