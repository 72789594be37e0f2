"""ovsam-label converts 16-bit and float frames by the package's one range rule (``--input-bits`` /
``--float-max``, the node's ``input_bits`` / ``float_max``): a fleet of 12-bit cameras must not be
labelled on frames 16x too dark. Expected pixels come from ``ovsam_ros.image_input.to_uint8_rgb``
and from the 8-bit picture each 12-bit frame was made of (round(v8 * 4095 / 255) maps back to v8),
never from the label code."""

from __future__ import annotations

import json
import logging
import math

import cv2
import numpy as np
import pytest

from label_helpers import image_msg, typestore_with_ovsam, write_bag
from ovsam_ros.image_input import to_uint8_rgb
from training.label.cli import main
from training.label.runner import LabelJob, run

SIZE = (64, 48)  # (width, height)
STAMP = 1_700_000_000_000_000_000
FAST = ["--points-per-side", "4", "--no-progress"]  # the pixels are what these tests look at


def _picture(seed: int) -> np.ndarray:
    from ovsam_ros.shapes_world import world_scene

    return world_scene(4242, seed, SIZE)[0]


def _to12(v8: np.ndarray) -> np.ndarray:
    return np.round(v8.astype(np.float64) * 4095 / 255).astype(np.uint16)


def _png16(store, stamp: int, bgr16: np.ndarray):
    """A CompressedImage holding a 16-bit PNG, the format string image_transport writes."""
    T = store.types
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=stamp // 10**9,
                                                                          nanosec=stamp % 10**9), frame_id="cam")
    ok, png = cv2.imencode(".png", bgr16)
    assert ok
    return T["sensor_msgs/msg/CompressedImage"](header=header, format="bgr16; png compressed",
                                                data=np.frombuffer(png.tobytes(), np.uint8))


@pytest.fixture(scope="module")
def bag12(tmp_path_factory):
    """One frame of a 12-bit camera on each of: mono16 Image, rgb16 Image, 16-bit PNG CompressedImage.

    ``sent``: the 16-bit pixels as the labeller decodes them (RGB / grey), ``v8``: the 8-bit pictures."""
    store = typestore_with_ovsam()
    grey8 = cv2.cvtColor(_picture(1), cv2.COLOR_RGB2GRAY)
    rgb8, png8 = _picture(2), _picture(3)
    sent = {"/cam/mono16": _to12(grey8), "/cam/rgb16": _to12(rgb8), "/cam/png16": _to12(png8)}
    messages = [("/cam/mono16", STAMP, image_msg(store, STAMP, "cam", sent["/cam/mono16"], "mono16")),
                ("/cam/rgb16", STAMP, image_msg(store, STAMP, "cam", sent["/cam/rgb16"], "rgb16")),
                ("/cam/png16", STAMP, _png16(store, STAMP, sent["/cam/png16"][:, :, ::-1]))]
    types = {"/cam/mono16": "sensor_msgs/msg/Image", "/cam/rgb16": "sensor_msgs/msg/Image",
             "/cam/png16": "sensor_msgs/msg/CompressedImage"}
    path = write_bag(tmp_path_factory.mktemp("bits") / "cam12", "mcap", types, messages, store)
    v8 = {"/cam/mono16": np.repeat(grey8[:, :, None], 3, axis=2), "/cam/rgb16": rgb8, "/cam/png16": png8}
    return {"bag": str(path), "sent": sent, "v8": v8}


def _run(capsys, *args) -> tuple:
    code = main([*args, *FAST])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _topics(*topics: str) -> list:
    return [a for t in topics for a in ("--topic", t)]


def _written(out, topic: str) -> np.ndarray:
    """The dataset's one image of ``topic``: checked to be 8-bit 3-channel, returned as RGB."""
    coco = json.loads((out / "labels.json").read_text())
    [image] = [im for im in coco["images"] if im["topic"] == topic]
    pixels = cv2.imread(str(out / "images" / image["file_name"]), cv2.IMREAD_UNCHANGED)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3  # stage 2 reads it as it is
    return pixels[:, :, ::-1]


