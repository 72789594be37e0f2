#!/usr/bin/env python3
"""Measure two faults of issue #24 on a real in-process node (tiny model, CPU), before and after.

    .venv/bin/python tools/node_overload_probe.py prompt-array [--prompts 5000] [--frames 2]
    .venv/bin/python tools/node_overload_probe.py deactivate [--slow 65] [--stage predict|publish]
    .venv/bin/python tools/node_overload_probe.py burst [--frames 60]

``prompt-array`` (item 1): one-shot PromptArrays of N one-point prompts, one per frame (320x240),
processed synchronously; prints per frame the wall time, instances published and prompts rejected
over the limit. ``deactivate`` (item 2): the worker thread runs; the first predict() (``--stage
predict``: inference) or the first LabeledMaskArray build (``--stage publish``: where 1,000 tracked
instances spent seconds) sleeps ``--slow`` s (a long frame, stamp 100); deactivate is called while it runs, then activate, then
frames 101..104 arrive at 5 Hz; prints how long deactivate took, the most ``ovsam-worker`` threads
seen, and the stamps received on ~/masks in arrival order. ``burst`` (item 8): a spinning node
(worker + its timers) gets N 1920x1080 rgb8 frames at 30 Hz with nothing to do (prompt mode, no
prompts); prints the process RSS growth right after the burst and 3 s later (frame_buffer_max_age
is 2 s).

Only node APIs that exist before and after the fix are used, so the same script measures the
code before the fix (e.g. ``git archive HEAD | tar -x -C /tmp/before`` then
``PYTHONPATH=/tmp/before .venv/bin/python tools/node_overload_probe.py ...``).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np


def _context():
    import rclpy
    from rclpy.context import Context

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", "87")
    context = Context()
    rclpy.init(args=[], context=context)
    return context


def _node(context, name: str, start_worker: bool):
    from rclpy.parameter import Parameter

    from ovsam_ros.ros.node import OVSAMNode

    node = OVSAMNode(name, context=context, start_worker=start_worker,
                     parameter_overrides=[Parameter("model", value="tiny"), Parameter("num_threads", value=1)])
    assert node.autostart(), node.last_error
    return node


def _image(sec: int, height: int = 240, width: int = 320):
    from std_msgs.msg import Header

    from ovsam_ros.ros.camera_demo import image_message

    rng = np.random.default_rng(sec)
    rgb = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    header = Header(frame_id="camera")
    header.stamp.sec = sec
    return image_message(rgb, "rgb8", header)


def prompt_array(args: argparse.Namespace) -> None:
    from ovsam_ros.prompts import Prompt
    from ovsam_ros.ros.prompt_input import prompt_array_msg

    context = _context()
    node = _node(context, "ovsam_probe_prompts", start_worker=False)
    rng = np.random.default_rng(0)
    print("| frame | prompts sent | wall s | instances published | prompts_over_limit |")
    print("|---|---|---|---|---|")
    try:
        for i in range(args.frames):
            points = rng.uniform([0, 0], [319, 239], (args.prompts, 2))
            node._on_prompts(prompt_array_msg([Prompt(points=[p.tolist()]) for p in points]))
            node._receive(_image(100 + i), False)
            t0 = time.perf_counter()
            out = node.process_pending()
            wall = time.perf_counter() - t0
            snap = node.stats.snapshot()
            print(f"| {i} | {args.prompts} | {wall:.2f} | {len(out.masks.instances) if out else 0} | "
                  f"{snap.get('prompts_over_limit', 'n/a')} |", flush=True)
    finally:
        node.destroy_node()
        context.try_shutdown()


def deactivate(args: argparse.Namespace) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from ovsam_ros.msg import LabeledMaskArray
    from ovsam_ros.prompts import Prompt
    from ovsam_ros.ros.prompt_input import prompt_array_msg
    from ovsam_ros.ros.qos import OUTPUT_QOS

    context = _context()
    node = _node(context, "ovsam_probe_deactivate", start_worker=True)
    listener = rclpy.create_node("ovsam_probe_listener", context=context)
    got: list[tuple[float, int]] = []
    listener.create_subscription(LabeledMaskArray, "/ovsam_probe_deactivate/masks",
                                 lambda m: got.append((time.monotonic(), m.header.stamp.sec)), OUTPUT_QOS)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05) for _ in iter(stop.is_set, True)],
                               daemon=True)
    spinner.start()
    most_workers = [0]

    def count_workers():
        while not stop.is_set():
            most_workers[0] = max(most_workers[0], sum(t.name == "ovsam-worker" and t.is_alive()
                                                       for t in threading.enumerate()))
            time.sleep(0.01)

    threading.Thread(target=count_workers, daemon=True).start()
    entered = threading.Event()
    calls = []

    def slowed(real):
        def slow(*a, **k):
            calls.append(1)
            if len(calls) == 1:
                entered.set()
                time.sleep(args.slow)
            return real(*a, **k)
        return slow

    if args.stage == "predict":
        node.predictor.predict = slowed(node.predictor.predict)
    else:
        import ovsam_ros.ros.outputs as outputs

        outputs.labeled_mask_array = slowed(outputs.labeled_mask_array)
    node._on_prompts(prompt_array_msg([Prompt(box=[40.0, 30.0, 200.0, 180.0])], persistent=True))
    try:
        node._receive(_image(100), False)
        entered.wait(60)
        slow_ends = time.monotonic() + args.slow
        t0 = time.monotonic()
        result = node.trigger_deactivate()
        deactivate_s = time.monotonic() - t0
        inactive_at = time.monotonic()
        node.trigger_activate()
        for sec in range(101, 105):
            node._receive(_image(sec), False)
            time.sleep(0.2)
        deadline = slow_ends + 30  # hang guard
        while time.monotonic() < deadline and (not got or got[-1][1] != 104 or time.monotonic() < slow_ends + 2):
            time.sleep(0.1)  # the newest frame arrived, and the slow frame had 2 s to show up late
        snap = node.stats.snapshot()
        print("| slow frame s | deactivate call s | result | most worker threads | ~/masks stamps in arrival order "
              "| published after deactivate of frames before it | goes back in time | diagnostics |")
        print("|---|---|---|---|---|---|---|---|")
        stamps = [s for _, s in got]
        late = [s for t, s in got if t >= inactive_at and s <= 100]
        back = any(b < a for a, b in zip(stamps, stamps[1:]))
        print(f"| {args.stage} {args.slow:g} | {deactivate_s:.3f} | {getattr(result, 'name', result)} | {most_workers[0]} | "
              f"{stamps} | {late} | {back} | {snap['frames_received']} received, {snap['frames_processed']} "
              f"processed, {snap.get('results_discarded', 'n/a')} discarded |", flush=True)
    finally:
        stop.set()
        node.stop_worker()
        executor.shutdown(timeout_sec=1.0)
        listener.destroy_node()
        node.destroy_node()
        context.try_shutdown()


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def burst(args: argparse.Namespace) -> None:
    from rclpy.executors import MultiThreadedExecutor

    context = _context()
    node = _node(context, "ovsam_probe_burst", start_worker=True)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        time.sleep(1.0)
        base = _rss_mb()
        for i in range(args.frames):
            node._receive(_image(200 + i, 1080, 1920), False)
            time.sleep(1 / 30)
        right_after = _rss_mb() - base
        time.sleep(3.0)
        later = _rss_mb() - base
        print("| frames 1920x1080 rgb8 | RSS growth right after, MB | 3 s later (max_age 2 s), MB |")
        print("|---|---|---|")
        print(f"| {args.frames} | {right_after:+.0f} | {later:+.0f} |", flush=True)
    finally:
        node.stop_worker()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        context.try_shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prompt-array")
    p.add_argument("--prompts", type=int, default=5000)
    p.add_argument("--frames", type=int, default=2)
    d = sub.add_parser("deactivate")
    d.add_argument("--slow", type=float, default=65.0)
    d.add_argument("--stage", choices=("predict", "publish"), default="predict")
    b = sub.add_parser("burst")
    b.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    {"prompt-array": prompt_array, "deactivate": deactivate, "burst": burst}[args.what](args)


if __name__ == "__main__":
    main()
