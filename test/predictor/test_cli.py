"""The `ovsam` command line: valid JSON with COCO RLE masks, overlays, clear errors."""

import argparse
import json

import cv2
import numpy as np
import pytest

from ovsam_ros.cli import SAMPLES_DIR, build_parser, main, parse_object
from ovsam_ros.results import decode_rle

SAMPLE = SAMPLES_DIR / "coffee.png"  # 600 x 400


def test_object_spec_parsing():
    prompt = parse_object("p:10,20 n:30,40;b:1,2,3,4")
    assert prompt.points == [[10, 20], [30, 40]] and prompt.point_labels == [1, 0] and prompt.box == [1, 2, 3, 4]
    assert parse_object("n:1.5,2").points == [[1.5, 2.0]] and parse_object("b:0,0,5,6").point_labels is None


@pytest.mark.parametrize("bad, message", [
    ("q:1,2", "object part 'q:1,2' must start with p:, n: or b:"),
    ("p:1", "point 'p:1' must be 2 comma-separated numbers, got '1'"),
    ("p:a,b", "point 'p:a,b' must be 2 comma-separated numbers, got 'a,b'"),
    ("b:1,2,3", "box 'b:1,2,3' must be 4 comma-separated numbers, got '1,2,3'"),
    ("p:nan,1", "point 'p:nan,1' must be finite numbers (no nan/inf), got 'nan,1'"),
    ("b:1,2,3,4 b:1,2,3,4", "object 'b:1,2,3,4 b:1,2,3,4' has more than one box"),
    ("", "object '' has no point and no box"),
])
def test_bad_object_specs_are_rejected_with_their_reason(bad, message):
    # argparse turns ArgumentTypeError into a one-line usage error (any other exception is a traceback).
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse_object(bad)
    assert str(err.value) == message


