"""Labels scored against a ground truth (the shapes world's exact masks): mask IoU and label accuracy.

Each kept instance is matched to the ground-truth object of its image it overlaps most (mask
IoU); ``matched`` are those with IoU >= ``iou_match``. Reported: the mean IoU of every kept
instance's best match (0 when it overlaps nothing), the share matched (precision), the share of
ground-truth objects some kept instance matched (recall), and among matched instances the share
whose class is the ground truth's (label accuracy).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ovsam_ros.results import decode_rle


def score_labels(coco: Dict[str, Any], truth: Dict[Any, Sequence[Tuple[str, np.ndarray]]], key: str = "stamp_ns",
                 iou_match: float = 0.5) -> Dict[str, Any]:
    """``truth``: per image (by ``coco['images'][i][key]``) a list of (class name, bool mask)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    ious, correct, matched, found, gt_total = [], 0, 0, 0, 0
    for img in coco["images"]:
        gt = truth[img[key]]
        gt_total += len(gt)
        hit = [False] * len(gt)
        for a in by_image.get(img["id"], []):
            mask = decode_rle(a["segmentation"])
            best, best_j = 0.0, -1
            for j, (_, g) in enumerate(gt):
                union = np.logical_or(mask, g).sum()
                iou = float(np.logical_and(mask, g).sum() / union) if union else 0.0
                if iou > best:
                    best, best_j = iou, j
            ious.append(best)
            if best >= iou_match:
                matched += 1
                hit[best_j] = True
                correct += int(names[a["category_id"]] == gt[best_j][0])
        found += sum(hit)
    kept = len(ious)
    return {"images": len(coco["images"]), "instances": kept, "gt_objects": gt_total,
            "mean_best_iou": round(float(np.mean(ious)), 4) if ious else None,
            "precision_at_iou": round(matched / kept, 4) if kept else None,
            "recall_at_iou": round(found / gt_total, 4) if gt_total else None,
            "label_accuracy": round(correct / matched, 4) if matched else None, "iou_match": iou_match}
