"""Predictor results -> output messages. Every output carries the source image's header.

* ``LabeledMaskArray``: one ``LabeledMask`` per instance (``instance_id`` = index), masks in
  the encoding the caller names (:mod:`ovsam_ros.ros.mask_codec`).
* instance-ID image: mono16, pixel = instance_id + 1 (0 = none), lossless: raw ``Image`` or a
  PNG ``CompressedImage`` (image_transport's ``compressed`` format string).
* overlay: rgb8 debug image.
* ``vision_msgs`` where it is installed (not on PyPI): ``Detection2DArray`` and
  ``Detection3DArray`` (``id`` = track id), ``LabelInfo`` (class index -> name).
* ``sensor_msgs/PointCloud2`` of every instance's depth points (x, y, z, instance_id, track_id).
* ``visualization_msgs/MarkerArray``: each instance's 3D extent and label for RViz
  (:class:`InstanceMarkers`, ids = track ids, DELETE when an id is gone).

:class:`FrameExtras` carries what the robot features add per instance (track
ids, detector sources, 3D); every field is optional.
"""

from __future__ import annotations

import array as array_module
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ovsam_ros.results import InstanceResult
from ovsam_ros.robot.depth3d import InstanceGeometry
from ovsam_ros.robot.detections import PromptSource
from ovsam_ros.robot.tracking import track_id_pixel
from ovsam_ros.ros.image_conversion import new_image_msg, numpy_to_image
from ovsam_ros.ros.mask_codec import RAW, check_mask_encoding
from ovsam_ros.ros.messages import instance_id_image, instance_id_image_from_crops, labeled_mask_msg

try:  # optional: only on full ROS installs
    from vision_msgs.msg import (Detection2D, Detection2DArray, Detection3D, Detection3DArray, LabelInfo,
                                 ObjectHypothesisWithPose, VisionClass)
except ImportError:  # pragma: no cover - not installable from PyPI
    Detection2DArray = Detection3DArray = LabelInfo = None

# sensor_msgs/CompressedImage.format as image_transport's compressed plugin writes it for a
# mono16 PNG (the part before ';' is the decoded image's encoding).
INSTANCE_IDS_PNG_FORMAT = "mono16; png compressed "
# zlib level of the instance-ID PNG (python -m ovsam_ros.benchmark.mask_encoding measures it).
INSTANCE_IDS_PNG_LEVEL = 1
DETECTION_CLASS_IDS = ("name", "index")  # ObjectHypothesis.class_id: the label, or str(class index)
UNLABELED_CLASS_ID = 65535  # vision_msgs/VisionClass: the largest uint16 is the "UNLABELED" class


@dataclass
class FrameExtras:
    """Per-instance additions to one frame's outputs (lists parallel to the results)."""

    track_ids: Optional[Sequence[int]] = None  # None = tracking off
    sources: Optional[Sequence[Optional[PromptSource]]] = None
    geometry: Optional[Sequence[Optional[InstanceGeometry]]] = None
    position_frame_id: str = ""
    position_status: str = ""


def vocabulary_version(predictor: Any) -> str:
    """Short fingerprint of the class list + text-tower weights (what the labels depend on)."""
    vocab = predictor.vocabulary
    if vocab is None:
        return ""
    digest = hashlib.sha256(f"{vocab.fingerprint()}|{predictor.text_weights_id}".encode()).hexdigest()
    return digest[:16]


def labeled_mask_array(
    results: Sequence[InstanceResult],
    header: Any,
    image_hw: tuple[int, int],
    *,
    mode: str,
    query: str = "",
    vocabulary_name: str = "",
    vocabulary_version: str = "",
    extras: Optional[FrameExtras] = None,
    mask_encoding: str = RAW,
) -> Any:
    """The ``LabeledMaskArray`` for one frame; ``header`` is copied, never replaced.
    ``mask_encoding``: how each mask travels (:mod:`ovsam_ros.ros.mask_codec`; the node passes
    its ``mask_encoding`` parameter)."""
    from ovsam_ros.msg import LabeledMaskArray

    check_mask_encoding(mask_encoding)
    msg = LabeledMaskArray()
    msg.header = header
    msg.image_height, msg.image_width = int(image_hw[0]), int(image_hw[1])
    msg.mode, msg.query = mode, query
    msg.vocabulary_name, msg.vocabulary_version = vocabulary_name, vocabulary_version
    instances = []
    for i, r in enumerate(results):
        labels = [(l.class_index, l.name, l.score) for l in r.labels]
        if mode == "text" and r.query_score is not None:
            # The phrase is the answer in text mode; class_index -1: not a vocabulary class.
            labels = [(-1, query, r.query_score)] + labels
        # Predictor results carry their mask cropped to the box: never build the full frame.
        mask, box = (r.mask, None) if r.crop is None else (r.crop, r.box)
        instances.append(labeled_mask_msg(
            mask, instance_id=i, prompt_index=r.prompt_index, labels=labels,
            predicted_iou=float(r.predicted_iou), stability_score=float(r.stability_score), crop_box=box,
            mask_encoding=mask_encoding,
        ))
    if extras is not None:
        _apply_extras(msg, instances, extras)
    msg.instances = instances
    return msg