def _dark(image: np.ndarray) -> bool:  # 12-bit data read as 16-bit: 0..4095 becomes 0..16 of 255
    return int(image.max()) <= 16


TOPICS = ("/cam/mono16", "/cam/rgb16", "/cam/png16")


def test_input_bits_12_labels_12bit_frames_of_every_16bit_kind_as_the_package_converts_them(bag12, tmp_path,
                                                                                               capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, bag12["bag"], *_topics(*TOPICS), "--out", str(out), "--input-bits", "12")
    assert code == 0, err
    for topic in TOPICS:
        written = _written(out, topic)
        assert np.array_equal(written, to_uint8_rgb(bag12["sent"][topic], input_bits=12)), topic
        assert np.array_equal(written, bag12["v8"][topic]), topic  # the camera's picture, full brightness
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert (settings["input_bits"], settings["float_max"], settings["mono16"]) == (12, 1.0, True)


def test_by_default_16bit_frames_are_read_as_16bit_data_and_the_dark_result_is_warned_about(bag12, tmp_path,
                                                                                              capsys, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="ovsam_ros.image_input"):
        code, _, err = _run(capsys, bag12["bag"], *_topics("/cam/rgb16", "/cam/png16"), "--out", str(out))
    assert code == 0, err
    for topic in ("/cam/rgb16", "/cam/png16"):
        written = _written(out, topic)
        assert np.array_equal(written, to_uint8_rgb(bag12["sent"][topic])) and _dark(written), topic
    assert "set input_bits=12" in caplog.text
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert (settings["input_bits"], settings["float_max"], settings["mono16"]) == (16, 1.0, False)


@pytest.mark.parametrize("extra", [[], ["--float-max", "255"]])
def test_a_mono16_topic_without_input_bits_is_refused_naming_the_option(bag12, tmp_path, capsys, extra):
    out = tmp_path / "out"
    code, _, err = _run(capsys, bag12["bag"], *_topics(*TOPICS), "--out", str(out), *extra)
    assert code == 2 and "/cam/mono16" in err and "mono16" in err and "--input-bits" in err, err
    assert not (out / "labels.json").exists()


def test_a_compressed_mono16_or_depth_png_topic_is_refused_like_the_raw_one(tmp_path, capsys):
    store = typestore_with_ovsam()
    grey = _to12(cv2.cvtColor(_picture(4), cv2.COLOR_RGB2GRAY))
    msgs = []
    for topic, fmt in (("/ir", "mono16; png compressed"), ("/depth", "16UC1; png compressed")):
        msg = _png16(store, STAMP, grey)
        msg.format = fmt
        msgs.append((topic, STAMP, msg))
    bag = write_bag(tmp_path / "b", "mcap", {t: "sensor_msgs/msg/CompressedImage" for t, _, _ in msgs}, msgs, store)
    code, _, err = _run(capsys, str(bag), "--topic", "/ir", "--out", str(tmp_path / "o1"))
    assert code == 2 and "--input-bits" in err, err
    code, _, err = _run(capsys, str(bag), "--topic", "/depth", "--out", str(tmp_path / "o2"), "--input-bits", "12")
    assert code == 2 and "16UC1" in err and "depth" in err, err  # depth stays refused whatever the bits
    out = tmp_path / "o3"
    code, _, err = _run(capsys, str(bag), "--topic", "/ir", "--out", str(out), "--input-bits", "12")
    assert code == 0, err
    assert np.array_equal(_written(out, "/ir"), to_uint8_rgb(grey, input_bits=12))


