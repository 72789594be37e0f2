"""Build and read ovsam_ros messages from numpy masks.

Masks travel cropped to their box, losslessly, in the encoding each ``LabeledMask`` names
(:mod:`ovsam_ros.ros.mask_codec`: COCO RLE, PNG or a raw mono8 image); the helpers here and
there are the only place that knows that layout, so producers and consumers agree.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from typing import Any

import numpy as np

from ovsam_ros.results import mask_box
from ovsam_ros.ros.image_conversion import new_image_msg
from ovsam_ros.ros.mask_codec import RAW, check_mask_encoding, decode_mask, decode_mask_crop, encode_crop


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight (x, y, width, height) of a boolean mask; (0, 0, 0, 0) when empty."""
    x0, y0, x1, y1 = mask_box(mask)
    return x0, y0, x1 - x0, y1 - y0


def labeled_mask_msg(
    mask: np.ndarray,
    *,
    instance_id: int,
    prompt_index: int = -1,
    labels: Sequence[tuple[int, str, float]] = (),
    predicted_iou: float = float("nan"),
    stability_score: float = float("nan"),
    crop_box: tuple[int, int, int, int] | None = None,
    mask_encoding: str = RAW,
) -> Any:
    """A ``LabeledMask`` for a full-frame boolean ``mask``, or for a mask already cropped to
    its tight box ``crop_box`` = (x_min, y_min, x_max, y_max) (the predictor's crops: no
    full-frame mask needs to exist). ``mask_encoding``: how the crop travels (``raw``,
    ``coco_rle``, ``png``; see :mod:`ovsam_ros.ros.mask_codec`).

    ``labels`` are (class_index, name, score) candidates, best first; the first
    becomes the instance's label.
    """
    from ovsam_ros.msg import LabeledMask, LabelScore
    from sensor_msgs.msg import RegionOfInterest

    check_mask_encoding(mask_encoding)
    mask = np.asarray(mask, dtype=bool)
    if crop_box is None:
        x, y, w, h = mask_bbox(mask)
        crop = mask[y : y + h, x : x + w]
    else:
        x, y = int(crop_box[0]), int(crop_box[1])
        w, h = int(crop_box[2]) - x, int(crop_box[3]) - y
        if mask.shape != (max(h, 0), max(w, 0)):
            raise ValueError(f"crop of shape {mask.shape} does not fit crop_box {tuple(crop_box)}")
        crop = mask
    msg = LabeledMask()
    msg.instance_id = int(instance_id)
    msg.prompt_index = int(prompt_index)
    msg.alternatives = [LabelScore(label=name, class_index=int(idx), score=float(score)) for idx, name, score in labels]
    if msg.alternatives:
        best = msg.alternatives[0]
        msg.label, msg.class_index, msg.score = best.label, best.class_index, best.score
    else:
        msg.label, msg.class_index, msg.score = "", -1, 0.0
    msg.predicted_iou = float(predicted_iou)
    msg.stability_score = float(stability_score)
    msg.bbox = RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False)
    msg.mask_encoding = mask_encoding
    if mask_encoding != RAW:
        # An array('B') is stored as is by the generated setter (bytes would be copied per element).
        msg.mask_data = array.array("B", encode_crop(crop, mask_encoding))
        return msg
    # 0/255 written straight into the message's buffer: one pass over the crop, no temporaries.
    msg.mask, pixels = new_image_msg(crop.shape[0], crop.shape[1], "mono8")
    np.multiply(crop, np.uint8(255), out=pixels, dtype=np.uint8)
    return msg


def mask_from_msg(instance: Any, height: int, width: int) -> np.ndarray:
    """A ``LabeledMask``'s full (height, width) boolean mask, whatever its ``mask_encoding``
    (:func:`ovsam_ros.ros.mask_codec.decode_mask`; raises its ``MaskDecodeError``, a ValueError)."""
    return decode_mask(instance, (height, width))


def instance_id_image_from_msg(array: Any) -> np.ndarray:
    """The node's instance-ID image (``~/instance_ids``, uint16) rebuilt from a ``LabeledMaskArray``:
    pixel = the track id (wrapped to 1..65535; 0 = tentative, left out) when ``array.tracked``, else
    ``instance_id + 1``; the first instance owns overlapping pixels. ``~/instance_ids`` is off by
    default because this gives the same image from ~/masks alone."""
    from ovsam_ros.robot.tracking import track_id_pixel

    crops, boxes = [], []
    for instance in array.instances:
        box = instance.bbox
        crops.append(decode_mask_crop(instance))
        boxes.append((box.x_offset, box.y_offset, box.x_offset + box.width, box.y_offset + box.height))
    values = ([track_id_pixel(int(m.track_id)) for m in array.instances] if array.tracked
              else [int(m.instance_id) + 1 for m in array.instances])
    return instance_id_image_from_crops(crops, boxes, int(array.image_height), int(array.image_width),
                                        values=values)


def instance_id_image(masks: Sequence[np.ndarray], height: int, width: int,
                      values: Sequence[int] | None = None) -> np.ndarray:
    """uint16 image with ``i + 1`` (or ``values[i]``) where mask ``i`` is set (0 = no instance).

    Where masks overlap, the later (usually lower-scored) mask does not
    overwrite an earlier one, so the best instance owns contested pixels. A
    value of 0 leaves that mask out (a tentative track).
    """
    boxes = [(0, 0, width, height)] * len(masks)
    return instance_id_image_from_crops(masks, boxes, height, width, values=values)


def instance_id_image_from_crops(crops: Sequence[np.ndarray], boxes: Sequence[Sequence[int]], height: int,
                                 width: int, out: np.ndarray | None = None,
                                 values: Sequence[int] | None = None) -> np.ndarray:
    """:func:`instance_id_image` from masks cropped to their (x_min, y_min, x_max, y_max) boxes:
    only each box's pixels are touched (same result, no full-frame mask per instance).
    ``out``: an all-zero uint16 (height, width) array to draw into (e.g. a message's pixels)."""
    ids = np.zeros((height, width), dtype=np.uint16) if out is None else out
    if ids.shape != (height, width) or ids.dtype != np.uint16:
        raise ValueError(f"out must be a uint16 array of shape {(height, width)}, got {ids.dtype} {ids.shape}")
    # Painted last mask first, so an earlier mask overwrites a later one where they overlap: the
    # same "first mask owns the pixel" rule as testing ``ids == 0`` per mask. Branch-free
    # (region += crop * (value - region), exact in uint16's wrap-around arithmetic): masked
    # assignment costs 10-15x more on speckled masks (branch misprediction per pixel).
    for index in reversed(range(len(crops))):
        value = index + 1 if values is None else int(values[index])
        if not value:  # tentative track: left out, it claims no pixel
            continue
        if not 0 < value <= 0xFFFF:
            raise ValueError(f"instance-ID value {value} of mask {index} does not fit a mono16 pixel")
        x0, y0, x1, y1 = (int(v) for v in boxes[index])
        crop = np.asarray(crops[index], dtype=bool)
        if crop.shape != (max(0, y1 - y0), max(0, x1 - x0)) or x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise ValueError(f"mask {index} of shape {crop.shape} does not fit box {(x0, y0, x1, y1)} "
                             f"in a {width}x{height} image")
        region = ids[y0:y1, x0:x1]
        step = np.subtract(np.uint16(value), region)
        step *= crop.view(np.uint8)
        region += step
    return ids
