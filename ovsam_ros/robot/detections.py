"""Detector output -> prompts: each detection becomes one box (or centre-point) prompt.

Works on any object shaped like ``vision_msgs/Detection2DArray`` (attributes
only, nothing is imported), both layouts in use:

* vision_msgs >= 4 (Humble and later): ``bbox.center.position.x``,
  ``results[i].hypothesis.class_id`` / ``.score``;
* vision_msgs 2-3 (Foxy/Galactic): ``bbox.center.x``, ``results[i].id`` / ``.score``.

A detection's best hypothesis (highest score) gives the class and score that
travel with the prompt into the output (``LabeledMask.source_*``), so the
detector's label is reported beside OVSAM's. A detection that cannot become a
prompt (NaN or non-positive size, missing box) is rejected with its index and
the reason; the others keep their index in the array as ``prompt_index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ovsam_ros.prompts import Prompt

PROMPT_KINDS = ("box", "point")


@dataclass(frozen=True)
class PromptSource:
    """Where a prompt came from (carried into ``LabeledMask``)."""

    id: str = ""  # Detection2D.id
    class_id: str = ""  # the detector's best class
    score: float = float("nan")  # and its score


@dataclass
class DetectionPrompts:
    prompts: list[Prompt] = field(default_factory=list)
    sources: list[PromptSource] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # index of each prompt's detection in the array
    rejected: list[str] = field(default_factory=list)
    below_score: int = 0  # detections dropped by min_score (not an error)


def _center_xy(center: Any) -> tuple[float, float]:
    position = getattr(center, "position", None)
    if position is not None:  # vision_msgs >= 4: vision_msgs/Pose2D
        return float(position.x), float(position.y)
    return float(center.x), float(center.y)  # geometry_msgs/Pose2D


def best_hypothesis(detection: Any) -> tuple[str, float]:
    """(class_id, score) of the highest-scored hypothesis; ("", nan) when there is none."""
    best: Optional[tuple[str, float]] = None
    for result in getattr(detection, "results", ()) or ():
        hyp = getattr(result, "hypothesis", result)  # >= 4 nests it; older layouts do not
        class_id = getattr(hyp, "class_id", None)
        if class_id is None:
            class_id = getattr(hyp, "id", "")
        score = float(getattr(hyp, "score", float("nan")))
        if best is None or (math.isfinite(score) and not (score <= best[1])):
            best = (str(class_id), score)
    return best or ("", float("nan"))


def detection_box(detection: Any) -> list[float]:
    """[x_min, y_min, x_max, y_max] in pixels; ValueError for NaN or non-positive size."""
    bbox = detection.bbox
    cx, cy = _center_xy(bbox.center)
    w, h = float(bbox.size_x), float(bbox.size_y)
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise ValueError(f"box is not finite (center {cx}, {cy}, size {w} x {h})")
    if w <= 0 or h <= 0:
        raise ValueError(f"box has no area (size {w} x {h})")
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def detection_prompt(detection: Any, kind: str = "box") -> Prompt:
    """One detection -> a box prompt, or a positive point at the box centre."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"detection prompt kind must be one of {', '.join(PROMPT_KINDS)}; got {kind!r}")
    x0, y0, x1, y1 = detection_box(detection)
    if kind == "point":
        return Prompt(points=[[(x0 + x1) / 2, (y0 + y1) / 2]], point_labels=[1])
    return Prompt(box=[x0, y0, x1, y1])


def prompts_from_detections(array: Any, kind: str = "box", min_score: float = 0.0) -> DetectionPrompts:
    """A ``Detection2DArray``-shaped object -> prompts + their sources (bad detections rejected)."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"detection prompt kind must be one of {', '.join(PROMPT_KINDS)}; got {kind!r}")
    out = DetectionPrompts()
    for index, detection in enumerate(getattr(array, "detections", ()) or ()):
        class_id, score = best_hypothesis(detection)
        if min_score > 0 and not score >= min_score:  # NaN scores fail a threshold too
            out.below_score += 1
            continue
        try:
            prompt = detection_prompt(detection, kind)
        except (AttributeError, TypeError, ValueError) as error:
            out.rejected.append(f"detection {index} ({class_id or 'no class'}): {error}")
            continue
        out.prompts.append(prompt)
        out.sources.append(PromptSource(id=str(getattr(detection, "id", "") or ""), class_id=class_id, score=score))
        out.indices.append(index)
    return out
