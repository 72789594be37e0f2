"""What the node exposes on a real install: one camera transport, QoS from parameters, latched
prompts, names under the node, diagnostics in every lifecycle state, Humble's rclpy layout.

In-process nodes (one rclpy context per module, LOCALHOST discovery); where DDS delivery
matters (latching, QoS mismatch) a second node in the same context publishes and an
executor spins both.
"""

from __future__ import annotations

import re
import sys
import time
import types
from pathlib import Path

import pytest
from ros_node_helpers import make_image, test_image

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from ovsam_ros.prompts import Prompt  # noqa: E402
from ovsam_ros.ros.diagnostics import values_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def image_subscriptions(node) -> dict[str, object]:
    """The camera subscriptions (these nodes run in the root namespace; depth/image is not one)."""
    return {s.topic_name: s for s in node.subscriptions if s.topic_name in ("/image", "/image/compressed")}


def spin_until(context, nodes, condition, timeout: float = 20.0) -> bool:
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    for n in nodes:
        executor.add_node(n)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not condition():
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown(timeout_sec=1.0)
    return condition()


# ----------------------------------------------------------------------------- one transport
@pytest.mark.parametrize("transport, topic, other", [("raw", "/image", "/image/compressed"),
                                                     ("compressed", "/image/compressed", "/image")])
def test_exactly_one_camera_subscription_per_transport(make_node, transport, topic, other):
    node = make_node(name=f"ovsam_{transport}", image_transport=transport)
    assert list(image_subscriptions(node)) == [topic]
    assert node.publish_diagnostics() and values_of(node.publish_diagnostics())["image_topic"] == topic


def test_transport_is_read_at_configure_and_rejects_unknown_values(make_node):
    node = make_node(name="ovsam_transport")
    result = node.set_parameters([Parameter("image_transport", value="compressed")])[0]
    assert not result.successful and "cleanup" in result.reason
    result = node.set_parameters([Parameter("image_transport", value="theora")])[0]
    assert not result.successful and "one of" in result.reason
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert image_subscriptions(node) == {}
    assert node.set_parameters([Parameter("image_transport", value="compressed")])[0].successful
    assert node.autostart()
    assert list(image_subscriptions(node)) == ["/image/compressed"]


# ----------------------------------------------------------------------------- QoS
def test_qos_follows_the_parameters(make_node):
    node = make_node(name="ovsam_qos", input_reliability="reliable", input_depth=3, output_reliability="best_effort")
    sub = image_subscriptions(node)["/image"]
    assert sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE and sub.qos_profile.depth == 3
    default = make_node(name="ovsam_qos_default")
    sub = image_subscriptions(default)["/image"]
    assert sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT and sub.qos_profile.depth == 1
    for name in ("/ovsam_qos_default/prompts", "/ovsam_qos_default/text_query"):
        command = next(s for s in default.subscriptions if s.topic_name == name)
        assert command.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
        assert command.qos_profile.reliability == ReliabilityPolicy.RELIABLE


def output_publishers(node) -> dict[str, object]:
    """Every publisher the node made under its own name (rclpy's real objects), by topic suffix."""
    prefix = f"/{node.get_name()}/"
    return {p.topic_name[len(prefix):]: p for p in node.publishers if p.topic_name.startswith(prefix)}


@pytest.mark.parametrize("reliability", ["best_effort", "reliable"])
def test_every_output_publisher_follows_output_reliability(make_node, reliability):
    """Not only ~/masks: a subscriber set up for best effort must match every output. ~/label_info is the
    exception by design (latched metadata: RELIABLE + TRANSIENT_LOCAL, depth 1, whatever the parameter)."""
    from ovsam_ros.ros import outputs
    from ovsam_ros.ros.qos import OUTPUT_DEPTH

    policy = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}[reliability]
    node = make_node(name=f"ovsam_out_{reliability}", output_reliability=reliability)
    pubs = output_publishers(node)
    streams = {"masks", "instance_ids", "instance_ids/compressed", "overlay", "points", "markers"}
    if outputs.Detection2DArray is not None:  # vision_msgs importable
        streams |= {"detections", "detections_3d"}
    assert set(pubs) == streams | ({"label_info"} if outputs.LabelInfo is not None else set())
    for name in sorted(streams):
        qos = pubs[name].qos_profile
        assert (qos.reliability, qos.history, qos.depth, qos.durability) == (
            policy, HistoryPolicy.KEEP_LAST, OUTPUT_DEPTH, DurabilityPolicy.VOLATILE), name
    if outputs.LabelInfo is not None:
        qos = pubs["label_info"].qos_profile
        assert (qos.reliability, qos.history, qos.depth, qos.durability) == (
            ReliabilityPolicy.RELIABLE, HistoryPolicy.KEEP_LAST, 1, DurabilityPolicy.TRANSIENT_LOCAL)


