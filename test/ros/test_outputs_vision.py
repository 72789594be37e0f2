"""Standard outputs (issue #23): vision_msgs detections with track ids, 3D detections, LabelInfo,
RViz markers and the PNG instance-ID image, decoded from their CDR bytes and checked against
hand computation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ovsam_ros.results import InstanceResult, LabelScore  # noqa: E402
from ovsam_ros.robot.depth3d import InstanceGeometry  # noqa: E402
from ovsam_ros.ros import outputs  # noqa: E402
from ovsam_ros.ros.outputs import FrameExtras, InstanceMarkers  # noqa: E402

HW = (48, 64)


def _header(sec: int = 7, frame: str = "camera_optical") -> Header:
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = sec, 250
    return h


def _result(box, labels, fill=True) -> InstanceResult:
    x0, y0, x1, y1 = box
    crop = np.zeros((y1 - y0, x1 - x0), bool)
    if fill:
        crop[:] = True
        crop[0, 0] = False  # not a plain rectangle
    return InstanceResult(mask=None, crop=crop, image_size=HW, box=box, predicted_iou=0.9, stability_score=0.95,
                          labels=[LabelScore(i, n, s) for i, n, s in labels])


RESULTS = [
    _result((2, 3, 12, 9), [(4, "mug", 0.7), (1, "cup", 0.2)]),
    _result((20, 10, 41, 40), [(0, "door", 0.9)]),
    _result((50, 30, 64, 48), [(-1, "background", 0.6), (2, "box", 0.3)]),
]


def _roundtrip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


def _vision():
    return pytest.importorskip("vision_msgs.msg", reason="vision_msgs: ../shared/ros2-tools/install.sh builds it")


def test_detection_ids_are_track_ids_not_array_indices():
    _vision()
    msg = _roundtrip(outputs.detections_msg(RESULTS, _header(), track_ids=[12, 0, 3]))
    assert [d.id for d in msg.detections] == ["12", "", "3"]  # 0 = tentative: no persistent id yet
    assert (msg.header.stamp.sec, msg.header.frame_id) == (7, "camera_optical")
    untracked = _roundtrip(outputs.detections_msg(RESULTS, _header()))
    assert [d.id for d in untracked.detections] == ["", "", ""]  # tracking off: nothing persists
    d = msg.detections[1]
    assert (d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y) == (30.5, 25.0, 21, 30)
    assert [(h.hypothesis.class_id, round(h.hypothesis.score, 6)) for h in msg.detections[0].results] == [
        ("mug", 0.7), ("cup", 0.2)]


def test_detection_class_ids_by_index_match_label_info():
    _vision()
    msg = _roundtrip(outputs.detections_msg(RESULTS, _header(), class_id="index"))
    assert [[h.hypothesis.class_id for h in d.results] for d in msg.detections] == [
        ["4", "1"], ["0"], ["65535", "2"]]  # background -> vision_msgs' UNLABELED
    for results in (RESULTS, []):  # a typo is an error even in a frame without instances
        with pytest.raises(ValueError, match="class_id must be one of name, index"):
            outputs.detections_msg(results, _header(), class_id="label")
        with pytest.raises(ValueError, match="class_id must be one of name, index"):
            outputs.detections_3d_msg(results, _header(), FrameExtras(), class_id="Name")


def test_label_info_maps_class_index_to_name():
    _vision()
    names = ["mug", "cup", "box", "door"]
    msg = _roundtrip(outputs.label_info_msg(names, _header(3, ""), threshold=0.25))
    assert [(c.class_id, c.class_name) for c in msg.class_map] == [(0, "mug"), (1, "cup"), (2, "box"), (3, "door")]
    assert msg.threshold == pytest.approx(0.25) and msg.header.stamp.sec == 3
    assert len(outputs.label_info_msg([f"c{i}" for i in range(65535 - 1)], _header()).class_map) == 65534
    with pytest.raises(ValueError, match="65535 classes"):
        outputs.label_info_msg([f"c{i}" for i in range(65535)], _header())


GEOMETRY = [
    InstanceGeometry(centroid=(0.1, -0.2, 1.5), extent_min=(0.0, -0.3, 1.4), extent_max=(0.3, -0.1, 1.7),
                     point_count=40),
    None,  # no valid depth under this mask
    InstanceGeometry(centroid=(-1.0, 0.5, 3.0), extent_min=(-1.2, 0.5, 2.9), extent_max=(-0.8, 0.5, 3.1),
                     point_count=12),
]


def test_detections_3d_carry_extent_centroid_and_track_id():
    _vision()
    extras = FrameExtras(track_ids=[12, 5, 0], geometry=GEOMETRY, position_frame_id="depth_optical")
    msg = _roundtrip(outputs.detections_3d_msg(RESULTS, _header(), extras))
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("depth_optical", 7, 250)
    assert [d.id for d in msg.detections] == ["12", ""]  # the instance without 3D is left out
    first = msg.detections[0]
    c, s = first.bbox.center, first.bbox.size
    assert (c.position.x, c.position.y, c.position.z) == pytest.approx((0.15, -0.2, 1.55))  # middle of the extent
    assert (s.x, s.y, s.z) == pytest.approx((0.3, 0.2, 0.3))
    assert c.orientation.w == 1.0  # axis-aligned in the position frame
    assert [h.hypothesis.class_id for h in first.results] == ["mug", "cup"]
    p = first.results[0].pose.pose.position
    assert (p.x, p.y, p.z) == pytest.approx((0.1, -0.2, 1.5))  # the centroid, not the box middle
    assert msg.detections[1].bbox.size.y == 0.0  # a flat extent stays flat in the detection


def test_a_detection_without_a_finite_score_gives_source_score_zero():
    """LabeledMask.source_score is a float a consumer compares; NaN (a detector's hypothesis without a
    score, or no hypothesis at all: PromptSource's default) travels as 0.0, finite scores as sent."""
    from ovsam_ros.robot.detections import PromptSource

    sources = [PromptSource("d0", "cup", float("nan")), PromptSource("d1", "", 0.25), None]
    msg = _roundtrip(outputs.labeled_mask_array(RESULTS, _header(), HW, mode="prompt",
                                                extras=FrameExtras(sources=sources)))
    got = [(m.source_id, m.source_class_id, m.source_score) for m in msg.instances]
    assert got == [("d0", "cup", 0.0), ("d1", "", 0.25), ("", "", 0.0)]
    inf = _roundtrip(outputs.labeled_mask_array(RESULTS[:1], _header(), HW, mode="prompt",
                                                extras=FrameExtras(sources=[PromptSource("d", "", float("inf"))])))
    assert inf.instances[0].source_score == 0.0


def test_no_3d_detections_without_depth():
    _vision()
    assert outputs.detections_3d_msg(RESULTS, _header(), FrameExtras()) is None
    no_frame = FrameExtras(geometry=GEOMETRY, position_frame_id="", position_status="no depth image")
    assert outputs.detections_3d_msg(RESULTS, _header(), no_frame) is None


def test_3d_from_depth_matches_a_hand_backprojection():
    """From a flat 2 m depth patch through depth3d (the node's path) into the Detection3D."""
    _vision()
    from ovsam_ros.robot.depth3d import Intrinsics, backproject, instance_geometry

    k = Intrinsics(fx=50.0, fy=50.0, cx=32.0, cy=24.0, width=64, height=48)
    depth = np.full(HW, np.nan, np.float32)
    depth[10:40, 20:41] = 2.0
    r = RESULTS[1]
    geometry = instance_geometry(backproject(r.mask, depth, k))
    msg = outputs.detections_3d_msg([r], _header(), FrameExtras(geometry=[geometry], position_frame_id="cam"))
    v, u = np.nonzero(r.mask)  # hand: x = (u - cx) z / fx
    expected = ((u.mean() - 32.0) * 2.0 / 50.0, (v.mean() - 24.0) * 2.0 / 50.0, 2.0)
    p = _roundtrip(msg).detections[0].results[0].pose.pose.position
    assert (p.x, p.y, p.z) == pytest.approx(expected, abs=1e-6)


def _markers(array):
    return {(m.ns, m.id): m for m in array.markers}


def test_markers_follow_track_ids_and_delete_ended_tracks():
    from visualization_msgs.msg import Marker, MarkerArray

    markers = InstanceMarkers(text_height=0.07)
    extras = FrameExtras(track_ids=[12, 5, 0], geometry=[GEOMETRY[0], GEOMETRY[2], GEOMETRY[2]],
                         position_frame_id="depth_optical")
    first = _roundtrip(markers.update(RESULTS, _header(), extras))
    assert isinstance(first, MarkerArray)
    got = _markers(first)
    assert set(got) == {("ovsam_boxes", 12), ("ovsam_labels", 12), ("ovsam_boxes", 5), ("ovsam_labels", 5)}
    box, text = got[("ovsam_boxes", 12)], got[("ovsam_labels", 12)]
    assert (box.type, box.action, text.type) == (Marker.CUBE, Marker.ADD, Marker.TEXT_VIEW_FACING)
    assert (box.header.frame_id, box.header.stamp.sec) == ("depth_optical", 7)
    assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == pytest.approx((0.15, -0.2, 1.55))
    assert (box.scale.x, box.scale.y, box.scale.z) == pytest.approx((0.3, 0.2, 0.3))
    assert text.text == "#12 mug 0.70" and text.scale.z == pytest.approx(0.07)
    assert (text.pose.position.x, text.pose.position.z) == pytest.approx((0.1, 1.5))  # at the centroid
    flat = got[("ovsam_boxes", 5)]
    assert flat.scale.y == pytest.approx(InstanceMarkers.MIN_SIZE)  # RViz refuses a zero scale
    assert (box.color.r, box.color.g, box.color.b) != (flat.color.r, flat.color.g, flat.color.b)

    # next frame: track 12 ended, 5 stays, 9 is new
    extras = FrameExtras(track_ids=[5, 9], geometry=[GEOMETRY[0], GEOMETRY[2]], position_frame_id="depth_optical")
    second = _markers(_roundtrip(markers.update(RESULTS[:2], _header(8), extras)))
    assert {k for k, m in second.items() if m.action == Marker.DELETE} == {("ovsam_boxes", 12), ("ovsam_labels", 12)}
    assert {k for k, m in second.items() if m.action == Marker.ADD} == {
        ("ovsam_boxes", 5), ("ovsam_labels", 5), ("ovsam_boxes", 9), ("ovsam_labels", 9)}
    assert second[("ovsam_labels", 5)].text == "#5 mug 0.70"  # the id follows the track, not the index

    # a frame without 3D: everything shown is deleted; then a reset clears the display
    third = _markers(markers.update(RESULTS[:2], _header(9), FrameExtras(track_ids=[5, 9])))
    assert set(third) == {("ovsam_boxes", 5), ("ovsam_labels", 5), ("ovsam_boxes", 9), ("ovsam_labels", 9)}
    assert all(m.action == Marker.DELETE for m in third.values())
    assert markers.update(RESULTS[:2], _header(10), FrameExtras(track_ids=[5, 9])).markers == []
    cleared = _roundtrip(markers.clear(_header(11, "depth_optical")))
    assert [m.action for m in cleared.markers] == [Marker.DELETEALL]


def test_markers_without_tracking_use_instance_numbers():
    from visualization_msgs.msg import Marker

    markers = InstanceMarkers()
    extras = FrameExtras(geometry=[GEOMETRY[0], None, GEOMETRY[2]], position_frame_id="cam")
    got = _markers(markers.update(RESULTS, _header(), extras))
    assert {k[1] for k in got} == {1, 3} and got[("ovsam_labels", 1)].text == "mug 0.70"
    fewer = _markers(markers.update(RESULTS[:1], _header(), FrameExtras(geometry=[GEOMETRY[0]],
                                                                         position_frame_id="cam")))
    assert {k for k, m in fewer.items() if m.action == Marker.DELETE} == {("ovsam_boxes", 3), ("ovsam_labels", 3)}


def test_marker_ids_fit_int32():
    assert InstanceMarkers.marker_id(12) == 12
    assert InstanceMarkers.marker_id(2**31 - 1) == 2**31 - 1
    assert InstanceMarkers.marker_id(2**31) == 1 and InstanceMarkers.marker_id(2**32 + 3) == 5


@pytest.mark.parametrize("track_ids", [None, [70000, 0, 3]])
def test_png_instance_ids_decode_to_the_raw_image(track_ids):
    """The CompressedImage decodes (as image_transport's compressed plugin does: cv::imdecode
    UNCHANGED, encoding = the format before ';') to exactly the mono16 image of ~/instance_ids."""
    import cv2

    from ovsam_ros.ros.image_conversion import compressed_to_numpy, image_to_numpy
    from ovsam_ros.ros.messages import instance_id_image

    msg = _roundtrip(outputs.instance_ids_png_msg(RESULTS, _header(), HW, track_ids))
    assert msg.format.split(";")[0] == "mono16" and "png" in msg.format
    assert (msg.header.stamp.sec, msg.header.frame_id) == (7, "camera_optical")
    pixels, encoding = compressed_to_numpy(msg)
    raw = image_to_numpy(outputs.instance_ids_msg(RESULTS, _header(), HW, track_ids))
    assert encoding == "mono16" and pixels.dtype == np.uint16 and np.array_equal(pixels, raw)
    # and against the instance-ID rule on full masks (independent of the crop path)
    values = None if track_ids is None else [(t - 1) % 65535 + 1 if t else 0 for t in track_ids]
    assert np.array_equal(pixels, instance_id_image([r.mask for r in RESULTS], *HW, values))
    assert np.array_equal(cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED), raw)
