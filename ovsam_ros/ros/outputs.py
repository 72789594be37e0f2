"""Predictor results -> output messages. Every output carries the source image's header.

* ``LabeledMaskArray``: one ``LabeledMask`` per instance (``instance_id`` = index).
* instance-ID image: mono16, pixel = instance_id + 1 (0 = none), lossless.
* overlay: rgb8 debug image.
* ``vision_msgs/Detection2DArray`` where vision_msgs is installed (not on PyPI).
* ``sensor_msgs/PointCloud2`` of every instance's depth points (x, y, z, instance_id, track_id).

:class:`FrameExtras` carries what the robot features add per instance (track
ids, detector sources, 3D); every field is optional.
"""

from __future__ import annotations

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
from ovsam_ros.ros.messages import instance_id_image, instance_id_image_from_crops, labeled_mask_msg

try:  # optional: only on full ROS installs
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:  # pragma: no cover - not installable from PyPI
    Detection2DArray = None


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
) -> Any:
    """The ``LabeledMaskArray`` for one frame; ``header`` is copied, never replaced."""
    from ovsam_ros.msg import LabeledMaskArray

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


def detections_msg(results: Sequence[InstanceResult], header: Any) -> Optional[Any]:
    """``vision_msgs/Detection2DArray`` (class_id = label), or None without vision_msgs."""
    if Detection2DArray is None:
        return None
    array = Detection2DArray(header=header)
    for i, r in enumerate(results):
        x0, y0, x1, y1 = r.box
        det = Detection2D(header=header, id=str(i))
        center = det.bbox.center
        if hasattr(center, "position"):  # vision_msgs >= 4 (Humble+): Pose2D with position
            center.position.x, center.position.y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        else:
            center.x, center.y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        det.bbox.size_x, det.bbox.size_y = float(x1 - x0), float(y1 - y0)
        for label in r.labels:
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id, hyp.hypothesis.score = label.name, float(label.score)
            det.results.append(hyp)
        array.detections.append(det)
    return array
