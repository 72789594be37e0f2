"""Point and box prompts in original-image pixels, validated before they reach the model.

Defined behaviour for bad prompts (each pinned by a test):

* NaN / inf in any coordinate: :class:`PromptError`.
* A point outside the image: :class:`PromptError` (a click off the frame
  cannot be on an object, and guessing would hide a calibration bug).
* A box partly outside the image: clipped to the image.
* A box entirely outside, or of zero area after clipping: :class:`PromptError`.
* An inverted box (x_max < x_min or y_max < y_min): corners are reordered.
* A prompt with neither points nor a box: :class:`PromptError`.
* Point labels other than 1 (positive) or 0 (negative): :class:`PromptError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


class PromptError(ValueError):
    """A prompt that cannot be used; the message says which prompt and why."""


@dataclass
class Prompt:
    """One object to segment: any number of points and/or one box (SAM semantics).

    ``points``: (P, 2) x, y pixels; ``point_labels``: (P,) 1 = on the object,
    0 = not on it (default: all positive); ``box``: x_min, y_min, x_max, y_max;
    ``mask_input``: optional low-resolution logits from a previous prediction
    (refinement), shaped like :attr:`InstanceResult.low_res_logits`.
    """

    points: Optional[Sequence[Sequence[float]]] = None
    point_labels: Optional[Sequence[int]] = None
    box: Optional[Sequence[float]] = None
    mask_input: Optional[np.ndarray] = None


@dataclass
class CheckedPrompt:
    """A validated prompt: float32 arrays, inside the image."""

    points: Optional[np.ndarray]  # (P, 2) float32
    point_labels: Optional[np.ndarray]  # (P,) int64
    box: Optional[np.ndarray]  # (4,) float32
    mask_input: Optional[np.ndarray]


def check_prompt(prompt: Prompt, image_size: tuple[int, int], index: int = 0) -> CheckedPrompt:
    """Validate ``prompt`` for an image of ``image_size`` = (height, width); see module doc."""
    height, width = image_size
    where = f"prompt {index}"
    points = labels = box = None

    if prompt.points is not None and len(prompt.points) > 0:
        points = np.asarray(prompt.points, dtype=np.float64)
        if points.ndim == 1 and points.size == 2:
            points = points[None]
        if points.ndim != 2 or points.shape[1] != 2:
            raise PromptError(f"{where}: points must be (N, 2) x, y pairs, got shape {points.shape}")
        if not np.isfinite(points).all():
            raise PromptError(f"{where}: point coordinates must be finite, got {points.tolist()}")
        outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
        if outside.any():
            bad = points[outside][0].tolist()
            raise PromptError(f"{where}: point {bad} lies outside the {width}x{height} image")
        if prompt.point_labels is None:
            labels = np.ones(len(points), dtype=np.int64)
        else:
            labels = np.asarray(prompt.point_labels).reshape(-1)
            if labels.shape[0] != points.shape[0]:
                raise PromptError(f"{where}: {points.shape[0]} points but {labels.shape[0]} point labels")
            if not np.isin(labels, (0, 1)).all():
                raise PromptError(f"{where}: point labels must be 1 (positive) or 0 (negative), got {labels.tolist()}")
            labels = labels.astype(np.int64)
        points = points.astype(np.float32)

    if prompt.box is not None:
        raw = np.asarray(prompt.box, dtype=np.float64).reshape(-1)
        if raw.size != 4:
            raise PromptError(f"{where}: box must be x_min, y_min, x_max, y_max, got {raw.tolist()}")
        if not np.isfinite(raw).all():
            raise PromptError(f"{where}: box coordinates must be finite, got {raw.tolist()}")
        x0, x1 = sorted((raw[0], raw[2]))
        y0, y1 = sorted((raw[1], raw[3]))
        cx0, cx1 = np.clip([x0, x1], 0, width)
        cy0, cy1 = np.clip([y0, y1], 0, height)
        if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
            raise PromptError(
                f"{where}: box {raw.tolist()} has no area inside the {width}x{height} image"
            )
        box = np.array([cx0, cy0, cx1, cy1], dtype=np.float32)

    if points is None and box is None:
        raise PromptError(f"{where}: needs at least one point or a box")
    return CheckedPrompt(points=points, point_labels=labels, box=box, mask_input=prompt.mask_input)
