"""A LabeledMaskArray with real mask images crosses DDS between two processes intact."""

import sys
from pathlib import Path

import numpy as np
import pytest

from ovsam_ros.ros.isolation import wait_for_line

PROGRAMS = Path(__file__).parent / "programs"


@pytest.mark.ros
@pytest.mark.e2e
def test_labeled_mask_array_crosses_processes_intact(ros_group, tmp_path):
    from rclpy.serialization import deserialize_message

    from ovsam_ros.msg import LabeledMaskArray
    from ovsam_ros.ros.messages import mask_from_msg

    sent, got = tmp_path / "sent.bin", tmp_path / "got.bin"
    listener = ros_group.start([sys.executable, str(PROGRAMS / "labeled_mask_listener.py"), str(got)])
    wait_for_line(listener, "listening", timeout=30)
    talker = ros_group.start([sys.executable, str(PROGRAMS / "labeled_mask_talker.py"), str(sent)])
    wait_for_line(listener, "received 2 instances", timeout=60)
    assert listener.wait(timeout=30) == 0
    ros_group.stop(talker)

    # Field-by-field equality (CDR padding bytes are not guaranteed to match).
    msg = deserialize_message(got.read_bytes(), LabeledMaskArray)
    assert msg == deserialize_message(sent.read_bytes(), LabeledMaskArray)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1700000000, 123456789)
    assert msg.header.frame_id == "camera_optical_frame"
    dog = mask_from_msg(msg.instances[0], msg.image_height, msg.image_width)
    yy, xx = np.mgrid[:240, :320]
    assert np.array_equal(dog, (xx - 100) ** 2 + (yy - 80) ** 2 <= 40 * 40)
    assert msg.instances[0].mask.encoding == "mono8"
    assert (msg.instances[0].label, msg.instances[0].class_index) == ("dog", 16)
    assert [a.label for a in msg.instances[0].alternatives] == ["dog", "cat"]
