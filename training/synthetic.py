"""A synthetic instance-segmentation dataset with known masks and class names.

Coloured shapes ("red circle", "blue square", ... some classes marked novel)
on textured backgrounds, written as COCO-format JSON (RLE or polygon masks) +
PNG images, so the whole training pipeline can run on a CPU with no external
data. Everything is a function of ``--seed``: the same command writes the
same bytes.

    ovsam-make-synthetic --out data/synth --train 200 --val 40 --seed 0

Layout of ``--out``::

    images/train/000000.png ...       images/val/000000.png ...
    annotations/instances_train.json  annotations/instances_val.json
    vocabulary.json                   (this package's vocabulary format, with base/novel split)
    classes/<class name>/000000.png   (optional, --class-folders N: one object per image)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from training.data.common import sample_seed, write_json


@dataclass(frozen=True)
class ShapeClass:
    name: str
    shape: str
    color: Tuple[int, int, int]  # RGB
    split: str  # "base" | "novel"


#: The default classes. Novel classes never appear as training targets in stage 2
#: (``drop_novel``); they measure open-vocabulary transfer.
CLASSES: Tuple[ShapeClass, ...] = (
    ShapeClass("red circle", "circle", (220, 40, 40), "base"),
    ShapeClass("blue square", "square", (40, 70, 220), "base"),
    ShapeClass("green triangle", "triangle", (40, 180, 60), "base"),
    ShapeClass("yellow star", "star", (235, 210, 40), "base"),
    ShapeClass("purple hexagon", "hexagon", (150, 50, 190), "novel"),
    ShapeClass("orange cross", "cross", (245, 140, 30), "novel"),
)

SPLIT_IDS = {"train": 1, "val": 2, "classes": 3}


# ----------------------------------------------------------------------------- drawing
def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """(K, 2) float polygon of ``shape`` centred at (cx, cy)."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "square":
        t = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 0.95
    elif shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 1.1
    elif shape == "hexagon":
        t = np.arange(6) * 2 * np.pi / 6
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.1, 0.45)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
    elif shape == "cross":
        a, b = 1.0, 0.34
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
                        [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]], dtype=np.float64)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return pts @ rot.T * radius + np.array([cx, cy])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted, textured background (float32 HxWx3, 0..255)."""
    import cv2

    base = rng.uniform(60, 200, size=3)
    kind = int(rng.integers(0, 4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # gradient
        d = rng.normal(size=2)
        g = (xx * d[0] + yy * d[1]) / (np.abs(d).sum() * max(h, w))
        tex = g[..., None] * rng.uniform(-80, 80, size=3)
    elif kind == 1:  # stripes
        ang, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.25)
        g = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * freq)
        tex = g[..., None] * rng.uniform(10, 40, size=3)
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(10, 32))
        g = ((xx // cell + yy // cell) % 2) * 2 - 1
        tex = g[..., None] * rng.uniform(8, 30, size=3)
    else:  # blotches
        noise = rng.normal(size=(h // 8 + 1, w // 8 + 1, 1)) + 0.3 * rng.normal(size=(h // 8 + 1, w // 8 + 1, 3))
        tex = cv2.resize(noise.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 30)
    grey = base.mean()
    base = grey + (base - grey) * 0.35  # desaturate: objects are the colourful things
    img = base + tex + rng.normal(0, 6, size=(h, w, 3))
    return img.astype(np.float32)


def render_image(
    rng: np.random.Generator,
    classes: Sequence[ShapeClass],
    size: Tuple[int, int],
    max_objects: int = 4,
    min_objects: int = 1,
    radius_range: Tuple[float, float] = (16, 46),
    min_visible: int = 96,
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One image and its instances [(class index, visible bool mask)], occlusion resolved."""
    import cv2

    h, w = size
    img = _background(rng, h, w)
    n = int(rng.integers(min_objects, max_objects + 1))
    objects: List[Tuple[int, np.ndarray]] = []  # (class, full mask) in paint order
    for _ in range(n):
        for _attempt in range(20):
            cls = int(rng.integers(0, len(classes)))
            r = float(rng.uniform(*radius_range))
            cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
            poly = shape_polygon(classes[cls].shape, cx, cy, r, float(rng.uniform(0, 2 * np.pi)))
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
            mask = mask.astype(bool)
            if mask.sum() < min_visible:
                continue
            if any((mask & m).sum() > 0.35 * min(mask.sum(), m.sum()) for _, m in objects):
                continue  # too much overlap with an earlier object
            break
        else:
            continue
        color = np.clip(np.array(classes[cls].color, np.float32) + rng.normal(0, 12, 3), 0, 255)
        shade = 1.0 + 0.12 * rng.normal(size=(h, w, 1)).astype(np.float32)
        img = np.where(mask[..., None], color * shade, img)
        objects.append((cls, mask))
    # visible masks: later objects occlude earlier ones
    instances = []
    occluder = np.zeros((h, w), bool)
    for cls, mask in reversed(objects):
        visible = mask & ~occluder
        occluder |= mask
        if visible.sum() >= min_visible:
            instances.append((cls, visible))
    instances.reverse()
    return np.clip(img, 0, 255).astype(np.uint8), instances


