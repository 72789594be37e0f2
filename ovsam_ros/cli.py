"""`ovsam`: segment and name objects in images from the command line.

    ovsam segment IMAGE --point 120,80 --box 10,20,200,180 --out result.json --overlay out.png
    ovsam everything IMAGE --vocab lvis --overlay all.png
    ovsam query IMAGE "red cup"
    ovsam demo

Every sub-command takes --model (a YAML in config/models/ or a path; default: shapes,
the bundled demo model that knows only the synthetic shapes world) and prints a table of what it
found. JSON output holds COCO RLE masks in the original image frame.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ovsam_ros.cli_types import non_negative_int, number, positive_float, positive_int, unit_interval
from ovsam_ros.prompt_parsing import parse_box as _box
from ovsam_ros.prompt_parsing import parse_object
from ovsam_ros.prompt_parsing import parse_point as _point
from ovsam_ros.prompts import Prompt, PromptError
from ovsam_ros.resources import SAMPLES_DIR  # package data: travels with the code

log = logging.getLogger("ovsam")


# ----------------------------------------------------------------------------- arguments
def _add_common(parser: argparse.ArgumentParser, image: bool = True) -> None:
    if image:
        parser.add_argument("image", help="image file (PNG, JPEG, 8/16-bit, grey or colour)")
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="shapes",
                       help="model YAML: a name in config/models/ (shapes, tiny, rn50x16, convnext_large) or a path, "
                            "or a training run's model.pt (default: shapes, the bundled demo model trained on the "
                            "synthetic shapes world only; tiny: random weights)")
    group.add_argument("--vocab", default=None,
                       help="coco | lvis | imagenet21k | a .txt/.json file | 'cup, door handle' (default: the model YAML's; "
                            "without one, the classes a stage-2 checkpoint was trained on)")
    group.add_argument("--synonyms", default=None, choices=["all", "names"],
                       help="which texts name a class: every synonym the vocabulary lists (lifts the YAML's max_synonyms "
                            "cap), or the class name alone (the reference's LVIS text); default: the model YAML's")
    group.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (default: the model YAML's)")
    group.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"], help="default: the model YAML's")
    group.add_argument("--top-k", type=positive_int, default=None, help="labels reported per instance (default: 5)")
    group.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads for PyTorch (default: PyTorch's choice; 1-2 is fastest for the tiny model)")
    group.add_argument("--baseline", choices=["none", "image-crop", "feature-crop"], default="none",
                       help="re-label the masks with a paper baseline instead of CLIP2SAM")
    if image:
        pixels = parser.add_argument_group("input range (the same rule as the node and training)")
        pixels.add_argument("--input-bits", type=number(int, min=8, max=16), default=16,
                            help="bits of 16-bit images that hold data: 16 (default), 12 or 10 for machine-vision "
                                 "cameras (0..2^N-1 is black..white; a 12-bit TIFF read as 16-bit looks black)")
        pixels.add_argument("--float-max", type=positive_float, default=1.0,
                            help="float images: the value shown as white (default 1.0; 255 for 0..255 float data)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="write results as JSON (COCO RLE masks)")
    out.add_argument("--overlay", type=Path, help="write an overlay image (PNG/JPEG)")
    out.add_argument("-q", "--quiet", action="store_true", help="no table, only errors")


# EverythingOptions field -> the flag that sets it (EverythingReport.explain names the flags).
CLI_FLAGS = {"pred_iou_thresh": "--iou-thresh", "stability_score_thresh": "--stability-thresh",
             "box_nms_thresh": "--nms-thresh", "min_mask_area": "--min-area", "max_instances": "--max-instances"}


def _add_everything_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("everything mode")
    group.add_argument("--points-per-side", type=number(int, min=1, max=256), default=16, help="point grid size (default 16 -> 256 prompts)")
    group.add_argument("--points-per-batch", type=positive_int, default=64, help="prompts per decoder call (memory vs speed)")
    group.add_argument("--iou-thresh", type=unit_interval, default=0.8, help="drop masks with lower predicted IoU")
    group.add_argument("--stability-thresh", type=unit_interval, default=0.9, help="drop masks with lower stability score")
    group.add_argument("--nms-thresh", type=unit_interval, default=0.7, help="box IoU above which duplicates are removed")
    group.add_argument("--min-area", type=non_negative_int, default=0, help="drop masks with fewer pixels")
    group.add_argument("--max-instances", type=positive_int, default=100, help="keep at most this many, best first")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ovsam",
        description="Open-Vocabulary SAM: promptable segmentation that also names every mask.",
        epilog="Run 'ovsam COMMAND --help' for the options of a command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment the objects under points/boxes and name them",
                         description="One instance per object prompt. Coordinates are original-image pixels.")
    _add_common(seg)
    prompts = seg.add_argument_group("prompts (repeatable; each is one object)")
    prompts.add_argument("--point", dest="prompts", action="append", type=_point, default=[], metavar="X,Y",
                         help="a positive click")
    prompts.add_argument("--box", dest="prompts", action="append", type=_box, metavar="X0,Y0,X1,Y1",
                         help="a box around the object")
    prompts.add_argument("--object", dest="prompts", action="append", type=parse_object, metavar="SPEC",
                         help="several cues for ONE object: 'p:X,Y n:X,Y b:X0,Y0,X1,Y1' "
                              "(p positive point, n negative point, b box)")
    seg.add_argument("--multimask", action="store_true",
                     help="let the decoder propose 3 masks per prompt and keep the best (ambiguous single clicks)")

    every = sub.add_parser("everything", help="find and name every object (point-grid prompts)")
    _add_common(every)
    _add_everything_options(every)

    query = sub.add_parser("query", help="find the objects matching a phrase ('red cup')")
    _add_common(query)
    query.add_argument("text", help="what to look for")
    query.add_argument("--top", type=positive_int, default=3, help="return at most this many matches")
    query.add_argument("--min-score", type=unit_interval, default=0.0, help="drop matches scoring below this (0..1)")
    _add_everything_options(query)

    demo = sub.add_parser("demo", help="run the ROS 2 node on the bundled images: prompts, text query, everything",
                          description="The main job on an embedded default: no camera, no weights needed. "
                                      "Starts the OVSAM node, a sample camera, a prompt source and a listener "
                                      "in one process (rclpy, loopback only) and prints one line per result. "
                                      "--offline runs the predictor alone, without ROS.")
    _add_common(demo, image=False)
    demo.set_defaults(out=None, overlay=None)
    demo.add_argument("--output-dir", type=Path, default=Path("outputs/demo"), help="where overlays (and JSON) go")
    demo.add_argument("--offline", action="store_true", help="predictor only, no ROS (writes JSON too)")
    demo.add_argument("--frames", type=positive_int, default=30, help="camera frames to process (ROS demo; default 30: on world scenes 10 each of box, point and text frames)")
    demo.add_argument("--rate", type=positive_float, default=2.0, help="camera frames per second at most (default 2)")
    demo.add_argument("--robot-frames", type=int, default=12, metavar="N",
                      help="then N frames of an RGB-D camera with a detector stand-in answering 100 ms late: "
                           "track ids and 3D centroids (ROS demo; 0 = skip; default 12)")
    demo.add_argument("--scenes", choices=["world", "samples"], default="world",
                      help="world: new scenes of the shapes world with ground truth; every result is scored "
                           "(IoU, label, text-query hit) (default); samples: the bundled photos (unscored)")
    from ovsam_ros.benchmark.cli import add_arguments as add_bench_arguments
    from ovsam_ros.export.cli import add_arguments as add_export_arguments

    bench = sub.add_parser("bench", help="latency, memory, FLOPs and params per stage, vs the two-backbone baselines",
                           description="Per-stage median/p90 latency, peak memory, FLOPs and parameters of OVSAM and "
                                       "of the SAM + CLIP baselines (random weights; see docs/benchmarks.md).")
    add_bench_arguments(bench)
    export = sub.add_parser("export", help="ONNX graphs for ONNX Runtime / TensorRT (see docs/jetson.md)",
                            description="Export the image encoder and the prompt decoders to ONNX, check them "
                                        "against PyTorch and write a model YAML that runs them.")
    add_export_arguments(export)
    from ovsam_ros.weights.cli import add_arguments as add_weights_arguments

    weights = sub.add_parser("weights", help="download / check the published weight files of a model (rn50x16)",
                             description="ovsam weights download --model rn50x16: every weight file the model YAML "
                                         "names, from its publisher or a mirror (resume, sha256, atomic rename). "
                                         "ovsam weights check --model rn50x16: what is there and what is missing.")
    add_weights_arguments(weights)
    # Forwarded whole to ovsam-label (main() dispatches it before parsing); listed here for --help.
    label = sub.add_parser("label", add_help=False, help="auto-label bags / image folders into a COCO dataset "
                           "for stage 2 (same as ovsam-label; `ovsam label --help`)")
    label.add_argument("label_args", nargs=argparse.REMAINDER)
    for command in sub.choices.values():  # `ovsam segment -v` as well as `ovsam -v segment`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="debug logging (also accepted before the command)")
    return parser


# ----------------------------------------------------------------------------- running
def read_image(path: Path) -> np.ndarray:
    """Read any image file as an RGB (or grey) array as stored (16-bit and float data kept),
    upright: the file's EXIF orientation is applied (a phone photo is not segmented sideways)."""
    from ovsam_ros.image_input import decode_image_file

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = decode_image_file(path)
    if image is None:
        raise ValueError(f"could not decode image {path} (not an image, or corrupt)")
    return image


