"""Draw instance masks, boxes, prompts and labels over an image (for people, not for robots)."""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from ovsam_ros.prompts import CheckedPrompt
from ovsam_ros.results import InstanceResult


def instance_color(index: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per instance index (golden-angle hues)."""
    hue = int((index * 137.508) % 180)
    hsv = np.uint8([[[hue, 200, 255]]])
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def draw_overlay(
    image_rgb: np.ndarray,
    results: Sequence[InstanceResult],
    prompts: Optional[Sequence[CheckedPrompt]] = None,
    alpha: float = 0.45,
    show_scores: bool = True,
    ids: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """Return an RGB uint8 copy of ``image_rgb`` with masks, contours, boxes and labels.

    ``ids``: per instance, a track id that picks its colour (stable across frames)
    and prefixes its label as ``#id``; 0 = untracked (colour by position).
    """
    def color_key(i: int) -> int:
        return ids[i] if ids is not None and ids[i] else i
    canvas = image_rgb.copy()
    scale = max(0.35, min(canvas.shape[:2]) / 800)
    thickness = max(1, int(round(2 * scale)))
    for i, result in enumerate(results):
        if result.empty:  # no pixel: not an object, nothing to draw (and no box at (0, 0))
            continue
        color = np.array(instance_color(color_key(i)), dtype=np.float32)
        mask = result.mask
        canvas[mask] = (canvas[mask] * (1 - alpha) + color * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in color), thickness)
    for i, result in enumerate(results):
        if result.empty:
            continue
        color = instance_color(color_key(i))
        x0, y0, x1, y1 = result.box
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), color, thickness)
        text = (f"#{ids[i]} " if ids is not None and ids[i] else "") + (result.label or "?")
        if show_scores and result.labels:
            text += f" {result.labels[0].score:.2f}"
        _label(canvas, text, (x0, y0), color, scale)
    for prompt in prompts or ():
        if prompt.box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt.box)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), (255, 255, 255), max(1, thickness // 2), cv2.LINE_AA)
        if prompt.points is not None:
            for (x, y), positive in zip(prompt.points, prompt.point_labels):
                center = (int(round(x)), int(round(y)))
                cv2.circle(canvas, center, int(6 * scale) + 2, (255, 255, 255), -1, cv2.LINE_AA)
                cv2.circle(canvas, center, int(6 * scale), (0, 200, 0) if positive else (220, 0, 0), -1, cv2.LINE_AA)
    return canvas


def _label(canvas: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int], scale: float) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = 0.5 * scale + 0.1
    (w, h), baseline = cv2.getTextSize(text, font, font_scale, 1)
    x = int(np.clip(origin[0], 0, max(0, canvas.shape[1] - w - 2)))
    y = int(np.clip(origin[1], h + baseline + 2, canvas.shape[0]))
    cv2.rectangle(canvas, (x, y - h - baseline - 2), (x + w + 2, y), color, -1)
    cv2.putText(canvas, text, (x + 1, y - baseline), font, font_scale, (0, 0, 0), 1, cv2.LINE_AA)


def save_rgb(path: str, image_rgb: np.ndarray) -> None:
    """Write an RGB array as PNG/JPEG (OpenCV wants BGR); raises OSError on failure."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")
