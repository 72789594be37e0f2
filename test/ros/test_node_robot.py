"""The node's robot features in one process: stamped prompts on the right frame, detections as
prompts, track ids, depth to 3D (and bad depth that only skips the 3D part)."""

from __future__ import annotations

import sys
from types import SimpleNamespace as NS

import numpy as np
import pytest
from ros_node_helpers import assert_outputs_match, full_masks, make_image, test_image

pytest.importorskip("rclpy")

from ovsam_ros.prompts import Prompt  # noqa: E402
from ovsam_ros.ros.image_conversion import numpy_to_image  # noqa: E402
from ovsam_ros.ros.prompt_input import prompt_array_msg  # noqa: E402

PROMPTS = [Prompt(box=[20.0, 15.0, 80.0, 70.0]), Prompt(points=[[90.0, 40.0]])]
T0 = 1_700_000_000


def stamp_of(i: int) -> tuple[int, int]:
    """Frame i of a 30 Hz camera."""
    ns = round(i * 1e9 / 30)
    return T0 + ns // 10**9, ns % 10**9


def time_msg(stamp: tuple[int, int]):
    from builtin_interfaces.msg import Time

    return Time(sec=stamp[0], nanosec=stamp[1])


def stamped_prompts(i: int, prompts=PROMPTS):
    return prompt_array_msg(prompts, stamp=time_msg(stamp_of(i)), frame_id="camera_optical_frame")


def direct_masks(node, rgb, prompts=PROMPTS) -> list[np.ndarray]:
    """The predictor run on one image, bypassing the node (the independent reference)."""
    node.predictor.set_image(rgb)
    return [r.mask for r in node.predictor.predict(prompts)]


def test_a_detection_100ms_late_runs_on_the_frame_it_was_made_for(make_node):
    node = make_node()
    images = [test_image(seed=i) for i in range(4)]
    for i, rgb in enumerate(images):  # 4 frames at 30 Hz; prompt mode without prompts: nothing to do
        node._receive(make_image(rgb, stamp=stamp_of(i)), False)
        assert node.process_pending() is None
    # The prompts for frame 0 arrive 100 ms (3 frames) later.
    node._on_prompts(stamped_prompts(0))
    out = node.process_pending()
    assert (out.masks.header.stamp.sec, out.masks.header.stamp.nanosec) == stamp_of(0)
    got = full_masks(out.masks)
    for mine, reference in zip(got, direct_masks(node, images[0])):
        assert np.array_equal(mine, reference)
    newest = direct_masks(node, images[3])
    assert any(not np.array_equal(a, b) for a, b in zip(got, newest)), "frames too alike to tell apart"
    snap = node.stats.snapshot()
    assert snap["prompts_on_stamped_frame"] == 1 and snap["prompts_on_newest_frame"] == 0


def test_prompts_for_a_frame_no_longer_buffered_run_on_the_newest_counted(make_node):
    node = make_node(frame_buffer_size=2)
    for i in range(4):
        node._receive(make_image(test_image(seed=i), stamp=stamp_of(i)), False)
    node._on_prompts(stamped_prompts(0))  # frame 0 left the 2-frame buffer
    out = node.process_pending()
    assert (out.masks.header.stamp.sec, out.masks.header.stamp.nanosec) == stamp_of(3)
    assert len(out.masks.instances) == 2
    snap = node.stats.snapshot()
    assert snap["prompts_on_newest_frame"] == 1 and "expired" in snap["last_error"]


def test_a_prompt_stamped_before_its_frame_arrives_waits_for_it(make_node):
    node = make_node()
    node._receive(make_image(test_image(seed=0), stamp=stamp_of(0)), False)
    node.process_pending()
    node._on_prompts(stamped_prompts(1))  # frame 1 is still on its way
    assert node.process_pending() is None
    node._receive(make_image(test_image(seed=1), stamp=stamp_of(1)), False)
    out = node.process_pending()
    assert (out.masks.header.stamp.sec, out.masks.header.stamp.nanosec) == stamp_of(1)
    assert node.stats.snapshot()["prompts_on_stamped_frame"] == 1


class ShiftedMonotonic:
    """The ``time`` module with ``monotonic()`` moved ``shift`` seconds ahead: the node's receive and
    wait clocks advance without the test sleeping."""

    def __init__(self) -> None:
        self.shift = 0.0

    def monotonic(self) -> float:
        import time

        return time.monotonic() + self.shift

    def __getattr__(self, name: str):
        import time

        return getattr(time, name)


def shifted_node_clock(monkeypatch) -> ShiftedMonotonic:
    """Give the node and its frame pipeline a :class:`ShiftedMonotonic` clock (for this test)."""
    from ovsam_ros.ros import frame_pipeline
    from ovsam_ros.ros import node as node_module

    clock = ShiftedMonotonic()
    monkeypatch.setattr(node_module, "time", clock)
    monkeypatch.setattr(frame_pipeline, "time", clock)
    return clock


