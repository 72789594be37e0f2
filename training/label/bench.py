"""Labelling throughput of ``ovsam-label``: images/s per process, 1 vs N processes, identical output.

Records held-out shapes-world scenes into bags, labels them with one plain process and under
``torchrun --nproc_per_node=N``, and prints one row per run (images/s per process from each
rank's own clock, total images/s over the slowest rank, wall time with model loading) plus the
labels scored against the world's ground truth and whether the merged datasets are byte-identical.

    python -m training.label.bench                                   # CPU: 1 vs 2 processes
    python -m training.label.bench --model shapes --device cuda --nproc 8 --frames 512   # a GPU node
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

TOPIC = "/camera/image_raw"


def record_bags(root: Path, bags: int, frames: int, size: tuple) -> Dict[int, list]:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from ovsam_ros.shapes_world import world_classes, world_scene

    store = get_typestore(Stores.LATEST)
    Image, Header = store.types["sensor_msgs/msg/Image"], store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    classes, truth = world_classes("shapes"), {}
    for b in range(bags):
        with Writer(root / f"bag{b}", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
            conn = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=store)
            for k in range(frames):
                index = b * frames + k
                rgb, instances = world_scene(9001, index, size)
                stamp = 1_700_000_000_000_000_000 + index * 100_000_000
                msg = Image(header=Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam"),
                            height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                            step=rgb.shape[1] * 3, data=rgb.reshape(-1))
                writer.write(conn, stamp, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
                truth[stamp] = [(classes[c].name, m) for c, m in instances]
    return truth


def _run(nproc: int, inputs: List[str], out: Path, model: str, device: str, threads: int) -> Dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    args = ["-m", "training.label", *inputs, "--topic", TOPIC, "--out", str(out), "--model", model,
            "--device", device, "--no-progress", "--review-sample", "0"]
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        exe = Path(sys.executable).parent / "torchrun"
        launcher = [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = launcher + [f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1", f"--master_port={port}", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    summary = json.loads((out / "run_summary.json").read_text())
    return {**summary, "wall_s": wall}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.label.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", type=int, default=2, help="processes of the torchrun row (default 2)")
    p.add_argument("--bags", type=int, default=2)
    p.add_argument("--frames", type=int, default=24, help="frames per bag (default 24)")
    p.add_argument("--size", default="320x240", help="frame size WxH (default 320x240)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    from training.label.scoring import score_labels

    w, h = (int(v) for v in args.size.lower().split("x"))
    root = Path(tempfile.mkdtemp(prefix="label_bench_"))
    try:
        truth = record_bags(root, args.bags, args.frames, (w, h))
        inputs = [str(root / f"bag{b}") for b in range(args.bags)]
        rows, outputs = [], {}
        for nproc in (1, args.nproc):
            out = root / f"out{nproc}"
            s = _run(nproc, inputs, out, args.model, args.device, args.threads)
            outputs[nproc] = (out / "labels.json").read_bytes()
            rows.append({"processes": nproc, "frames": s["frames_labelled_this_run"],
                         "images_per_s_per_process": [r["images_per_s"] for r in s["per_rank"]],
                         "images_per_s_total": s["images_per_s_total"], "wall_s": round(s["wall_s"], 2),
                         "device": s["per_rank"][0]["device"]})
        coco = json.loads(outputs[1])
        score = score_labels(coco, truth)
        identical = outputs[1] == outputs[args.nproc]
        print(f"ovsam-label throughput: model {args.model}, {args.bags} bag(s) x {args.frames} frames of {w}x{h}, "
              f"{args.threads} thread(s) per process")
        print(f"{'processes':>9} {'frames':>6} {'images/s per process':>24} {'total images/s':>14} {'wall s':>7}  device")
        for r in rows:
            per = ", ".join(f"{v:.2f}" for v in r["images_per_s_per_process"] if v)
            print(f"{r['processes']:>9} {r['frames']:>6} {per:>24} {r['images_per_s_total']:>14.2f} "
                  f"{r['wall_s']:>7.1f}  {r['device']}")
        speedup = rows[1]["images_per_s_total"] / rows[0]["images_per_s_total"]
        print(f"scaling 1 -> {args.nproc}: x{speedup:.2f}; merged labels.json identical: {identical}")
        print(f"labels vs ground truth: {score}")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "identical": identical, "score": score}, indent=1))
        return 0 if identical else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
