"""rosbag2 extraction (sqlite3 and MCAP bags written with rosbags) into stage-1 image folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.data import CocoInstances, DataError, ImageFolderDataset, read_image
from training.data.rosbag import extract_bag, main
from training_helpers import compressed_msg, image_msg, labeled_array_msg, typestore_with_ovsam, write_bag

T0 = 1_700_000_000_000_000_000
TOPICS = {"/cam/image_raw": "sensor_msgs/msg/Image", "/cam/compressed": "sensor_msgs/msg/CompressedImage",
          "/ovsam/instances": "ovsam_ros/msg/LabeledMaskArray", "/odom_like": "std_msgs/msg/String"}


def _frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)


def _mask(i: int) -> np.ndarray:
    m = np.zeros((24, 32), bool)
    m[4:12, 3 + i % 5:20] = True
    return m


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def bag(request, tmp_path_factory):
    store = typestore_with_ovsam()
    String = store.types["std_msgs/msg/String"]
    msgs = []
    for i in range(20):  # 10 Hz for 2 s
        stamp = T0 + i * 100_000_000
        msgs.append(("/cam/image_raw", stamp + 5_000_000, image_msg(store, stamp, "cam", _frame(i),
                                                                      "bgr8" if i % 2 else "rgb8")))
        msgs.append(("/cam/compressed", stamp + 6_000_000, compressed_msg(store, stamp, "cam_c", _frame(i))))
        instances = [(_mask(i), "cup", 3, 0.9), (_mask(i + 1), "", -1, 0.0), (_mask(i + 2), "door", 5, 0.05)]
        msgs.append(("/ovsam/instances", stamp + 7_000_000, labeled_array_msg(store, stamp, "cam", (24, 32), instances)))
        msgs.append(("/odom_like", stamp + 8_000_000, String(data="x")))
    path = tmp_path_factory.mktemp(request.param) / "bag"
    return write_bag(path, request.param, TOPICS, msgs, store)


def test_extracts_frames_at_the_chosen_rate_with_stamps(bag, tmp_path):
    man = extract_bag(str(bag), ["/cam/image_raw", "/cam/compressed"], str(tmp_path), rate=2.0)
    frames = {t: [f for f in man["frames"] if f["topic"] == t] for t in ("/cam/image_raw", "/cam/compressed")}
    for topic, fs in frames.items():
        assert [f["stamp_ns"] for f in fs] == [T0 + k * 500_000_000 for k in range(4)]  # every 5th of 10 Hz
        assert man["counts"][topic] == {"messages": 20, "kept": 4, "rate_limited": 16}
    raw = frames["/cam/image_raw"]
    assert raw[0]["frame_id"] == "cam" and raw[0]["encoding"] == "rgb8" and abs(raw[1]["stamp"] - (T0 / 1e9 + 0.5)) < 1e-6
    for f in man["frames"]:
        i = (f["stamp_ns"] - T0) // 100_000_000
        assert np.array_equal(read_image(tmp_path / f["file"]), _frame(i))  # lossless, RGB (bgr8 converted)
    assert json.loads((tmp_path / "manifest.json").read_text())["frames"] == man["frames"]
    ds = ImageFolderDataset(str(tmp_path / "images"), 256)  # directly usable by stage 1
    assert len(ds) == 8


def test_no_rate_keeps_everything_and_time_window(bag, tmp_path):
    man = extract_bag(str(bag), ["/cam/image_raw"], str(tmp_path / "all"))
    assert len(man["frames"]) == 20
    man = extract_bag(str(bag), ["/cam/image_raw"], str(tmp_path / "win"), start=0.5, end=1.0)
    assert [(f["stamp_ns"] - T0) // 100_000_000 for f in man["frames"]] == [5, 6, 7, 8, 9]


def test_bag_without_the_topic_is_a_clear_error(bag, tmp_path, capsys):
    with pytest.raises(DataError, match=r"(?s)no topic '/camera/image_raw'.*/cam/image_raw \[sensor_msgs/msg/Image\]"):
        extract_bag(str(bag), ["/camera/image_raw"], str(tmp_path))
    with pytest.raises(DataError, match="has type std_msgs/msg/String"):
        extract_bag(str(bag), ["/odom_like"], str(tmp_path))
    assert main([str(bag), "--topic", "/nope", "--out", str(tmp_path)]) == 2
    assert "no topic '/nope'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        extract_bag(str(tmp_path / "missing_bag"), ["/x"], str(tmp_path))


def test_pseudo_labels_from_labeled_mask_arrays(bag, tmp_path):
    man = extract_bag(str(bag), ["/cam/image_raw", "/cam/compressed"], str(tmp_path), rate=2.0,
                      labels_topic="/ovsam/instances", min_score=0.5)
    coco = CocoInstances(man["pseudo_labels"], tmp_path / "images")
    # arrays match frames by (frame_id, stamp): only /cam/image_raw frames carry frame_id "cam"
    assert len(coco) == 4 and coco.vocab.classes == ["cup"]
    sk = man["skipped"]["counts"]
    assert sk["unlabeled_instance"] == 4 and sk["low_score_instance"] == 4
    assert sk["labels_without_extracted_frame"] == 16
    for index, record in enumerate(coco.images):
        i = int((int(Path(record.file).stem) - T0) // 100_000_000)
        _, masks = coco.load(index)
        assert len(masks) == 1 and np.array_equal(masks[0], _mask(i))


def test_pseudo_labels_restricted_to_a_vocabulary(bag, tmp_path):
    man = extract_bag(str(bag), ["/cam/image_raw"], str(tmp_path), rate=2.0, labels_topic="/ovsam/instances",
                      vocabulary="door, person")
    assert man["skipped"]["counts"]["label_not_in_vocabulary"] == 4
    data = json.loads(Path(man["pseudo_labels"]).read_text())
    assert [c["name"] for c in data["categories"]] == ["door", "person"]
    assert {a["category_id"] for a in data["annotations"]} == {1}


def test_broken_frames_are_counted_not_written(tmp_path):
    store = typestore_with_ovsam()
    good = image_msg(store, T0, "cam", _frame(0))
    truncated = image_msg(store, T0 + 10**8, "cam", _frame(1))
    truncated.data = truncated.data[:100]
    zero_stamp = image_msg(store, 0, "cam", _frame(2))
    garbage = compressed_msg(store, T0 + 3 * 10**8, "cam", _frame(3), data=b"not a png at all")
    bag = write_bag(tmp_path / "bag", "mcap", {"/a": "sensor_msgs/msg/Image", "/b": "sensor_msgs/msg/CompressedImage"},
                    [("/a", T0, good), ("/a", T0 + 10**8, truncated), ("/a", T0 + 2 * 10**8, zero_stamp),
                     ("/b", T0 + 3 * 10**8, garbage)], store)
    man = extract_bag(str(bag), ["/a", "/b"], str(tmp_path / "out"))
    assert len(man["frames"]) == 2
    assert man["frames"][1]["stamp_ns"] == T0 + 2 * 10**8  # zero header stamp: the bag's receive time
    sk = man["skipped"]["counts"]
    assert sk["undecodable_frame"] == 2 and sk["zero_header_stamp_used_bag_time"] == 1
    assert man["counts"]["/b"] == {"messages": 1, "bad": 1}
