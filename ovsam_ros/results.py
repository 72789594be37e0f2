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
    """One mask at the original image resolution and what it was recognised as."""

    mask: np.ndarray  # (H, W) bool, original image size
    predicted_iou: float
    stability_score: float
    box: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max (inclusive-exclusive pixels)
    labels: list[LabelScore] = field(default_factory=list)  # best first
    prompt_index: int = -1  # -1: everything / text mode
    low_res_logits: Optional[np.ndarray] = None  # feed back as Prompt.mask_input to refine
    embedding: Optional[np.ndarray] = None  # region embedding in CLIP space (L2-normalised)
    query_score: Optional[float] = None  # text mode: score for the query

    @property
    def label(self) -> str:
        return self.labels[0].name if self.labels else ""

    @property
    def area(self) -> int:
        return int(self.mask.sum())


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
    """A JSON-serialisable summary; masks as COCO RLE in the original image frame."""
    height, width = image_size
    return {
        "image": image,
        "height": height,
        "width": width,
        "mode": mode,
        "query": query,
        "vocabulary": vocabulary,
        **(extra or {}),
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
