"""QoS profiles of the node's topics, and the one rclpy API whose home moved after Humble.

A QoS mismatch is the most common "no output" report between ROS 2 packages, so the
camera input and the outputs are set by parameters (``input_reliability``,
``input_depth``, ``output_reliability``), and a publisher whose QoS cannot match a
subscription is reported with the parameter to change (:func:`incompatible_qos_callbacks`).

Prompts and text queries are commands: RELIABLE and TRANSIENT_LOCAL, so a node that
(re)starts after a persistent prompt was sent still receives it from a publisher that
also offers TRANSIENT_LOCAL (``ovsam-demo-prompts`` does; ``ros2 topic pub --qos-durability
transient_local``). A VOLATILE publisher cannot match a TRANSIENT_LOCAL subscription: the
node logs that case, naming the topic, instead of staying silent.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ovsam_ros.ros.parameters import RELIABILITIES
_RELIABILITY = dict(zip(RELIABILITIES, (ReliabilityPolicy.BEST_EFFORT, ReliabilityPolicy.RELIABLE)))

# Commands (prompts, text queries): latched, a few may queue; a late joiner gets the last 10 in order.
COMMAND_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
# /diagnostics, as diagnostic_updater publishes it (the aggregator subscribes with these).
DIAGNOSTICS_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10,
                             durability=DurabilityPolicy.VOLATILE)
# Detections (detection_prompts) are a stream from a detector, not latched commands: volatile,
# reliable (a detector's default QoS).
DETECTION_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10,
                           durability=DurabilityPolicy.VOLATILE)
# Depth is looked up by stamp later: keep a few, best effort (matches any publisher).
DEPTH_QOS = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST, depth=5,
                       durability=DurabilityPolicy.VOLATILE)
OUTPUT_DEPTH = 5
# ~/label_info (vision_msgs/LabelInfo, metadata like CameraInfo): latched, so a subscriber that joins
# later gets the current vocabulary at once; republished when the vocabulary changes.
LABEL_INFO_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=1,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)


def input_qos(reliability: str = "best_effort", depth: int = 1) -> QoSProfile:
    """Camera input: BEST_EFFORT matches every camera; depth 1 = the newest frame only."""
    return QoSProfile(reliability=_RELIABILITY[reliability], history=HistoryPolicy.KEEP_LAST, depth=depth,
                      durability=DurabilityPolicy.VOLATILE)


def output_qos(reliability: str = "reliable") -> QoSProfile:
    """Masks, instance ids, overlay, detections: RELIABLE matches every subscriber."""
    return QoSProfile(reliability=_RELIABILITY[reliability], history=HistoryPolicy.KEEP_LAST, depth=OUTPUT_DEPTH,
                      durability=DurabilityPolicy.VOLATILE)


# The defaults, for tools and tests that talk to a node with default parameters.
SENSOR_QOS = input_qos()
OUTPUT_QOS = output_qos()


def _event_handler_module() -> Any:
    """rclpy.event_handler (Iron and later); Humble has the same classes in rclpy.qos_event."""
    try:
        from rclpy import event_handler
    except ImportError:  # Humble
        from rclpy import qos_event as event_handler
    return event_handler


def incompatible_qos_callbacks(report: Callable[[str], None], topic: str, hint: str) -> Optional[Any]:
    """``event_callbacks=`` for a subscription: ``report(reason)`` when a publisher's QoS cannot match.

    None where this rclpy has no such event (the subscription then works without the report).
    """
    module = _event_handler_module()
    callbacks = getattr(module, "SubscriptionEventCallbacks", None)
    if callbacks is None:
        return None

    def on_incompatible(info: Any) -> None:
        policy = getattr(info, "last_policy_kind", "?")
        name = getattr(policy, "name", str(policy)).replace("RMW_QOS_POLICY_", "")
        report(f"a publisher on {topic} offers a QoS this node cannot match ({name} policy); "
               f"no messages will arrive from it. {hint}")

    return callbacks(incompatible_qos=on_incompatible)
