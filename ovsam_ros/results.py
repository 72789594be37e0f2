"""Per-instance results and their JSON form (COCO RLE masks via pycocotools)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np


@dataclass
class LabelScore:
    class_index: int  # -1 = background
    name: str
    score: float  # softmax probability


@dataclass
class InstanceResult:
    """One mask at the original image resolution and what it was recognised as.

    The predictor hands masks over CROPPED to their box (``crop``, with ``image_size``): a
    720p frame with 100 masks would otherwise copy ~90 MB of mostly-empty pixels to the host.
    ``mask`` gives the full-size mask (built from the crop on first use and kept); code that
    only needs the object's pixels (the ROS messages, the instance-ID image) reads ``crop``.
    """

    mask: Optional[np.ndarray]  # (H, W) bool, original image size (None: built from crop on use)
    predicted_iou: float
    stability_score: float
    box: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max (inclusive-exclusive pixels)
    labels: list[LabelScore] = field(default_factory=list)  # best first
    prompt_index: int = -1  # -1: everything / text mode
    low_res_logits: Optional[np.ndarray] = None  # feed back as Prompt.mask_input to refine
    embedding: Optional[np.ndarray] = None  # region embedding in CLIP space (L2-normalised)
    query_score: Optional[float] = None  # text mode: score for the query
    crop: Optional[np.ndarray] = None  # mask[y_min:y_max, x_min:x_max] (bool); None: slice ``mask``
    image_size: Optional[tuple[int, int]] = None  # (H, W) of ``mask``; needed with ``crop`` alone

    def __post_init__(self) -> None:
        if self.__dict__.get("_mask") is None:
            if self.crop is None or self.image_size is None:
                raise ValueError("InstanceResult needs a mask, or a crop with its image_size")
            x0, y0, x1, y1 = (int(v) for v in self.box)
            if tuple(self.crop.shape) != (max(0, y1 - y0), max(0, x1 - x0)):
                raise ValueError(f"crop of shape {self.crop.shape} does not fit box {self.box}")

    @property
    def label(self) -> str:
        return self.labels[0].name if self.labels else ""

    @property
    def area(self) -> int:
        full = self.__dict__.get("_mask")
        return int(np.count_nonzero(self.crop if full is None else full))

    @property
    def empty(self) -> bool:
        """True when the mask has no pixel (a blank or tiny image, a prompt on nothing): the
        predictor still returns it, so results stay one per prompt, but it is NOT an object:
        its label, score and IoU describe nothing. Outputs leave it out (:func:`split_empty`)."""
        return self.area == 0

    @property
    def mask_crop(self) -> np.ndarray:
        """The mask inside ``box`` (no full-size mask is built for it)."""
        if self.__dict__.get("_mask") is None:
            return self.crop
        x0, y0, x1, y1 = (int(v) for v in self.box)
        return self._mask[y0:y1, x0:x1]


def _get_mask(self: InstanceResult) -> np.ndarray:
    if self.__dict__.get("_mask") is None:
        full = np.zeros(self.image_size, dtype=bool)
        x0, y0, x1, y1 = (int(v) for v in self.box)
        full[y0:y1, x0:x1] = self.crop
        self._mask = full
    return self._mask


def _set_mask(self: InstanceResult, value: Optional[np.ndarray]) -> None:
    self._mask = value
    if value is not None and "crop" in self.__dict__:  # a new full mask replaces the crop
        self.crop = None
        self.image_size = tuple(value.shape[:2])


# A property on the dataclass field: __init__ assigns through it, so ``mask`` stays the
# first constructor argument while crop-only results build their full mask lazily.
InstanceResult.mask = property(_get_mask, _set_mask)  # type: ignore[assignment]


def split_empty(results: Sequence[InstanceResult]) -> tuple[list[InstanceResult], list[InstanceResult]]:
    """(objects, empty): the results with pixels, in order, and those whose mask is empty."""
    objects, empty = [], []
    for result in results:
        (empty if result.empty else objects).append(result)
    return objects, empty


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x_min, y_min, x_max, y_max) with exclusive max; zeros for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return 0, 0, 0, 0
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding of a boolean mask, JSON-ready (counts as str)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def results_to_json(
    results: Sequence[InstanceResult],
    *,
    image: str = "",
    image_size: tuple[int, int],
    vocabulary: str = "",
    mode: str = "prompt",
    query: str = "",
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """A JSON-serialisable summary; masks as COCO RLE in the original image frame.

    ``instances`` holds objects only: a result with an empty mask is not one; the indices of
    the prompts that gave one are listed in ``empty_prompts`` (everything / text mode never
    return such results)."""
    height, width = image_size
    results, empty = split_empty(results)
    return {
        "image": image,
        "height": height,
        "width": width,
        "mode": mode,
        "query": query,
        "vocabulary": vocabulary,
        **(extra or {}),
        "empty_prompts": [r.prompt_index for r in empty],
        "instances": [
            {
                "id": i,
                "prompt_index": r.prompt_index,
                "label": r.label,
                "labels": [{"class_index": l.class_index, "name": l.name, "score": round(l.score, 6)} for l in r.labels],
                "predicted_iou": _finite_or_none(r.predicted_iou),
                "stability_score": _finite_or_none(r.stability_score),
                "query_score": r.query_score,
                "bbox_xyxy": list(r.box),
                "area": r.area,
                "segmentation": encode_rle(r.mask),
            }
            for i, r in enumerate(results)
        ],
    }


def write_json(data: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, allow_nan=False), encoding="utf-8")


def _finite_or_none(value: float) -> Optional[float]:
    return round(float(value), 6) if np.isfinite(value) else None