def test_a_prompt_stamped_after_every_frame_gives_up_after_max_age_and_runs_on_the_newest(make_node, monkeypatch):
    """A detector whose clock runs 1 s ahead: the frame its stamp names never comes. The camera keeps
    streaming (frames stay buffered), so after frame_buffer_max_age the prompts are answered 'missing'
    and run on the newest frame, counted, instead of waiting forever."""
    clock = shifted_node_clock(monkeypatch)
    node = make_node(frame_buffer_max_age=2.0)
    node._receive(make_image(test_image(seed=0), stamp=stamp_of(0)), False)
    assert node.process_pending() is None
    node._on_prompts(stamped_prompts(30))  # 1 s after frame 0
    assert node.process_pending() is None  # may still be on its way
    clock.shift = 1.0
    node._receive(make_image(test_image(seed=1), stamp=stamp_of(1)), False)
    assert node.process_pending() is None  # 1 s < max_age: still waiting; frame 1 had nothing to do
    snap = node.stats.snapshot()
    assert snap["prompts_on_newest_frame"] == snap["prompts_on_stamped_frame"] == snap["prompts_rejected"] == 0
    clock.shift = 2.5  # the prompts are 2.5 s old; frame 2 arrives now
    rgb = test_image(seed=2)
    msg = make_image(rgb, stamp=stamp_of(2))
    node._receive(msg, False)
    assert len(node.pipeline.frames) > 0
    out = node.process_pending()
    assert out is not None and out.masks.header == msg.header
    for mine, reference in zip(full_masks(out.masks), direct_masks(node, rgb), strict=True):
        assert np.array_equal(mine, reference)
    snap = node.stats.snapshot()
    assert snap["prompts_on_newest_frame"] == 1 and snap["prompts_on_stamped_frame"] == 0
    assert "missing: no frame with stamp" in snap["last_error"] and "arrived within 2 s" in snap["last_error"]
    assert node.process_pending() is None  # answered once, not again


def test_a_stamped_prompt_for_another_camera_leaves_the_frame_to_the_persistent_prompts(make_node, monkeypatch):
    """Issue #24 item 7: a one-shot prompt stamped for camera 'other_cam' blanked this camera's frame
    (published with 0 instances). The persistent box must still run on it; the other camera's
    prompt waits for a frame of its camera (frame_buffer_max_age), then, none having come, is
    rejected and counted."""
    clock = shifted_node_clock(monkeypatch)
    node = make_node(frame_buffer_max_age=2.0)
    box = Prompt(box=[20.0, 15.0, 80.0, 70.0])
    node._on_prompts(prompt_array_msg([box], persistent=True))
    rgb = test_image(seed=2)
    msg = make_image(rgb, stamp=stamp_of(11))  # frame_id camera_optical_frame
    node._receive(msg, False)
    node._on_prompts(prompt_array_msg([Prompt(points=[[30.0, 30.0]])], stamp=time_msg(stamp_of(11)),
                                      frame_id="other_cam"))
    out = node.process_pending()
    assert out.masks.header == msg.header and out.mode == "prompt"
    assert [m.prompt_index for m in out.masks.instances] == [0]
    assert np.array_equal(full_masks(out.masks)[0], direct_masks(node, rgb, [box])[0])
    snap = node.stats.snapshot()
    assert snap["prompts_rejected"] == 0 and len(node.pipeline.board.stamped) == 1  # waiting for other_cam
    assert snap["frames_processed"] == 1
    clock.shift = 2.5  # no frame of other_cam came within frame_buffer_max_age
    assert node.process_pending() is None
    snap = node.stats.snapshot()
    assert snap["prompts_rejected"] == 1 and "other_cam" in snap["last_error"]
    assert "arrived within 2 s" in snap["last_error"] and len(node.pipeline.board.stamped) == 0


def detection_array(stamp, boxes):
    """A vision_msgs/Detection2DArray look-alike (Humble+ layout) with a real std_msgs header."""
    from std_msgs.msg import Header

    header = Header(frame_id="camera_optical_frame", stamp=time_msg(stamp))
    detections = []
    for det_id, (cx, cy, w, h), (cls, score) in boxes:
        detections.append(NS(header=header, id=det_id, bbox=NS(center=NS(position=NS(x=cx, y=cy), theta=0.0),
                                                                 size_x=w, size_y=h),
                             results=[NS(hypothesis=NS(class_id=cls, score=score), pose=None)]))
    return NS(header=header, detections=detections)


