"""End-to-end frame rows: the plain and the inference-optimised path side by side, in one run.

``frame[N]`` = ``OVSAMPredictor.set_image`` (preprocess + encode) + ``predict`` of N click
prompts with results on the host (masks cropped to their boxes, labels over the
vocabulary): what a robot pays per camera frame. Both paths run the same random weights
(same seed) on the same frame; FPS = 1000 / median ms. The aten ops one frame runs are
counted with torch.profiler (CPU side; on a GPU nearly every one is a kernel launch), with
the BatchNorm ops and the dtype casts among them: the overheads the optimised path removes.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch

from ovsam_ros.benchmark.harness import measure_memory, time_call
from ovsam_ros.benchmark.opcount import profile_ops

PATHS = ("plain", "optimized")


def _predictor(cfg, text, device: torch.device, precision: str, optimize: bool, seed: int,
               attention: str = "chunked"):
    from ovsam_ros.model.ovsam import OVSAM
    from ovsam_ros.predictor import OVSAMPredictor

    random_cfg = type(cfg).from_dict(cfg.to_dict())
    random_cfg.backbone.pretrained = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OVSAM(random_cfg).eval()
    return OVSAMPredictor(model, vocabulary=text, device=str(device), precision=precision, optimize=optimize,
                          attention=attention)


def time_frames(cfg, text, frame: np.ndarray, prompts: Sequence[int], device: torch.device, precision: str,
                repeats: int, warmup: int, memory: bool = True, seed: int = 0, attention: str = "chunked",
                log: Callable[[str], None] = lambda _m: None) -> List[Dict[str, Any]]:
    """One row per (path, prompt count): timing, FPS, op counts (and peak memory)."""
    from ovsam_ros.benchmark.flops import point_prompts
    from ovsam_ros.prompts import Prompt

    h, w = frame.shape[:2]
    rows: List[Dict[str, Any]] = []
    for path in PATHS:
        predictor = _predictor(cfg, text, device, precision, path == "optimized", seed, attention)
        for n in prompts:
            points = point_prompts(n, (h, w), seed=1)[0].cpu().numpy()
            clicks = [Prompt(points=points[i].tolist(), point_labels=[1]) for i in range(n)]

            def one_frame() -> list:
                predictor.set_image(frame)
                return predictor.predict(clicks)

            timing = time_call(one_frame, device, repeats, warmup)
            ops = profile_ops(one_frame)
            row = {"path": path, "prompts": n, "timing": timing.to_dict(),
                   "fps": round(1000.0 / timing.median_ms, 2) if timing.median_ms > 0 else None,
                   "aten_ops": ops.total, "batch_norm_ops": ops.batch_norm, "casts": ops.casts,
                   "memory": measure_memory(one_frame, device).to_dict() if memory else None}
            rows.append(row)
            log(f"  frame[{n}] {path:<9} median {timing.median_ms:10.2f} ms  {row['fps']:7.2f} FPS  "
                f"{ops.total} aten ops ({ops.batch_norm} batch_norm, {ops.casts} casts)")
        predictor = None  # free the weights before the next path
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


FRAME_HEADER = ["prompts", "plain ms", "plain FPS", "optimized ms", "optimized FPS", "speed-up",
                "aten ops plain", "aten ops optimized", "batch_norm plain/opt", "casts plain/opt"]


def frame_table_rows(frames: List[Dict[str, Any]]) -> List[List[str]]:
    by = {(r["path"], r["prompts"]): r for r in frames}
    out = []
    for n in sorted({r["prompts"] for r in frames}):
        p, o = by.get(("plain", n)), by.get(("optimized", n))
        if p is None or o is None:
            continue
        pm, om = p["timing"]["median_ms"], o["timing"]["median_ms"]
        out.append([f"frame[{n}]", f"{pm:.2f}", f"{p['fps']:.2f}", f"{om:.2f}", f"{o['fps']:.2f}",
                    f"{pm / om:.2f}x" if om else "-", str(p["aten_ops"]), str(o["aten_ops"]),
                    f"{p['batch_norm_ops']}/{o['batch_norm_ops']}", f"{p['casts']}/{o['casts']}"])
    return out