# ----------------------------------------------------------------------------- COCO encoding
def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """Outer contours of a bool mask as COCO polygons ([x0, y0, x1, y1, ...], >= 3 points)."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2).astype(np.float64)
        if len(c) >= 3:
            # contour pixels are pixel centres; +0.5 puts the polygon on the pixel grid COCO uses
            polys.append([round(float(v), 2) for v in (c + 0.5).reshape(-1)])
    return polys


def encode_segmentation(mask: np.ndarray, fmt: str) -> Tuple[object, np.ndarray]:
    """(COCO segmentation, the mask it decodes to). ``fmt``: 'rle' or 'polygon'."""
    from pycocotools import mask as mask_utils

    h, w = mask.shape
    if fmt == "polygon":
        polys = mask_to_polygons(mask)
        if polys:
            rles = mask_utils.frPyObjects(polys, h, w)
            decoded = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
            return polys, decoded
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle, mask


def categories(classes: Sequence[ShapeClass] = CLASSES) -> List[Dict[str, object]]:
    return [{"id": i + 1, "name": c.name, "supercategory": "shape", "split": c.split} for i, c in enumerate(classes)]


def vocabulary_dict(classes: Sequence[ShapeClass] = CLASSES) -> Dict[str, object]:
    return {"name": "synthetic_shapes", "version": "1",
            "classes": [{"id": i + 1, "name": c.name, "synonyms": [c.name], "split": c.split}
                        for i, c in enumerate(classes)]}


def make_split(
    out: Path,
    split: str,
    count: int,
    seed: int,
    classes: Sequence[ShapeClass] = CLASSES,
    size_range: Tuple[int, int] = (192, 256),
    max_objects: int = 4,
    fmt: str = "rle",
    radius_range: Tuple[float, float] = (18, 50),
) -> Path:
    """Write ``count`` images and ``annotations/instances_<split>.json``; returns the JSON path."""
    import cv2

    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for index in range(count):
        rng = sample_seed(seed, SPLIT_IDS.get(split, 9), index)
        long_side = int(size_range[1])
        short_side = int(rng.integers(size_range[0], size_range[1] + 1))
        h, w = (short_side, long_side) if rng.random() < 0.6 else (long_side, short_side)
        img, instances = render_image(rng, classes, (h, w), max_objects=max_objects, radius_range=radius_range)
        name = f"{index:06d}.png"
        cv2.imwrite(str(image_dir / name), img[:, :, ::-1])
        images.append({"id": index + 1, "file_name": f"{split}/{name}", "height": h, "width": w})
        for cls, mask in instances:
            use = fmt if fmt != "mixed" else ("polygon" if ann_id % 2 else "rle")
            seg, decoded = encode_segmentation(mask, use)
            ys, xs = np.nonzero(decoded)
            if len(xs) == 0:
                continue
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append({
                "id": ann_id, "image_id": index + 1, "category_id": cls + 1, "segmentation": seg,
                "area": int(decoded.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0,
            })
            ann_id += 1
    data = {
        "info": {"description": "ovsam_ros synthetic shapes", "version": "1", "seed": seed, "split": split},
        "images": images, "annotations": annotations, "categories": categories(classes),
    }
    path = out / "annotations" / f"instances_{split}.json"
    write_json(path, data)
    return path


def make_class_folders(out: Path, per_class: int, seed: int, classes: Sequence[ShapeClass] = CLASSES,
                       size: int = 128) -> Path:
    """ImageNet-style folders ``classes/<name>/*.png`` with one object per image (labels only)."""
    import cv2

    root = out / "classes"
    for ci, cls in enumerate(classes):
        folder = root / cls.name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = sample_seed(seed, SPLIT_IDS["classes"], ci, i)
            img, _ = render_image(rng, [cls], (size, size), max_objects=1, min_objects=1,
                                  radius_range=(size * 0.25, size * 0.4))
            cv2.imwrite(str(folder / f"{i:06d}.png"), img[:, :, ::-1])
    return root


def make_dataset(out, train: int = 200, val: int = 40, seed: int = 0, fmt: str = "rle",
                 size_range: Tuple[int, int] = (192, 256), max_objects: int = 4,
                 class_folders: int = 0, radius_range: Tuple[float, float] = (18, 50)) -> Dict[str, str]:
    """Write the whole dataset; returns the paths (also written to ``<out>/dataset.json``)."""
    if fmt not in ("rle", "polygon", "mixed"):
        raise ValueError(f"format must be rle, polygon or mixed, got {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, str] = {"root": str(out), "images": str(out / "images")}
    for split, count in (("train", train), ("val", val)):
        if count > 0:
            paths[split] = str(make_split(out, split, count, seed, size_range=size_range,
                                          max_objects=max_objects, fmt=fmt, radius_range=radius_range))
    vocab_path = out / "vocabulary.json"
    write_json(vocab_path, vocabulary_dict(), indent=1)
    paths["vocabulary"] = str(vocab_path)
    if class_folders > 0:
        paths["classes"] = str(make_class_folders(out, class_folders, seed))
    write_json(out / "dataset.json", paths, indent=1)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ovsam-make-synthetic",
        description="Write a synthetic COCO-format instance dataset (coloured shapes on textured "
                    "backgrounds, some classes marked novel) for CPU runs of the training pipeline. "
                    "Deterministic: the same --seed writes the same files.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=200, help="training images (default 200)")
    parser.add_argument("--val", type=int, default=40, help="held-out images (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="rle", choices=["rle", "polygon", "mixed"],
                        help="mask encoding in the JSON (default rle)")
    parser.add_argument("--min-size", type=int, default=192, help="short image side lower bound (px)")
    parser.add_argument("--max-size", type=int, default=256, help="long image side (px)")
    parser.add_argument("--max-objects", type=int, default=4, help="objects per image, at most")
    parser.add_argument("--min-radius", type=float, default=18, help="object radius lower bound (px)")
    parser.add_argument("--max-radius", type=float, default=50, help="object radius upper bound (px)")
    parser.add_argument("--class-folders", type=int, default=0, metavar="N",
                        help="also write N single-object images per class into classes/<name>/")
    args = parser.parse_args(argv)
    if not 8 <= args.min_size <= args.max_size:
        parser.error("need 8 <= --min-size <= --max-size")
    if not 4 <= args.min_radius <= args.max_radius:
        parser.error("need 4 <= --min-radius <= --max-radius")
    paths = make_dataset(args.out, args.train, args.val, args.seed, args.format,
                         (args.min_size, args.max_size), args.max_objects, args.class_folders,
                         (args.min_radius, args.max_radius))
    summary = {}
    for split in ("train", "val"):
        if split in paths:
            data = json.loads(Path(paths[split]).read_text())
            summary[split] = f"{len(data['images'])} images, {len(data['annotations'])} instances"
    for k, v in summary.items():
        print(f"{k:6s} {v}")
    for k, v in paths.items():
        print(f"{k:10s} {v}")
    names = ", ".join(f"{c.name} ({c.split})" for c in CLASSES)
    print(f"names      {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
