"""A synthetic instance-segmentation dataset with known masks and class names.

Coloured shapes ("red circle", "blue square", ... some classes marked novel)
on textured backgrounds, written as COCO-format JSON (RLE or polygon masks) +
PNG images, so the whole training pipeline can run on a CPU with no external
data. Everything is a function of ``--seed``: the same command writes the
same bytes.

Two worlds (``--world``):

* ``classic``: 6 classes, one colour per shape (2 novel); the fast CI world.
* ``shapes``: the compositional "shapes world" of the bundled demo model:
  every combination of 6 colours x 6 shapes (36 classes). Six combinations
  are held out as **novel** (:data:`NOVEL_COMBOS`, one per colour and one per
  shape), so every colour and every shape is seen in training and only the
  pairing is new: an honest open-vocabulary test. Scenes add grey clutter
  (lines, blobs) that is not an object, and objects occlude each other.

    ovsam-make-synthetic --out data/synth --train 200 --val 40 --seed 0
    ovsam-make-synthetic --world shapes --out data/shapes --captions

Layout of ``--out``::

    images/train/000000.png ...       images/val/000000.png ...
    annotations/instances_train.json  annotations/instances_val.json
    vocabulary.json                   (this package's vocabulary format, with base/novel split)
    classes/<class name>/000000.png   (optional, --class-folders N: one object per image)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ovsam_ros.shapes_world import (  # noqa: F401  (re-exported: the world's classes and renderer)
    CAPTION_TEMPLATES,
    CLASSES,
    COLORS,
    NOVEL_COMBOS,
    SHAPES,
    WORLD_CLASSES,
    WORLD_SCENES,
    WORLDS,
    ShapeClass,
    caption,
    render_image,
    scene_caption,
    shape_polygon,
    world_classes,
)
from training.cli_parsers import synthetic_parser
from training.data.common import sample_seed, write_json

SPLIT_IDS = {"train": 1, "val": 2, "classes": 3, "test": 4, "demo": 5}


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
    """COCO categories (ids from 1) with this package's ``split`` field."""
    return [{"id": i + 1, "name": c.name, "supercategory": "shape", "split": c.split} for i, c in enumerate(classes)]


def vocabulary_dict(classes: Sequence[ShapeClass] = CLASSES, name: str = "synthetic_shapes") -> Dict[str, object]:
    return {"name": name, "version": "1",
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
    min_objects: int = 1,
    clutter: int = 0,
    base_only: bool = False,
    captions: bool = False,
) -> Path:
    """Write ``count`` images and ``annotations/instances_<split>.json``; returns the JSON path.

    ``base_only``: draw only base classes (the shapes world's training split: novel
    combinations never appear in a training image). ``captions``: also write
    ``annotations/captions_<split>.json`` (COCO captions format, one scene caption
    per image).
    """
    import cv2

    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    allowed = [i for i, c in enumerate(classes) if c.split == "base"] if base_only else None
    images, annotations, caption_anns = [], [], []
    ann_id = 1
    for index in range(count):
        rng = sample_seed(seed, SPLIT_IDS.get(split, 9), index)
        long_side = int(size_range[1])
        short_side = int(rng.integers(size_range[0], size_range[1] + 1))
        h, w = (short_side, long_side) if rng.random() < 0.6 else (long_side, short_side)
        img, instances = render_image(rng, classes, (h, w), max_objects=max_objects, min_objects=min_objects,
                                      radius_range=radius_range, clutter=clutter, allowed=allowed)
        name = f"{index:06d}.png"
        cv2.imwrite(str(image_dir / name), img[:, :, ::-1])
        images.append({"id": index + 1, "file_name": f"{split}/{name}", "height": h, "width": w})
        caption_anns.append({"id": index + 1, "image_id": index + 1,
                             "caption": scene_caption([classes[c].name for c, _ in instances])})
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
    info = {"description": "ovsam_ros synthetic shapes", "version": "1", "seed": seed, "split": split}
    data = {"info": info, "images": images, "annotations": annotations, "categories": categories(classes)}
    path = out / "annotations" / f"instances_{split}.json"
    write_json(path, data)
    if captions:
        write_json(out / "annotations" / f"captions_{split}.json",
                   {"info": info, "images": images, "annotations": caption_anns})
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
                 size_range: Optional[Tuple[int, int]] = None, max_objects: Optional[int] = None,
                 class_folders: int = 0, radius_range: Optional[Tuple[float, float]] = None,
                 world: str = "classic", captions: bool = False,
                 splits: Optional[Dict[str, int]] = None) -> Dict[str, str]:
    """Write the whole dataset; returns the paths (also written to ``<out>/dataset.json``).

    Scene parameters left at ``None`` take the world's defaults (:data:`WORLD_SCENES`).
    ``splits`` (name -> image count) replaces ``train``/``val``; a split named ``train``
    of the shapes world holds base classes only.
    """
    if fmt not in ("rle", "polygon", "mixed"):
        raise ValueError(f"format must be rle, polygon or mixed, got {fmt!r}")
    classes = world_classes(world)
    scene = dict(WORLD_SCENES[world])
    for key, value in (("size_range", size_range), ("max_objects", max_objects), ("radius_range", radius_range)):
        if value is not None:
            scene[key] = value
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, str] = {"root": str(out), "images": str(out / "images"), "world": world}
    for split, count in (splits or {"train": train, "val": val}).items():
        if count > 0:
            paths[split] = str(make_split(
                out, split, count, seed, classes, size_range=tuple(scene["size_range"]),
                max_objects=int(scene["max_objects"]), fmt=fmt, radius_range=tuple(scene["radius_range"]),
                min_objects=int(scene["min_objects"]), clutter=int(scene["clutter"]),
                base_only=(world != "classic" and split == "train"), captions=captions))
    vocab_path = out / "vocabulary.json"
    write_json(vocab_path, vocabulary_dict(classes, "synthetic_shapes" if world == "classic" else "shapes_world"),
               indent=1)
    paths["vocabulary"] = str(vocab_path)
    if class_folders > 0:
        paths["classes"] = str(make_class_folders(out, class_folders, seed, classes))
    write_json(out / "dataset.json", paths, indent=1)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = synthetic_parser()
    args = parser.parse_args(argv)
    scene = WORLD_SCENES[args.world]
    sizes = (args.min_size if args.min_size is not None else scene["size_range"][0],
             args.max_size if args.max_size is not None else scene["size_range"][1])
    radii = (args.min_radius if args.min_radius is not None else scene["radius_range"][0],
             args.max_radius if args.max_radius is not None else scene["radius_range"][1])
    if not 8 <= sizes[0] <= sizes[1]:
        parser.error("need 8 <= --min-size <= --max-size")
    if not 4 <= radii[0] <= radii[1]:
        parser.error("need 4 <= --min-radius <= --max-radius")
    if args.max_objects is not None and args.max_objects < 1:
        parser.error("need --max-objects >= 1")
    paths = make_dataset(args.out, args.train, args.val, args.seed, args.format, sizes, args.max_objects,
                         args.class_folders, radii, world=args.world, captions=args.captions)
    summary = {}
    for split in ("train", "val"):
        if split in paths:
            data = json.loads(Path(paths[split]).read_text())
            summary[split] = f"{len(data['images'])} images, {len(data['annotations'])} instances"
    for k, v in summary.items():
        print(f"{k:6s} {v}")
    for k, v in paths.items():
        print(f"{k:10s} {v}")
    names = ", ".join(f"{c.name} ({c.split})" for c in world_classes(args.world))
    print(f"names      {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
