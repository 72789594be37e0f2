"""Start-up cost of a serving predictor: build -> first frame -> steady frames (``compile`` on/off).

    python -m ovsam_ros.benchmark.startup --model rn50x16 --device cuda --precision fp16 \\
        --compile reduce-overhead --cache-dir /tmp/ovsam_compile --json startup.json

Run it twice with the same ``--cache-dir``: the first run compiles (and autotunes), the
second loads the saved compile cache; ``first_frame_s`` is what a node restart waits. The
frame is ``set_image`` + ``predict`` of ``--prompts`` clicks on a random 720p image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .report import write_json


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.benchmark.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="preset (random init) or model YAML (default tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--compile", default="off", help="off | reduce-overhead | max-autotune | default")
    parser.add_argument("--cache-dir", default=None, help="persistent compile cache (default: none)")
    parser.add_argument("--plain", action="store_true", help="plain path instead of the inference path")
    parser.add_argument("--attention", default="chunked", choices=["chunked", "flex", "full"],
                        help="SAM2CLIP rel-pos attention on the inference path (default chunked)")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--frames", type=int, default=20, help="steady-state frames timed after the first")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: PyTorch's; use 1 on a loaded or small CPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from ovsam_ros.benchmark.flops import point_prompts
    from ovsam_ros.benchmark.harness import synchronize
    from ovsam_ros.benchmark.stages import random_frame
    from ovsam_ros.loading import PRESETS, build_predictor
    from ovsam_ros.prompts import Prompt

    t0 = time.perf_counter()
    source = ({"model": {"preset": args.model}, "predictor": {"vocabulary": "coco", "text_cache_dir": None}}
              if args.model in PRESETS else args.model)
    predictor = build_predictor(source, device=args.device, precision=args.precision, optimize=not args.plain,
                                attention=args.attention, compile=args.compile, compile_cache_dir=args.cache_dir)
    built = time.perf_counter() - t0
    frame = random_frame(720, 1280)
    points = point_prompts(args.prompts, (720, 1280), seed=1)[0].cpu().numpy()
    clicks = [Prompt(points=points[i].tolist(), point_labels=[1]) for i in range(args.prompts)]
    device = predictor.device

    def one() -> float:
        synchronize(device)
        t = time.perf_counter()
        predictor.set_image(frame)
        predictor.predict(clicks)
        synchronize(device)
        return time.perf_counter() - t

    first = one()
    times = [one() for _ in range(args.frames)]
    cache = getattr(predictor, "_compile_cache", None)
    report = {
        "command": " ".join(["python -m ovsam_ros.benchmark.startup", *(argv or sys.argv[1:])]),
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "attention": args.attention,
        "compile": args.compile, "compiled": bool(getattr(predictor, "compiled", False)),
        "cache_loaded": bool(cache.loaded) if cache is not None else None,
        "build_s": round(built, 3), "first_frame_s": round(first, 3), "ready_s": round(built + first, 3),
        "steady_frame_ms": round(1e3 * statistics.median(times), 3) if times else None,
        "steady_fps": round(1.0 / statistics.median(times), 2) if times else None,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
