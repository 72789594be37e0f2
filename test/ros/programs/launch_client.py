"""Do what `ros2 launch` + a camera + an operator do to a node started with --no-autostart (test program).

Usage: launch_client.py OUT_JSON NODE CAMERA_TOPIC PROMPTS_TOPIC TRANSITION [TRANSITION ...]

Requests the lifecycle transitions given (labels: configure, activate, ...) in order on NODE
(e.g. /ovsam), then publishes a frame on CAMERA_TOPIC and a persistent box prompt on
PROMPTS_TOPIC until NODE/masks answers. Writes the states, the answer and the last
/diagnostics status of the node to OUT_JSON; prints "done".
"""

import json
import sys
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from ovsam_ros.msg import LabeledMaskArray, PromptArray, PromptBox, SegmentationPrompt

IDS = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
       "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP}


def call(node, client, request, timeout=180.0):
    assert client.wait_for_service(timeout_sec=90), client.srv_name
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
    assert future.done(), f"{client.srv_name} did not answer"
    return future.result()


def main() -> None:
    out, target, camera, prompts_topic, *transitions = sys.argv[1:]
    rclpy.init()
    node = rclpy.create_node("launch_client")
    change = node.create_client(ChangeState, f"{target}/change_state")
    get = node.create_client(GetState, f"{target}/get_state")
    steps = {"initial_state": call(node, get, GetState.Request()).current_state.label, "transitions": []}
    for label in transitions:
        ok = call(node, change, ChangeState.Request(transition=Transition(id=IDS[label]))).success
        steps["transitions"].append([label, ok, call(node, get, GetState.Request()).current_state.label])

    got, diagnostics = [], []
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(LabeledMaskArray, f"{target}/masks", got.append, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: diagnostics.extend(s for s in m.status if s.name.startswith("ovsam")), reliable)
    image_pub = node.create_publisher(Image, camera, qos_profile_sensor_data)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    prompt_pub = node.create_publisher(PromptArray, prompts_topic, latched)
    prompt = SegmentationPrompt(has_box=True, box=PromptBox(x_min=20.0, y_min=15.0, x_max=120.0, y_max=90.0))
    prompt_pub.publish(PromptArray(prompts=[prompt], persistent=True))
    pixels = np.zeros((120, 160, 3), np.uint8)
    pixels[15:90, 20:120] = (200, 40, 40)
    image = Image(height=120, width=160, encoding="rgb8", step=480, data=pixels.tobytes())
    image.header.frame_id = "camera"
    image.header.stamp.sec = 42
    deadline = time.monotonic() + 120
    while not got and time.monotonic() < deadline:
        image_pub.publish(image)
        end = time.monotonic() + 1.0
        while not got and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
    end = time.monotonic() + 3.0
    while time.monotonic() < end and not diagnostics:
        rclpy.spin_once(node, timeout_sec=0.1)
    if got:
        msg = got[0]
        steps["masks"] = {"stamp": msg.header.stamp.sec, "frame_id": msg.header.frame_id, "mode": msg.mode,
                          "instances": len(msg.instances), "size": [msg.image_width, msg.image_height]}
    if diagnostics:
        steps["diagnostics"] = {"level": int.from_bytes(diagnostics[-1].level, "little")
                                if isinstance(diagnostics[-1].level, bytes) else int(diagnostics[-1].level),
                                "message": diagnostics[-1].message}
    with open(out, "w") as f:
        json.dump(steps, f)
    print("done", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