def test_detections_become_box_prompts_and_their_class_comes_back(make_node):
    node = make_node()
    rgb = test_image(seed=5)
    msg = make_image(rgb, stamp=stamp_of(7))
    node._receive(msg, False)
    node.process_pending()
    node.on_detections(detection_array(stamp_of(7), [
        ("d0", (50.0, 42.5, 60.0, 55.0), ("cup", 0.9)),
        ("bad", (float("nan"), 1.0, 5.0, 5.0), ("door", 0.5)),
        ("d2", (100.0, 30.0, 20.0, 30.0), ("mug", 0.6)),
        ("d3", (60.0, 70.0, 30.0, 20.0), ("box", float("nan"))),  # a detector that sends no score
    ]))
    out = node.process_pending()
    assert out.masks.header == msg.header
    sources = [(m.prompt_index, m.source_id, m.source_class_id, round(m.source_score, 3)) for m in out.masks.instances]
    assert sources == [(0, "d0", "cup", 0.9), (2, "d2", "mug", 0.6), (3, "d3", "box", 0.0)]  # NaN travels as 0
    reference = direct_masks(node, rgb, [Prompt(box=[20.0, 15.0, 80.0, 70.0]), Prompt(box=[90.0, 15.0, 110.0, 45.0]),
                                         Prompt(box=[45.0, 60.0, 75.0, 80.0])])
    assert all(np.array_equal(a, b) for a, b in zip(full_masks(out.masks), reference, strict=True))
    assert node.stats.snapshot()["prompts_rejected"] == 1


