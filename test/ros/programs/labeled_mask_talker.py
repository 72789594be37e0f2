"""Publish one LabeledMaskArray with a real mask until a listener got it (test program).

Usage: labeled_mask_talker.py OUT_FILE — writes the serialized message it publishes.
"""

import sys
from pathlib import Path

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from std_msgs.msg import Header

from ovsam_ros.msg import LabeledMaskArray
from ovsam_ros.ros.messages import labeled_mask_msg


def disk(height: int, width: int, cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("labeled_mask_talker")
    pub = node.create_publisher(LabeledMaskArray, "masks", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    msg = LabeledMaskArray()
    msg.header = Header(frame_id="camera_optical_frame")
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000000, 123456789
    msg.image_height, msg.image_width = 240, 320
    msg.mode, msg.vocabulary_name, msg.vocabulary_version = "prompt", "coco", "test"
    msg.instances = [
        labeled_mask_msg(disk(240, 320, 100, 80, 40), instance_id=0, prompt_index=0,
                         labels=[(16, "dog", 0.9), (15, "cat", 0.05)], predicted_iou=0.93, stability_score=0.97),
        labeled_mask_msg(disk(240, 320, 250, 170, 25), instance_id=1, prompt_index=1,
                         labels=[(41, "cup", 0.7)], predicted_iou=0.81, stability_score=0.88),
    ]
    Path(sys.argv[1]).write_bytes(serialize_message(msg))
    print("publishing", flush=True)
    try:
        while rclpy.ok():
            pub.publish(msg)
            rclpy.spin_once(node, timeout_sec=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
