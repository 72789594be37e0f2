"""Bytes on the wire and milliseconds per frame for each mask encoding and for the instance-ID image.

    python -m ovsam_ros.benchmark.mask_encoding                 # 720p and 1080p, 20 and 100 instances (~10 s)
    python -m ovsam_ros.benchmark.mask_encoding --sizes 1280x720 --instances 20 --json mask_encoding.json

Masks: random smooth blobs (12-vertex polygons, a third with a hole), boxes 5-40% of the
frame's width and height, as the predictor hands them over (cropped to their box). Per
frame size, instance count and encoding (``coco_rle``, ``png``, ``raw``; ``LabeledMask.mask_encoding``):

* ``kB``: the serialized ``LabeledMaskArray`` (CDR, what DDS carries; labels and the other
  fields included);
* ``build``: building the message from the predictor's crops (what the node pays per frame,
  encoding included); ``ser`` / ``deser``: rclpy's (de)serialization;
* ``decode``: a consumer's :func:`~ovsam_ros.ros.mask_codec.decode_mask_crop` of every instance
  (the paste into a full frame costs the same for every encoding and is left out).

The instance-ID rows time ``~/instance_ids`` as a raw mono16 ``Image`` and as a 16-bit PNG
``CompressedImage`` (build = drawing the ID image + encoding; decode = numpy view / cv2.imdecode).
The last table adds masks and ID image for the old defaults (raw masks + raw ID image) and the
new ones. Medians over ``--repeats``; every decode is checked bit for bit against the input.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ovsam_ros.cli_types import image_size

from .report import write_json

TARGET_KB = 100.0  # issue #23: masks + instance ids per 720p frame with 20 instances, default settings


def random_results(width: int, height: int, count: int, seed: int = 0, noise: float = 0.0) -> list:
    """``count`` InstanceResults with crop + box (as the predictor returns them) of smooth random blobs;
    ``noise``: fraction of each box's pixels flipped (speckle, as an untrained model's masks)."""
    import cv2

    from ovsam_ros.results import InstanceResult, LabelScore

    rng = np.random.default_rng(seed)
    results = []
    for i in range(count):
        bw = max(2, int(rng.uniform(0.05, 0.4) * width))
        bh = max(2, int(rng.uniform(0.05, 0.4) * height))
        angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
        radius = rng.uniform(0.6, 1.0, 12)
        pts = np.stack([(bw - 1) / 2 * (1 + radius * np.cos(angles)), (bh - 1) / 2 * (1 + radius * np.sin(angles))], 1)
        crop = np.zeros((bh, bw), np.uint8)
        cv2.fillPoly(crop, [np.round(pts).astype(np.int32)], 1)
        if i % 3 == 0:
            cv2.ellipse(crop, (bw // 2, bh // 2), (max(1, bw // 8), max(1, bh // 8)), 0, 0, 360, 0, -1)
        crop = crop.astype(bool)
        if noise > 0:
            crop ^= rng.random(crop.shape) < noise
        ys, xs = np.nonzero(crop)  # tight box, as the predictor's
        crop = crop[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        x0, y0 = int(rng.integers(0, width - crop.shape[1] + 1)), int(rng.integers(0, height - crop.shape[0] + 1))
        box = (x0, y0, x0 + crop.shape[1], y0 + crop.shape[0])
        results.append(InstanceResult(mask=None, crop=crop, image_size=(height, width), box=box, predicted_iou=0.9,
                                      stability_score=0.95, labels=[LabelScore(k, f"class {k}", 0.5 / (k + 1))
                                                                    for k in range(3)]))
    return results


def _median_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def measure_masks(results: list, hw: tuple[int, int], encoding: str, repeats: int) -> dict[str, Any]:
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    from ovsam_ros.msg import LabeledMaskArray
    from ovsam_ros.ros.mask_codec import decode_mask_crop
    from ovsam_ros.ros.outputs import labeled_mask_array

    header = Header(frame_id="camera")
    build_ms, msg = _median_ms(lambda: labeled_mask_array(results, header, hw, mode="everything",
                                                          mask_encoding=encoding), repeats)
    ser_ms, data = _median_ms(lambda: serialize_message(msg), repeats)
    deser_ms, received = _median_ms(lambda: deserialize_message(data, LabeledMaskArray), repeats)
    decode_ms, crops = _median_ms(lambda: [decode_mask_crop(m) for m in received.instances], repeats)
    for crop, r in zip(crops, results):
        if not np.array_equal(crop, r.crop):
            raise AssertionError(f"{encoding}: a decoded mask differs from the input")
    return {"bytes": len(data), "build_ms": build_ms, "serialize_ms": ser_ms, "deserialize_ms": deser_ms,
            "decode_ms": decode_ms}


def measure_instance_ids(results: list, hw: tuple[int, int], form: str, repeats: int) -> dict[str, Any]:
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    from ovsam_ros.ros import outputs
    from ovsam_ros.ros.image_conversion import compressed_to_numpy, image_to_numpy

    header = Header(frame_id="camera")
    if form == "raw":
        build = lambda: outputs.instance_ids_msg(results, header, hw)  # noqa: E731
        decode = lambda m: image_to_numpy(m, copy=False)  # noqa: E731
    else:
        build = lambda: outputs.instance_ids_png_msg(results, header, hw)  # noqa: E731
        decode = lambda m: compressed_to_numpy(m)[0]  # noqa: E731
    build_ms, msg = _median_ms(build, repeats)
    ser_ms, data = _median_ms(lambda: serialize_message(msg), repeats)
    deser_ms, received = _median_ms(lambda: deserialize_message(data, type(msg)), repeats)
    decode_ms, pixels = _median_ms(lambda: decode(received), repeats)
    if not np.array_equal(pixels, outputs.instance_id_pixels(results, hw)):
        raise AssertionError(f"instance ids ({form}): the decoded image differs from the input")
    return {"bytes": len(data), "build_ms": build_ms, "serialize_ms": ser_ms, "deserialize_ms": deser_ms,
            "decode_ms": decode_ms}


def run(sizes: Sequence[tuple[int, int]], counts: Sequence[int], repeats: int, seed: int,
        noise: float = 0.0) -> dict[str, Any]:
    from ovsam_ros.ros.mask_codec import MASK_ENCODINGS

    rows = []
    for w, h in sizes:
        for n in counts:
            results = random_results(w, h, n, seed, noise)
            for encoding in MASK_ENCODINGS:
                rows.append({"size": f"{w}x{h}", "instances": n, "output": "masks", "form": encoding,
                             **measure_masks(results, (h, w), encoding, repeats)})
            for form in ("raw", "png"):
                rows.append({"size": f"{w}x{h}", "instances": n, "output": "instance_ids", "form": form,
                             **measure_instance_ids(results, (h, w), form, repeats)})
    return {"rows": rows, "totals": totals(rows)}


def totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Masks + instance ids per frame for the settings that matter (old defaults first)."""
    from ovsam_ros.ros.mask_codec import DEFAULT_MASK_ENCODING

    settings = [("old defaults: raw masks + raw ID image", "raw", "raw"),
                (f"new defaults: {DEFAULT_MASK_ENCODING} masks, ID image off", DEFAULT_MASK_ENCODING, None),
                (f"{DEFAULT_MASK_ENCODING} masks + PNG ID image", DEFAULT_MASK_ENCODING, "png")]
    out = []
    for size, n in dict.fromkeys((r["size"], r["instances"]) for r in rows):
        pick = {(r["output"], r["form"]): r for r in rows if (r["size"], r["instances"]) == (size, n)}
        for name, mask_form, ids_form in settings:
            parts = [pick[("masks", mask_form)]] + ([pick[("instance_ids", ids_form)]] if ids_form else [])
            out.append({"size": size, "instances": n, "setting": name,
                        "bytes": sum(p["bytes"] for p in parts),
                        "node_ms": sum(p["build_ms"] + p["serialize_ms"] for p in parts),
                        "consumer_ms": sum(p["deserialize_ms"] + p["decode_ms"] for p in parts)})
    return out


