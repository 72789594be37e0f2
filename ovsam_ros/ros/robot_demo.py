"""The robot part of ``ovsam demo``: a depth camera, a detector that answers late, track ids, 3D.

After the demo's prompt / text / everything frames, the OVSAM node is switched to
``mode: prompt`` and three stand-ins take over (all in the demo's namespace, over
real DDS on loopback):

* an RGB-D camera publishing a clip of moving shapes (``image``), an aligned
  16UC1 depth image (``depth/image``, every shape at a known distance in
  front of a wall) and its ``CameraInfo``;
* a detector stand-in that "detects" the shapes (their true boxes and classes)
  and answers ``delay`` seconds late, stamped with the frame it looked at: a real
  ``vision_msgs/Detection2DArray`` on ``detection_prompts`` where
  vision_msgs is installed, otherwise the same detections converted by
  :func:`ovsam_ros.robot.detections.prompts_from_detections` into a stamped
  ``PromptArray`` with their ids and classes (``prompts``);
* a listener that prints, per result, each instance's track id, the detector's
  class beside OVSAM's label, and its 3D centroid next to the rendered truth.

The summary says on how many results the prompts ran on their own frame, how
many track ids each object got, and the 3D centroid error.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace as NS
from typing import Any, Callable, Optional

import cv2
import numpy as np

W, H = 320, 240
FX = FY = 300.0
CX, CY = (W - 1) / 2.0, (H - 1) / 2.0
WALL_M = 3.0
# name/class: (shape, distance m, start x, start y, px per frame x, y, size px, colour)
OBJECTS = {
    "ball": ("disc", 1.2, 50, 70, 9, 2, 26, (220, 40, 40)),
    "crate": ("square", 1.8, 250, 140, -7, 0, 56, (40, 190, 60)),
    "cone": ("triangle", 2.4, 160, 30, 2, 5, 24, (230, 210, 30)),
}


@dataclass
class SceneFrame:
    rgb: np.ndarray
    depth_mm: np.ndarray  # uint16, aligned to rgb
    boxes: dict[str, tuple[float, float, float, float]]  # true boxes (x0, y0, x1, y1)
    centroids: dict[str, np.ndarray]  # true 3D centroid of each shape's visible surface (metres)


def render(i: int) -> SceneFrame:
    """Frame ``i``: shapes at fixed distances in front of a wall, back to front (nearer ones occlude)."""
    yy, xx = np.mgrid[:H, :W]
    rgb = np.stack([(xx * 60 // W) + 60, (yy * 60 // H) + 70, np.full_like(xx, 100)], -1).astype(np.uint8)
    depth = np.full((H, W), WALL_M, np.float64)
    owner = np.full((H, W), "", dtype=object)
    for name, (shape, z, x, y, vx, vy, size, colour) in sorted(OBJECTS.items(), key=lambda kv: -kv[1][1]):
        cx, cy = x + vx * i, y + vy * i
        mask = np.zeros((H, W), np.uint8)
        if shape == "disc":
            cv2.circle(mask, (int(cx), int(cy)), size, 1, -1)
        elif shape == "square":
            cv2.rectangle(mask, (int(cx - size / 2), int(cy - size / 2)), (int(cx + size / 2), int(cy + size / 2)), 1, -1)
        else:
            pts = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)
            cv2.fillPoly(mask, [pts], 1)
        hit = mask.astype(bool)
        rgb[hit], depth[hit], owner[hit] = colour, z, name
    boxes, centroids = {}, {}
    for name, (_, z, *_rest) in OBJECTS.items():
        v, u = np.nonzero(owner == name)
        if len(u):
            boxes[name] = (float(u.min()), float(v.min()), float(u.max() + 1), float(v.max() + 1))
            centroids[name] = np.array([((u - CX) * z / FX).mean(), ((v - CY) * z / FY).mean(), z])
    return SceneFrame(rgb, np.round(depth * 1000).astype(np.uint16), boxes, centroids)


def detection_array(header: Any, boxes: dict[str, tuple[float, float, float, float]]) -> Any:
    """The detector's answer: a real vision_msgs/Detection2DArray where installed, else a look-alike."""
    try:
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
    except ImportError:
        Detection2DArray = None
    detections = []
    for name, (x0, y0, x1, y1) in boxes.items():
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        if Detection2DArray is not None:
            det = Detection2D(header=header, id=name)
            det.bbox.center.position.x, det.bbox.center.position.y = cx, cy
            det.bbox.size_x, det.bbox.size_y = w, h
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id, hyp.hypothesis.score = name, 0.9
            det.results.append(hyp)
        else:
            det = NS(header=header, id=name, bbox=NS(center=NS(position=NS(x=cx, y=cy), theta=0.0), size_x=w, size_y=h),
                     results=[NS(hypothesis=NS(class_id=name, score=0.9), pose=None)])
        detections.append(det)
    if Detection2DArray is not None:
        return Detection2DArray(header=header, detections=detections)
    return NS(header=header, detections=detections)