def test_a_restarted_node_picks_up_a_latched_persistent_prompt(ros_context, make_node):
    """Issue #14's case: the prompt was published once, before this node (re)started."""
    from ovsam_ros.ros.prompt_source import make_prompt_node

    source = make_prompt_node("latched_prompt_source", target="/ovsam_latch", context=ros_context)
    try:
        source.send_prompts([Prompt(box=[10, 10, 60, 50])], persistent=True)
        first = make_node(name="ovsam_latch")
        assert spin_until(ros_context, [first, source], lambda: first._persistent_prompts is not None)
        first.stop_worker()
        first.destroy_node()  # the node dies and comes back; the prompt is not sent again
        node = make_node(name="ovsam_latch")
        assert node._persistent_prompts is None
        assert spin_until(ros_context, [node, source], lambda: node._persistent_prompts is not None)
        node._receive(make_image(test_image()), False)
        out = node.process_pending()
        assert out.mode == "prompt" and len(out.masks.instances) == 1
    finally:
        source.destroy_node()


def test_a_publisher_that_cannot_match_is_reported_with_the_fix(ros_context, make_node):
    from ovsam_ros.msg import PromptArray

    node = make_node(name="ovsam_mismatch")
    talker = rclpy.create_node("volatile_talker", context=ros_context)
    try:
        # VOLATILE cannot serve a TRANSIENT_LOCAL subscription: DDS never matches them.
        talker.create_publisher(PromptArray, "/ovsam_mismatch/prompts",
                                QoSProfile(depth=1, durability=DurabilityPolicy.VOLATILE))
        assert spin_until(ros_context, [node, talker], lambda: node.stats.snapshot()["qos_incompatible"] > 0)
        snap = node.stats.snapshot()
        assert "DURABILITY" in snap["last_error"] and "transient_local" in snap["last_error"]
        status = node.publish_diagnostics().status[0]
        assert values_of(node.publish_diagnostics())["qos_incompatible"] == "1"
        assert status.level == DiagnosticStatus.WARN
    finally:
        talker.destroy_node()


def test_humble_rclpy_layout_qos_events_from_qos_event(monkeypatch, make_node, ros_context):
    """Humble has no rclpy.event_handler (its classes live in rclpy.qos_event): same behaviour."""
    from ovsam_ros.msg import PromptArray
    from ovsam_ros.ros import qos

    import rclpy.event_handler as current

    humble = types.ModuleType("rclpy.qos_event")  # Humble's module: the classes themselves, no event_handler
    humble.SubscriptionEventCallbacks = current.SubscriptionEventCallbacks
    monkeypatch.setitem(sys.modules, "rclpy.event_handler", None)  # import -> ImportError, as on Humble
    monkeypatch.setitem(sys.modules, "rclpy.qos_event", humble)
    monkeypatch.delattr(rclpy, "event_handler", raising=False)
    monkeypatch.setattr(rclpy, "qos_event", humble, raising=False)
    assert qos._event_handler_module() is humble
    node = make_node(name="ovsam_humble")
    talker = rclpy.create_node("volatile_talker_humble", context=ros_context)
    try:
        talker.create_publisher(PromptArray, "/ovsam_humble/prompts",
                                QoSProfile(depth=1, durability=DurabilityPolicy.VOLATILE))
        assert spin_until(ros_context, [node, talker], lambda: node.stats.snapshot()["qos_incompatible"] > 0)
    finally:
        talker.destroy_node()


# ----------------------------------------------------------------------------- names
EXPECTED = {
    "subscriptions": {"/image", "/ovsam_names/prompts", "/ovsam_names/text_query", "/depth/image",
                      "/depth/camera_info"},
    "publishers": {"/ovsam_names/masks", "/ovsam_names/instance_ids", "/ovsam_names/instance_ids/compressed",
                   "/ovsam_names/overlay", "/ovsam_names/points", "/ovsam_names/markers", "/diagnostics"},
    "services": {"/ovsam_names/set_vocabulary", "/ovsam_names/segment", "/ovsam_names/clear_prompts"},
}


def node_names(node) -> dict[str, set[str]]:
    ignore = ("/parameter_events", "/rosout")
    return {
        "subscriptions": {s.topic_name for s in node.subscriptions},
        "publishers": {p.topic_name for p in node.publishers if p.topic_name not in ignore},
        "services": {name for name in (node.resolve_service_name(s.srv_name) for s in node.services)
                     if not re.search(r"/(\w*parameters?\w*|change_state|get_state|get_available_\w+|"
                                      r"get_transition_graph|get_type_description)$", name)},
    }


