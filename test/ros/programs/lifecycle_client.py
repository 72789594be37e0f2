"""Drive the node's lifecycle and parameters over DDS, as `ros2 lifecycle` / `ros2 param` would (test program).

Usage: lifecycle_client.py OUT_JSON
Expects a node /ovsam started with --no-autostart and a model that cannot load. Steps:
configure (must fail), set model:=tiny and a bad mode (must be rejected), configure, activate.
"""

import json
import sys
import time

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter


def call(node, client, request, timeout=120.0):
    assert client.wait_for_service(timeout_sec=60), client.srv_name
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
    assert future.done(), f"{client.srv_name} did not answer"
    return future.result()


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("lifecycle_client")
    change = node.create_client(ChangeState, "/ovsam/change_state")
    get = node.create_client(GetState, "/ovsam/get_state")
    params = node.create_client(SetParameters, "/ovsam/set_parameters")
    steps = {}

    def transition(label: str, transition_id: int) -> None:
        steps[label] = call(node, change, ChangeState.Request(transition=Transition(id=transition_id))).success
        steps[label + "_state"] = call(node, get, GetState.Request()).current_state.label

    def set_param(label: str, name: str, value) -> None:
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        result = call(node, params, request).results[0]
        steps[label] = [result.successful, result.reason]

    steps["initial_state"] = call(node, get, GetState.Request()).current_state.label
    transition("configure_missing_checkpoint", Transition.TRANSITION_CONFIGURE)
    set_param("set_bad_mode", "mode", "dance")
    set_param("set_model", "model", "tiny")
    transition("configure", Transition.TRANSITION_CONFIGURE)
    set_param("set_model_while_configured", "model", "rn50x16")
    transition("activate", Transition.TRANSITION_ACTIVATE)
    time.sleep(0.2)
    with open(sys.argv[1], "w") as f:
        json.dump(steps, f)
    print("done", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
