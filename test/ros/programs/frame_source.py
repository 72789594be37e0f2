"""Publish a camera frame at ~2 Hz and a persistent box prompt until killed (test program).

Usage: frame_source.py CAMERA_TOPIC PROMPTS_TOPIC

For tests that observe the node's outputs with another tool (e.g. `ros2 topic echo --once`):
the frames keep coming however late that tool subscribes. Prints "publishing" once started.
"""

import sys
import time

import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ovsam_ros.msg import PromptArray, PromptBox, SegmentationPrompt


def main() -> None:
    camera, prompts_topic = sys.argv[1:3]
    rclpy.init()
    node = rclpy.create_node("frame_source")
    # reliable camera publisher: matches a best-effort or a reliable subscription
    image_pub = node.create_publisher(Image, camera, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    prompt_pub = node.create_publisher(PromptArray, prompts_topic, latched)
    prompt = SegmentationPrompt(has_box=True, box=PromptBox(x_min=20.0, y_min=15.0, x_max=120.0, y_max=90.0))
    prompt_pub.publish(PromptArray(prompts=[prompt], persistent=True))
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[15:90, 20:120] = (200, 40, 40)
    image = Image(height=120, width=160, encoding="rgb8", step=480, data=pixels.tobytes())
    image.header.frame_id = "camera"
    print("publishing", flush=True)
    try:
        while rclpy.ok():
            image.header.stamp.sec += 1
            image_pub.publish(image)
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
