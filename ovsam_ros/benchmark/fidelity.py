"""How much two inference settings change OVSAM's answers (docs/fidelity.md quotes the numbers).

    python -m ovsam_ros.benchmark.fidelity precision              # fp32 vs fp16 (the rn50x16 YAMLs' choice)
    python -m ovsam_ros.benchmark.fidelity precision --other bf16
    python -m ovsam_ros.benchmark.fidelity resize                 # PIL (ours) vs cv2 bilinear (the reference)
    python -m ovsam_ros.benchmark.fidelity point-rule             # point* prompt: exact EDT vs kornia's (the reference)

Both runs of a comparison get the same images and the same prompts: a grid of point prompts,
then one box prompt per non-empty point mask (the box of the first run's mask). Per prompt it
reports the mask IoU between the two runs, whether the top-1 label agrees, and the largest
absolute difference of the learned classifier's logits (every class + background). The images
are the bundled samples (real photos) and scenes of the shapes world (the bundled demo model's
domain). The default model is the bundled, trained ``shapes`` model: untrained weights would
measure noise. Every row is printed; nothing is timed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ovsam_ros.cli_types import image_size

#: Comparisons this tool runs.
COMPARISONS = ("precision", "resize", "point-rule")


@dataclass
class PromptDiff:
    image: str
    kind: str  # "point" | "box"
    iou: float
    same_label: bool
    max_logit_diff: float


@dataclass
class Report:
    title: str
    rows: List[PromptDiff] = field(default_factory=list)

    def summary(self, rows: Optional[Sequence[PromptDiff]] = None) -> dict:
        rows = self.rows if rows is None else rows
        ious = np.array([r.iou for r in rows], dtype=np.float64)
        return {
            "prompts": len(rows),
            "mean_iou": float(ious.mean()) if len(rows) else float("nan"),
            "min_iou": float(ious.min()) if len(rows) else float("nan"),
            "label_agreement": float(np.mean([r.same_label for r in rows])) if rows else float("nan"),
            "max_logit_diff": float(max((r.max_logit_diff for r in rows), default=float("nan"))),
        }

    def table(self) -> str:
        lines = [self.title, f"{'images':<22s} {'prompts':>7s} {'mean IoU':>9s} {'min IoU':>8s} "
                             f"{'top-1 agree':>11s} {'max |dlogit|':>12s}"]
        groups = sorted({r.image for r in self.rows})
        for name in groups + ["ALL"]:
            rows = self.rows if name == "ALL" else [r for r in self.rows if r.image == name]
            s = self.summary(rows)
            lines.append(f"{name:<22s} {s['prompts']:>7d} {s['mean_iou']:>9.4f} {s['min_iou']:>8.4f} "
                         f"{100 * s['label_agreement']:>10.1f}% {s['max_logit_diff']:>12.4f}")
        return "\n".join(lines)


def sample_images(scenes: int = 4, size: tuple = (640, 480)) -> List[tuple]:
    """(name, RGB uint8) pairs: the bundled photos and ``scenes`` shapes-world scenes."""
    import cv2

    from ovsam_ros.resources import SAMPLES_DIR
    from ovsam_ros.shapes_world import world_scene

    images = []
    for path in sorted(SAMPLES_DIR.glob("*.png")):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        images.append((path.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    for index in range(scenes):
        images.append((f"shapes_world_{index}", world_scene(7, index, size)[0]))
    return images


def _grid(shape: tuple, per_side: int) -> np.ndarray:
    h, w = shape[:2]
    xs = (np.arange(per_side) + 0.5) * w / per_side
    ys = (np.arange(per_side) + 0.5) * h / per_side
    return np.array([[x, y] for y in ys for x in xs], dtype=np.float32)


def _run(predictor, image: np.ndarray, prompts) -> list:
    predictor.set_image(image)
    return predictor.predict(prompts)


def _logits(predictor, result) -> torch.Tensor:
    from ovsam_ros.model.recognition import class_logits

    emb = torch.as_tensor(result.embedding, dtype=torch.float32)[None]
    return class_logits(emb.to(predictor.text.device), predictor.text)[0].cpu()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare(first, second, images: Sequence[tuple], per_side: int = 5,
            switch: Optional[Callable[[bool], None]] = None, title: str = "") -> Report:
    """Run ``first`` and ``second`` (predictors; may be the same object when ``switch(on)``
    turns the setting under test on for the second run and off for the first) on the same
    images and prompts; one :class:`PromptDiff` per prompt."""
    from ovsam_ros.prompts import Prompt

    report = Report(title)
    for name, image in images:
        points = [Prompt(points=[p], point_labels=[1]) for p in _grid(image.shape, per_side)]
        if switch is not None:
            switch(False)
        a_points = _run(first, image, points)
        boxes = [Prompt(box=list(r.box)) for r in a_points if r.box[2] > r.box[0] and r.box[3] > r.box[1]]
        a_boxes = first.predict(boxes) if boxes else []
        a_logits = [_logits(first, r) for r in a_points + a_boxes]
        if switch is not None:
            switch(True)
        b_points = _run(second, image, points)
        b_boxes = second.predict(boxes) if boxes else []
        b_logits = [_logits(second, r) for r in b_points + b_boxes]
        kinds = ["point"] * len(a_points) + ["box"] * len(a_boxes)
        for kind, ra, rb, la, lb in zip(kinds, a_points + a_boxes, b_points + b_boxes, a_logits, b_logits):
            report.rows.append(PromptDiff(
                image=name, kind=kind, iou=_iou(ra.mask, rb.mask),
                same_label=(ra.labels[0].class_index if ra.labels else -1) == (rb.labels[0].class_index if rb.labels else -1),
                max_logit_diff=float((la - lb).abs().max())))
    return report


def point_rule_masks(count: int, shape: tuple = (480, 640), seed: int = 0) -> List[tuple]:
    """(kind, bool mask) pairs: thin bars (1-4 px wide, any angle), rotated rectangles and rotated
    ellipses, in turn (the masks the reference's and the exact point rules disagree on most)."""
    import math

    import cv2

    rng = np.random.default_rng(seed)
    h, w = shape
    kinds = ("thin bar", "rotated rectangle", "rotated ellipse")
    masks: List[tuple] = []
    while len(masks) < count:
        m = np.zeros(shape, np.uint8)
        kind = kinds[len(masks) % len(kinds)]
        cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
        angle = rng.uniform(0, 180)
        if kind == "thin bar":
            half = 0.5 * rng.uniform(0.2, 0.9) * w
            dx, dy = half * math.cos(math.radians(angle)), half * math.sin(math.radians(angle))
            cv2.line(m, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, int(rng.integers(1, 5)))
        elif kind == "rotated rectangle":
            box = cv2.boxPoints(((cx, cy), (rng.uniform(4, 0.6 * w), rng.uniform(4, 0.6 * h)), angle))
            cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
        else:
            axes = (int(rng.uniform(3, 0.4 * w)), int(rng.uniform(3, 0.4 * h)))
            cv2.ellipse(m, (int(cx), int(cy)), axes, angle, 0, 360, 1, -1)
        if m.any():
            masks.append((kind, m.astype(bool)))
    return masks


def reference_center_coords(mask: np.ndarray, img_shape: tuple) -> tuple:
    """``get_center_coords`` of the reference (HarborYuan/ovsam ``ovsam_preprocessor.py``) for one mask, as
    written there: mmdet's nearest ``rescale(img_shape)``, kornia on the WHOLE padded mask, ``argmax / w``."""
    import cv2
    import torch.nn.functional as F

    from training.data.transforms import _kornia_distance_transform

    distance_transform = _kornia_distance_transform()
    oh, ow = mask.shape
    factor = min(max(img_shape) / max(oh, ow), min(img_shape) / min(oh, ow))  # mmcv rescale_size
    size = (int(ow * float(factor) + 0.5), int(oh * float(factor) + 0.5))
    m = torch.from_numpy(cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)).bool()[None, None]
    w = m.shape[-1]
    mask_dt = distance_transform((~F.pad(m, pad=(1, 1, 1, 1), mode="constant", value=0)).float())[:, :, 1:-1, 1:-1]
    selected = torch.tensor([mask_dt.argmax() / w, mask_dt.argmax() % w]).long().flip(0)
    return float(selected[0]), float(selected[1])


