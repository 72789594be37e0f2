"""Contact sheets: labelled frames with their masks and class names drawn over them, per source.

For a person to look at before training on the labels. The sample is drawn from the merged
dataset with a fixed seed (per source: ``sample`` random labelled frames, or every ``every``-th
labelled frame when ``every`` > 0), so the sheets are the same on every run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np

from ovsam_ros.files import atomic_write
from ovsam_ros.results import InstanceResult, LabelScore, decode_rle, mask_box
from ovsam_ros.visualize import draw_overlay

TILE = 320  # longest side of one frame on the sheet
COLUMNS = 4
PER_SHEET = 16


def pick(image_ids: Sequence[int], sample: int, every: int, seed: int) -> List[int]:
    if every > 0:
        return list(image_ids[::every])
    if sample <= 0 or not image_ids:
        return []
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(image_ids), size=min(sample, len(image_ids)), replace=False)
    return [image_ids[i] for i in sorted(chosen)]


def _tile(image_rgb: np.ndarray, anns: Sequence[Dict[str, Any]], names: Dict[int, str], caption: str) -> np.ndarray:
    """One frame scaled to :data:`TILE` (masks too, so the text stays readable), its labels drawn, a caption."""
    k = TILE / max(image_rgb.shape[:2])
    size = (max(1, round(image_rgb.shape[1] * k)), max(1, round(image_rgb.shape[0] * k)))
    scaled = cv2.resize(image_rgb, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    results = []
    for a in anns:
        mask = cv2.resize(decode_rle(a["segmentation"]).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        if not mask.any():
            continue
        results.append(InstanceResult(mask=mask, predicted_iou=float("nan"), stability_score=float("nan"),
                                      box=mask_box(mask), labels=[LabelScore(a["category_id"] - 1,
                                                                             names[a["category_id"]], a["score"])]))
    drawn = draw_overlay(scaled, results)
    tile = np.full((TILE + 18, TILE, 3), 30, np.uint8)
    tile[:drawn.shape[0], :drawn.shape[1]] = drawn
    cv2.putText(tile, caption[-48:], (4, TILE + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def write_sheets(out: Path, coco: Dict[str, Any], sample: int = 16, every: int = 0, seed: int = 0) -> List[str]:
    """Write ``<out>/review/<source>_<n>.png``; returns their paths relative to ``out``."""
    from training.data.common import read_image

    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    per_source: Dict[str, List[Dict[str, Any]]] = {}
    for img in coco["images"]:
        per_source.setdefault(img["file_name"].split("/")[0], []).append(img)
    written = []
    for s, (slug, images) in enumerate(sorted(per_source.items())):
        lookup = {im["id"]: im for im in images}
        chosen = pick([im["id"] for im in images], sample, every, seed + s)
        for n in range(math.ceil(len(chosen) / PER_SHEET)):
            tiles = []
            for image_id in chosen[n * PER_SHEET:(n + 1) * PER_SHEET]:
                im = lookup[image_id]
                rgb = read_image(out / "images" / im["file_name"])
                tiles.append(_tile(rgb, by_image.get(image_id, []), names,
                                   f"{os.path.basename(im['file_name'])} ({len(by_image.get(image_id, []))})"))
            rows = math.ceil(len(tiles) / COLUMNS)
            sheet = np.zeros((rows * tiles[0].shape[0], min(len(tiles), COLUMNS) * TILE, 3), np.uint8)
            for i, t in enumerate(tiles):
                r, c = divmod(i, COLUMNS)
                sheet[r * t.shape[0]:(r + 1) * t.shape[0], c * TILE:(c + 1) * TILE] = t
            ok, png = cv2.imencode(".png", sheet[:, :, ::-1])
            if not ok:
                raise OSError(f"cannot encode review sheet {slug}_{n}")
            name = f"review/{slug}_{n:03d}.png"
            atomic_write(out / name, lambda fh, data=png.tobytes(): fh.write(data))
            written.append(name)
    return written