def load_image(path: Path, args: argparse.Namespace) -> np.ndarray:
    """:func:`read_image` converted to the model's uint8 RGB by the package's range rule
    (--input-bits, --float-max); a mis-scaled image is warned about."""
    from ovsam_ros.image_input import to_uint8_rgb

    return to_uint8_rgb(read_image(path), input_bits=getattr(args, "input_bits", 16),
                        float_max=getattr(args, "float_max", 1.0), source=str(path))


def _make_predictor(args: argparse.Namespace):
    import torch

    from ovsam_ros.loading import build_predictor

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    return build_predictor(args.model, vocabulary=args.vocab, device=args.device,
                           precision=args.precision, top_k=args.top_k,
                           synonyms=args.synonyms)


def _everything_options(args: argparse.Namespace):
    from ovsam_ros.predictor import EverythingOptions

    return EverythingOptions(
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.iou_thresh, stability_score_thresh=args.stability_thresh,
        box_nms_thresh=args.nms_thresh, min_mask_area=args.min_area, max_instances=args.max_instances,
    )


def print_table(results, title: str, file=None, empty=()) -> None:
    """``results``: the objects; ``empty``: results whose mask has no pixel (listed by prompt, not as objects)."""
    file = file or sys.stdout
    print(title, file=file)
    for r in empty:
        print(f"  prompt {r.prompt_index}: empty mask (no pixel): not an object", file=file)
    if not results:
        print("  (no instances)", file=file)
        return
    # Text mode: the query's own score first (a mask listed for "blue square" may be a purple cross
    # with label score 1.00 and query score 0.00: the label columns alone would read as a match).
    query = any(r.query_score is not None for r in results)
    head = f" {'query':>6}" if query else ""
    print(f"  {'#':>3} {'prompt':>6}{head} {'label':<24} {'score':>6} {'IoU':>6} {'area':>8}  box (x0,y0,x1,y1)  "
          "runner-up", file=file)
    for i, r in enumerate(results):
        best = r.labels[0] if r.labels else None
        second = f"{r.labels[1].name} {r.labels[1].score:.2f}" if len(r.labels) > 1 else ""
        match = "" if not query else (f" {r.query_score:>6.3f}" if r.query_score is not None else f" {'-':>6}")
        print(f"  {i:>3} {r.prompt_index:>6}{match} {(best.name if best else '-')[:24]:<24} "
              f"{(best.score if best else float('nan')):>6.3f} {r.predicted_iou:>6.3f} {r.area:>8}  "
              f"{str(tuple(r.box)):<18} {second}", file=file)