def render(report: dict[str, Any]) -> str:
    lines = [f"command: {report['command']}", "",
             "| frame | instances | output | form | kB/frame | build ms | ser ms | deser ms | decode ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['size']} | {r['instances']} | {r['output']} | {r['form']} | {r['bytes'] / 1e3:.1f} "
                     f"| {r['build_ms']:.2f} | {r['serialize_ms']:.2f} | {r['deserialize_ms']:.2f} "
                     f"| {r['decode_ms']:.2f} |")
    lines += ["", "| frame | instances | masks + instance ids | kB/frame | node ms (build + ser) "
                  "| consumer ms (deser + decode) |", "|---|---|---|---|---|---|"]
    for t in report["totals"]:
        lines.append(f"| {t['size']} | {t['instances']} | {t['setting']} | {t['bytes'] / 1e3:.1f} "
                     f"| {t['node_ms']:.2f} | {t['consumer_ms']:.2f} |")
    for target in report["targets"]:
        lines.append(f"\ntarget {target['name']}: {target['target']}; measured {target['measured_kb']:.1f} kB "
                     f"-> {'PASS' if target['pass'] else 'MISS'}")
    return "\n".join(lines)


def targets(report_totals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in report_totals:
        if (t["size"], t["instances"]) == ("1280x720", 20) and t["setting"].startswith("new defaults"):
            kb = t["bytes"] / 1e3
            out.append({"name": "wire_720p_20", "target": f"<= {TARGET_KB:.0f} kB masks + instance ids per frame "
                        "(default settings)", "measured_kb": kb, "pass": kb <= TARGET_KB})
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.benchmark.mask_encoding",
                                     description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=image_size, nargs="+", default=[(1280, 720), (1920, 1080)], metavar="WxH")
    parser.add_argument("--instances", type=int, nargs="+", default=[20, 100], metavar="N")
    parser.add_argument("--repeats", type=int, default=9, help="timed repetitions per row (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.0,
                        help="flip this fraction of each mask box's pixels (speckled masks, as a random-weight "
                             "model gives; RLE's worst case). Default 0: smooth masks, as a trained model gives")
    parser.add_argument("--json", type=Path, default=None)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in args.instances):
        parser.error("--repeats and --instances must be >= 1")
    if not 0.0 <= args.noise <= 1.0:
        parser.error("--noise must be within 0..1")
    report = run(args.sizes, args.instances, args.repeats, args.seed, args.noise)
    report["noise"] = args.noise
    report["command"] = shlex.join(["python", "-m", "ovsam_ros.benchmark.mask_encoding", *argv])
    report["targets"] = targets(report["totals"])
    print(render(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
