"""What the node puts on the wire (issue #23), received over DDS by a real subscriber and decoded:
compressed masks bit for bit, the ID image off by default or as a PNG, vision_msgs detections with
track ids, 3D detections and RViz markers from depth, and a latched LabelInfo."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_node_helpers import make_image, test_image

pytest.importorskip("rclpy")

from ovsam_ros.prompts import Prompt  # noqa: E402
from ovsam_ros.ros.image_conversion import compressed_to_numpy, numpy_to_image  # noqa: E402
from ovsam_ros.ros.mask_codec import DEFAULT_MASK_ENCODING, MASK_ENCODINGS, decode_masks  # noqa: E402
from ovsam_ros.ros.messages import instance_id_image_from_msg  # noqa: E402
from ovsam_ros.ros.prompt_input import prompt_array_msg  # noqa: E402
from ovsam_ros.ros.qos import OUTPUT_QOS  # noqa: E402

PROMPTS = [Prompt(box=[20.0, 15.0, 80.0, 70.0]), Prompt(points=[[90.0, 40.0]])]


class Inbox:
    """A listener node in the test's context: messages the node published, per topic, as received."""

    def __init__(self, context, node, topics: dict) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.listener = Node("wire_listener", context=context)
        self.got: dict[str, list] = {name: [] for name in topics}
        for name, (msg_type, qos) in topics.items():
            self.listener.create_subscription(msg_type, f"/ovsam_test/{name}",
                                              lambda m, name=name: self.got[name].append(m), qos)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self.executor.add_node(self.listener)
        self.node = node

    def wait_matched(self, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            if all(self.node.count_subscribers(f"/ovsam_test/{n}") for n in self.got):
                return
        raise TimeoutError("the listener's subscriptions did not match the node's publishers")

    def spin_until(self, predicate, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not predicate() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        assert predicate(), {n: len(v) for n, v in self.got.items()}

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.listener.destroy_node()


def _frame(node, rgb, stamp, depth=None):
    if depth is not None:
        node._on_depth(depth[0])
        node._on_camera_info(depth[1])
    msg = make_image(rgb, stamp=stamp)
    node._receive(msg, False)
    return msg, node.process_pending()


def _depth(stamp, hw=(96, 128), metres=2.0):
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    header = Header(frame_id="camera_depth_optical_frame")
    header.stamp.sec, header.stamp.nanosec = stamp
    info = CameraInfo(header=header, width=hw[1], height=hw[0])
    info.k = [100.0, 0.0, 64.0, 0.0, 100.0, 48.0, 0.0, 0.0, 1.0]
    return numpy_to_image(np.full(hw, metres, np.float32), "32FC1", header), info


def test_parameters_match_the_codecs():
    from ovsam_ros.ros import outputs
    from ovsam_ros.ros.parameters import SPECS, NodeSettings, validate

    assert tuple(SPECS["mask_encoding"].choices) == MASK_ENCODINGS
    assert tuple(SPECS["detection_class_id"].choices) == outputs.DETECTION_CLASS_IDS
    assert NodeSettings().mask_encoding == DEFAULT_MASK_ENCODING and NodeSettings().publish_instance_ids is False
    assert "coco_rle" in validate("mask_encoding", "rle")


def test_default_masks_arrive_compressed_and_decode_to_the_predictors_masks(make_node, ros_context):
    from ovsam_ros.msg import LabeledMaskArray
    from sensor_msgs.msg import CompressedImage, Image

    node = make_node(name="ovsam_test")
    inbox = Inbox(ros_context, node, {"masks": (LabeledMaskArray, OUTPUT_QOS),
                                      "instance_ids": (Image, OUTPUT_QOS),
                                      "instance_ids/compressed": (CompressedImage, OUTPUT_QOS)})
    try:
        inbox.wait_matched()
        node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
        rgb = test_image(seed=1)
        msg, out = _frame(node, rgb, (100, 1))
        inbox.spin_until(lambda: inbox.got["masks"])
        received = inbox.got["masks"][0]
        assert received.header == msg.header
        assert [m.mask_encoding for m in received.instances] == [DEFAULT_MASK_ENCODING] * 2
        node.predictor.set_image(rgb)
        reference = [r.mask for r in node.predictor.predict(PROMPTS)]
        assert all(np.array_equal(a, b) for a, b in zip(decode_masks(received), reference))
        assert out.instance_ids is None  # off by default ...
        inbox.spin_for(0.5)  # an ID image would have arrived before the masks did
        assert inbox.got["instance_ids"] == [] and inbox.got["instance_ids/compressed"] == []
        # ... and as a PNG CompressedImage when asked: the same pixels the masks give
        from rclpy.parameter import Parameter

        node.set_parameters([Parameter("publish_instance_ids", value=True)])
        _frame(node, rgb, (100, 2))
        inbox.spin_until(lambda: inbox.got["instance_ids/compressed"] and len(inbox.got["masks"]) == 2)
        ids_msg = inbox.got["instance_ids/compressed"][0]
        pixels, encoding = compressed_to_numpy(ids_msg)
        assert encoding == "mono16" and ids_msg.header.stamp.nanosec == 2
        assert np.array_equal(pixels, instance_id_image_from_msg(inbox.got["masks"][1]))
        assert inbox.got["instance_ids"] == []
    finally:
        inbox.close()


@pytest.mark.parametrize("encoding", MASK_ENCODINGS)
def test_every_mask_encoding_through_the_node(make_node, encoding):
    node = make_node(mask_encoding=encoding)
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    rgb = test_image(seed=3)
    _, out = _frame(node, rgb, (100, 3))
    node.predictor.set_image(rgb)
    reference = [r.mask for r in node.predictor.predict(PROMPTS)]
    assert [m.mask_encoding for m in out.masks.instances] == [encoding] * 2
    assert all(np.array_equal(a, b) for a, b in zip(decode_masks(out.masks), reference))


def test_vision_msgs_and_markers_from_a_tracked_depth_frame(make_node, ros_context):
    vision_msgs = pytest.importorskip("vision_msgs.msg")
    from visualization_msgs.msg import Marker, MarkerArray

    node = make_node(name="ovsam_test")
    inbox = Inbox(ros_context, node, {"detections": (vision_msgs.Detection2DArray, OUTPUT_QOS),
                                      "detections_3d": (vision_msgs.Detection3DArray, OUTPUT_QOS),
                                      "markers": (MarkerArray, OUTPUT_QOS)})
    try:
        inbox.wait_matched()
        node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
        rgb = test_image(seed=1)
        _, out = _frame(node, rgb, (200, 0), _depth((200, 0)))
        tracks = [m.track_id for m in out.masks.instances]
        assert all(t > 0 for t in tracks) and all(m.has_position for m in out.masks.instances)
        inbox.spin_until(lambda: inbox.got["detections"] and inbox.got["detections_3d"] and inbox.got["markers"])
        assert [d.id for d in inbox.got["detections"][0].detections] == [str(t) for t in tracks]
        det3d = inbox.got["detections_3d"][0]
        assert det3d.header.frame_id == "camera_depth_optical_frame"
        assert [d.id for d in det3d.detections] == [str(t) for t in tracks]
        for d, m in zip(det3d.detections, out.masks.instances):
            p = d.results[0].pose.pose.position
            assert (p.x, p.y, p.z) == pytest.approx((m.centroid.x, m.centroid.y, m.centroid.z))
            assert d.bbox.size.z == pytest.approx(m.extent_max.z - m.extent_min.z)
            assert d.results[0].hypothesis.class_id == m.label
        markers = inbox.got["markers"][-1].markers
        assert {(k.ns, k.id, k.action) for k in markers} == {
            (ns, t, Marker.ADD) for t in tracks for ns in ("ovsam_boxes", "ovsam_labels")}
        # the second prompt goes away: its track ends, its markers are deleted
        count = len(inbox.got["markers"])
        node._on_prompts(prompt_array_msg(PROMPTS[:1], persistent=True))
        _, out2 = _frame(node, rgb, (200, 50_000_000), _depth((200, 50_000_000)))
        inbox.spin_until(lambda: len(inbox.got["markers"]) > count)
        gone = {(k.ns, k.id) for k in inbox.got["markers"][-1].markers if k.action == Marker.DELETE}
        kept = out2.masks.instances[0].track_id
        assert gone == {(ns, t) for t in tracks if t != kept for ns in ("ovsam_boxes", "ovsam_labels")}
    finally:
        inbox.close()


def test_markers_are_deleted_when_turned_off_and_cleared_on_activation(make_node):
    from rclpy.parameter import Parameter
    from visualization_msgs.msg import Marker

    node = make_node()
    sent = []
    pub = node.publishers_by_name["markers"]
    publish = pub.publish
    pub.publish = lambda msg: (sent.append(msg), publish(msg))
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    rgb = test_image(seed=1)
    _, out = _frame(node, rgb, (300, 0), _depth((300, 0)))
    tracks = {m.track_id for m in out.masks.instances}
    assert {(k.id, k.action) for k in out.markers.markers} == {(t, Marker.ADD) for t in tracks}
    assert sent[-1] is out.markers
    # Turned off: what RViz shows is deleted once, then nothing more is sent.
    node.set_parameters([Parameter("publish_markers", value=False)])
    _, out = _frame(node, rgb, (300, 50_000_000), _depth((300, 50_000_000)))
    assert {(k.ns, k.id, k.action) for k in out.markers.markers} == {
        (ns, t, Marker.DELETE) for t in tracks for ns in ("ovsam_boxes", "ovsam_labels")}
    _, out = _frame(node, rgb, (300, 100_000_000), _depth((300, 100_000_000)))
    assert out.markers is None and len(sent) == 2
    # Each activation starts with one DELETEALL (tracks of before are gone).
    node.set_parameters([Parameter("publish_markers", value=True)])
    node.trigger_deactivate()
    node.trigger_activate()
    assert [k.action for k in sent[-1].markers] == [Marker.DELETEALL]


def test_label_info_is_latched_and_follows_the_vocabulary(make_node, ros_context):
    vision_msgs = pytest.importorskip("vision_msgs.msg")
    from ovsam_ros.ros.qos import LABEL_INFO_QOS
    from ovsam_ros.srv import SetVocabulary

    node = make_node(name="ovsam_test")  # activated (LabelInfo published) before anyone listens
    inbox = Inbox(ros_context, node, {"label_info": (vision_msgs.LabelInfo, LABEL_INFO_QOS)})
    try:
        inbox.spin_until(lambda: inbox.got["label_info"])  # a late joiner gets it (transient local)
        classes = node.predictor.vocabulary.classes
        assert [(c.class_id, c.class_name) for c in inbox.got["label_info"][0].class_map] == list(enumerate(classes))
        response = node._on_set_vocabulary(SetVocabulary.Request(classes=["red cup", "door handle"]),
                                           SetVocabulary.Response())
        assert response.success, response.message
        inbox.spin_until(lambda: len(inbox.got["label_info"]) == 2)
        assert [c.class_name for c in inbox.got["label_info"][1].class_map] == ["red cup", "door handle"]
    finally:
        inbox.close()