def run_on_image(args, predictor, image_path: Path, mode: str, prompts=(), text: str = "",
                 image: Optional[np.ndarray] = None):
    """set_image + one mode + optional baseline relabel + outputs; returns (results, timings)."""
    from ovsam_ros.baselines import relabel
    from ovsam_ros.results import results_to_json, split_empty, write_json
    from ovsam_ros.visualize import draw_overlay, save_rgb

    if image is None:
        image = load_image(image_path, args)
    t0 = time.perf_counter()
    predictor.set_image(image)
    t1 = time.perf_counter()
    checked = []
    if mode == "prompt":
        checked = predictor.check_prompts(prompts)
        results = predictor.predict(prompts, multimask_output=getattr(args, "multimask", False))
    elif mode == "everything":
        results = predictor.everything(_everything_options(args))
    else:
        results = predictor.query(text, max_instances=args.top, min_score=args.min_score,
                                  options=_everything_options(args))
    report = predictor.last_everything_report if mode != "prompt" else None
    if report is not None and not results and report.candidates:
        log.warning("%s: nothing left to show; lower the threshold that removed most", report.explain(CLI_FLAGS))
    if args.baseline != "none":
        results = relabel(predictor, results, args.baseline)
    t2 = time.perf_counter()
    timings = {"encode_image_s": round(t1 - t0, 4), "prompts_and_labels_s": round(t2 - t1, 4)}
    objects, empty = split_empty(results)
    if empty:
        log.warning("%s: prompt(s) %s gave an empty mask (no pixel above the mask threshold): not an object, left "
                    "out of the results", image_path, ", ".join(str(r.prompt_index) for r in empty))
    if args.out:
        vocab = predictor.vocabulary
        extra = {"timings": timings, "trained": predictor.trained, "baseline": args.baseline}
        if report is not None:
            extra["everything_report"] = report.to_dict()
        write_json(results_to_json(results, image=str(image_path), image_size=predictor.original_size,
                                   vocabulary=vocab.name if vocab else "", mode=mode, query=text,
                                   extra=extra), args.out)
    if args.overlay:
        args.overlay.parent.mkdir(parents=True, exist_ok=True)
        save_rgb(str(args.overlay), draw_overlay(predictor.image_rgb, objects, checked))
    return results, timings


