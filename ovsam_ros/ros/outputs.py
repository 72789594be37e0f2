"""Predictor results -> output messages. Every output carries the source image's header.

* ``LabeledMaskArray``: one ``LabeledMask`` per instance (``instance_id`` = index).
* instance-ID image: mono16, pixel = instance_id + 1 (0 = none), lossless.
* overlay: rgb8 debug image.
* ``vision_msgs/Detection2DArray`` where vision_msgs is installed (not on PyPI).
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional, Sequence

import numpy as np

from ovsam_ros.results import InstanceResult
from ovsam_ros.ros.image_conversion import numpy_to_image
from ovsam_ros.ros.messages import instance_id_image, labeled_mask_msg

try:  # optional: only on full ROS installs
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
except ImportError:  # pragma: no cover - not installable from PyPI
    Detection2DArray = None


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
        instances.append(labeled_mask_msg(
            r.mask, instance_id=i, prompt_index=r.prompt_index, labels=labels,
            predicted_iou=float(r.predicted_iou), stability_score=float(r.stability_score),
        ))
    msg.instances = instances
    return msg


def instance_ids_msg(results: Sequence[InstanceResult], header: Any, image_hw: tuple[int, int]) -> Any:
    ids = instance_id_image([r.mask for r in results], image_hw[0], image_hw[1])
    return numpy_to_image(ids, "mono16", header)


def overlay_msg(image_rgb: np.ndarray, results: Sequence[InstanceResult], header: Any,
                prompts: Sequence[Any] = ()) -> Any:
    from ovsam_ros.visualize import draw_overlay

    return numpy_to_image(draw_overlay(image_rgb, results, prompts), "rgb8", header)


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
