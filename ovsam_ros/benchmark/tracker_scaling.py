"""Tracker cost per frame against the number of instances (issue #24 item 1).

    python -m ovsam_ros.benchmark.tracker_scaling                     # 100, 250, 500, 1000 instances
    git show 9fea966:ovsam_ros/robot/tracking.py > /tmp/tracking_before.py
    python -m ovsam_ros.benchmark.tracker_scaling --reference /tmp/tracking_before.py   # before | after

A busy 1280x720 scene as everything mode sees it: ``N`` instances per frame, about 60 %
whole objects (ellipses, 4..60 px half-axes, log-uniform, overlapping freely) and 40 %
parts lying inside a whole one (nested masks), moving up to 4 px per frame at 10 Hz
with a +-1 px rim jitter, a few hidden each frame, the instance order shuffled. The
masks are built before the clock starts; only ``InstanceTracker.update`` is timed (CPU time
of the thread, which a shared machine does not inflate, and wall time), after two warm-up
frames (so every frame meets ~N live tracks).

Columns: live tracks, the box pairs (instances x tracks), the mask comparisons made
(the pairs the box pre-filter kept), the median and slowest ``update`` in ms, and with
``--reference`` the same for another tracking module (the pre-#24 one, say) and whether
both gave the same ids on every frame.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence

import cv2
import numpy as np

from ovsam_ros.robot import tracking

H, W, FPS = 720, 1280, 10.0
TARGET_MS = 50.0  # issue #24: 1,000 instances in < 50 ms per frame


def _ellipse(a: int, b: int, jitter: int) -> np.ndarray:
    crop = np.zeros((2 * b + 3, 2 * a + 3), np.uint8)
    cv2.ellipse(crop, (a + 1, b + 1), (a, b), 0, 0, 360, 1, -1)
    if jitter:
        crop = (cv2.dilate if jitter > 0 else cv2.erode)(crop, np.ones((3, 3), np.uint8))
    return crop > 0


def scene(instances: int, frames: int, seed: int = 0) -> list[list[tracking.Observation]]:
    """``frames`` frames of ``instances`` observations each (fewer where some are hidden)."""
    rng = np.random.default_rng(seed)
    wholes = max(1, int(round(0.6 * instances)))
    axes = np.exp(rng.uniform(np.log(4), np.log(60), (wholes, 2))).astype(int)
    pos = rng.uniform((60, 60), (W - 60, H - 60), (wholes, 2))
    vel = rng.uniform(-4, 4, (wholes, 2))
    # Parts: a smaller ellipse at a fixed offset inside a whole one.
    parent = rng.integers(0, wholes, instances - wholes)
    scale = rng.uniform(0.3, 0.6, len(parent))
    offset = rng.uniform(-0.4, 0.4, (len(parent), 2)) * axes[parent]
    out = []
    for _ in range(frames):
        pos += vel
        bounce = (pos < 60) | (pos > (W - 60, H - 60))
        vel[bounce] *= -1
        centres = np.concatenate([pos, pos[parent] + offset])
        sizes = np.concatenate([axes, np.maximum(2, (axes[parent] * scale[:, None]).astype(int))])
        observations = []
        for k in rng.permutation(instances):
            if rng.random() < 0.02:  # hidden this frame
                continue
            (cx, cy), (a, b) = centres[k], sizes[k]
            crop = _ellipse(int(a), int(b), int(rng.integers(-1, 2)))
            observations.append(tracking.Observation(
                tracking.CroppedMask(crop, int(round(cx)) - int(a) - 1, int(round(cy)) - int(b) - 1)))
        out.append(observations)
    return out


def time_tracker(module: ModuleType, frames: list, warmup: int = 2) -> tuple[list[float], list[float], list, int, int]:
    """(CPU ms and wall ms per timed frame, ids per frame, live tracks and mask comparisons at the
    last frame). CPU time (this thread's) is what the tracker costs; wall time also holds what other
    processes on a shared machine took from it."""
    tracker = module.InstanceTracker(module.TrackerConfig())
    cpu, wall, ids = [], [], []
    for k, observations in enumerate(frames):
        start_cpu, start_wall = time.thread_time(), time.perf_counter()
        ids.append(tracker.update(observations, 100.0 + k / FPS))
        if k >= warmup:
            cpu.append((time.thread_time() - start_cpu) * 1000.0)
            wall.append((time.perf_counter() - start_wall) * 1000.0)
    return cpu, wall, ids, len(tracker.tracks), getattr(tracker, "last_pairs_checked", -1)


def load_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("tracking_reference", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.benchmark.tracker_scaling",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--instances", default="100,250,500,1000", help="instances per frame (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per row (default 10)")
    parser.add_argument("--reference", metavar="FILE",
                        help="another tracking.py (e.g. the pre-#24 one from git show) timed on the same frames")
    parser.add_argument("--reference-frames", type=int, default=3,
                        help="timed frames per row for --reference (default 3: the old one is slow)")
    args = parser.parse_args(argv)
    counts = [int(v) for v in args.instances.split(",")]
    reference = load_module(args.reference) if args.reference else None

    print(f"\n### Tracker cost per frame ({W}x{H}, nested overlapping masks, 10 Hz motion; ms of CPU time, "
          "median / max, and median wall time)\n")
    head = "| instances | live tracks | box pairs | mask comparisons | after: CPU ms | after: wall ms |"
    rule = "|---|---|---|---|---|---|"
    if reference is not None:
        head += " before: CPU ms | before: wall ms | same ids |"
        rule += "---|---|---|"
    print(head)
    print(rule)
    for n in counts:
        frames = scene(n, 2 + args.frames)
        cpu, wall, ids, live, checked = time_tracker(tracking, frames)
        row = (f"| {n:,} | {live:,} | {len(frames[-1]) * live:,} | {checked:,} | "
               f"{statistics.median(cpu):.1f} / {max(cpu):.1f} | {statistics.median(wall):.1f} |")
        if reference is not None:
            short = frames[:2 + args.reference_frames]
            ref_cpu, ref_wall, ref_ids, _, _ = time_tracker(reference, short)
            same = "yes" if ref_ids == ids[:len(short)] else "NO"
            row += f" {statistics.median(ref_cpu):,.1f} / {max(ref_cpu):,.1f} | {statistics.median(ref_wall):,.1f} | {same} |"
        print(row, flush=True)
    print(f"\nTarget: {max(counts):,} instances < {TARGET_MS:g} ms per frame. "
          f"Module: {Path(tracking.__file__).name}; reference: {args.reference or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
