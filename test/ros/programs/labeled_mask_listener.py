"""Receive one LabeledMaskArray and write its serialized bytes (test program).

Usage: labeled_mask_listener.py OUT_FILE
"""

import sys
from pathlib import Path

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message

from ovsam_ros.msg import LabeledMaskArray


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("labeled_mask_listener")
    received = []
    node.create_subscription(LabeledMaskArray, "masks", received.append,
                             QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    print("listening", flush=True)
    while rclpy.ok() and not received:
        rclpy.spin_once(node, timeout_sec=0.2)
    Path(sys.argv[1]).write_bytes(serialize_message(received[0]))
    print(f"received {len(received[0].instances)} instances", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
