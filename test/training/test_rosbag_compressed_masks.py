"""Pseudo-labels from a bag of the node's ~/masks in every mask encoding (issue #23): the CDR bytes
rclpy publishes, recorded in a rosbag2 (MCAP and sqlite3), come back from ovsam-extract-bag as COCO
masks identical to the ones published."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ovsam_ros.ros.mask_codec import MASK_ENCODINGS

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

T0 = 1_700_000_000_000_000_000
H, W = 30, 41


def _frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _masks(i: int) -> list[np.ndarray]:
    a = np.zeros((H, W), bool)
    a[3:17, 2 + i:30] = True
    a[8, 10] = False  # a hole
    b = np.zeros((H, W), bool)
    b[H - 6:, W - 9:] = True  # touches the bottom-right border
    b[H - 1, W - 9] = False
    return [a, b]


def _write_bag(path: Path, storage: str, encoding: str) -> Path:
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from std_msgs.msg import Header

    from ovsam_ros.results import InstanceResult, LabelScore
    from ovsam_ros.ros.camera_demo import image_message
    from ovsam_ros.ros.outputs import labeled_mask_array
    from training.data.rosbag import make_typestore

    store = make_typestore()
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        images = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=store)
        labels = writer.add_connection("/ovsam/masks", "ovsam_ros/msg/LabeledMaskArray", typestore=store)
        for i in range(3):
            stamp = T0 + i * 500_000_000
            header = Header(frame_id="cam")
            header.stamp.sec, header.stamp.nanosec = stamp // 10**9, stamp % 10**9
            writer.write(images, stamp, serialize_message(image_message(_frame(i), "rgb8", header)))
            results = [InstanceResult(mask=m, predicted_iou=0.9, stability_score=0.9,
                                      box=(0, 0, W, H), labels=[LabelScore(k, name, 0.8)])
                       for k, (m, name) in enumerate(zip(_masks(i), ["cup", "door"]))]
            array = labeled_mask_array(results, header, (H, W), mode="everything", mask_encoding=encoding)
            writer.write(labels, stamp + 1_000_000, serialize_message(array))
    return path


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("encoding", MASK_ENCODINGS)
def test_pseudo_labels_from_every_mask_encoding(tmp_path, storage, encoding):
    from pycocotools import mask as mask_utils

    from training.data.rosbag import extract_bag

    bag = _write_bag(tmp_path / "bag", storage, encoding)
    manifest = extract_bag(str(bag), ["/cam/image_raw"], str(tmp_path / "out"), labels_topic="/ovsam/masks")
    assert manifest["skipped"]["counts"].get("bad_mask", 0) == 0, manifest["skipped"]
    data = json.loads(Path(manifest["pseudo_labels"]).read_text())
    assert [c["name"] for c in data["categories"]] == ["cup", "door"]
    assert len(data["images"]) == 3 and len(data["annotations"]) == 6
    for image in data["images"]:
        i = (image["stamp_ns"] - T0) // 500_000_000
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        for ann, expected in zip(anns, _masks(i)):
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            assert np.array_equal(mask_utils.decode(rle).astype(bool), expected)


def test_a_corrupt_compressed_mask_is_counted_not_fatal(tmp_path):
    """One bad payload in a recorded bag: that instance is skipped as bad_mask, the rest extract."""
    from rclpy.serialization import deserialize_message, serialize_message

    from ovsam_ros.msg import LabeledMaskArray
    from training.data.rosbag import extract_bag

    bag = _write_bag(tmp_path / "bag", "mcap", "coco_rle")
    # rewrite the bag with the first instance's RLE cut short
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from training.data.rosbag import make_typestore

    store = make_typestore()
    with Reader(bag) as reader:
        rows = [(c.topic, c.msgtype, t, raw) for c, t, raw in reader.messages()]
    out = tmp_path / "bag2"
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for topic, msgtype, t, raw in rows:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
            if msgtype.endswith("LabeledMaskArray"):
                msg = deserialize_message(bytes(raw), LabeledMaskArray)
                msg.instances[0].mask_data = msg.instances[0].mask_data[:-3]
                raw = serialize_message(msg)
            writer.write(conns[topic], t, raw)
    manifest = extract_bag(str(out), ["/cam/image_raw"], str(tmp_path / "o2"), labels_topic="/ovsam/masks")
    assert manifest["skipped"]["counts"]["bad_mask"] == 3
    assert len(json.loads(Path(manifest["pseudo_labels"]).read_text())["annotations"]) == 3
