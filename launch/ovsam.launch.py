"""Launch the OVSAM perception node (lifecycle) on a real ROS 2 install.

    ovsam weights download --model rn50x16        # once: the default model's weight files (about 4 GB)
    ros2 launch ovsam_ros ovsam.launch.py camera:=/camera/color/image_raw
    ros2 launch ovsam_ros ovsam.launch.py model:=shapes   # the bundled demo model (synthetic shapes world only)
    ros2 launch ovsam_ros ovsam.launch.py config:=$(ros2 pkg prefix ovsam_ros)/share/ovsam_ros/config/jetson.yaml
    ros2 launch ovsam_ros ovsam.launch.py namespace:=front model:=rn50x16 device:=cuda precision:=fp16
    ros2 launch ovsam_ros ovsam.launch.py camera:=/front/image_raw image_transport:=compressed
    ros2 launch ovsam_ros ovsam.launch.py camera:=/camera/color/image_raw \
        depth_image:=/camera/aligned_depth_to_color/image_raw \
        depth_camera_info:=/camera/aligned_depth_to_color/camera_info detection_prompts:=/yolo/detections_2d

Arguments: config (parameters YAML), namespace, camera (image topic; its
``/compressed`` sibling is remapped too), depth_image / depth_camera_info / detection_prompts
(the other inputs; empty = not remapped: ``depth/image`` etc. in the namespace), model / device / precision / image_transport /
input_reliability / input_depth / output_reliability (override the config when not
empty), autostart (configure once, then activate if that configure succeeded; after that the
lifecycle is the operator's). A config that is not a readable file, or an override of the wrong
type, stops the launch with one line naming the argument (exit status 1).

Needs launch and launch_ros (a ROS 2 install). ``ros2 launch ovsam_ros ovsam.launch.py --show-args``
lists every argument. Without them, start the node with
its console script: ``ovsam-node --params-file config/ovsam.yaml --ros-args -r image:=/camera/image_raw``.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition


# Launch arguments that remap one input topic of the node when not empty (argument -> node's name).
INPUTS = {"depth_image": "depth/image", "depth_camera_info": "depth/camera_info",
          "detection_prompts": "detection_prompts"}
# Launch arguments that override one node parameter when not empty (name -> parameter type).
OVERRIDES = {"model": str, "device": str, "precision": str, "image_transport": str,
             "input_reliability": str, "input_depth": int, "output_reliability": str}


class LaunchArgumentError(ValueError):
    """A launch argument the node cannot start with; launch prints the message and exits 1."""


def _params_file(context) -> str:
    """The ``config`` argument, checked: launch_ros only warns about a missing file and starts the node
    on built-in defaults, which a robot then runs with unnoticed."""
    path = LaunchConfiguration("config").perform(context)
    if not path.strip():
        raise LaunchArgumentError("launch argument config is empty: give a parameters YAML (config/ovsam.yaml)")
    if not os.path.exists(path):
        raise LaunchArgumentError(f"launch argument config: parameters file {path!r} does not exist")
    if not os.path.isfile(path):
        raise LaunchArgumentError(f"launch argument config: {path!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise LaunchArgumentError(f"launch argument config: parameters file {path!r} is not readable")
    return path


def _override(name: str, kind: type, value: str):
    try:
        return kind(value)
    except ValueError:
        expected = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise LaunchArgumentError(f"launch argument {name}: expected {expected}, got {value!r}") from None


def _activate_after_configure(context, node):
    # The launch's own configure just ended (the handler is gone now): activate only if it succeeded.
    if context.locals.event.goal_state != "inactive":
        return []
    return [EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                        transition_id=Transition.TRANSITION_ACTIVATE))]


def _node_and_lifecycle(context, *args, **kwargs):
    params_file = _params_file(context)
    camera = LaunchConfiguration("camera").perform(context).rstrip("/")
    overrides = {}
    for name, kind in OVERRIDES.items():
        value = LaunchConfiguration(name).perform(context).strip()
        if value:  # empty: keep the config file's value
            overrides[name] = _override(name, kind, value)
    remappings = [("image", camera), ("image/compressed", camera + "/compressed")]
    for argument, topic in INPUTS.items():
        value = LaunchConfiguration(argument).perform(context).strip()
        if value:
            remappings.append((topic, value))
    node = LifecycleNode(
        package="ovsam_ros",
        executable="ovsam_node",
        name="ovsam",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        arguments=["--no-autostart"],  # the lifecycle is driven below
        parameters=[params_file, overrides],
        remappings=remappings,
    )
    autostart = IfCondition(LaunchConfiguration("autostart"))
    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE),
        condition=autostart,
    )
    # Once, for the configure emitted below: an operator's later configure (after deactivate / cleanup)
    # must leave the node inactive, and a failed first configure must not arm an activate for later.
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            entities=[OpaqueFunction(function=_activate_after_configure, args=[node])],
            handle_once=True,
        ),
        condition=autostart,
    )
    return [node, activate, configure]


def generate_launch_description() -> LaunchDescription:
    default_config = PathJoinSubstitution([FindPackageShare("ovsam_ros"), "config", "ovsam.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="parameters YAML (config/ovsam.yaml, config/jetson.yaml or yours)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("camera", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic to segment (<camera>/compressed also works)"),
        DeclareLaunchArgument("depth_image", default_value="",
                              description="depth image aligned to the camera (16UC1 mm / 32FC1 m), e.g. "
                                          "/camera/aligned_depth_to_color/image_raw; empty = <namespace>/depth/image"),
        DeclareLaunchArgument("depth_camera_info", default_value="",
                              description="CameraInfo of the depth image; empty = <namespace>/depth/camera_info"),
        DeclareLaunchArgument("detection_prompts", default_value="",
                              description="vision_msgs/Detection2DArray from a detector, each detection a box "
                                          "prompt; empty = <namespace>/detection_prompts"),
        DeclareLaunchArgument("model", default_value="",
                              description="model YAML name (config/models/) or path; empty = the config's "
                                          "(config/ovsam.yaml: rn50x16, the published OVSAM, whose files "
                                          "`ovsam weights download --model rn50x16` fetches; shapes = the "
                                          "bundled demo model)"),
        DeclareLaunchArgument("device", default_value="", description="cpu | cuda | cuda:N | auto; empty = the config's"),
        DeclareLaunchArgument("precision", default_value="", description="fp32 | fp16 | bf16; empty = the config's"),
        DeclareLaunchArgument("image_transport", default_value="",
                              description="raw (subscribe <camera>) | compressed (<camera>/compressed); "
                                          "empty = the config's"),
        DeclareLaunchArgument("input_reliability", default_value="",
                              description="camera QoS: best_effort (matches every camera) | reliable; "
                                          "empty = the config's"),
        DeclareLaunchArgument("input_depth", default_value="", description="camera QoS depth; empty = the config's"),
        DeclareLaunchArgument("output_reliability", default_value="",
                              description="QoS of the outputs: reliable | best_effort; empty = the config's"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the lifecycle node on launch"),
        OpaqueFunction(function=_node_and_lifecycle),
    ])
