"""One range rule for files in the CLI and in training (issue #24 item 4): a 12-bit camera's
frames stored as 16-bit files are read as bright as their 8-bit picture with input_bits=12; the
default says how to fix a near-black read."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from ovsam_ros.cli import main
from ovsam_ros.shapes_world import world_scene
from training.data import read_image


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    """A shapes-world frame as 8-bit PNG and as 12-bit data in a 16-bit PNG (what a machine-vision
    camera's frames become on disk), and the box of one object."""
    rgb, instances = world_scene(0, 3, (320, 240))
    folder = tmp_path_factory.mktemp("range")
    twelve = np.rint(rgb.astype(np.float64) * 4095 / 255).astype(np.uint16)
    cv2.imwrite(str(folder / "eight.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "twelve.png"), np.ascontiguousarray(twelve[:, :, ::-1]))
    ys, xs = np.nonzero(instances[1][1])
    box = f"{xs.min()},{ys.min()},{xs.max() + 1},{ys.max() + 1}"
    return folder, rgb, box


def test_training_reads_twelve_bit_files_with_input_bits(scene_files, caplog):
    folder, rgb, _ = scene_files
    assert np.array_equal(read_image(folder / "eight.png"), rgb)
    assert np.array_equal(read_image(folder / "twelve.png", input_bits=12), rgb)
    with caplog.at_level(logging.WARNING):
        dark = read_image(folder / "twelve.png")
    assert dark.max() <= 16
    assert f"{folder / 'twelve.png'}: 16-bit image uses only" in caplog.text and "set input_bits=12" in caplog.text


def test_ovsam_segment_with_input_bits_gives_the_eight_bit_answer(scene_files, tmp_path, caplog):
    folder, _, box = scene_files
    results = {}
    for name, extra in (("eight.png", []), ("twelve.png", ["--input-bits", "12"]), ("twelve.png", [])):
        out = tmp_path / f"{name}{len(extra)}.json"
        caplog.clear()
        assert main(["segment", str(folder / name), "--box", box, "--threads", "1", "-q", "--out", str(out),
                     *extra]) == 0
        results[(name, bool(extra))] = (json.loads(out.read_text()), caplog.text)
    (eight, _), (twelve, quiet), (dark, warned) = results.values()
    assert eight["instances"][0]["area"] > 0
    assert eight["instances"] == twelve["instances"] and "input_bits" not in quiet
    assert "looks like 12-bit data, set input_bits=12" in warned
    assert dark["instances"] != eight["instances"]  # read as 16-bit: near-black, another (or no) answer


@pytest.mark.parametrize("argv, option", [(["--input-bits", "7"], "--input-bits"), (["--input-bits", "17"], "--input-bits"),
                                          (["--float-max", "0"], "--float-max"), (["--float-max", "nan"], "--float-max")])
def test_bad_range_flags_are_usage_errors(argv, option, scene_files, capsys):
    folder, _, _ = scene_files
    with pytest.raises(SystemExit) as info:
        main(["segment", str(folder / "eight.png"), "--point", "1,1", *argv])
    assert info.value.code == 2 and f"argument {option}" in capsys.readouterr().err
