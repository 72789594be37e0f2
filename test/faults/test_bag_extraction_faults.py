"""Bag extraction faults: stale output folders, NaN/inf/reversed options, depth images, a
failure half-way. Bags are written with ``rosbags`` in both storage formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, ImageFolderDataset
from training.data.rosbag import extract_bag, main
from training_helpers import image_msg, typestore_with_ovsam, write_bag

T0 = 1_700_000_000_000_000_000
RAW = "/cam/image_raw"
DEPTH16, DEPTH32 = "/cam/depth16", "/cam/depth32"
TOPICS = {RAW: "sensor_msgs/msg/Image", DEPTH16: "sensor_msgs/msg/Image", DEPTH32: "sensor_msgs/msg/Image"}


def _frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (12, 16, 3), dtype=np.uint8)


def _depth16(i: int) -> np.ndarray:
    depth = np.full((12, 16), 3500 + i, np.uint16)  # millimetres: 3.5 m
    depth[0, 0], depth[1, 1] = 0, 65535
    return depth


def _depth32(i: int) -> np.ndarray:
    depth = np.linspace(0.25, 7.5, 12 * 16, dtype=np.float32).reshape(12, 16) + i
    depth[2, 2] = np.nan  # no return: NaN must survive too
    return depth


def _raw_msg(store, stamp: int, pixels: np.ndarray, encoding: str):
    Image = store.types["sensor_msgs/msg/Image"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    return Image(header=Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam"),
                 height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=0,
                 step=pixels.shape[1] * pixels.itemsize, data=np.ascontiguousarray(pixels).reshape(-1).view(np.uint8))


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def bag(request, tmp_path_factory):
    store = typestore_with_ovsam()
    msgs = []
    for i in range(12):  # 10 Hz
        stamp = T0 + i * 100_000_000
        msgs.append((RAW, stamp + 1, image_msg(store, stamp, "cam", _frame(i))))
        msgs.append((DEPTH16, stamp + 2, _raw_msg(store, stamp, _depth16(i), "16UC1")))
        msgs.append((DEPTH32, stamp + 3, _raw_msg(store, stamp, _depth32(i), "32FC1")))
    return write_bag(tmp_path_factory.mktemp(request.param) / "bag", request.param, TOPICS, msgs, store)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_non_empty_output_folder_is_refused_unless_overwrite(bag, tmp_path):
    out = tmp_path / "robot"
    first = extract_bag(str(bag), [RAW], str(out))
    assert len(first["frames"]) == 12
    before = _tree(out)
    # Before: a second extraction at --rate 2 left 12 images next to a 3-frame manifest.
    with pytest.raises(DataError, match="is not empty .*--overwrite"):
        extract_bag(str(bag), [RAW], str(out), rate=2.0)
    assert _tree(out) == before  # nothing touched
    second = extract_bag(str(bag), [RAW], str(out), rate=2.0, overwrite=True)
    files = sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*.png"))
    assert files == sorted(f["file"] for f in second["frames"]) and len(files) == 3  # stamps 0.0, 0.5, 1.0 s
    assert sorted(p.name for p in tmp_path.iterdir()) == ["robot"]  # no staging or old folder left
    assert len(ImageFolderDataset(str(out / "images"), 64)) == 3


def test_stage1_reads_the_manifest_not_the_folder(bag, tmp_path, caplog):
    out = tmp_path / "robot"
    extract_bag(str(bag), [RAW], str(out), rate=2.0)
    stale = out / "images" / "cam_image_raw" / "0000000000000000001.png"
    stale.write_bytes((out / next(iter(json.loads((out / "manifest.json").read_text())["frames"]))["file"]).read_bytes())
    for root in (out / "images", out):
        ds = ImageFolderDataset(str(root), 64)
        assert len(ds) == 3 and str(stale) not in ds.files
    assert "not in the manifest" in caplog.text
    listed = json.loads((out / "manifest.json").read_text())["frames"][0]["file"]
    (out / listed).unlink()
    with pytest.raises(DataError, match="missing"):
        ImageFolderDataset(str(out / "images"), 64)


@pytest.mark.parametrize("argv, message", [
    (["--rate", "nan"], "argument --rate"), (["--rate", "inf"], "argument --rate"), (["--rate", "0"], "argument --rate"),
    (["--start", "-1"], "argument --start"), (["--start", "0.8", "--end", "0.2"], "must be before --end"),
    (["--min-score", "nan"], "argument --min-score"),
])
def test_bad_numbers_are_usage_errors_before_anything_is_written(bag, tmp_path, argv, message, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main([str(bag), "--topic", RAW, "--out", str(out), *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(rate=float("nan")), "--rate must be a finite number"), (dict(rate=float("inf")), "finite"),
    (dict(start=0.8, end=0.2), "--start 0.8 must be before --end 0.2"), (dict(end=float("nan")), "finite"),
])
def test_the_library_function_checks_numbers_too(bag, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        extract_bag(str(bag), [RAW], str(tmp_path / "out"), **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_half_way_leaves_no_output_and_keeps_the_old_one(bag, tmp_path, monkeypatch):
    import cv2

    out = tmp_path / "robot"
    extract_bag(str(bag), [RAW], str(out), rate=2.0)
    before = _tree(out)
    real, calls = cv2.imwrite, []

    def failing(path, *args):
        calls.append(path)
        if len(calls) > 3:
            raise OSError("disk full")
        return real(path, *args)

    monkeypatch.setattr(cv2, "imwrite", failing)
    with pytest.raises(OSError, match="disk full"):
        extract_bag(str(bag), [RAW], str(out), overwrite=True)
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["robot"]


def test_depth_is_extracted_losslessly_with_its_encoding(bag, tmp_path):
    import cv2

    # Before: 16UC1 became 8-bit RGB (value / 257: 3500 mm -> 14).
    man = extract_bag(str(bag), [DEPTH16, DEPTH32], str(tmp_path / "d"), image_format="jpg")
    by_topic = {t: [f for f in man["frames"] if f["topic"] == t] for t in (DEPTH16, DEPTH32)}
    assert len(by_topic[DEPTH16]) == len(by_topic[DEPTH32]) == 12
    for f in by_topic[DEPTH16]:
        i = (f["stamp_ns"] - T0) // 100_000_000
        assert f["file"].endswith(".png") and (f["encoding"], f["dtype"], f["channels"]) == ("16UC1", "uint16", 1)
        pixels = cv2.imread(str(tmp_path / "d" / f["file"]), cv2.IMREAD_UNCHANGED)
        assert pixels.dtype == np.uint16 and np.array_equal(pixels, _depth16(i))
    for f in by_topic[DEPTH32]:
        i = (f["stamp_ns"] - T0) // 100_000_000
        assert f["file"].endswith(".tiff") and (f["encoding"], f["dtype"], f["channels"]) == ("32FC1", "float32", 1)
        pixels = cv2.imread(str(tmp_path / "d" / f["file"]), cv2.IMREAD_UNCHANGED)
        assert pixels.dtype == np.float32 and np.array_equal(pixels, _depth32(i), equal_nan=True)
    on_disk = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert on_disk["frames"] == man["frames"] and on_disk["format"] == "ovsam_ros.bag_extraction/1"


@pytest.mark.parametrize("override", ["train.lr=.nan", "train.lr=-.inf", "train.weight_decay=.inf"])
def test_training_refuses_non_finite_numbers_before_any_work(tmp_path, override, capsys):
    from training import stage1

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        stage1.main(["--config", "stage1_tiny", "--output-dir", str(out), "--set", override])
    assert info.value.code == 2
    key = override.split("=")[0]
    assert f"{key} must be a finite number" in capsys.readouterr().err and not out.exists()