def test_help_explains_every_command(capsys):
    for command in ("segment", "everything", "query", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0
    assert "--vocab" in capsys.readouterr().out


def test_segment_writes_json_and_overlay(tmp_path, capsys):
    out, overlay = tmp_path / "r.json", tmp_path / "o.png"
    code = main(["segment", str(SAMPLE), "--point", "300,200", "--box", "100,50,400,350",
                 "--object", "p:300,200 n:50,50", "--vocab", "cup, saucer, spoon, table", "--model", "tiny",
                 "--threads", "1", "--out", str(out), "--overlay", str(overlay)])
    assert code == 0
    data = json.loads(out.read_text())
    assert (data["width"], data["height"], data["mode"], data["trained"]) == (600, 400, "prompt", False)
    assert [inst["prompt_index"] for inst in data["instances"]] == [0, 1, 2]
    for inst in data["instances"]:
        mask = decode_rle(inst["segmentation"])
        assert mask.shape == (400, 600) and int(mask.sum()) == inst["area"]
        assert inst["label"] in {"cup", "saucer", "spoon", "table"}
        assert inst["labels"][0]["name"] == inst["label"]
    picture = cv2.imread(str(overlay))
    assert picture.shape == (400, 600, 3)
    assert "3 instance(s)" in capsys.readouterr().out


def _check_instances(data, height, width):
    assert (data["height"], data["width"]) == (height, width)
    for inst in data["instances"]:
        mask = decode_rle(inst["segmentation"])
        assert mask.shape == (height, width) and int(mask.sum()) == inst["area"] > 0
        ys, xs = np.nonzero(mask)
        assert inst["bbox_xyxy"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        scores = [label["score"] for label in inst["labels"]]
        assert scores and all(0 <= v <= 1 for v in scores) and scores == sorted(scores, reverse=True)
        assert inst["label"] == inst["labels"][0]["name"]


def test_everything_and_query(tmp_path):
    common = ["--points-per-side", "4", "--iou-thresh", "0", "--stability-thresh", "0", "--nms-thresh", "1",
              "--threads", "1", "-q"]
    out = tmp_path / "e.json"
    assert main(["everything", str(SAMPLE), *common, "--out", str(out)]) == 0
    everything = json.loads(out.read_text())
    assert everything["mode"] == "everything"
    # --nms-thresh 1 keeps the 4x4 grid's masks (3 candidates per point) but for identical boxes.
    assert 3 <= len(everything["instances"]) <= 3 * 16
    _check_instances(everything, 400, 600)
    ious = [inst["predicted_iou"] for inst in everything["instances"]]
    assert ious == sorted(ious, reverse=True)  # best first

    assert main(["query", str(SAMPLE), "a coffee cup", *common, "--top", "3", "--out", str(out)]) == 0
    query = json.loads(out.read_text())
    assert query["mode"] == "text" and query["query"] == "a coffee cup"
    assert len(query["instances"]) == 3
    _check_instances(query, 400, 600)
    scores = [inst["query_score"] for inst in query["instances"]]
    assert all(0 <= v <= 1 for v in scores) and scores == sorted(scores, reverse=True)
    # The matches are chosen among the everything-mode masks of the same image.
    masks = {inst["segmentation"]["counts"] for inst in everything["instances"]}
    assert all(inst["segmentation"]["counts"] in masks for inst in query["instances"])


@pytest.mark.parametrize("argv, message", [
    (["segment", "missing.png", "--point", "1,1"], "image not found"),
    (["segment", str(SAMPLE)], "no prompts"),
    (["segment", str(SAMPLE), "--point", "900,10"], "outside the 600x400 image"),
    (["segment", str(SAMPLE), "--point", "1,1", "--model", "nonexistent"], "model config 'nonexistent' not found"),
    (["segment", str(SAMPLE), "--point", "1,1", "--vocab", ","], "contains no class names"),
])
def test_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_image_file(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    assert main(["segment", str(bad), "--point", "1,1"]) == 2
    assert "could not decode image" in capsys.readouterr().err


def test_sixteen_bit_grey_image(tmp_path):
    # A 16-bit grey PNG and its explicit 8-bit version (v8 * 257 + noise inside the rounding bucket,
    # written by hand) must give the same result; cv2 would otherwise be free to read either way.
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:48, :64]
    grey8 = ((xx * 4 + yy * 2) % 256).astype(np.uint8)
    grey8[10:30, 12:40] = 230
    grey16 = (grey8.astype(np.int32) * 257 + rng.integers(-128, 128, grey8.shape)).clip(0, 65535).astype(np.uint16)
    results = []
    for name, pixels in (("depth16.png", grey16), ("grey8.png", grey8)):
        path, out = tmp_path / name, tmp_path / f"{name}.json"
        assert cv2.imwrite(str(path), pixels)
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == pixels.dtype
        # --model tiny: the shapes model finds nothing on a grey ramp (empty masks are left out of the JSON)
        assert main(["segment", str(path), "--box", "5,5,40,30", "--point", "20,20", "--out", str(out), "-q",
                     "--threads", "1", "--model", "tiny", "--vocab", "ramp, block"]) == 0
        results.append(json.loads(out.read_text()))
    wide, narrow = results
    assert (wide["width"], wide["height"]) == (64, 48)
    assert len(wide["instances"]) == len(narrow["instances"]) == 2
    for a, b in zip(wide["instances"], narrow["instances"]):
        assert np.array_equal(decode_rle(a["segmentation"]), decode_rle(b["segmentation"]))
        assert a["predicted_iou"] == b["predicted_iou"] and a["labels"] == b["labels"]


# ----------------------------------------------------------------------------- bad input (issue #14)
@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the model is built: these inputs must be refused before that."""
    import ovsam_ros.loading

    calls = []
    monkeypatch.setattr(ovsam_ros.loading, "build_model", lambda spec: calls.append(spec) or pytest.fail("model loaded"))
    return calls


@pytest.mark.parametrize("argv, message", [
    (["segment", "missing.png", "--point", "1,1"], "image not found"),
    (["segment", str(SAMPLE), "--point", "1,1", "--vocab", "lvsi"], "unknown vocabulary 'lvsi'"),
    (["segment", str(SAMPLE), "--point", "1,1", "--vocab", "/tmp/nope/my_vocab"],
     "vocabulary file not found: /tmp/nope/my_vocab"),
    (["everything", str(SAMPLE), "--vocab", "coco2"], "Did you mean 'coco'"),
])
def test_inputs_are_checked_before_the_model_loads(argv, message, capsys, no_model_load):
    # Before: '--vocab lvsi' exited 0 labeling every mask "lvsi"; a missing image waited for the model.
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    # The error is one line on stderr; stdout (the results table) stays empty, so a script reading it
    # never takes a progress line for a result.
    assert captured.err.startswith(f"ovsam {argv[0]}: error: ") and captured.err.count("\n") == 1
    assert captured.out == ""
    assert no_model_load == []


def test_corrupt_image_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    assert main(["segment", str(bad), "--point", "1,1"]) == 2
    assert "could not decode image" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["everything", str(SAMPLE), "--iou-thresh", "nan"], "--iou-thresh"),
    (["everything", str(SAMPLE), "--nms-thresh", "inf"], "--nms-thresh"),
    (["everything", str(SAMPLE), "--points-per-side", "0"], "--points-per-side"),
    (["query", str(SAMPLE), "cup", "--min-score", "-1"], "--min-score"),
    (["segment", str(SAMPLE), "--point", "nan,3"], "--point"),
    (["segment", str(SAMPLE), "--point", "1,1", "--top-k", "0"], "--top-k"),
    (["demo", "--rate", "nan"], "--rate"),
    (["demo", "--frames", "-3"], "--frames"),
])
def test_numeric_options_are_usage_errors(argv, option, capsys, no_model_load):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err


def test_query_table_shows_each_masks_query_score_first():
    """A mask listed for a phrase can be another class labelled with confidence: the table must show
    the query's score, not only the label's."""
    import io

    from ovsam_ros.cli import print_table
    from ovsam_ros.results import InstanceResult, LabelScore

    mask = np.zeros((4, 4), bool)
    other = InstanceResult(mask=mask, predicted_iou=0.9, stability_score=1, box=(0, 0, 2, 2),
                           labels=[LabelScore(3, "purple cross", 1.0)], query_score=0.0004)
    out = io.StringIO()
    print_table([other], "query 'blue square'", file=out)
    header, row = out.getvalue().splitlines()[1:3]
    assert header.split()[:3] == ["#", "prompt", "query"]
    assert row.split()[2:6] == ["0.000", "purple", "cross", "1.000"]
    out = io.StringIO()
    other.query_score = None
    print_table([other], "segment", file=out)
    assert "query" not in out.getvalue().splitlines()[1]


@pytest.mark.parametrize("flag, synonyms", [([], None), (["--synonyms", "names"], "names"), (["--synonyms", "all"], "all")])
def test_synonyms_option_reaches_the_predictor(flag, synonyms, monkeypatch, capsys):
    """--synonyms names|all overrides the model YAML's synonym policy; without it the YAML decides (None).
    What each choice does to a vocabulary: test_loading.py::test_synonyms_switch_all_lifts_the_yaml_cap..."""
    import ovsam_ros.loading

    seen = {}

    def fake_build_predictor(model, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop after the options")  # reported as a clean error, nothing loads

    monkeypatch.setattr(ovsam_ros.loading, "build_predictor", fake_build_predictor)
    assert main(["segment", str(SAMPLE), "--point", "1,1", *flag]) == 2
    assert seen["synonyms"] == synonyms
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", str(SAMPLE), "--synonyms", "some"])


@pytest.mark.parametrize("text, expected", [("640x480", (640, 480)), ("1280X720", (1280, 720)),
                                            ("wide", "size must be WIDTHxHEIGHT, got 'wide'"),
                                            ("640x480x3", "size must be WIDTHxHEIGHT, got '640x480x3'"),
                                            ("0x480", "size must be positive, got '0x480'"),
                                            ("640x-1", "size must be positive, got '640x-1'")])
def test_image_size_option_is_width_by_height(text, expected):
    """One parser for every WIDTHxHEIGHT option (demo camera, prompt source, ROS benchmarks)."""
    from ovsam_ros.cli_types import image_size

    if isinstance(expected, tuple):
        assert image_size(text) == expected
    else:
        with pytest.raises(argparse.ArgumentTypeError) as err:
            image_size(text)
        assert str(err.value) == expected