def _run_single(args: argparse.Namespace) -> int:
    mode = {"segment": "prompt", "everything": "everything", "query": "text"}[args.command]
    if mode == "prompt" and not args.prompts:
        raise PromptError("no prompts: give --point, --box or --object")
    from ovsam_ros.results import split_empty

    # Inputs first: a missing or corrupt image must not wait for a model load (minutes for RN50x16).
    image = load_image(Path(args.image), args)
    predictor = _make_predictor(args)
    results, timings = run_on_image(args, predictor, Path(args.image), mode, getattr(args, "prompts", ()),
                                    getattr(args, "text", ""), image=image)
    if not args.quiet:
        objects, empty = split_empty(results)
        print_table(objects, f"{args.image}: {len(objects)} instance(s)"
                             f"{f', {len(empty)} empty mask(s)' if empty else ''} [{mode}] "
                             f"encode {timings['encode_image_s']:.3f} s, decode+label {timings['prompts_and_labels_s']:.3f} s",
                    empty=empty)
        for path in (args.out, args.overlay):
            if path:
                print(f"wrote {path}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """The ROS 2 pipeline in one process (default), or the predictor alone (--offline)."""
    if getattr(args, "offline", False):
        return run_offline_demo(args)
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.robot_frames < 0:
        raise ValueError(f"--robot-frames must be >= 0, got {args.robot_frames}")
    from ovsam_ros.ros.demo import print_summary, run_ros_demo

    if args.baseline != "none":
        print(f"NOTE: --baseline {args.baseline} applies to --offline only; the node uses CLIP2SAM labels.")
    print(f"ovsam demo: OVSAM node + demo camera ({args.scenes}) + prompt source + listener in one process "
          f"(ROS 2, {args.frames} frames, model {args.model!r}); Ctrl-C stops it.")
    try:
        result = run_ros_demo(frames=args.frames, rate=args.rate, output_dir=args.output_dir, model=args.model,
                              vocabulary=args.vocab, device=args.device, precision=args.precision,
                              synonyms=args.synonyms, num_threads=args.threads or 2, top_k=args.top_k, robot_frames=args.robot_frames,
                              scenes=args.scenes)
    except KeyboardInterrupt:
        print("ovsam demo: interrupted", file=sys.stderr)
        return 130
    print_summary(result, args.output_dir)
    if result.frames < args.frames:
        print(f"ovsam demo: error: only {result.frames} of {args.frames} results arrived", file=sys.stderr)
        return 1
    if result.robot is not None and result.robot.frames < args.robot_frames:
        print(f"ovsam demo: error: only {result.robot.frames} of {args.robot_frames} robot-phase results arrived",
              file=sys.stderr)
        return 1
    return 0


def run_offline_demo(args: argparse.Namespace) -> int:
    """Prompts, everything mode and a text query on each bundled sample image (no ROS)."""
    from ovsam_ros.results import split_empty

    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = _make_predictor(args)
    if not predictor.trained:
        print("NOTE: untrained model (no weights configured): the pipeline runs end to end, "
              "but masks and labels are meaningless. See README 'Weights'.")
    samples = sorted(SAMPLES_DIR.glob("*.png"))
    if not samples:
        raise FileNotFoundError(f"no sample images in {SAMPLES_DIR}")
    defaults = dict(points_per_side=8, points_per_batch=64, iou_thresh=0.0, stability_thresh=0.0,
                    nms_thresh=0.7, min_area=16, max_instances=8)
    for key, value in defaults.items():
        setattr(args, key, value)
    args.top, args.min_score, args.multimask = 3, 0.0, True
    total = 0
    for path in samples:
        image = load_image(path, args)
        h, w = image.shape[:2]
        prompts = [Prompt(points=[[w * 0.5, h * 0.5]], point_labels=[1]),
                   Prompt(box=[w * 0.1, h * 0.1, w * 0.6, h * 0.9]),
                   Prompt(points=[[w * 0.3, h * 0.4], [w * 0.8, h * 0.2]], point_labels=[1, 0])]
        for mode, text in (("prompt", ""), ("everything", ""), ("text", "cat")):
            args.out = out_dir / f"{path.stem}_{mode}.json"
            args.overlay = out_dir / f"{path.stem}_{mode}.png"
            results, timings = run_on_image(args, predictor, path, mode, prompts, text, image=image)
            objects, empty = split_empty(results)
            total += len(objects)
            print_table(objects, f"{path.name} [{mode}{': ' + text if text else ''}] {len(objects)} instance(s); "
                                 f"encode {timings['encode_image_s']:.3f} s, decode+label {timings['prompts_and_labels_s']:.3f} s",
                        empty=empty)
    print(f"demo done: {total} instances over {len(samples)} images; overlays and JSON in {out_dir}/")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    rest = list(sys.argv[1:] if argv is None else argv)
    # The training-side labeller owns its arguments (ovsam-label); `ovsam -v label ...` is
    # `ovsam label -v ...`, as for every other command.
    leading = 0
    while leading < len(rest) and rest[leading] in ("-v", "--verbose"):
        leading += 1
    if rest[leading : leading + 1] == ["label"]:
        from training.entry_points import label

        return label(rest[leading + 1 :] + (["--verbose"] if leading else []))
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "weights":
            from ovsam_ros.weights.cli import run_from_args as run_weights

            return run_weights(args)
        if args.command in ("bench", "export"):
            import shlex

            from ovsam_ros.benchmark.cli import run_from_args as run_bench
            from ovsam_ros.export.cli import run_from_args as run_export

            command = shlex.join(["ovsam", *(sys.argv[1:] if argv is None else argv)])
            return (run_bench if args.command == "bench" else run_export)(args, command)
        if args.command == "demo":
            return run_demo(args)
        return _run_single(args)
    except (PromptError, ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        if args.verbose:
            raise
        print(f"ovsam {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
