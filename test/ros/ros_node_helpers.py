"""Shared checks for node tests: outputs must match their source image exactly."""

from __future__ import annotations

from typing import Any

import numpy as np

from ovsam_ros.robot.tracking import track_id_pixel
from ovsam_ros.ros.image_conversion import compressed_to_numpy, image_to_numpy
from ovsam_ros.ros.mask_codec import MASK_ENCODINGS
from ovsam_ros.ros.messages import instance_id_image, mask_from_msg


def make_image(rgb: np.ndarray, encoding: str = "rgb8", stamp: tuple[int, int] = (100, 5),
               frame_id: str = "camera_optical_frame") -> Any:
    from std_msgs.msg import Header

    from ovsam_ros.ros.camera_demo import image_message

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = stamp
    return image_message(rgb, encoding, header)


def test_image(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth image with a few blobs (RGB uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 128)], -1).astype(np.uint8)
    for _ in range(3):
        cx, cy, r = rng.integers(10, width - 10), rng.integers(10, height - 10), rng.integers(5, 20)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
    return image


test_image.__test__ = False  # not a pytest test


def full_masks(masks_msg: Any) -> list[np.ndarray]:
    return [mask_from_msg(m, masks_msg.image_height, masks_msg.image_width) for m in masks_msg.instances]


def assert_outputs_match(masks_msg: Any, ids_msg: Any, source_header: Any, image_hw: tuple[int, int]) -> None:
    """Header copied verbatim, masks in the source size, instance-ID image agrees with the masks
    (``instance_id + 1``, or each instance's track id when the array says it is tracked)."""
    assert masks_msg.header == source_header
    assert (masks_msg.image_height, masks_msg.image_width) == image_hw
    for i, instance in enumerate(masks_msg.instances):
        assert instance.instance_id == i
        assert instance.mask_encoding in MASK_ENCODINGS
        box = instance.bbox
        assert box.x_offset + box.width <= image_hw[1] and box.y_offset + box.height <= image_hw[0]
    masks = full_masks(masks_msg)
    if ids_msg is not None:
        assert ids_msg.header == source_header
        if hasattr(ids_msg, "format"):  # instance_ids_format png: sensor_msgs/CompressedImage
            assert ids_msg.format.split(";")[0] == "mono16"
            ids, _ = compressed_to_numpy(ids_msg)
        else:
            assert ids_msg.encoding == "mono16"
            ids = image_to_numpy(ids_msg)
        assert ids.shape == image_hw and ids.dtype == np.uint16
        values = [track_id_pixel(m.track_id) for m in masks_msg.instances] if masks_msg.tracked \
            else [i + 1 for i in range(len(masks))]
        if masks_msg.tracked:
            assert all(m.track_id > 0 for m in masks_msg.instances)  # track_min_hits 1: every id reported
            assert len(set(values)) == len(values), "two instances share a track id"
        assert np.array_equal(ids, instance_id_image(masks, *image_hw, values))
        for value, mask in zip(values, masks):  # every id pixel lies inside its mask
            assert not (ids == value)[~mask].any()
