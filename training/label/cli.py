"""``ovsam-label`` / ``ovsam label``: arguments -> :class:`~training.label.runner.LabelJob`.

    ovsam-label BAG [BAG|FOLDER ...] --topic /camera/image_raw --rate 2 --model shapes --out data/labels
    torchrun --nproc_per_node=8 -m training.label BAGS... --topic /cam --model rn50x16 --out /shared/labels
    ovsam-train-stage2 --config stage2_coco_rn50x16 --set data.annotations=data/labels/labels.json \\
        data.images=data/labels/images data.vocabulary=null
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from ovsam_ros.cli_types import number, positive_float
from ovsam_ros.image_input import INPUT_BITS_MAX, INPUT_BITS_MIN


def label_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovsam-label",
        description="Auto-label recorded bags (sqlite3 / MCAP, cut ones recovered) and image folders into a COCO "
                    "dataset stage 2 trains on (labels.json + images/), with manifest.json, data_report.json and "
                    "review contact sheets. Runs as one process or under torchrun (one process per GPU); a rerun "
                    "with the same arguments finishes an interrupted run without redoing finished shards.")
    p.add_argument("inputs", nargs="+", help="rosbag2 folders / .mcap / .db3 files, and image folders")
    p.add_argument("--out", required=True, help="output folder (new or empty; or the same run's, to resume)")
    p.add_argument("--model", default="shapes", help="model YAML (path or bundled name); default: shapes")
    p.add_argument("--topic", action="append", default=[], help="image topic of the bags (repeatable)")
    p.add_argument("--rate", type=float, default=None, help="at most this many frames per second per topic")
    p.add_argument("--start", type=float, default=None, help="seconds after the bag start")
    p.add_argument("--end", type=float, default=None, help="seconds after the bag start")
    p.add_argument("--vocabulary", default=None, help="classes for everything mode (default: the model YAML's)")
    p.add_argument("--query", action="append", default=[],
                   help="text query (repeatable): label only these classes, each mask with its best query")
    p.add_argument("--pred-iou", type=float, default=0.8, help="predicted-IoU threshold (SAM: 0.88; default 0.8)")
    p.add_argument("--stability", type=float, default=0.9, help="stability-score threshold (default 0.9)")
    p.add_argument("--min-score", type=float, default=0.0, help="minimum class (or query) score (default 0)")
    p.add_argument("--min-area", type=int, default=0, help="drop masks of this many pixels or fewer")
    p.add_argument("--nms", type=float, default=0.7, help="box NMS IoU threshold (default 0.7)")
    p.add_argument("--points-per-side", type=int, default=16, help="everything-mode point grid (default 16)")
    p.add_argument("--max-instances", type=int, default=100, help="per frame (default 100)")
    p.add_argument("--shard-size", type=int, default=16, help="frames per shard (the unit of resume; default 16)")
    p.add_argument("--input-bits", type=number(int, min=INPUT_BITS_MIN, max=INPUT_BITS_MAX), default=None,
                   help="bits of 16-bit frames (mono16, rgb16, 16-bit PNG / TIFF) that hold the picture: 16 (default), "
                        "12 or 10 for machine-vision cameras (the node's input_bits). Given, it also labels mono16 "
                        "topics (refused without it: often IR / range data). Frames are written as the 8-bit "
                        "PNGs they were labelled on")
    p.add_argument("--float-max", type=positive_float, default=None,
                   help="float frames (32-bit TIFF): the value shown as white (default 1.0; 255 for 0..255 data)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK when CUDA is there) | cpu | cuda")
    p.add_argument("--review-sample", type=int, default=16,
                   help="labelled frames per source on the review contact sheets (random, seeded; default 16)")
    p.add_argument("--review-every", type=int, default=0,
                   help="instead: every N-th labelled frame of each source on the sheets (0: off)")
    p.add_argument("--seed", type=int, default=0, help="review sample seed")
    p.add_argument("--overwrite", action="store_true", help="delete --out first")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--wait-timeout", type=float, default=1800.0,
                   help="under torchrun: rank 0 gives up (exit 2, finished shards kept) when no other rank finishes "
                        "a shard for this many seconds (default 1800; 0 waits forever)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = label_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from training.data.common import DataError

    from .labeller import LabelSettings
    from .runner import LabelJob, run

    try:
        settings = LabelSettings(points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou,
                                 stability_score_thresh=args.stability, box_nms_thresh=args.nms,
                                 min_mask_area=args.min_area, max_instances=args.max_instances,
                                 min_score=args.min_score, queries=list(args.query)).check()
        job = LabelJob(inputs=list(args.inputs), out=args.out, model=args.model, topics=list(args.topic),
                       rate=args.rate, start=args.start, end=args.end, vocabulary=args.vocabulary, settings=settings,
                       shard_size=args.shard_size, device=args.device, overwrite=args.overwrite,
                       review_sample=args.review_sample, review_every=args.review_every, seed=args.seed,
                       progress=not args.no_progress, wait_timeout_s=args.wait_timeout,
                       input_bits=args.input_bits, float_max=args.float_max)
        summary = run(job)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"ovsam-label: error: {err}", file=sys.stderr)
        return 2
    if "per_rank" in summary:  # rank 0
        for r in summary["per_rank"]:
            print(f"rank {r['rank']}: {r['frames']} frame(s) in {r['seconds']:.1f} s"
                  + (f" ({r['images_per_s']:.2f} images/s)" if r["images_per_s"] else ""))
        print(f"total: {summary['frames_labelled_this_run']} frame(s) this run"
              + (f", {summary['images_per_s_total']:.2f} images/s" if summary["images_per_s_total"] else "")
              + f"; dataset: {summary['images']} image(s), {summary['annotations']} instance(s)")
        out = args.out.rstrip("/")
        report = json.loads(open(f"{out}/data_report.json", encoding="utf-8").read())
        print(f"dropped: {report['instances_dropped']}; frames skipped: {report['frames_skipped']}")
        print(f"labels -> {out}/labels.json; review -> {out}/review/ ({len(summary['review_sheets'])} sheet(s))")
        print(f"stage 2: --set data.annotations={out}/labels.json data.images={out}/images data.vocabulary=null")
    return 0
