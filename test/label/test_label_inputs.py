"""ovsam-label inputs and bad input: image folders, text queries, cut bags, review sampling, clear errors."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from label_helpers import TOPIC, record_world_bag
from training.label.cli import main


def _run(capsys, *args) -> tuple:
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_image_folder_and_text_queries_label_only_those_classes(tmp_path, capsys):
    from ovsam_ros.shapes_world import world_scene

    folder = tmp_path / "shots" / "day1"
    folder.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(folder / f"f{i}.jpg"), world_scene(4242, 50 + i, (160, 120))[0][:, :, ::-1])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    queries = ["red circle", "blue square"]
    code, stdout, err = _run(capsys, str(tmp_path / "shots"), "--out", str(out), "--query", queries[0],
                             "--query", queries[1], "--min-score", "0.3", "--review-every", "2")
    assert code == 0, err
    coco = json.loads((out / "labels.json").read_text())
    assert [c["name"] for c in coco["categories"]] == queries
    assert [im["file_name"] for im in coco["images"]] == [f"shots/day1/f{i}.png" for i in range(3)]
    assert all(a["score"] >= 0.3 for a in coco["annotations"])
    report = json.loads((out / "data_report.json").read_text())
    assert report["instances"]["kept"] == report["instances_kept"] + report["instances"].get("below_min_score", 0)
    # --review-every 2: frames 0 and 2 of the one source, on one sheet of two tiles
    sheet = cv2.imread(str(out / "review" / "shots_000.png"))
    assert sheet.shape[1] == 2 * 320


def test_cut_bag_is_labelled_up_to_the_cut(tmp_path, capsys):
    bag = tmp_path / "cut"
    record_world_bag(bag, 0, 6, "sqlite3")  # (an MCAP cut inside its one 1 MiB chunk would keep no frame)
    db3 = bag / "cut.db3"
    data = db3.read_bytes()
    db3.write_bytes(data[: int(len(data) * 0.6)])  # recorder killed: the last pages, and their frames, lost
    (bag / "metadata.yaml").unlink()
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, str(bag), "--topic", TOPIC, "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "data_report.json").read_text())
    assert report["sources"][0]["bag_report"]["recovered"] is True
    assert 1 <= report["frames_labelled"] < 6


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    record_world_bag(root / "b", 0, 2, "sqlite3")
    return root / "b"


@pytest.mark.parametrize("args, message", [
    (["--topic", "/nope"], "no topic '/nope'"),
    ([], "bags need --topic"),
    (["--topic", TOPIC, "--pred-iou", "1.5"], "pred_iou_thresh must be a number in [0, 1]"),
    (["--topic", TOPIC, "--rate", "0"], "--rate must be > 0"),
    (["--topic", TOPIC, "--query", "cat", "--query", "cat"], "--query given twice"),
    (["--topic", TOPIC, "--shard-size", "0"], "--shard-size must be >= 1"),
])
def test_bad_arguments_are_clear_errors(small_bag, tmp_path, capsys, args, message):
    code, _, err = _run(capsys, str(small_bag), "--out", str(tmp_path / "o"), *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o" / "labels.json").exists()


def test_output_folders_are_never_clobbered_or_mixed(small_bag, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _, err = _run(capsys, str(small_bag), "--topic", TOPIC, "--out", str(other))
    assert code == 2 and "not empty" in err and (other / "keep.txt").read_text() == "mine"
    out = tmp_path / "out"
    assert _run(capsys, str(small_bag), "--topic", TOPIC, "--out", str(out))[0] == 0
    # other thresholds into the same folder would mix two labellings: refused, the first one kept
    before = (out / "labels.json").read_bytes()
    code, _, err = _run(capsys, str(small_bag), "--topic", TOPIC, "--out", str(out), "--pred-iou", "0.5")
    assert code == 2 and "other settings" in err and (out / "labels.json").read_bytes() == before
    code, _, err = _run(capsys, str(small_bag), "--topic", TOPIC, "--out", str(out), "--pred-iou", "0.5",
                        "--overwrite")
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["settings"]["label"]["pred_iou_thresh"] == 0.5


def test_depth_topic_is_refused(tmp_path, capsys):
    from label_helpers import typestore_with_ovsam, write_bag

    store = typestore_with_ovsam()
    Image = store.types["sensor_msgs/msg/Image"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    depth = np.full((4, 4), 1000, np.uint16)
    msg = Image(header=Header(stamp=Time(sec=1, nanosec=0), frame_id="d"), height=4, width=4, encoding="16UC1",
                is_bigendian=0, step=8, data=depth.reshape(-1).view(np.uint8))
    bag = write_bag(tmp_path / "d", "mcap", {"/depth": "sensor_msgs/msg/Image"}, [("/depth", 1, msg)], store)
    code, _, err = _run(capsys, str(bag), "--topic", "/depth", "--out", str(tmp_path / "o"))
    assert code == 2 and "16UC1" in err and "depth" in err


def test_undecodable_frame_is_a_counted_skip(tmp_path, capsys):
    """A corrupt JPEG in a bag costs that frame, counted with its reason; the rest is labelled."""
    from label_helpers import compressed_msg, typestore_with_ovsam, write_bag
    from ovsam_ros.shapes_world import world_scene

    store = typestore_with_ovsam()
    good = compressed_msg(store, 10**9, "c", world_scene(4242, 0, (160, 120))[0])
    bad = compressed_msg(store, 2 * 10**9, "c", world_scene(4242, 1, (160, 120))[0], data=b"\xff\xd8 not a jpeg")
    topic = "/camera/image_raw/compressed"
    bag = write_bag(tmp_path / "c", "sqlite3", {topic: "sensor_msgs/msg/CompressedImage"},
                    [(topic, 10**9, good), (topic, 2 * 10**9, bad)], store)
    out = tmp_path / "o"
    code, _, err = _run(capsys, str(bag), "--topic", topic, "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "data_report.json").read_text())
    assert report["frames_labelled"] == 1 and report["frames_skipped"] == {"undecodable_frame": 1}
    shutil.rmtree(out)


def test_ovsam_label_subcommand_is_ovsam_label(small_bag, tmp_path, capsys):
    from ovsam_ros.cli import main as ovsam_main

    code = ovsam_main(["label", str(small_bag), "--topic", "/nope", "--out", str(tmp_path / "o")])
    assert code == 2 and "no topic '/nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        ovsam_main(["label", "--help"])
    assert exit.value.code == 0 and "usage: ovsam-label" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["-v", "label"], ["--verbose", "label"], ["label", "-v"], ["label", "--verbose"]])
def test_ovsam_verbose_before_or_after_label_reaches_the_labeller(argv, small_bag, tmp_path, capsys, monkeypatch):
    """`ovsam -v label ...` is `ovsam label -v ...`, as for every other ovsam command (it was a usage error)."""
    from ovsam_ros.cli import main as ovsam_main
    from training.label import cli

    seen = {}
    parse = cli.label_parser

    def spying_parser():
        parser = parse()
        original = parser.parse_args
        parser.parse_args = lambda args=None, namespace=None: seen.setdefault("args", original(args, namespace))
        return parser

    monkeypatch.setattr(cli, "label_parser", spying_parser)
    code = ovsam_main([*argv, str(small_bag), "--topic", "/nope", "--out", str(tmp_path / "o")])
    assert code == 2 and "no topic '/nope'" in capsys.readouterr().err
    assert seen["args"].verbose is True
