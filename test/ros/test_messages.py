"""LabeledMask building: crop to the box, paste back exactly, instance-ID image."""

import numpy as np
import pytest

from ovsam_ros.ros.messages import instance_id_image, labeled_mask_msg, mask_bbox, mask_from_msg


def test_mask_roundtrip_through_cropped_message():
    mask = np.zeros((30, 40), bool)
    mask[5:12, 20:33] = True
    mask[7, 35] = True
    msg = labeled_mask_msg(mask, instance_id=3, prompt_index=1, labels=[(2, "car", 0.8), (7, "truck", 0.1)],
                           predicted_iou=0.9)
    assert (msg.bbox.x_offset, msg.bbox.y_offset, msg.bbox.width, msg.bbox.height) == (20, 5, 16, 7)
    assert (msg.mask.width, msg.mask.height, msg.mask.encoding) == (16, 7, "mono8")
    assert (msg.label, msg.class_index) == ("car", 2) and msg.score == pytest.approx(0.8)
    assert np.array_equal(mask_from_msg(msg, 30, 40), mask)


def test_empty_mask_and_unlabeled():
    msg = labeled_mask_msg(np.zeros((8, 8), bool), instance_id=0)
    assert (msg.bbox.width, msg.bbox.height) == (0, 0)
    assert (msg.label, msg.class_index) == ("", -1)
    assert not mask_from_msg(msg, 8, 8).any()
    assert mask_bbox(np.zeros((3, 3), bool)) == (0, 0, 0, 0)


def test_instance_id_image_gives_contested_pixels_to_the_first_mask():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    ids = instance_id_image([a, b], 4, 4)
    assert ids.dtype == np.uint16
    assert ids[0].tolist() == [1] * 4 and ids[1].tolist() == [1] * 4 and ids[2].tolist() == [2] * 4
    assert ids[3].tolist() == [0] * 4