def _apply_extras(msg: Any, instances: list, extras: FrameExtras) -> None:
    msg.tracked = extras.track_ids is not None
    msg.position_frame_id, msg.position_status = extras.position_frame_id, extras.position_status
    for i, instance in enumerate(instances):
        if extras.track_ids is not None:
            instance.track_id = int(extras.track_ids[i])
        source = extras.sources[i] if extras.sources is not None else None
        if source is not None:
            instance.source_id, instance.source_class_id = source.id, source.class_id
            instance.source_score = float(source.score) if math.isfinite(source.score) else 0.0
        geometry = extras.geometry[i] if extras.geometry is not None else None
        if geometry is not None:
            instance.has_position = True
            for field_name, xyz in (("centroid", geometry.centroid), ("extent_min", geometry.extent_min),
                                    ("extent_max", geometry.extent_max)):
                point = getattr(instance, field_name)
                point.x, point.y, point.z = (float(v) for v in xyz)
            instance.point_count = int(geometry.point_count)


def instance_ids_msg(results: Sequence[InstanceResult], header: Any, image_hw: tuple[int, int],
                     track_ids: Optional[Sequence[int]] = None) -> Any:
    """mono16: ``instance_id + 1``, or with tracking the track id (wrapped to 1..65535; 0 = tentative, left out)."""
    values = None if track_ids is None else [track_id_pixel(t) for t in track_ids]
    if all(r.crop is not None for r in results):  # drawn straight into the message's pixels
        msg, pixels = new_image_msg(image_hw[0], image_hw[1], "mono16", header)
        instance_id_image_from_crops([r.crop for r in results], [r.box for r in results], *image_hw, out=pixels,
                                     values=values)
        return msg
    ids = instance_id_image([r.mask for r in results], image_hw[0], image_hw[1], values)
    return numpy_to_image(ids, "mono16", header)


def instance_id_pixels(results: Sequence[InstanceResult], image_hw: tuple[int, int],
                       track_ids: Optional[Sequence[int]] = None) -> np.ndarray:
    """The uint16 instance-ID image of :func:`instance_ids_msg` as an array (same pixel rule)."""
    values = None if track_ids is None else [track_id_pixel(t) for t in track_ids]
    return instance_id_image_from_crops([r.mask_crop for r in results], [r.box for r in results], *image_hw,
                                        values=values)


def instance_ids_png_msg(results: Sequence[InstanceResult], header: Any, image_hw: tuple[int, int],
                         track_ids: Optional[Sequence[int]] = None, level: int = INSTANCE_IDS_PNG_LEVEL) -> Any:
    """The instance-ID image as a lossless 16-bit PNG ``sensor_msgs/CompressedImage`` (format
    ``"mono16; png compressed "``, what image_transport's compressed plugin writes and reads)."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    params = [cv2.IMWRITE_PNG_COMPRESSION, int(level)]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10: libpng's adaptive row filters cost 2-3x
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]  # the time for ~the same size here
    ok, png = cv2.imencode(".png", instance_id_pixels(results, image_hw, track_ids), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the {image_hw[1]}x{image_hw[0]} instance-ID image as PNG")
    msg = CompressedImage(header=header, format=INSTANCE_IDS_PNG_FORMAT)
    msg.data = array_module.array("B", png.tobytes())  # stored as is (a bytes value is copied per element)
    return msg


def overlay_msg(image_rgb: np.ndarray, results: Sequence[InstanceResult], header: Any,
                prompts: Sequence[Any] = (), track_ids: Optional[Sequence[int]] = None) -> Any:
    from ovsam_ros.visualize import draw_overlay

    return numpy_to_image(draw_overlay(image_rgb, results, prompts, ids=track_ids), "rgb8", header)


POINT_FIELDS = (("x", 7), ("y", 7), ("z", 7), ("instance_id", 6), ("track_id", 6))  # PointField FLOAT32=7, UINT32=6
POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("instance_id", "<u4"), ("track_id", "<u4")])


def point_records(points: Sequence[np.ndarray], track_ids: Optional[Sequence[int]] = None) -> np.ndarray:
    """Per-instance (N_i, 3) point arrays -> one structured array in :data:`POINT_DTYPE` order."""
    total = sum(len(p) for p in points)
    records = np.zeros(total, dtype=POINT_DTYPE)
    start = 0
    for i, pts in enumerate(points):
        end = start + len(pts)
        if len(pts):
            records["x"][start:end], records["y"][start:end], records["z"][start:end] = np.asarray(pts, np.float32).T
        records["instance_id"][start:end] = i
        records["track_id"][start:end] = track_ids[i] if track_ids is not None else 0
        start = end
    return records


def points_msg(points: Sequence[np.ndarray], header: Any, track_ids: Optional[Sequence[int]] = None) -> Any:
    """``sensor_msgs/PointCloud2`` (unorganised, little-endian) of every instance's points."""
    from sensor_msgs.msg import PointCloud2, PointField

    records = point_records(points, track_ids)
    msg = PointCloud2(header=header, height=1, width=len(records), is_bigendian=False, is_dense=True)
    msg.fields = [PointField(name=name, offset=POINT_DTYPE.fields[name][1], datatype=datatype, count=1)
                  for name, datatype in POINT_FIELDS]
    msg.point_step = POINT_DTYPE.itemsize
    msg.row_step = msg.point_step * len(records)
    msg.data = records.tobytes()
    return msg