@dataclass
class RobotResult:
    frames: int = 0
    on_own_frame: int = 0  # results whose header is the frame the detections were made for
    track_ids: dict[str, set] = field(default_factory=dict)  # object -> track ids it got
    errors_m: dict[str, list] = field(default_factory=dict)  # object -> 3D centroid errors
    lines: list = field(default_factory=list)


def make_robot_nodes(namespace: str, context: Any):
    """(camera+detector node, listener node) for the robot phase."""
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from ovsam_ros.msg import LabeledMaskArray, PromptArray
    from ovsam_ros.robot.detections import prompts_from_detections
    from ovsam_ros.ros.image_conversion import numpy_to_image
    from ovsam_ros.ros.qos import COMMAND_QOS, DETECTION_QOS, OUTPUT_QOS
    from ovsam_ros.ros.prompt_input import prompt_array_msg
    from ovsam_ros.ros.outputs import Detection2DArray

    class RgbdCameraAndDetector(Node):
        def __init__(self) -> None:
            super().__init__("demo_rgbd_camera", namespace=namespace, context=context)
            self.image_pub = self.create_publisher(Image, "image", qos_profile_sensor_data)
            self.depth_pub = self.create_publisher(Image, "depth/image", qos_profile_sensor_data)
            self.info_pub = self.create_publisher(CameraInfo, "depth/camera_info", qos_profile_sensor_data)
            self.uses_vision_msgs = Detection2DArray is not None
            if Detection2DArray is not None:
                self.det_pub = self.create_publisher(Detection2DArray, "detection_prompts", DETECTION_QOS)
            else:  # stamped one-shot prompts on the node's ~/prompts (commands: reliable, transient-local)
                self.det_pub = self.create_publisher(PromptArray, "ovsam/prompts", COMMAND_QOS)

        def publish_frame(self, scene: SceneFrame) -> Any:
            header = Header(frame_id="camera_color_optical_frame", stamp=self.get_clock().now().to_msg())
            info = CameraInfo(header=header, width=W, height=H, distortion_model="plumb_bob")
            info.k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
            self.info_pub.publish(info)
            self.depth_pub.publish(numpy_to_image(scene.depth_mm, "16UC1", header))  # aligned to colour
            self.image_pub.publish(numpy_to_image(scene.rgb, "rgb8", header))
            return header

        def publish_detections(self, header: Any, boxes: dict) -> None:
            array = detection_array(header, boxes)
            if Detection2DArray is not None:
                self.det_pub.publish(array)
                return
            converted = prompts_from_detections(array, "box")
            self.det_pub.publish(prompt_array_msg(converted.prompts, (W, H), frame_id=header.frame_id,
                                                  stamp=header.stamp, sources=converted.sources))

    class RobotListener(Node):
        def __init__(self) -> None:
            super().__init__("demo_robot_listener", namespace=namespace, context=context)
            self.cond = threading.Condition()
            self.received: list[Any] = []
            self.create_subscription(LabeledMaskArray, "ovsam/masks", self.on_masks, OUTPUT_QOS)

        def on_masks(self, msg: Any) -> None:
            with self.cond:
                self.received.append(msg)
                self.cond.notify_all()

        def wait_for_result(self, count: int, timeout: float) -> Optional[Any]:
            """The ``count``-th result (1-based) once it arrived, else None."""
            with self.cond:
                self.cond.wait_for(lambda: len(self.received) >= count, timeout)
                return self.received[count - 1] if len(self.received) >= count else None

    return RgbdCameraAndDetector(), RobotListener()


