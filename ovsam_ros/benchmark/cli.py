"""``ovsam bench`` / ``python -m ovsam_ros.bench``: per-stage latency, memory, FLOPs, params, baselines.

    ovsam bench                                   # tiny model, CPU, all sweeps (~2 min)
    ovsam bench --model rn50x16 --flops-only      # published OVSAM + SAM-H baselines, FLOPs/params only (~2 s)
    ovsam bench --model rn50x16 --device cuda --precision fp16 --repeats 20 --json bench.json
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ovsam_ros.benchmark import BASELINES, VOCAB_ALIASES
from ovsam_ros.cli_types import image_size


def _vocab_size(text: str) -> int:
    key = text.strip().lower()
    if key in VOCAB_ALIASES:
        return VOCAB_ALIASES[key]
    try:
        return int(key)
    except ValueError:
        raise argparse.ArgumentTypeError(f"vocabulary size must be an int or one of {sorted(VOCAB_ALIASES)}") from None


def _frame(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT -> (height, width), the order the frame benchmark takes."""
    w, h = image_size(text)
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model")
    m.add_argument("--model", default="tiny",
                   help="tiny | tiny-convnext | rn50x16 | convnext_large (random init), or a model YAML "
                        "(name in config/models/ or path; backend: onnx YAMLs benchmark the exported graphs)")
    m.add_argument("--load-weights", action="store_true",
                   help="load the weight files a model YAML names (default: random init, same speed)")
    m.add_argument("--input-size", type=int, nargs="+", default=[], metavar="S",
                   help="padded model input sizes to sweep, e.g. 512 1024 (default: the model's own)")
    m.add_argument("--frame", type=_frame, default=(720, 1280), metavar="WxH",
                   help="original camera frame size for preprocess/postprocess (default 1280x720)")
    r = parser.add_argument_group("runtime")
    r.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    r.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="autocast dtype")
    r.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: PyTorch's")
    r.add_argument("--channels-last", action="store_true", help="NHWC convolutions (GPUs with tensor cores)")
    r.add_argument("--compile", action="store_true", help="torch.compile the image path and decoder")
    r.add_argument("--plain", action="store_true",
                   help="time the stage rows on the plain model (autocast, unfused) instead of the inference path; "
                        "the frame[N] rows always show both")
    r.add_argument("--attention", default="chunked", choices=["chunked", "flex", "full"],
                   help="SAM2CLIP's rel-pos attention on the inference path: chunked = SDPA per block of queries "
                        "(the whole bias never exists; default), flex = FlexAttention score_mod (compiled on CUDA; "
                        "eager on CPU materialises the scores), full = one SDPA with the whole bias (previous path)")
    s = parser.add_argument_group("sweeps")
    s.add_argument("--prompts", type=int, nargs="+", default=[1, 10, 100], metavar="N",
                   help="prompt batch sizes (default 1 10 100)")
    s.add_argument("--vocab", type=_vocab_size, nargs="+", default=[80, 1203, 21843], metavar="C",
                   help="vocabulary sizes for recognition: ints or coco/lvis/in21k (default 80 1203 21843)")
    s.add_argument("--synonyms", type=int, default=None,
                   help="synonyms per class in the random text matrix (default: the longest synonym list of the "
                        "shipped COCO / LVIS / IN-21K vocabulary of that size, read from it)")
    s.add_argument("--predictor-classes", type=_vocab_size, default=1203,
                   help="vocabulary size used by the end-to-end predict/everything stages (default 1203)")
    s.add_argument("--grid", type=int, nargs="*", default=[16, 32], metavar="G",
                   help="everything-mode point grids GxG (default 16 32; give none to skip)")
    s.add_argument("--everything-unfiltered", action="store_true",
                   help="everything mode without IoU/stability filters (worst case: every mask is upsampled and kept)")
    s.add_argument("--baseline", nargs="+", default=list(BASELINES), choices=[*BASELINES, "none"],
                   help="two-backbone baselines to measure alongside (default both; 'none' skips)")
    s.add_argument("--baseline-sam", default=None, choices=["tiny", "vit_b", "vit_l", "vit_h"],
                   help="SAM image encoder of the baseline (default: vit_h for full-size models, tiny for tiny)")
    s.add_argument("--no-frames", action="store_true",
                   help="skip the end-to-end frame[N] rows (plain vs optimised path, FPS, aten ops per frame)")
    s.add_argument("--no-region-branch", action="store_true",
                   help="skip timing OVSAM's optional frozen-CLIP ensemble branch")
    h = parser.add_argument_group("measurement")
    h.add_argument("--repeats", type=int, default=10, help="timed calls per stage (median and p90 over them)")
    h.add_argument("--warmup", type=int, default=2, help="untimed calls per stage first")
    h.add_argument("--no-memory", action="store_true", help="skip the extra per-stage memory measurement call")
    h.add_argument("--flops-only", action="store_true",
                   help="count FLOPs and parameters on the meta device only (no weights, no timing; seconds for RN50x16)")
    h.add_argument("--seed", type=int, default=0)
    o = parser.add_argument_group("output")
    o.add_argument("--json", type=Path, default=None, help="write the full report here")
    o.add_argument("--markdown", action="store_true", help="print Markdown tables")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the tables")


def settings_from_args(args: argparse.Namespace, command: str):
    from ovsam_ros.benchmark.run import BenchSettings

    baselines = [] if "none" in args.baseline else list(dict.fromkeys(args.baseline))
    return BenchSettings(
        model=args.model, input_sizes=list(args.input_size), frame=tuple(args.frame), device=args.device,
        precision=args.precision, threads=args.threads, prompts=list(args.prompts), vocab_sizes=list(args.vocab),
        synonyms=args.synonyms, predictor_classes=args.predictor_classes, grids=list(args.grid),
        repeats=args.repeats, warmup=args.warmup, memory=not args.no_memory, flops_only=args.flops_only,
        baselines=baselines, baseline_sam=args.baseline_sam, region_branch=not args.no_region_branch,
        everything_filters=not args.everything_unfiltered, frames=not args.no_frames, optimize=not args.plain,
        channels_last=args.channels_last, compile=args.compile, attention=args.attention, load_weights=args.load_weights, seed=args.seed,
        command=command,
    )


def run_from_args(args: argparse.Namespace, command: str) -> int:
    from ovsam_ros.benchmark.report import render, write_json
    from ovsam_ros.benchmark.run import run_benchmark

    settings = settings_from_args(args, command)
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    say(f"command: {command}")
    report = run_benchmark(settings, log_fn=say)
    print(render(report, markdown=args.markdown))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    # The console script and ``python -m ovsam_ros.bench`` share this entry: name whichever ran.
    launcher = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    prog = prog or (launcher if launcher.startswith("ovsam-") else "python -m ovsam_ros.bench")
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args, shlex.join([*prog.split(), *argv]))
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"ovsam bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