def _check_class_id(class_id: str) -> None:
    if class_id not in DETECTION_CLASS_IDS:
        raise ValueError(f"class_id must be one of {', '.join(DETECTION_CLASS_IDS)}; got {class_id!r}")


def _hypotheses(result: InstanceResult, class_id: str) -> list:
    """ObjectHypothesisWithPose per label, best first; class_id the label's name or its index."""
    out = []
    for label in result.labels:
        hyp = ObjectHypothesisWithPose()
        if class_id == "name":
            hyp.hypothesis.class_id = label.name
        else:
            hyp.hypothesis.class_id = str(label.class_index if label.class_index >= 0 else UNLABELED_CLASS_ID)
        hyp.hypothesis.score = float(label.score)
        out.append(hyp)
    return out


def _detection_id(track_ids: Optional[Sequence[int]], index: int) -> str:
    """vision_msgs' ``id`` persists across messages: the track id; "" when tracking is off or the
    track is tentative (an index into this frame's array would name another object next frame)."""
    if track_ids is None or int(track_ids[index]) <= 0:
        return ""
    return str(int(track_ids[index]))


def detections_msg(results: Sequence[InstanceResult], header: Any, track_ids: Optional[Sequence[int]] = None,
                   class_id: str = "name") -> Optional[Any]:
    """``vision_msgs/Detection2DArray`` (``id`` = track id, hypotheses = the labels, best first),
    or None without vision_msgs. ``class_id``: "name" (the label) or "index" (the class index that
    ~/label_info names; background = 65535, vision_msgs' UNLABELED)."""
    _check_class_id(class_id)
    if Detection2DArray is None:
        return None
    array = Detection2DArray(header=header)
    for i, r in enumerate(results):
        x0, y0, x1, y1 = r.box
        det = Detection2D(header=header, id=_detection_id(track_ids, i))
        center = det.bbox.center
        if hasattr(center, "position"):  # vision_msgs >= 4 (Humble+): Pose2D with position
            center.position.x, center.position.y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        else:
            center.x, center.y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        det.bbox.size_x, det.bbox.size_y = float(x1 - x0), float(y1 - y0)
        det.results = _hypotheses(r, class_id)
        array.detections.append(det)
    return array


def detections_3d_msg(results: Sequence[InstanceResult], header: Any, extras: FrameExtras,
                      class_id: str = "name") -> Optional[Any]:
    """``vision_msgs/Detection3DArray`` in ``extras.position_frame_id`` (stamp of ``header``): per
    instance with 3D, ``bbox`` = the robust extent (centre = its middle, size = max - min, axis-
    aligned in that frame), each hypothesis' pose = the centroid, ``id`` = track id. None without
    vision_msgs or when this frame has no 3D (no depth, or ``position_status`` says why)."""
    _check_class_id(class_id)
    if Detection3DArray is None or not extras.position_frame_id or extras.geometry is None:
        return None
    from std_msgs.msg import Header

    frame = Header(stamp=header.stamp, frame_id=extras.position_frame_id)
    array = Detection3DArray(header=frame)
    for i, r in enumerate(results):
        geometry = extras.geometry[i]
        if geometry is None:
            continue
        lo, hi = np.asarray(geometry.extent_min, float), np.asarray(geometry.extent_max, float)
        det = Detection3D(header=frame, id=_detection_id(extras.track_ids, i))
        c = det.bbox.center.position
        c.x, c.y, c.z = (float(v) for v in (lo + hi) / 2.0)
        size = det.bbox.size
        size.x, size.y, size.z = (float(v) for v in hi - lo)
        det.results = _hypotheses(r, class_id)
        for hyp in det.results:
            p = hyp.pose.pose.position
            p.x, p.y, p.z = (float(v) for v in geometry.centroid)
        array.detections.append(det)
    return array