def point_rule_table(count: int = 200, shape: tuple = (480, 640), input_long_side: int = 1024) -> str:
    """Same-pixel counts of the point* prompt against the reference's (kornia on the whole mask): the
    exact-EDT rule used before, and ``training.data.transforms.reference_point`` (kornia, bounding box)."""
    import time

    from training.data.transforms import exact_edt_point, reference_point  # the evaluation's own rule

    scale = input_long_side / max(shape)
    input_size = (int(shape[0] * scale + 0.5), int(shape[1] * scale + 0.5))
    rows: dict = {}
    seconds = {"reference": 0.0, "after": 0.0}
    for kind, mask in point_rule_masks(count, shape):
        t0 = time.perf_counter()
        ref = np.array(reference_center_coords(mask, input_size))
        t1 = time.perf_counter()
        after = np.array(reference_point(mask, input_size))
        seconds["reference"] += t1 - t0
        seconds["after"] += time.perf_counter() - t1
        before = np.array(exact_edt_point(mask, input_size))
        for name in (kind, "ALL"):
            rows.setdefault(name, []).append((float(np.hypot(*(before - ref))), float(np.hypot(*(after - ref)))))
    lines = [f"point* prompt vs the reference's (kornia distance_transform on the whole mask), {count} masks "
             f"{shape[1]}x{shape[0]} -> input {input_size[1]}x{input_size[0]}",
             f"{'masks':<18s} {'n':>4s} {'before: same px':>15s} {'median px':>9s} {'max px':>7s} "
             f"{'after: same px':>14s} {'median px':>9s} {'max px':>7s}"]
    for name in sorted(rows, key=lambda k: k == "ALL"):
        d = rows[name]
        b, a = np.array([x[0] for x in d]), np.array([x[1] for x in d])
        lines.append(f"{name:<18s} {len(d):>4d} {int((b == 0).sum()):>15d} {np.median(b):>9.1f} {b.max():>7.1f} "
                     f"{int((a == 0).sum()):>14d} {np.median(a):>9.1f} {a.max():>7.1f}")
    lines.append(f"(seconds: reference whole-mask {seconds['reference']:.1f}, reference_point {seconds['after']:.1f}; "
                 "before = OpenCV's exact EDT, first maximum; after = reference_point)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.benchmark.fidelity",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("comparison", choices=COMPARISONS,
                        help="precision: fp32 vs --other on the same weights; resize: PIL (ours) vs cv2 bilinear; "
                             "point-rule: the point* prompt against the reference's kornia rule (no model)")
    parser.add_argument("--model", default="shapes", help="model YAML (default: the bundled trained shapes model)")
    parser.add_argument("--other", default="fp16", choices=["fp16", "bf16"], help="precision compared with fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", type=int, default=5, help="point prompts per side (default 5 -> 25 per image)")
    parser.add_argument("--scenes", type=int, default=4, help="shapes-world scenes besides the two photos")
    parser.add_argument("--scene-size", type=image_size, default="640x480", metavar="WxH",
                        help="shapes-world scene size (default 640x480; 320x240 shrinks by 0.8 into the shapes "
                             "model's 256 px input, as a 1280x720 frame does into the published model's 1024)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--masks", type=int, default=200, help="point-rule: generated masks (default 200)")
    parser.add_argument("--point-input", type=int, default=1024, metavar="S",
                        help="point-rule: model input long side (default 1024, the published model's; the "
                             "whole-mask reference costs seconds per mask on a CPU there, several times less at 512)")
    parser.add_argument("--input-sizes", type=int, nargs="*", default=[1024], metavar="S",
                        help="resize: also print the input-pixel difference at these model input sizes "
                             "(default 1024, the published model's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.comparison == "point-rule":
        print(point_rule_table(args.masks, (args.scene_size[1], args.scene_size[0]), args.point_input))
        return 0
    from ovsam_ros.loading import build_predictor

    images = sample_images(args.scenes, args.scene_size)
    if args.comparison == "precision":
        # Two builds: the inference path rewrites a model in place for its precision.
        fp32 = build_predictor(args.model, device=args.device, precision="fp32", text_cache_dir=None)
        other = build_predictor(args.model, device=args.device, precision=args.other, text_cache_dir=None,
                                measure_cpu_fp16=True)  # the comparison itself, not a run: no CPU fallback
        report = compare(fp32, other, images, args.grid,
                         title=f"fp32 vs {args.other} ({args.model}, {args.device}): same prompts, both runs optimised")
    else:
        from ovsam_ros.model.transforms import ImageTransform

        predictor = build_predictor(args.model, device=args.device, precision="fp32", text_cache_dir=None)
        transform = predictor.transform

        def use_cv2(on: bool) -> None:
            transform.resize = "cv2" if on else "pil"

        for name, image in images:  # how far apart the two model inputs are, in uint8 levels
            use_cv2(False)
            pil = transform.resize_image(image).astype(np.int16)
            use_cv2(True)
            diff = np.abs(pil - transform.resize_image(image).astype(np.int16))
            line = (f"{name:<22s} resized {image.shape[1]}x{image.shape[0]} -> {diff.shape[1]}x{diff.shape[0]}: "
                    f"mean |PIL - cv2| {diff.mean():.2f} levels, max {diff.max()}")
            for size in args.input_sizes:  # the same at other model input sizes (no model run)
                pil, cv = ImageTransform(size, resize="pil"), ImageTransform(size, resize="cv2")
                d = np.abs(pil.resize_image(image).astype(np.int16) - cv.resize_image(image).astype(np.int16))
                line += f"; at {size}: mean {d.mean():.2f}, max {d.max()}"
            print(line)
        report = compare(predictor, predictor, images, args.grid, switch=use_cv2,
                         title=f"PIL (ResizeLongestSide) vs cv2 INTER_LINEAR resize ({args.model}, fp32)")
    print(report.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
