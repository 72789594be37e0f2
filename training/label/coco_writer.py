"""Labelled frames -> one COCO instances dict that ``training.stage2`` reads as it is.

Image ids follow the plan (frame order of the inputs), annotation ids follow the images, so
the file is the same whatever number of processes labelled it. Categories are every class
the labeller could give (ids 1..N in vocabulary / ``--query`` order), each with ``split:
base``: the labels are the new dataset's training classes, whatever split the labelling
model's vocabulary gave them (stage 2 trains on ``base``). With ``data.vocabulary: null``
stage 2 takes these categories as its vocabulary, so no category is unknown to it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence

FORMAT = "ovsam_ros.labels/1"


def categories(names: Sequence[str]) -> List[Dict[str, Any]]:
    return [{"id": i + 1, "name": n, "split": "base"} for i, n in enumerate(names)]


def build_coco(records: Iterable[Dict[str, Any]], class_names: Sequence[str], info: Dict[str, Any]) -> Dict[str, Any]:
    """``records``: labelled frames in plan order, each with ``file``, ``width``, ``height``,
    source fields and ``instances`` (dicts with a ``category`` name)."""
    ids = {n: i + 1 for i, n in enumerate(class_names)}
    images, annotations = [], []
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": rec["file"], "width": rec["width"], "height": rec["height"],
                       "source": rec["source"], "topic": rec["topic"], "stamp_ns": rec["stamp_ns"],
                       "bag_time_ns": rec["bag_time_ns"], "frame_id": rec["frame_id"]})
        for inst in rec["instances"]:
            ann = {k: v for k, v in inst.items() if k != "category"}
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": ids[inst["category"]], **ann})
    return {"info": {"format": FORMAT, **info}, "images": images, "annotations": annotations,
            "categories": categories(class_names)}
