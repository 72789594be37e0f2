"""launch/ovsam.launch.py, evaluated with recording stand-ins for `launch` (see launch_sim.py)."""

from __future__ import annotations

from pathlib import Path

from launch_sim import evaluate, lifecycle_requests, node_command

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch" / "ovsam.launch.py"
SHARE = Path("/opt/ws/install/ovsam_ros/share/ovsam_ros")  # what FindPackageShare resolves to


def test_autostart_configures_then_activates_once():
    launched = evaluate(LAUNCH, SHARE)
    assert lifecycle_requests(launched, []) == (["configure", "activate"], "active")


def test_operator_can_pause_and_reconfigure_without_the_launch_file_reactivating():
    launched = evaluate(LAUNCH, SHARE)
    # deactivate: stays inactive (the old handler matched every return to inactive and re-activated)
    assert lifecycle_requests(launched, [4]) == (["configure", "activate", "deactivate"], "inactive")
    # cleanup + configure by hand: a CONFIGURE again reaches inactive, so the handler activates, as at start
    done, state = lifecycle_requests(launched, [4, 2, 1])
    assert done == ["configure", "activate", "deactivate", "cleanup", "configure", "activate"] and state == "active"


def test_autostart_false_leaves_the_node_unconfigured():
    launched = evaluate(LAUNCH, SHARE, autostart="false")
    assert lifecycle_requests(launched, []) == ([], "unconfigured")


def test_node_command_line_matches_what_ros2_launch_runs(tmp_path):
    launched = evaluate(LAUNCH, SHARE, camera="/front/color/image_raw/", model="rn50x16", namespace="front")
    argv = node_command(launched, SHARE.parents[1], tmp_path)
    assert argv[0] == str(SHARE.parents[1] / "lib" / "ovsam_ros" / "ovsam_node")
    assert argv[1:argv.index("--ros-args")] == ["--no-autostart"]  # the launch file drives the lifecycle
    assert ["-r", "__node:=ovsam", "-r", "__ns:=front"] == argv[argv.index("--ros-args") + 1:][:4]
    assert launched.parameters[0] == str(SHARE / "config" / "ovsam.yaml")
    assert launched.parameters[1] == {"model": "rn50x16"}  # empty device/precision keep the file's values
    assert ("image", "/front/color/image_raw") in launched.remappings


def test_transport_and_qos_arguments_become_typed_parameter_overrides(tmp_path):
    from ovsam_ros.ros.parameters import validate

    launched = evaluate(LAUNCH, SHARE, image_transport="compressed", input_reliability="reliable", input_depth="3",
                        output_reliability="best_effort")
    overrides = launched.parameters[1]
    assert overrides == {"image_transport": "compressed", "input_reliability": "reliable", "input_depth": 3,
                         "output_reliability": "best_effort"}
    for name, value in overrides.items():
        assert validate(name, value) is None, (name, value)
    assert ("image/compressed", "/camera/image_raw/compressed") in launched.remappings