def id_image_pixels(msg) -> np.ndarray:
    """~/instance_ids decoded by hand: raw mono16 rows, or the 16-bit PNG by OpenCV."""
    if hasattr(msg, "format"):  # sensor_msgs/CompressedImage
        import cv2

        return cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
    rows = np.frombuffer(bytes(msg.data), ">u2" if msg.is_bigendian else "<u2").reshape(msg.height, msg.step // 2)
    return rows[:, :msg.width]


@pytest.mark.parametrize("ids_format", ["raw", "png"])
def test_track_ids_are_stable_and_drive_the_instance_id_image(make_node, ids_format):
    node = make_node(publish_instance_ids=True, instance_ids_format=ids_format)
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    outs = []
    for i in range(3):
        msg = make_image(test_image(seed=i % 2), stamp=stamp_of(i))
        node._receive(msg, False)
        outs.append(node.process_pending())
        assert_outputs_match(outs[-1].masks, outs[-1].instance_ids, msg.header, (96, 128))
    ids = [[m.track_id for m in out.masks.instances] for out in outs]
    assert ids[0] == ids[1] == ids[2] and len(set(ids[0])) == 2 and 0 not in ids[0]
    assert all(out.masks.tracked for out in outs)
    # New persistent prompts: new objects, new ids (never the old ones).
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    node._receive(make_image(test_image(seed=0), stamp=stamp_of(3)), False)
    out = node.process_pending()
    fresh = [m.track_id for m in out.masks.instances]
    assert not set(fresh) & set(ids[0])
    # The fresh ids are not index + 1, so the image shows which rule it follows: each pixel is the track
    # id of the first mask covering it (hand-built here from the published masks).
    assert fresh != [i + 1 for i in range(len(fresh))] and 0 not in fresh
    expected = np.zeros((96, 128), np.uint16)
    for mask, track_id in zip(full_masks(out.masks), fresh, strict=True):
        expected[mask & (expected == 0)] = track_id
    assert set(np.unique(expected)) == {0, *fresh}
    assert np.array_equal(id_image_pixels(out.instance_ids), expected)


def test_everything_mode_keeps_ids_on_a_repeated_frame_and_tracking_can_be_off(make_node):
    node = make_node(mode="everything", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    rgb = test_image(seed=3)
    runs = []
    for i in range(2):
        node._receive(make_image(rgb, stamp=stamp_of(i)), False)
        runs.append(node.process_pending().masks)
    assert [m.track_id for m in runs[0].instances] == [m.track_id for m in runs[1].instances]
    from rclpy.parameter import Parameter

    node.set_parameters([Parameter("tracking", value=False)])
    msg = make_image(rgb, stamp=stamp_of(2))
    node._receive(msg, False)
    out = node.process_pending()
    assert not out.masks.tracked and all(m.track_id == 0 for m in out.masks.instances)
    assert_outputs_match(out.masks, out.instance_ids, msg.header, (96, 128))


def depth_msgs(stamp, depth: np.ndarray, encoding: str = "32FC1", k=(100.0, 0, 64.0, 0, 100.0, 48.0, 0, 0, 1)):
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    header = Header(frame_id="camera_depth_optical_frame", stamp=time_msg(stamp))
    info = CameraInfo(header=header, width=depth.shape[1], height=depth.shape[0])
    info.k = [float(v) for v in k]
    return numpy_to_image(np.ascontiguousarray(depth), encoding, header), info


def feed_with_depth(node, i, depth_msg, info):
    if depth_msg is not None:
        node._on_depth(depth_msg)
    if info is not None:
        node._on_camera_info(info)
    msg = make_image(test_image(seed=1), stamp=stamp_of(i))
    node._receive(msg, False)
    return msg, node.process_pending()


def test_depth_gives_each_instance_a_3d_centroid_extent_and_points(make_node):
    node = make_node(publish_points=True)
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    # A plane tilted in x: z = 1.5 + 0.01 * u metres (hand-checkable); 16UC1 millimetres.
    u = np.arange(128, dtype=np.float64)
    depth_m = np.tile(1.5 + 0.01 * u, (96, 1))
    depth, info = depth_msgs(stamp_of(0), np.round(depth_m * 1000).astype(np.uint16), "16UC1")
    _, out = feed_with_depth(node, 0, depth, info)
    assert out.masks.position_frame_id == "camera_depth_optical_frame" and out.masks.position_status == ""
    for instance, mask in zip(out.masks.instances, full_masks(out.masks)):
        assert instance.has_position
        v, uu = np.nonzero(mask)
        z = np.round((1.5 + 0.01 * uu) * 1000) / 1000
        expected = np.array([((uu - 64.0) * z / 100.0).mean(), ((v - 48.0) * z / 100.0).mean(), z.mean()])
        c = instance.centroid
        # The plane spans < 1.3 m of depth in this crop; the 4-MAD band keeps nearly all of it.
        assert np.allclose([c.x, c.y, c.z], expected, atol=0.02), (c, expected)
        assert instance.extent_min.z <= c.z <= instance.extent_max.z
        assert instance.point_count >= 0.9 * mask.sum()
    cloud = out.points
    assert cloud.header.frame_id == "camera_depth_optical_frame" and cloud.width == sum(
        m.point_count > 0 and int(mask.sum()) for m, mask in zip(out.masks.instances, full_masks(out.masks)))
    names = [f.name for f in cloud.fields]
    assert names == ["x", "y", "z", "instance_id", "track_id"]
    records = np.frombuffer(bytes(cloud.data), dtype=np.dtype({"names": names, "formats": ["<f4"] * 3 + ["<u4"] * 2,
                                                               "offsets": [f.offset for f in cloud.fields],
                                                               "itemsize": cloud.point_step}))
    first = records[records["instance_id"] == 0]
    assert np.all(first["track_id"] == out.masks.instances[0].track_id)
    assert first["z"].mean() == pytest.approx(out.masks.instances[0].centroid.z, abs=0.02)


def test_depth_is_optional_per_frame_where_a_message_filters_synchronizer_drops_the_frame(make_node):
    """Why the node pairs depth by stamp at processing time instead of message_filters (package.xml): the
    real ApproximateTimeSynchronizer delivers no colour frame without a depth image, and only the paired
    half when depth comes at half rate; the node processes every frame and adds 3D where depth exists."""
    message_filters = pytest.importorskip("message_filters")

    colour, depth_in = message_filters.SimpleFilter(), message_filters.SimpleFilter()
    synced = []
    sync = message_filters.ApproximateTimeSynchronizer([colour, depth_in], queue_size=10, slop=0.001)
    sync.registerCallback(lambda c, d: synced.append((c.header.stamp.sec, c.header.stamp.nanosec)))
    node = make_node()
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    depth_m = np.full((96, 128), 1000, np.uint16)
    with_3d = []
    for i in range(6):
        depth, info = depth_msgs(stamp_of(i), depth_m, "16UC1") if i % 2 == 0 else (None, None)
        colour.signalMessage(make_image(test_image(seed=1), stamp=stamp_of(i)))
        if depth is not None:
            depth_in.signalMessage(depth)
        _, out = feed_with_depth(node, i, depth, info)
        assert out is not None and len(out.masks.instances) == len(PROMPTS)
        with_3d.append(all(m.has_position for m in out.masks.instances))
    stamps = [(s.sec, s.nanosec) for s in (time_msg(stamp_of(i)) for i in range(6))]
    assert synced == stamps[0::2]  # the synchronizer: only frames that have depth
    assert with_3d == [True, False, True, False, True, False]  # the node: every frame, 3D where paired


@pytest.mark.parametrize("case, why", [
    ("wrong_size", "aligned"),
    ("no_camera_info", "CameraInfo"),
    ("zero_k", "uncalibrated"),
    ("all_zero", "no valid pixel"),
    ("stale", "no depth image within"),
    ("bad_encoding", "not supported"),
])
def test_bad_depth_skips_only_the_3d_part_counted_and_explained(make_node, case, why):
    node = make_node()
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    good = np.full((96, 128), 2.0, np.float32)
    depth, info = depth_msgs(stamp_of(0), good)
    if case == "wrong_size":
        depth, info = depth_msgs(stamp_of(0), np.full((48, 64), 2.0, np.float32))
    elif case == "no_camera_info":
        info = None
    elif case == "zero_k":
        depth, info = depth_msgs(stamp_of(0), good, k=[0.0] * 9)
    elif case == "all_zero":
        depth, info = depth_msgs(stamp_of(0), np.zeros((96, 128), np.uint16), "16UC1")
    elif case == "stale":
        depth, info = depth_msgs(stamp_of(-30), good)  # a second older than the frame
    elif case == "bad_encoding":
        depth, info = depth_msgs(stamp_of(0), np.zeros((96, 128), np.uint8), "mono8")
    msg, out = feed_with_depth(node, 0, depth, info)
    assert len(out.masks.instances) == 2 and not any(m.has_position for m in out.masks.instances)
    assert_outputs_match(out.masks, out.instance_ids, msg.header, (96, 128))
    assert why in out.masks.position_status and out.masks.position_frame_id == ""
    assert node.stats.snapshot()["depth_skipped"] == 1
    # The next frame with good depth gets its 3D again.
    depth, info = depth_msgs(stamp_of(1), good)
    _, out = feed_with_depth(node, 1, depth, info)
    assert all(m.has_position and m.centroid.z == pytest.approx(2.0) for m in out.masks.instances)


def test_without_tf2_a_target_frame_leaves_3d_in_the_camera_frame_with_a_reason(make_node):
    try:
        import tf2_ros  # noqa: F401
        pytest.skip("tf2_ros is installed here; this pins the behaviour without it")
    except ImportError:
        pass
    node = make_node(target_frame="base_link")
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    depth, info = depth_msgs(stamp_of(0), np.full((96, 128), 2.0, np.float32))
    _, out = feed_with_depth(node, 0, depth, info)
    assert out.masks.position_frame_id == "camera_depth_optical_frame"
    assert "tf2_ros is not installed" in out.masks.position_status
    assert all(m.has_position for m in out.masks.instances)
    assert node.stats.snapshot()["tf_unavailable"] == 1


CAMERA_FRAME, TARGET_FRAME = "camera_depth_optical_frame", "base_link"
TF_TRANSLATION = (0.5, -0.25, 1.0)
TF_YAW90 = (0.0, 0.0, np.sqrt(0.5), np.sqrt(0.5))  # x, y, z, w: 90 degrees about z


@pytest.fixture
def tf2_standin(monkeypatch):
    """A minimal ``tf2_ros`` in sys.modules: Buffer.lookup_transform answers ONE known transform
    (camera -> base_link: TF_TRANSLATION after a 90-degree yaw) and raises like tf2 for anything else.

    A stand-in because tf2_ros has no wheel for pip (on a robot it comes from apt with ROS), so the
    node's transform path would otherwise run in neither environment; the transform arithmetic checked
    here is the node's own, against a hand computation."""
    import types

    from geometry_msgs.msg import TransformStamped

    module = types.ModuleType("tf2_ros")

    class LookupException(Exception):
        pass

    class Buffer:
        made: list = []
        calls: list = []
        fail = False

        def __init__(self) -> None:
            Buffer.made.append(self)

        def lookup_transform(self, target, source, time, timeout=None):
            Buffer.calls.append((target, source, time.nanoseconds))
            if Buffer.fail or (target, source) != (TARGET_FRAME, CAMERA_FRAME):
                raise LookupException(f'"{target}" passed to lookupTransform argument target_frame does not exist')
            msg = TransformStamped()
            msg.header.frame_id, msg.child_frame_id = target, source
            t, q = msg.transform.translation, msg.transform.rotation
            t.x, t.y, t.z = TF_TRANSLATION
            q.x, q.y, q.z, q.w = TF_YAW90
            return msg

    class TransformListener:
        made: list = []

        def __init__(self, buffer, node) -> None:
            self.buffer, self.node = buffer, node
            TransformListener.made.append(self)

    module.Buffer, module.TransformListener, module.LookupException = Buffer, TransformListener, LookupException
    monkeypatch.setitem(sys.modules, "tf2_ros", module)
    return module


def camera_points_by_hand(mask: np.ndarray, z: float) -> np.ndarray:
    """Pinhole back-projection of a flat depth (K of depth_msgs: f 100, c (64, 48))."""
    v, u = np.nonzero(mask)
    return np.stack([(u - 64.0) * z / 100.0, (v - 48.0) * z / 100.0, np.full(u.shape, z)], axis=1)


def test_a_target_frame_moves_3d_by_the_tf2_transform_of_the_frame_stamp(make_node, tf2_standin):
    node = make_node(target_frame=TARGET_FRAME, publish_points=True)
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    depth, info = depth_msgs(stamp_of(0), np.full((96, 128), 2.0, np.float32))
    msg, out = feed_with_depth(node, 0, depth, info)
    assert out.masks.position_frame_id == TARGET_FRAME and out.masks.position_status == ""
    stamp_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
    assert tf2_standin.Buffer.calls == [(TARGET_FRAME, CAMERA_FRAME, stamp_ns)]  # at the frame's stamp
    [listener] = tf2_standin.TransformListener.made  # fed by the node's own subscriptions
    assert listener.node is node and listener.buffer is tf2_standin.Buffer.made[0]
    # By hand: a 90-degree yaw maps (x, y, z) to (-y, x, z); then the translation.
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    moved_all = []
    for instance, mask in zip(out.masks.instances, full_masks(out.masks), strict=True):
        camera = camera_points_by_hand(mask, 2.0)
        moved = camera @ rotation.T + np.array(TF_TRANSLATION)
        moved_all.append(moved)
        c = instance.centroid
        assert instance.has_position and instance.point_count == len(moved)
        assert [c.x, c.y, c.z] == pytest.approx(list(moved.mean(axis=0)), abs=1e-6)
        mean = camera.mean(axis=0)
        assert [c.x, c.y, c.z] == pytest.approx([-mean[1] + 0.5, mean[0] - 0.25, 3.0], abs=1e-6)
        lo, hi = np.percentile(moved, 2.0, axis=0), np.percentile(moved, 98.0, axis=0)
        assert [instance.extent_min.x, instance.extent_min.y, instance.extent_min.z] == pytest.approx(list(lo), abs=1e-6)
        assert [instance.extent_max.x, instance.extent_max.y, instance.extent_max.z] == pytest.approx(list(hi), abs=1e-6)
    cloud = out.points
    assert cloud.header.frame_id == TARGET_FRAME
    xyz = np.frombuffer(bytes(cloud.data), np.uint8).reshape(-1, cloud.point_step)[:, :12].copy().view("<f4")
    assert np.allclose(xyz, np.concatenate(moved_all), atol=1e-5)
    # The next frame reuses the one Buffer (and its listener) and looks up at its own stamp.
    depth, info = depth_msgs(stamp_of(1), np.full((96, 128), 2.0, np.float32))
    _, out = feed_with_depth(node, 1, depth, info)
    assert out.masks.position_frame_id == TARGET_FRAME and len(tf2_standin.Buffer.made) == 1
    assert len(tf2_standin.Buffer.calls) == 2


def test_a_failed_tf2_lookup_leaves_3d_in_the_camera_frame_with_a_reason(make_node, tf2_standin):
    tf2_standin.Buffer.fail = True
    node = make_node(target_frame=TARGET_FRAME)
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    depth, info = depth_msgs(stamp_of(0), np.full((96, 128), 2.0, np.float32))
    _, out = feed_with_depth(node, 0, depth, info)
    assert out.masks.position_frame_id == CAMERA_FRAME
    assert out.masks.position_status == (f"no transform {CAMERA_FRAME!r} -> {TARGET_FRAME!r} (LookupException); "
                                         f"3D is in {CAMERA_FRAME!r}")
    for instance, mask in zip(out.masks.instances, full_masks(out.masks), strict=True):
        c = instance.centroid
        assert instance.has_position
        assert [c.x, c.y, c.z] == pytest.approx(list(camera_points_by_hand(mask, 2.0).mean(axis=0)), abs=1e-6)
    assert node.stats.snapshot()["depth_skipped"] == 0  # 3D was still given, in the camera frame
    # counted per frame and a WARN: the robot asked for base_link and gets camera coordinates
    from diagnostic_msgs.msg import DiagnosticStatus

    from ovsam_ros.ros.diagnostics import values_of

    array = node.publish_diagnostics()
    assert values_of(array)["tf_unavailable"] == "1" and array.status[0].level == DiagnosticStatus.WARN
    feed_with_depth(node, 1, *depth_msgs(stamp_of(1), np.full((96, 128), 2.0, np.float32)))
    assert node.stats.snapshot()["tf_unavailable"] == 2
    assert node.publish_diagnostics().status[0].level == DiagnosticStatus.WARN  # grew since the last report
    tf2_standin.Buffer.fail = False  # the transform appears: nothing more counted, OK again
    _, out = feed_with_depth(node, 2, *depth_msgs(stamp_of(2), np.full((96, 128), 2.0, np.float32)))
    assert out.masks.position_frame_id == TARGET_FRAME
    array = node.publish_diagnostics()
    assert values_of(array)["tf_unavailable"] == "2" and array.status[0].level == DiagnosticStatus.OK


def test_depth_in_the_wrong_unit_is_used_as_it_is_but_said_counted_and_warned(make_node):
    """#24 item 12: millimetres sent as 32FC1 (a 1,500 m centroid before): no unit is guessed, the 3D
    stays as sent, but position_status says why it looks wrong, diagnostics count it and turn WARN."""
    from diagnostic_msgs.msg import DiagnosticStatus

    from ovsam_ros.ros.diagnostics import values_of

    node = make_node()
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    depth, info = depth_msgs(stamp_of(0), np.full((96, 128), 2000.0, np.float32))  # 2 m in millimetres
    _, out = feed_with_depth(node, 0, depth, info)
    assert all(m.has_position and m.centroid.z == pytest.approx(2000.0) for m in out.masks.instances)
    assert "millimetres sent as 32FC1" in out.masks.position_status
    array = node.publish_diagnostics()
    assert values_of(array)["depth_implausible"] == "1" and array.status[0].level == DiagnosticStatus.WARN
    # Metres again: plausible, nothing said, nothing counted.
    depth, info = depth_msgs(stamp_of(1), np.full((96, 128), 2.0, np.float32))
    _, out = feed_with_depth(node, 1, depth, info)
    assert out.masks.position_status == "" and all(m.centroid.z == pytest.approx(2.0) for m in out.masks.instances)
    array = node.publish_diagnostics()
    assert values_of(array)["depth_implausible"] == "1" and array.status[0].level == DiagnosticStatus.OK


def test_real_detection2darray_over_dds(make_node, ros_context):
    """Only where vision_msgs imports (a ROS install, or ../shared/ros2-tools): real Detection2DArray messages
    over DDS; bad detections (NaN centre, negative or zero size) are rejected one by one, a detection with no
    hypothesis is a class-agnostic box, and an empty array (nothing detected) is no work and no error."""
    vision_msgs = pytest.importorskip("vision_msgs.msg")
    import time

    from rclpy.executors import SingleThreadedExecutor

    from ovsam_ros.ros.qos import DETECTION_QOS

    node = make_node()
    msg = make_image(test_image(seed=2), stamp=stamp_of(0))
    node._receive(msg, False)
    node.process_pending()

    def detection(det_id, cx, cy, w, h, hypothesis=None):
        det = vision_msgs.Detection2D(header=msg.header, id=det_id)
        det.bbox.center.position.x, det.bbox.center.position.y = cx, cy
        det.bbox.size_x, det.bbox.size_y = w, h
        if hypothesis:
            hyp = vision_msgs.ObjectHypothesisWithPose()
            hyp.hypothesis.class_id, hyp.hypothesis.score = hypothesis
            det.results.append(hyp)
        return det

    array = vision_msgs.Detection2DArray(header=msg.header, detections=[
        detection("x1", 50.0, 40.0, 40.0, 30.0, ("cup", 0.75)),
        detection("nan", float("nan"), 40.0, 40.0, 30.0, ("door", 0.5)),
        detection("neg", 50.0, 40.0, -10.0, 30.0, ("door", 0.5)),
        detection("flat", 50.0, 40.0, 20.0, 0.0, ("door", 0.5)),
        detection("x5", 100.0, 60.0, 30.0, 40.0),  # a class-agnostic detector: no hypotheses
    ])
    from rclpy.node import Node

    talker = Node("detector_standin", context=ros_context)
    pub = talker.create_publisher(vision_msgs.Detection2DArray, "/detection_prompts", DETECTION_QOS)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(talker)

    def publish_until_output(message, seconds):
        out, deadline = None, time.monotonic() + seconds
        while out is None and time.monotonic() < deadline:
            pub.publish(message)
            executor.spin_once(timeout_sec=0.2)
            out = node.process_pending()
        return out

    try:
        out = publish_until_output(array, 20)
        assert out is not None and out.masks.header == msg.header
        assert [(m.prompt_index, m.source_id, m.source_class_id) for m in out.masks.instances] == [
            (0, "x1", "cup"), (4, "x5", "")]
        rejected = node.stats.snapshot()["prompts_rejected"]
        assert rejected % 3 == 0 and rejected >= 3  # three per received copy of the array, each named
        reference = direct_masks(node, test_image(seed=2), [Prompt(box=[30.0, 25.0, 70.0, 55.0]),
                                                           Prompt(box=[85.0, 40.0, 115.0, 80.0])])
        assert all(np.array_equal(a, b) for a, b in zip(full_masks(out.masks), reference))
        # nothing detected: no prompts, no rejections, no output (after the copies still in flight)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            executor.spin_once(timeout_sec=0.1)
            if node.process_pending() is not None:
                quiet_since = time.monotonic()
        before = node.stats.snapshot()["prompts_rejected"]
        assert publish_until_output(vision_msgs.Detection2DArray(header=msg.header), 2.0) is None
        assert node.stats.snapshot()["prompts_rejected"] == before
    finally:
        executor.shutdown()
        talker.destroy_node()


def test_a_late_prompt_for_a_frame_already_encoded_skips_the_encoder(make_node):
    node = make_node(mode="everything", points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    rgb = test_image(seed=4)
    node._receive(make_image(rgb, stamp=stamp_of(0)), False)
    assert node.process_pending().mode == "everything"  # frame 0 encoded once here
    calls = []
    original = node.predictor.set_image
    node.predictor.set_image = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    node._on_prompts(stamped_prompts(0))
    out = node.process_pending()
    assert out.mode == "prompt" and calls == []  # the kept encoding was reused
    node.predictor.set_image = original
    for mine, reference in zip(full_masks(out.masks), direct_masks(node, rgb)):
        assert np.array_equal(mine, reference)
    # Only the newest frames keep an encoding (memory). (A prompt stamped for frame 0 now runs on the
    # newest frame: frame 0 is older than results already published, test_node_deactivate.py.)
    for i in (1, 2, 3):
        node._receive(make_image(test_image(seed=i), stamp=stamp_of(i)), False)
        node.process_pending()
    encoded = {e.stamp: e.item.encoded is not None for e in node.pipeline.frames.entries()}
    assert list(encoded.values()) == [False, False, True, True]  # frames 0..3: the newest two keep theirs


# ----------------------------------------------------------------------------- probe fixes (slow frames,
# huge detections, stamped prompts before any frame)
def test_persistent_prompt_track_ids_survive_frames_more_than_track_lifetime_apart(make_node):
    """CPU everything mode at 640x480 takes ~2 s per frame. Before, every track expired in the gap
    between two processed frames (track_lifetime 1 s): every frame got new ids."""
    node = make_node(track_lifetime=1.0)
    node._on_prompts(prompt_array_msg(PROMPTS, persistent=True))
    ids = []
    for i in range(3):
        node._receive(make_image(test_image(seed=i % 2), stamp=(T0 + 2 * i, 0)), False)  # 2 s apart
        ids.append([m.track_id for m in node.process_pending().masks.instances])
    assert ids[0] == ids[1] == ids[2] and len(set(ids[0])) == 2 and 0 not in ids[0]


def test_everything_mode_track_ids_survive_frames_more_than_track_lifetime_apart(make_node):
    node = make_node(mode="everything", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                     track_lifetime=1.0)
    rgb = test_image(seed=3)
    runs = []
    for i in range(3):
        node._receive(make_image(rgb, stamp=(T0 + 3 * i, 0)), False)  # 3 s apart
        runs.append([m.track_id for m in node.process_pending().masks.instances])
    assert runs[0] and runs[0] == runs[1] == runs[2]


def test_a_detection_with_a_huge_box_is_clipped_like_a_prompt_and_the_frame_is_served(make_node):
    """A 1e6 x 1e6 px detection made the tracker build a 233 GiB array (MemoryError: the frame failed,
    the good detection lost with it). Its box is clipped to the image as the prompt path clips it."""
    node = make_node(tracking=True)
    rgb = test_image(seed=5)
    msg = make_image(rgb, stamp=stamp_of(7))
    node._receive(msg, False)
    node.process_pending()
    node.on_detections(detection_array(stamp_of(7), [
        ("huge", (50.0, 40.0, 1e6, 1e6), ("wall", 0.8)),
        ("d0", (50.0, 42.5, 60.0, 55.0), ("cup", 0.9)),
    ]))
    out = node.process_pending()
    assert out is not None and out.masks.header == msg.header
    assert node.stats.snapshot()["frames_failed"] == 0
    assert [(m.source_id, m.source_class_id) for m in out.masks.instances] == [("huge", "wall"), ("d0", "cup")]
    reference = direct_masks(node, rgb, [Prompt(box=[0.0, 0.0, 128.0, 96.0]), Prompt(box=[20.0, 15.0, 80.0, 70.0])])
    assert all(np.array_equal(a, b) for a, b in zip(full_masks(out.masks), reference, strict=True))
    ids = [m.track_id for m in out.masks.instances]
    assert 0 not in ids and len(set(ids)) == 2
    # What the tracker keeps for the huge detection: the whole image, not the detector's box.
    crops = sorted((tr.mask.x, tr.mask.y, *tr.mask.crop.shape) for tr in node.pipeline.tracker.tracks)
    assert crops == [(0, 0, 96, 128), (20, 15, 55, 60)]


def test_a_stamped_prompt_that_arrives_before_any_frame_waits_for_it(make_node, monkeypatch):
    """A slow or triggered camera: no frame for longer than frame_buffer_max_age, then the detector's
    answer comes before the frame it names. Before, it was dropped at once ('no frame of that camera')."""
    clock = shifted_node_clock(monkeypatch)
    node = make_node(frame_buffer_max_age=2.0)
    node._receive(make_image(test_image(seed=0), stamp=stamp_of(0)), False)
    assert node.process_pending() is None
    clock.shift = 3.0  # the camera pauses: frame 0 leaves the buffer
    node.pipeline.expire(clock.monotonic())
    assert len(node.pipeline.frames) == 0
    node._on_prompts(stamped_prompts(90))
    assert node.process_pending() is None
    clock.shift = 4.5  # 1.5 s later (< max_age) the frame arrives
    rgb = test_image(seed=4)
    msg = make_image(rgb, stamp=stamp_of(90))
    node._receive(msg, False)
    out = node.process_pending()
    assert out is not None and out.masks.header == msg.header
    for mine, reference in zip(full_masks(out.masks), direct_masks(node, rgb), strict=True):
        assert np.array_equal(mine, reference)
    snap = node.stats.snapshot()
    assert snap["prompts_on_stamped_frame"] == 1 and snap["prompts_rejected"] == 0
    # A frame that never comes: answered MISSING once the request is max_age old, dropped and counted.
    clock.shift = 10.0
    node.pipeline.expire(clock.monotonic())
    node._on_prompts(stamped_prompts(300))
    assert node.process_pending() is None and node.stats.snapshot()["prompts_rejected"] == 0
    clock.shift = 12.1
    assert node.process_pending() is None
    snap = node.stats.snapshot()
    assert snap["prompts_rejected"] == 1 and "arrived within 2 s" in snap["last_error"]
    assert "no frame of that camera to run them on" in snap["last_error"]
    assert len(node.pipeline.board.stamped) == 0
