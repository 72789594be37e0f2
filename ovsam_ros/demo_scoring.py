"""Scores of the demo against the shapes world's ground truth (pure NumPy, no ROS).

The demo camera publishes scenes of the shapes world with their exact instance
masks; the prompt source prompts every object by its box or by one interior
point (the evaluation protocol's distance-transform point) and sends text queries
naming a class in the scene. A :class:`Scoreboard` turns each result into per-object
lines (mask IoU against the truth, label right or wrong) and a summary: mean IoU per
prompt kind, label accuracy on base and novel classes per prompt kind, the text-query hit rate
(best mask IoU >= 0.5 with an object of the queried class) and latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: IoU at which a text query's best mask counts as finding the object (as in ``ovsam-evaluate``).
QUERY_HIT_IOU = 0.5

#: Everything-mode settings the world demo's text queries pick candidates with (node
#: parameters of ``ovsam demo``; the demo model's recipe and tests score text queries with the
#: same). The trained single-mask token's IoU / stability estimates of the small shapes model
#: sit lower than SAM's (0.8 / 0.9 keep no mask); a 12x12 grid covers every object of the world.
WORLD_EVERYTHING = {"points_per_side": 12, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8,
                    "min_mask_area": 64}


@dataclass
class TruthObject:
    name: str
    split: str  # base | novel
    mask: np.ndarray  # bool [H, W]

    @property
    def box(self) -> List[float]:
        ys, xs = np.nonzero(self.mask)
        return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]

    @property
    def point(self) -> List[float]:
        """The pixel farthest from the mask boundary (the paper's point prompt)."""
        import cv2

        dist = cv2.distanceTransform(np.pad(self.mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return [float(x) + 0.5, float(y) + 0.5]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass
class Scoreboard:
    ious: Dict[str, List[float]] = field(default_factory=lambda: {"box": [], "point": []})
    # label verdicts per (prompt kind, split): a point prompt's mask is less certain than a box's,
    # so the two are reported apart (ovsam-evaluate's box_accuracy_* / point_accuracy_*)
    labels: Dict[Tuple[str, str], List[bool]] = field(
        default_factory=lambda: {(k, s): [] for k in ("box", "point") for s in ("base", "novel")})
    queries: Dict[str, List[bool]] = field(default_factory=lambda: {"base": [], "novel": []})
    latencies_ms: List[float] = field(default_factory=list)

    def score_prompts(self, kind: str, truth: Sequence[TruthObject],
                      results: Sequence[Tuple[int, np.ndarray, str]]) -> List[str]:
        """``results``: (prompt index, mask, label) per instance. Returns one line per object."""
        by_prompt = {i: (m, label) for i, m, label in results}
        lines = []
        for i, obj in enumerate(truth):
            if i not in by_prompt:
                self.ious[kind].append(0.0)
                self.labels[kind, obj.split].append(False)
                lines.append(f"    {obj.name:16s} {obj.split:5s}  no result")
                continue
            mask, label = by_prompt[i]
            iou = mask_iou(mask, obj.mask)
            ok = label == obj.name
            self.ious[kind].append(iou)
            self.labels[kind, obj.split].append(ok)
            lines.append(f"    {obj.name:16s} {obj.split:5s}  IoU {iou:.2f}  label {'OK   ' if ok else 'WRONG'}"
                         + ("" if ok else f" (said {label or '-'!r})"))
        return lines

    def score_query(self, query: str, truth: Sequence[TruthObject], masks: Sequence[np.ndarray]) -> List[str]:
        """The best (first) mask of a text query against the objects of that class."""
        targets = [o for o in truth if o.name == query]
        if not targets:
            return [f"    query {query!r}: not in this scene (not scored)"]
        best = max((mask_iou(masks[0], o.mask) for o in targets), default=0.0) if masks else 0.0
        hit = best >= QUERY_HIT_IOU
        self.queries[targets[0].split].append(hit)
        return [f"    query {query!r} ({targets[0].split}): best mask IoU {best:.2f} -> {'FOUND' if hit else 'MISSED'}"]

    def summary(self) -> List[str]:
        def pct(values: Sequence[bool]) -> str:
            return f"{100 * np.mean(values):5.1f}% ({int(np.sum(values))}/{len(values)})" if len(values) else "   -  "

        def mean(values: Sequence[float]) -> str:
            return f"{np.mean(values):.3f} (n={len(values)})" if len(values) else "-"

        lat = sorted(self.latencies_ms)
        return [
            "score against the ground truth (held-out scenes of the shapes world):",
            f"  mask IoU, box prompts     {mean(self.ious['box'])}",
            f"  mask IoU, point prompts   {mean(self.ious['point'])}",
            f"  label accuracy, base      box {pct(self.labels['box', 'base'])}   point {pct(self.labels['point', 'base'])}",
            f"  label accuracy, novel     box {pct(self.labels['box', 'novel'])}   point {pct(self.labels['point', 'novel'])}"
            "   (colour-shape pairs never trained; chance ~3%)",
            f"  text query hit, base      {pct(self.queries['base'])}",
            f"  text query hit, novel     {pct(self.queries['novel'])}",
            f"  latency (stamp -> result) median {lat[len(lat) // 2]:.0f} ms" if lat else "  latency -",
            "  (a few dozen objects: rates swing by several points from run to run of other scenes; the model's",
            "   held-out metrics over 100 scenes: ovsam_ros/data/models/shapes_metrics.json, README)",
        ]

    def as_dict(self) -> Dict[str, Optional[float]]:
        def m(values: Sequence[float]) -> Optional[float]:
            return float(np.mean(values)) if len(values) else None

        out = {"iou_box": m(self.ious["box"]), "iou_point": m(self.ious["point"]),
               "query_hit_base": m(self.queries["base"]), "query_hit_novel": m(self.queries["novel"])}
        for (kind, split), verdicts in self.labels.items():
            out[f"{kind}_accuracy_{split}"] = m(verdicts)
        return out
