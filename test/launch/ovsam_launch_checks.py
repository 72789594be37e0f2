"""launch_testing checks of the real ``ros2 launch ovsam_ros ovsam.launch.py`` (not a pytest module).

Run by test/ros/test_launch_file.py inside a private network namespace, against a package
installed the way colcon installs it; by hand, after ``colcon build && source install/setup.bash``::

    launch_test test/launch/ovsam_launch_checks.py namespace:=front input_depth:=3 camera:=/cam/image_raw

Launch arguments are passed through to the package's launch file unchanged (every argument it
declares). What is checked depends on them:

* ``autostart`` true (default): the node reaches *active*; after an operator's deactivate it
  stays inactive, and after the operator's cleanup + configure too (the launch file activates once,
  after its own configure); activate works again; a frame + a box prompt on the remapped camera
  give masks on ``<namespace>/ovsam/masks``.
* ``autostart:=false``: the node stays unconfigured.
* ``OVSAM_LAUNCH_EXPECT_CONFIGURE_ERROR=1`` in the environment (the default model with an empty
  weights folder): configure fails, the node stays unconfigured (never activated), and its log has
  one error naming every missing weight file and the command that fetches them.
* always: no parameters-file warning in the node's log (the false warning of issue #22 named
  ``/ovsam`` for a node launched in a namespace), each given override is the parameter's value,
  each remap is what the node subscribes, and the node exits 0 on shutdown.
"""

from __future__ import annotations

import os
import time
import unittest

import launch
import launch_testing
import launch_testing.actions
import launch_testing.asserts
import launch_testing.markers
import numpy as np
import pytest
import rclpy
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ovsam_ros.msg import LabeledMaskArray, PromptArray, PromptBox, SegmentationPrompt

# The launch file's own arguments this file reads (everything given is passed through).
DEFAULTS = {"namespace": "", "camera": "/camera/image_raw", "autostart": "true"}
TIMEOUT = float(os.environ.get("OVSAM_LAUNCH_TEST_TIMEOUT", "240"))  # model load on a busy 2-core VM
# Set by test/ros/test_launch_file.py where configure must fail (the default model without its files).
EXPECT_CONFIGURE_ERROR = os.environ.get("OVSAM_LAUNCH_EXPECT_CONFIGURE_ERROR") == "1"
# The published model's files, as its YAML names them (config/models/rn50x16.yaml).
RN50X16_FILES = ("RN50x16-openai.pt", "sam_vit_h_4b8939.pth", "sam2clip_vith_rn50x16.pth", "clip2sam_lvis_rn50x16.pth")


def launch_arguments() -> dict[str, str]:
    """``name:=value`` arguments given to launch_test (sys.argv), as the launch file will see them."""
    import sys

    given = dict(arg.split(":=", 1) for arg in sys.argv[1:] if ":=" in arg)
    return {**DEFAULTS, **given}


@pytest.mark.launch_test
@launch_testing.markers.keep_alive
def generate_test_description():
    args = launch_arguments()
    ovsam = IncludeLaunchDescription(
        PythonLaunchDescriptionSource([FindPackageShare("ovsam_ros"), "/launch/ovsam.launch.py"]),
        launch_arguments=list(args.items()),
    )
    return launch.LaunchDescription([ovsam, launch_testing.actions.ReadyToTest()]), {"args": args}


def node_path(args: dict[str, str]) -> str:
    namespace = args["namespace"].strip("/")
    return f"/{namespace}/ovsam" if namespace else "/ovsam"


class RosTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.context = rclpy.Context()
        rclpy.init(args=[], context=cls.context)  # sys.argv holds launch_test's name:=value arguments
        cls.node = rclpy.create_node("ovsam_launch_checks", context=cls.context)
        cls.executor = SingleThreadedExecutor(context=cls.context)
        cls.executor.add_node(cls.node)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.executor.shutdown()
        cls.node.destroy_node()
        rclpy.shutdown(context=cls.context)

    def call(self, srv_type, name: str, request, timeout: float = TIMEOUT):
        client = self.node.create_client(srv_type, name)
        try:
            self.assertTrue(client.wait_for_service(timeout_sec=timeout), f"{name} never appeared")
            future = client.call_async(request)
            self.executor.spin_until_future_complete(future, timeout_sec=timeout)
            self.assertTrue(future.done(), f"{name} did not answer in {timeout:.0f} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def state(self, target: str) -> str:
        return self.call(GetState, f"{target}/get_state", GetState.Request()).current_state.label

    def wait_for_state(self, target: str, label: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        state = self.state(target)
        while state != label and time.monotonic() < deadline:
            time.sleep(0.5)
            state = self.state(target)
        return state

    def transition(self, target: str, transition_id: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(ChangeState, f"{target}/change_state", request).success


class TestLaunchedNode(RosTestCase):
    def test_lifecycle_follows_autostart(self, args, proc_output):
        target = node_path(args)
        if EXPECT_CONFIGURE_ERROR:
            proc_output.assertWaitFor("configure failed", timeout=TIMEOUT)
            self.assertEqual(self.state(target), "unconfigured")
            time.sleep(3.0)  # and nothing activates it afterwards
            self.assertEqual(self.state(target), "unconfigured")
            return
        if args["autostart"].lower() not in ("true", "1"):
            self.assertEqual(self.state(target), "unconfigured")
            time.sleep(5.0)  # nothing configures it later either
            self.assertEqual(self.state(target), "unconfigured")
            return
        self.assertEqual(self.wait_for_state(target, "active"), "active")
        # An operator pauses the node: the launch file must not activate it again.
        self.assertTrue(self.transition(target, Transition.TRANSITION_DEACTIVATE))
        time.sleep(3.0)
        self.assertEqual(self.state(target), "inactive")
        # ... and reconfigures it ("after that the lifecycle is yours"): configure must not activate it.
        self.assertTrue(self.transition(target, Transition.TRANSITION_CLEANUP))
        self.assertTrue(self.transition(target, Transition.TRANSITION_CONFIGURE))
        time.sleep(3.0)
        self.assertEqual(self.state(target), "inactive")
        self.assertTrue(self.transition(target, Transition.TRANSITION_ACTIVATE))
        self.assertEqual(self.state(target), "active")
        self.check_masks(args, target)

    def check_masks(self, args: dict[str, str], target: str) -> None:
        got: list = []
        # best effort subscriber / reliable publisher: compatible with either output_reliability / input_reliability
        any_output = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.node.create_subscription(LabeledMaskArray, f"{target}/masks", got.append, any_output)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        prompts = self.node.create_publisher(PromptArray, f"{target}/prompts", latched)
        box = SegmentationPrompt(has_box=True, box=PromptBox(x_min=20.0, y_min=15.0, x_max=120.0, y_max=90.0))
        prompts.publish(PromptArray(prompts=[box], persistent=True))
        camera = self.node.create_publisher(Image, args["camera"], QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        pixels = np.zeros((120, 160, 3), np.uint8)
        pixels[15:90, 20:120] = (200, 40, 40)
        image = Image(height=120, width=160, encoding="rgb8", step=480, data=pixels.tobytes())
        image.header.frame_id, image.header.stamp.sec = "camera", 42
        deadline = time.monotonic() + TIMEOUT
        while not got and time.monotonic() < deadline:
            camera.publish(image)
            end = time.monotonic() + 1.0
            while not got and time.monotonic() < end:
                self.executor.spin_once(timeout_sec=0.1)
        self.assertTrue(got, f"no masks on {target}/masks from frames on {args['camera']}")
        self.assertEqual((got[0].header.stamp.sec, got[0].header.frame_id, len(got[0].instances)), (42, "camera", 1))

    def test_overrides_and_remaps_apply(self, args):
        target = node_path(args)
        namespace, name = target.rsplit("/", 1)
        namespace = namespace or "/"
        deadline = time.monotonic() + TIMEOUT
        while name not in self.node.get_node_names() and time.monotonic() < deadline:
            time.sleep(0.2)
        configures = args["autostart"].lower() in ("true", "1") and not EXPECT_CONFIGURE_ERROR
        if configures:  # topics exist from configure on
            self.wait_for_state(target, "active")
        overrides = {k: v for k, v in args.items()
                     if k in ("model", "device", "precision", "image_transport", "input_reliability",
                              "input_depth", "output_reliability") and v}
        if overrides:
            response = self.call(GetParameters, f"{target}/get_parameters",
                                 GetParameters.Request(names=list(overrides)))
            got = {k: (v.integer_value if v.type == 2 else v.string_value) for k, v in zip(overrides, response.values)}
            self.assertEqual(got, {k: int(v) if k == "input_depth" else v for k, v in overrides.items()})
        if not configures:
            return
        subscribed = {topic for topic, _ in self.node.get_subscriber_names_and_types_by_node(name, namespace)}
        camera = args["camera"].rstrip("/")
        expected = {camera if args.get("image_transport", "raw") != "compressed" else camera + "/compressed"}
        for argument, default in (("depth_image", "depth/image"), ("depth_camera_info", "depth/camera_info"),
                                  ("detection_prompts", "detection_prompts")):
            given = args.get(argument, "")
            expected.add(given if given else (namespace.rstrip("/") + "/" + default))
        if "detection_prompts" not in args:  # only where vision_msgs is importable
            expected.discard(namespace.rstrip("/") + "/detection_prompts")
        self.assertLessEqual(expected, subscribed, f"subscriptions of {target}: {sorted(subscribed)}")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_clean_exit_and_no_false_params_warning(self, proc_info, proc_output):
        launch_testing.asserts.assertExitCodes(proc_info)  # SIGINT from launch: exit 0
        text = "".join(event.text.decode(errors="replace") for event in proc_output)
        self.assertNotIn("has no section for node", text)
        self.assertNotIn("Traceback", text)
        if EXPECT_CONFIGURE_ERROR:
            errors = [line for line in text.splitlines() if "configure failed" in line]
            self.assertEqual(len(errors), 1, text[-4000:])  # one message, not one per file
            home = os.path.expanduser("~")
            for name in RN50X16_FILES:
                self.assertIn(f"{home}/ovsam_weights/{name}", errors[0])
            self.assertIn("ovsam weights download --model rn50x16", errors[0])
            self.assertIn("model:=shapes", errors[0])
