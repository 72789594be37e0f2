"""One frame -> labelled instances, with the predictor's everything mode and text queries.

What is kept, in order (each drop is counted under its own name in ``data_report.json``):

1. everything mode's own filters (:class:`ovsam_ros.predictor.EverythingReport`): predicted IoU
   (``--pred-iou``), stability (``--stability``), empty masks, ``--min-area``, NMS duplicates,
   ``--max-instances``;
2. without ``--query``: each mask gets its best vocabulary class; a mask whose best class scores
   below ``--min-score`` is dropped (``below_min_score``), one with no class (no vocabulary, or
   background best) too (``unlabeled``);
3. with ``--query`` (repeatable): only those classes. Each mask's query score is
   :meth:`OVSAMPredictor.query`'s (the phrase competes with the vocabulary's classes and
   background); the mask goes to its best-scoring query, and is dropped below ``--min-score``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ovsam_ros.results import InstanceResult, encode_rle


@dataclass
class LabelSettings:
    points_per_side: int = 16
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.9
    box_nms_thresh: float = 0.7
    min_mask_area: int = 0
    max_instances: int = 100
    min_score: float = 0.0
    queries: List[str] = field(default_factory=list)

    def check(self) -> "LabelSettings":
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_score"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {getattr(self, name)}")
        for name, low in (("points_per_side", 1), ("min_mask_area", 0), ("max_instances", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        cleaned = [q.strip() for q in self.queries]
        if any(not q for q in cleaned):
            raise ValueError("--query must not be empty")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError(f"--query given twice: {sorted(q for q in set(cleaned) if cleaned.count(q) > 1)}")
        self.queries = cleaned
        return self

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _finite(value: float) -> Optional[float]:
    return round(float(value), 6) if np.isfinite(value) else None


class Labeller:
    """Wraps a built :class:`~ovsam_ros.predictor.OVSAMPredictor`; :meth:`label` one RGB frame at a time."""

    def __init__(self, predictor: Any, settings: LabelSettings) -> None:
        from ovsam_ros.predictor import EverythingOptions

        self.predictor = predictor
        self.settings = settings.check()
        self.options = EverythingOptions(
            points_per_side=int(settings.points_per_side), pred_iou_thresh=float(settings.pred_iou_thresh),
            stability_score_thresh=float(settings.stability_score_thresh),
            box_nms_thresh=float(settings.box_nms_thresh), min_mask_area=int(settings.min_mask_area),
            max_instances=int(settings.max_instances))
        vocab = predictor.vocabulary
        if not settings.queries and vocab is None:
            raise ValueError("everything mode needs a vocabulary (--vocabulary, or the model YAML's); "
                             "or give --query classes")

    def class_names(self) -> List[str]:
        """The categories of the dataset, in category-id order (ids 1..N)."""
        if self.settings.queries:
            return list(self.settings.queries)
        return list(self.predictor.vocabulary.classes)

    def label(self, rgb: np.ndarray) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
        """(instances as COCO-ready dicts with a ``category`` name, drop counts of this frame)."""
        p = self.predictor
        p.set_image(rgb, "RGB")
        results = p.everything(self.options)
        drops: Counter = Counter()
        for key, value in p.last_everything_report.to_dict().items():
            drops[key] += int(value)
        kept: List[Tuple[InstanceResult, str, float]] = []
        if self.settings.queries:
            best: Dict[int, Tuple[float, str]] = {}
            for q in self.settings.queries:
                # query() sets each candidate's query_score for THIS phrase; read it before the next one
                for r in p.query(q, candidates=results, max_instances=len(results) or 1, min_score=0.0):
                    score = float(r.query_score)
                    if id(r) not in best or score > best[id(r)][0]:
                        best[id(r)] = (score, q)
            for r in results:
                score, q = best.get(id(r), (0.0, ""))
                if score < self.settings.min_score or not q:
                    drops["below_min_score"] += 1
                    continue
                kept.append((r, q, score))
        else:
            for r in results:
                top = r.labels[0] if r.labels else None
                if top is None or top.class_index < 0 or not top.name:
                    drops["unlabeled"] += 1
                    continue
                if top.score < self.settings.min_score:
                    drops["below_min_score"] += 1
                    continue
                kept.append((r, top.name, float(top.score)))
        instances = []
        for r, name, score in kept:
            x0, y0, x1, y1 = (int(v) for v in r.box)
            instances.append({
                "category": name, "segmentation": encode_rle(r.mask), "area": int(r.area),
                "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0, "score": round(score, 6),
                "predicted_iou": _finite(r.predicted_iou), "stability_score": _finite(r.stability_score),
            })
        drops["labelled_instances"] = len(instances)
        return instances, dict(drops)