def run_robot_phase(camera: Any, listener: Any, *, frames: int = 12, delay: float = 0.1, rate: float = 5.0,
                    frame_timeout: float = 30.0, printer: Callable[[str], None] = print) -> RobotResult:
    """Publish ``frames`` RGB-D frames; answer each with detections ``delay`` s late; report."""
    result = RobotResult()
    how = "vision_msgs/Detection2DArray" if camera.uses_vision_msgs else \
        "as a stamped PromptArray with detection ids and classes: vision_msgs is not installed"
    printer(f"robot phase: RGB-D camera {W}x{H} (16UC1 depth + CameraInfo) and a detector stand-in answering "
            f"{delay * 1000:.0f} ms late, stamped with the frame it saw ({how})")
    start_count = len(listener.received)
    for i in range(frames):
        started = time.monotonic()
        scene = render(i)
        header = camera.publish_frame(scene)
        time.sleep(delay)  # the detector is working on this frame
        camera.publish_detections(header, scene.boxes)
        stamp = (header.stamp.sec, header.stamp.nanosec)
        msg = listener.wait_for_result(start_count + result.frames + 1, frame_timeout)
        if msg is None:
            printer(f"robot frame {i:2d}: no result within {frame_timeout:.0f} s")
            continue
        result.frames += 1
        got = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        result.on_own_frame += got == stamp  # the detections ran on the frame they were made for
        parts = []
        for m in msg.instances:
            name = m.source_id
            parts.append(_describe(m, scene.centroids.get(name), result))
        which = "its own frame" if got == stamp else f"ANOTHER frame ({got[0]}.{got[1]:09d})"
        line = (f"robot frame {i:2d}  stamp {stamp[0]}.{stamp[1]:09d}  detections ran on {which}  "
                f"{len(msg.instances)} instance(s)"
                f"{'' if not msg.position_status else '  [3D: ' + msg.position_status + ']'}")
        printer(line)
        for part in parts:
            printer("    " + part)
        result.lines.append(line)
        remaining = 1.0 / rate - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
    return result


def _describe(m: Any, truth: Optional[np.ndarray], result: RobotResult) -> str:
    name = m.source_id or "?"
    result.track_ids.setdefault(name, set()).add(int(m.track_id))
    text = (f"#{m.track_id:<3d} detector {m.source_class_id or '?'} {m.source_score:.2f} | OVSAM "
            f"{m.label or '?'} {m.score:.2f}")
    if m.has_position:
        c = np.array([m.centroid.x, m.centroid.y, m.centroid.z])
        text += f" | centroid ({c[0]:+.3f}, {c[1]:+.3f}, {c[2]:.3f}) m, {m.point_count} pts"
        if truth is not None:
            error = float(np.linalg.norm(c - truth))
            result.errors_m.setdefault(name, []).append(error)
            text += f"; truth ({truth[0]:+.3f}, {truth[1]:+.3f}, {truth[2]:.3f}), error {error * 100:.1f} cm"
    else:
        text += " | no 3D"
    return text


def print_robot_summary(result: RobotResult, printer: Callable[[str], None] = print) -> None:
    ids = ", ".join(f"{name} {sorted(v)}" for name, v in sorted(result.track_ids.items()))
    errors = [e for v in result.errors_m.values() for e in v]
    median = f"{np.median(errors) * 100:.1f} cm" if errors else "-"
    printer(f"robot phase done: {result.frames} results, {result.on_own_frame} on the frame their detections "
            f"were made for; track ids per object: {ids or '-'}; 3D centroid error median {median} "
            f"over {len(errors)} instance(s)")