def test_inputs_and_services_live_under_the_node(make_node):
    names = node_names(make_node(name="ovsam_names"))
    for vision in ("detections", "detections_3d", "label_info"):  # these only where vision_msgs is installed
        names["publishers"].discard(f"/ovsam_names/{vision}")
    names["subscriptions"].discard("/detection_prompts")
    assert names == EXPECTED


def test_readme_topic_and_service_names_are_the_nodes(make_node):
    """Every /ovsam/... name the README uses exists on a node named ovsam, and the node table lists them all."""
    node = make_node(name="ovsam")
    # + what the node has with image_transport: compressed, or with vision_msgs installed
    names = set().union(*node_names(node).values()) | {"/image/compressed", "/ovsam/detections",
                                                       "/ovsam/detections_3d", "/ovsam/label_info",
                                                       "/detection_prompts"}
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"(?<![\w/])/ovsam/[a-z_]+", readme))
    assert used and used <= names, sorted(used - names)
    table = readme[readme.index("## The ROS 2 node"):]
    table = table[:table.index("**Newest frame only.**")]
    listed = {m.replace("~/", "/ovsam/") if m.startswith("~/") else ("/" + m if not m.startswith("/") else m)
              for m in re.findall(r"^\| `([~/\w]+)`", table, re.M)}
    assert listed == names, (sorted(listed - names), sorted(names - listed))
    # The SROS2 policy (docs/sros2) allows exactly these names too (plus ROS's own per-node ones).
    import xml.etree.ElementTree as ET

    policy = ET.parse(ROOT / "docs" / "sros2" / "ovsam_node_policy.xml").getroot()
    allowed = {"/" + e.text.strip() for e in policy.iter() if e.tag in ("topic", "service")}
    builtin = re.compile(r"^/(rosout|parameter_events|tf|tf_static|ovsam/(transition_event|change_state|get_state|"
                         r"get_available_\w+|get_transition_graph|get_type_description|\w*parameter\w*))$")
    # ... and the camera as launch/ovsam.launch.py remaps it by default (SROS2 checks remapped names)
    launch_camera = {"/camera/image_raw", "/camera/image_raw/compressed"}
    assert {n for n in allowed if not builtin.match(n)} == names | launch_camera
    launch_file = (ROOT / "launch" / "ovsam.launch.py").read_text()
    assert 'DeclareLaunchArgument("camera", default_value="/camera/image_raw"' in launch_file


# ----------------------------------------------------------------------------- diagnostics
def test_diagnostics_in_every_state_error_after_a_failed_configure(make_node, ros_context, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray

    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  preset: tiny\n  ovsam_checkpoint: /nonexistent/ovsam.pth\n")
    node = make_node(active=False, name="ovsam_diag", model=str(broken), diagnostics_period=0.2,
                     model_dirs=str(tmp_path))  # paths outside model_dirs are refused
    listener = rclpy.create_node("diag_listener", context=ros_context)
    got = []
    listener.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: got.extend(s for s in m.status if s.name == "/ovsam_diag: ovsam"), 10)
    try:
        # unconfigured, nothing tried yet: published, OK
        assert spin_until(ros_context, [node, listener], lambda: len(got) > 0)
        assert got[-1].level == DiagnosticStatus.OK and got[-1].message == "unconfigured"
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        got.clear()
        assert spin_until(ros_context, [node, listener], lambda: len(got) > 0)
        assert got[-1].level == DiagnosticStatus.ERROR and "/nonexistent/ovsam.pth" in got[-1].message
        # fixed: inactive, then active, both published
        assert node.set_parameters([Parameter("model", value="tiny")])[0].successful
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        got.clear()
        assert spin_until(ros_context, [node, listener], lambda: len(got) > 0)
        assert got[-1].level == DiagnosticStatus.OK and got[-1].message == "inactive"
    finally:
        listener.destroy_node()


def test_diagnostics_warn_when_no_image_arrives_within_the_timeout(make_node):
    node = make_node(name="ovsam_silent", input_timeout=0.3)
    assert node.publish_diagnostics().status[0].level == DiagnosticStatus.OK
    time.sleep(0.4)
    status = node.publish_diagnostics().status[0]
    assert status.level == DiagnosticStatus.WARN and "no image on /image" in status.message
    node._receive(make_image(test_image()), False)  # input is back
    assert node.publish_diagnostics().status[0].level == DiagnosticStatus.OK
    assert node.set_parameters([Parameter("input_timeout", value=0.0)])[0].successful  # 0 = never
    time.sleep(0.4)
    assert node.publish_diagnostics().status[0].level == DiagnosticStatus.OK
