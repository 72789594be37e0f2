"""/diagnostics status per node and lifecycle state, and input ages a hostile stamp cannot poison.

Names follow diagnostic_updater's ``use_fqn`` (the node's fully qualified name), so nodes of the same
name in two namespaces are two entries for an aggregator; levels: ERROR after a failed configure and
once finalized, OK unconfigured / inactive, active as the input and counters say.
"""

from __future__ import annotations

import pytest
from ros_node_helpers import make_image, test_image

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ovsam_ros.ros.diagnostics import (  # noqa: E402
    MAX_PLAUSIBLE_AGE_S,
    NodeStats,
    diagnostic_array,
    summary_line,
    values_of,
)


@pytest.fixture
def namespaced_nodes(ros_context):
    from ovsam_ros.ros.node import OVSAMNode

    nodes = []

    def make(name: str, namespace: str):
        node = OVSAMNode(name, namespace=namespace, context=ros_context, start_worker=False,
                         parameter_overrides=[Parameter("num_threads", value=1), Parameter("model", value="tiny")])
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.destroy_node()


def test_same_named_nodes_in_two_namespaces_publish_two_statuses(namespaced_nodes):
    """The README's multi-camera setup: /ovsam and /rear/ovsam must be told apart by an aggregator."""
    root, rear = namespaced_nodes("ovsam", "/"), namespaced_nodes("ovsam", "/rear")
    names = [node.publish_diagnostics().status[0].name for node in (root, rear)]
    # diagnostic_updater (use_fqn) names a status "<node>: <task>" with <node> the fully qualified name
    assert names == ["/ovsam: ovsam", "/rear/ovsam: ovsam"]
    assert [n.split(": ")[0] for n in names] == [root.get_fully_qualified_name(), rear.get_fully_qualified_name()]


def test_finalized_is_an_error_unconfigured_and_inactive_are_ok(make_node):
    node = make_node(active=False, name="ovsam_states")
    status = node.publish_diagnostics().status[0]
    assert (status.level, status.message) == (DiagnosticStatus.OK, "unconfigured")  # never configured, no error
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    status = node.publish_diagnostics().status[0]
    assert (status.level, status.message) == (DiagnosticStatus.OK, "inactive")  # an operator's pause
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert node.publish_diagnostics().status[0].level == DiagnosticStatus.OK
    # `ros2 lifecycle set /ovsam shutdown`: the process lives on, but never processes a frame again
    assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    assert node.state_label == "finalized"
    status = node.publish_diagnostics().status[0]
    assert status.level == DiagnosticStatus.ERROR
    assert status.message == "finalized: this node will not process frames again; restart it"
    assert values_of(node.publish_diagnostics())["state"] == "finalized"


def test_finalized_stays_an_error_whatever_the_counters_say():
    """The pure status function: finalized is ERROR even with no error text and quiet counters."""
    snap = NodeStats().snapshot()
    for state, level in (("unconfigured", DiagnosticStatus.OK), ("inactive", DiagnosticStatus.OK),
                         ("active", DiagnosticStatus.OK), ("finalized", DiagnosticStatus.ERROR)):
        status = diagnostic_array(snap, name="/ovsam: ovsam", stamp=None, state=state, previous=snap).status[0]
        assert status.level == level, state


def test_implausible_ages_are_counted_not_averaged():
    stats = NodeStats()
    for age in (0.010, 0.030):
        stats.received(age)
    # the probe's far-future stamp (-6050656529.5 ms), a far-past one, and one just past the bound
    for age in (-6050656.5295, 1.7e9, MAX_PLAUSIBLE_AGE_S + 1.0, -(MAX_PLAUSIBLE_AGE_S + 1.0)):
        stats.received(age)
    stats.received(None)
    stats.processed({"total": 0.005}, (1, 0), 1e9, 0)  # result age of the same hostile stamp
    stats.processed({"total": 0.005}, (2, 0), 0.050, 0)
    snap = stats.snapshot()
    assert (snap["frames_received"], snap["stamps_implausible"], snap["zero_stamps"]) == (7, 4, 1)
    assert snap["input_age"]["mean"] == pytest.approx(0.020) and snap["input_age"]["max"] == pytest.approx(0.030)
    assert snap["result_age"]["mean"] == pytest.approx(0.050)
    assert summary_line(snap).endswith("input age ms: 20.0")
    values = values_of(diagnostic_array(snap, name="/ovsam: ovsam", stamp=None, state="active"))
    assert values["stamps_implausible"] == "4" and values["input_age_ms_max"] == "30.0"


def test_a_hostile_stamp_does_not_enter_the_nodes_input_age(make_node):
    node = make_node(name="ovsam_hostile_stamp")
    now = node.get_clock().now().to_msg()
    node._receive(make_image(test_image(), stamp=(now.sec, now.nanosec)), False)
    node._receive(make_image(test_image(), stamp=(now.sec + 6_050_657, 0)), False)  # 70 days ahead
    node._receive(make_image(test_image(), stamp=(now.sec, now.nanosec)), False)
    values = values_of(node.publish_diagnostics())
    assert values["frames_received"] == "3" and values["stamps_implausible"] == "1"
    assert 0.0 <= float(values["input_age_ms_mean"]) < 60_000
    assert "input age ms: -" not in summary_line(node.stats.snapshot())
