"""The "shapes world": coloured shapes on cluttered, textured backgrounds, with exact masks.

The synthetic world the bundled demo model (``config/models/shapes.yaml``) was trained on
and is scored on: ``training/synthetic.py`` writes it as COCO datasets, the demo camera
(``ovsam demo``) publishes new scenes of it with their ground truth. Pure NumPy + OpenCV.

Two class sets:

* ``classic``: 6 classes, one colour per shape (2 novel); the fast CI world.
* ``shapes``: every combination of 6 colours x 6 shapes (36 classes). Six combinations
  are held out as **novel** (:data:`NOVEL_COMBOS`, one per colour and one per shape), so
  every colour and every shape is seen in training and only the pairing is new. Scenes
  add grey clutter (lines, blobs) that is not an object, and objects occlude each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class ShapeClass:
    name: str
    shape: str
    color: Tuple[int, int, int]  # RGB
    split: str  # "base" | "novel"
    color_name: str = ""  # compositional world: the colour word of ``name``


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

#: The compositional shapes world: colour words and their RGB, shape names.
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 215, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (150, 60, 200),
}
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "crescent")
#: Held-out colour-shape pairs: a Latin transversal (each colour once, each shape once).
NOVEL_COMBOS = frozenset({("red", "star"), ("orange", "cross"), ("yellow", "circle"),
                          ("green", "crescent"), ("blue", "triangle"), ("purple", "square")})

WORLD_CLASSES: Tuple[ShapeClass, ...] = tuple(
    ShapeClass(f"{c} {s}", s, rgb, "novel" if (c, s) in NOVEL_COMBOS else "base", c)
    for c, rgb in COLORS.items() for s in SHAPES
)

WORLDS: Dict[str, Tuple[ShapeClass, ...]] = {"classic": CLASSES, "shapes": WORLD_CLASSES}

#: Per-world scene defaults (size range, objects, radii, grey clutter items).
WORLD_SCENES: Dict[str, Dict[str, object]] = {
    "classic": {"size_range": (192, 256), "max_objects": 4, "min_objects": 1, "radius_range": (18, 50), "clutter": 0},
    "shapes": {"size_range": (192, 256), "max_objects": 5, "min_objects": 2, "radius_range": (24, 56), "clutter": 4},
}

CAPTION_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {}.", "a {}.", "a {} on a textured background.", "a picture of a {} shape.", "{}",
    "a drawing of a {}.", "there is a {}.",
)

def world_classes(world: str) -> Tuple[ShapeClass, ...]:
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; choose from {sorted(WORLDS)}")
    return WORLDS[world]


def caption(name: str, rng: np.random.Generator) -> str:
    """A caption for one object of class ``name`` ("a photo of a red star.")."""
    return CAPTION_TEMPLATES[int(rng.integers(0, len(CAPTION_TEMPLATES)))].format(name)


def scene_caption(names: Sequence[str]) -> str:
    """A caption for a whole scene, objects in paint order ("a red star, a blue circle and a green cross")."""
    items = [f"a {n}" for n in names]
    if not items:
        return "an empty textured background"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


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
    elif shape == "crescent":
        # unit disc minus a disc of radius 0.85 centred at (0.5, 0); arcs meet at x = 0.5275
        a0 = math.atan2(0.8495, 0.5275)
        outer = np.linspace(a0, 2 * np.pi - a0, 40)
        b0 = math.atan2(-0.8495, 0.0275) + 2 * np.pi
        inner = np.linspace(b0, 2 * np.pi - b0, 28)
        pts = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                              np.stack([0.5 + 0.85 * np.cos(inner), 0.85 * np.sin(inner)], 1)])
        pts = (pts + np.array([0.3, 0.0])) * 1.1  # roughly centred on its area
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


def _clutter(rng: np.random.Generator, img: np.ndarray, count: int) -> np.ndarray:
    """Grey, unannotated distractors (lines and blobs): things that are not objects."""
    import cv2

    h, w = img.shape[:2]
    for _ in range(count):
        grey = float(img.mean()) + float(rng.uniform(-70, 70))
        tint = np.clip(grey + rng.normal(0, 6, 3), 0, 255).tolist()
        if rng.random() < 0.5:
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p0, p1, tint, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(4, max(5, w // 10))), int(rng.integers(4, max(5, h // 10))))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, tint, -1, cv2.LINE_AA)
    return img


def render_image(
    rng: np.random.Generator,
    classes: Sequence[ShapeClass],
    size: Tuple[int, int],
    max_objects: int = 4,
    min_objects: int = 1,
    radius_range: Tuple[float, float] = (16, 46),
    min_visible: int = 96,
    clutter: int = 0,
    allowed: Optional[Sequence[int]] = None,
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One image and its instances [(class index, visible bool mask)], occlusion resolved.

    ``clutter``: up to this many grey distractors drawn under the objects (none: the
    random stream, and so the image, is the same as before clutter existed).
    ``allowed``: class indices to draw from (default: all).
    """
    import cv2

    h, w = size
    img = _background(rng, h, w)
    if clutter > 0:
        img = _clutter(rng, img, int(rng.integers(1, clutter + 1)))
    n = int(rng.integers(min_objects, max_objects + 1))
    objects: List[Tuple[int, np.ndarray]] = []  # (class, full mask) in paint order
    for _ in range(n):
        for _attempt in range(20):
            cls = int(rng.integers(0, len(classes))) if allowed is None else int(allowed[int(rng.integers(0, len(allowed)))])
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


def world_scene(seed: int, index: int, size: Tuple[int, int] = (320, 240), world: str = "shapes",
                stream: int = 5) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Scene ``index`` of a seeded stream: (RGB uint8 [H, W, 3], [(class index, visible mask)]).

    ``size`` is (width, height); object radii scale with the longer side (the world's
    defaults are for a 256 px long side, the size models see it at). All classes (base and
    novel) can appear.
    """
    scene = WORLD_SCENES[world]
    w, h = size
    k = max(w, h) / float(scene["size_range"][1])
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(stream), int(index)])
    r0, r1 = scene["radius_range"]
    return render_image(rng, world_classes(world), (h, w), max_objects=int(scene["max_objects"]),
                        min_objects=int(scene["min_objects"]), radius_range=(r0 * k, r1 * k),
                        clutter=int(scene["clutter"]), min_visible=int(96 * k * k))