def label_info_msg(class_names: Sequence[str], header: Any, threshold: float = 0.0) -> Optional[Any]:
    """``vision_msgs/LabelInfo``: class index -> name of the active vocabulary (the ids of
    ``LabeledMask.class_index`` and of ``class_id: index`` detections); None without vision_msgs.
    Published latched (transient local) and again whenever the vocabulary changes."""
    if LabelInfo is None:
        return None
    if len(class_names) >= UNLABELED_CLASS_ID:
        raise ValueError(f"vision_msgs/LabelInfo holds class ids below {UNLABELED_CLASS_ID} (uint16, the largest "
                         f"is UNLABELED); the vocabulary has {len(class_names)} classes")
    msg = LabelInfo(header=header, threshold=float(threshold))
    msg.class_map = [VisionClass(class_id=i, class_name=str(name)) for i, name in enumerate(class_names)]
    return msg


class InstanceMarkers:
    """RViz markers of each instance's 3D extent (CUBE) and label (TEXT_VIEW_FACING).

    Marker ids are the track ids (with tracking off: instance index + 1), so an object keeps
    its marker across frames; an id shown before and absent now gets a DELETE (the track ended,
    or this frame has no 3D for it). Tentative tracks (id 0) and instances without 3D get none.
    Stateful: one object per publisher; :meth:`clear` forgets everything (DELETEALL).
    """

    BOX_NS, TEXT_NS = "ovsam_boxes", "ovsam_labels"
    MIN_SIZE = 0.005  # metres: RViz refuses a zero scale (a flat or one-point extent)

    def __init__(self, text_height: float = 0.05, alpha: float = 0.4) -> None:
        self.text_height, self.alpha = float(text_height), float(alpha)
        self._shown: dict[int, str] = {}  # marker id -> frame it was drawn in

    @staticmethod
    def marker_id(track_id: int) -> int:
        """Marker.id is int32: track ids past 2**31 - 1 wrap (to 1.., never 0)."""
        return (int(track_id) - 1) % 0x7FFFFFFF + 1

    def update(self, results: Sequence[InstanceResult], header: Any, extras: FrameExtras) -> Any:
        """This frame's MarkerArray: ADD per instance with 3D, DELETE per id no longer shown."""
        from visualization_msgs.msg import Marker, MarkerArray

        from ovsam_ros.visualize import instance_color

        array = MarkerArray()
        shown: dict[int, str] = {}
        frame_id = extras.position_frame_id
        for i, r in enumerate(results):
            geometry = None if extras.geometry is None or not frame_id else extras.geometry[i]
            track = None if extras.track_ids is None else int(extras.track_ids[i])
            if geometry is None or track == 0:
                continue
            marker_id = self.marker_id(track if track is not None else i + 1)
            lo, hi = np.asarray(geometry.extent_min, float), np.asarray(geometry.extent_max, float)
            red, green, blue = (c / 255.0 for c in instance_color(track if track is not None else i))
            box = Marker(ns=self.BOX_NS, id=marker_id, type=Marker.CUBE, action=Marker.ADD)
            box.header.stamp, box.header.frame_id = header.stamp, frame_id
            box.pose.position.x, box.pose.position.y, box.pose.position.z = (float(v) for v in (lo + hi) / 2.0)
            box.pose.orientation.w = 1.0
            box.scale.x, box.scale.y, box.scale.z = (max(float(v), self.MIN_SIZE) for v in hi - lo)
            box.color.r, box.color.g, box.color.b, box.color.a = red, green, blue, self.alpha
            text = Marker(ns=self.TEXT_NS, id=marker_id, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
            text.header = box.header
            text.pose.position.x, text.pose.position.y, text.pose.position.z = (float(v) for v in geometry.centroid)
            text.pose.orientation.w = 1.0
            text.scale.z = self.text_height  # TEXT_VIEW_FACING: only z (the capital letter's height) counts
            text.color.r, text.color.g, text.color.b, text.color.a = red, green, blue, 1.0
            text.text = (f"#{track} " if track is not None else "") + (r.label or "?") + (
                f" {r.labels[0].score:.2f}" if r.labels else "")
            array.markers.extend([box, text])
            shown[marker_id] = frame_id
        for marker_id, old_frame in self._shown.items():
            if marker_id in shown:
                continue
            for ns in (self.BOX_NS, self.TEXT_NS):
                gone = Marker(ns=ns, id=marker_id, action=Marker.DELETE)
                gone.header.stamp, gone.header.frame_id = header.stamp, old_frame
                array.markers.append(gone)
        self._shown = shown
        return array

    def clear(self, header: Any) -> Any:
        """One DELETEALL (deactivation, vocabulary or tracker reset): RViz drops every marker."""
        from visualization_msgs.msg import Marker, MarkerArray

        self._shown = {}
        return MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])