@pytest.fixture(scope="module")
def folder12(tmp_path_factory):
    """An image folder: a 12-bit colour PNG, a 12-bit grey PNG and a float TIFF of 0..255 data."""
    root = tmp_path_factory.mktemp("folder12") / "shots"
    root.mkdir()
    colour, grey = _to12(_picture(5)), _to12(cv2.cvtColor(_picture(6), cv2.COLOR_RGB2GRAY))
    floats = _picture(7).astype(np.float32)
    assert cv2.imwrite(str(root / "a_colour.png"), colour[:, :, ::-1])
    assert cv2.imwrite(str(root / "b_grey.png"), grey)
    assert cv2.imwrite(str(root / "c_float.tiff"), floats[:, :, ::-1])
    return {"root": root, "files": {"shots/a_colour.png": colour, "shots/b_grey.png": grey,
                                    "shots/c_float.png": floats}}


def _folder_images(out) -> dict:
    coco = json.loads((out / "labels.json").read_text())
    images = {}
    for im in coco["images"]:
        pixels = cv2.imread(str(out / "images" / im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
        images[im["file_name"]] = pixels[:, :, ::-1]
    return images


def test_an_image_folder_of_12bit_and_float_files_follows_input_bits_and_float_max(folder12, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, str(folder12["root"]), "--out", str(out), "--input-bits", "12", "--float-max", "255")
    assert code == 0, err
    images = _folder_images(out)
    assert sorted(images) == sorted(folder12["files"])
    for name, pixels in folder12["files"].items():
        assert np.array_equal(images[name], to_uint8_rgb(pixels, input_bits=12, float_max=255.0)), name
    assert np.array_equal(images["shots/a_colour.png"], _picture(5))
    assert np.array_equal(images["shots/c_float.png"], _picture(7))
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert (settings["input_bits"], settings["float_max"]) == (12, 255.0)

    default = tmp_path / "default"
    code, _, err = _run(capsys, str(folder12["root"]), "--out", str(default))
    assert code == 0, err
    images = _folder_images(default)
    for name, pixels in folder12["files"].items():
        assert np.array_equal(images[name], to_uint8_rgb(pixels)), name
    assert _dark(images["shots/a_colour.png"]) and _dark(images["shots/b_grey.png"])


@pytest.mark.parametrize("args, option", [
    (["--input-bits", "7"], "--input-bits"), (["--input-bits", "17"], "--input-bits"),
    (["--input-bits", "12.5"], "--input-bits"), (["--float-max", "0"], "--float-max"),
    (["--float-max", "nan"], "--float-max"), (["--float-max", "-255"], "--float-max"),
])
def test_a_bad_range_option_is_a_usage_error_naming_it(folder12, tmp_path, capsys, args, option):
    with pytest.raises(SystemExit) as exit_info:
        main([str(folder12["root"]), "--out", str(tmp_path / "o"), *args])
    assert exit_info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("field, value, message", [
    ("input_bits", 7, "input_bits must be an integer from 8 to 16"),
    ("input_bits", True, "input_bits must be an integer from 8 to 16"),
    ("float_max", math.inf, "float_max must be a finite number > 0"),
])
def test_a_label_job_with_a_bad_range_option_is_refused_before_any_output(folder12, tmp_path, field, value,
                                                                           message):
    job = LabelJob(inputs=[str(folder12["root"])], out=str(tmp_path / "o"), progress=False, **{field: value})
    with pytest.raises(ValueError, match=message):
        run(job)
    assert not (tmp_path / "o").exists()


def test_a_rerun_with_another_range_rule_into_the_same_out_is_refused(folder12, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, str(folder12["root"]), "--out", str(out), "--input-bits", "12")
    assert code == 0, err
    before = (out / "labels.json").read_bytes()
    for other in (["--input-bits", "10"], ["--input-bits", "12", "--float-max", "255"], []):
        code, _, err = _run(capsys, str(folder12["root"]), "--out", str(out), *other)
        assert code == 2 and "other settings" in err, (other, err)
        assert (out / "labels.json").read_bytes() == before
    code, _, err = _run(capsys, str(folder12["root"]), "--out", str(out), "--input-bits", "12")
    assert code == 0, err  # the same arguments: the run is finished, nothing changes
    assert (out / "labels.json").read_bytes() == before
