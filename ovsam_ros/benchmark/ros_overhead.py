"""ROS overhead of the OVSAM node: end-to-end latency minus model time, over loopback DDS.

    python -m ovsam_ros.benchmark.ros_overhead                       # tiny model, 640x480 and 1280x720
    python -m ovsam_ros.benchmark.ros_overhead --frames 50 --json ros_overhead.json

Runs ``ovsam-node`` and a client in an :class:`~ovsam_ros.ros.isolation.IsolatedRosGroup`
(a private network namespace holding only ``lo``, LOCALHOST discovery, its own domain id),
so no ROS traffic leaves the machine. The client sets three persistent click prompts, then
sends frames one at a time (ping-pong: the next frame only after the previous result came
back, so no frame waits in a queue and none is dropped) and records, per frame:

* ``e2e``: receive time of the ``LabeledMaskArray`` minus the image's header stamp (the
  client stamps each frame with the wall clock just before publishing);
* the node's own per-frame stage times from ``/diagnostics`` (``*_ms_last`` of the message
  whose ``last_stamp`` is that frame): ``encode`` (``set_image``), ``decode`` and
  ``recognition`` are the **model time**; ``preprocess`` (ROS image -> numpy) and
  ``publish`` (building and publishing the messages) are node-side ROS work;
* ``overhead = e2e - model``, and ``transport = e2e - total`` (DDS in and out, executor
  and worker hand-over), split into ``in`` (the node's ``input_age``: image stamp -> the
  node's image callback, i.e. the client's publish call, DDS, rclpy's conversion of the
  message to Python and the executor), ``queue`` (callback -> worker thread) and ``out``
  (the rest: after the node's last stage until the client's callback ran, i.e. the result
  messages' DDS transport and conversion on both sides).

The input frame's transport IS inside the overhead figure: the clock starts at the
image's stamp, set just before the client publishes the frame.

Medians and p90 over the frames are printed and written as JSON. Numbers depend on the
CPU and on what else runs on the machine; rerun on a quiet machine for publication.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Optional, Sequence

from ovsam_ros.cli_types import image_size

from .report import write_json

MODEL_STAGES = ("encode", "decode", "recognition")
NODE_STAGES = ("queue", "preprocess", "publish", "total")


def _stats(values: list[float]) -> dict[str, float]:
    from ovsam_ros.benchmark.harness import percentile

    return {"median_ms": round(statistics.median(values), 3), "p90_ms": round(percentile(values, 90), 3),
            "mean_ms": round(statistics.fmean(values), 3), "min_ms": round(min(values), 3), "n": len(values)}


# ------------------------------------------------------------------------------------------ client
def run_client(out: Path, sizes: Sequence[tuple[int, int]], frames: int, warmup: int, timeout: float,
               retry_s: float = 3.0) -> None:
    """Inside the isolated group: drive the node, write per-frame records to ``out``."""
    import threading

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from diagnostic_msgs.msg import DiagnosticArray
    from ovsam_ros.msg import LabeledMaskArray
    from ovsam_ros.prompts import Prompt
    from ovsam_ros.ros.camera_demo import image_message, shapes_frame
    from ovsam_ros.ros.diagnostics import values_of
    from ovsam_ros.ros.prompt_source import make_prompt_node

    rclpy.init()
    node = rclpy.create_node("ros_overhead_client")
    prompts = make_prompt_node("ros_overhead_prompts")
    image_pub = node.create_publisher(Image, "image", qos_profile_sensor_data)
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    cond = threading.Condition()
    received: dict[tuple[int, int], tuple[float, int]] = {}
    diagnostics: dict[str, dict[str, str]] = {}

    def on_masks(msg) -> None:
        t = time.time()
        with cond:
            received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (t, len(msg.instances))
            cond.notify_all()

    def on_diag(msg) -> None:
        if msg.status and msg.status[0].name.startswith("ovsam"):
            values = values_of(msg)
            with cond:
                if "last_stamp" in values:
                    diagnostics[values["last_stamp"]] = values
                cond.notify_all()

    node.create_subscription(LabeledMaskArray, "ovsam/masks", on_masks, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, reliable)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    executor.add_node(prompts)
    spin_thread = threading.Thread(target=executor.spin, daemon=True)
    spin_thread.start()

    deadline = time.monotonic() + timeout
    while not (node.count_subscribers("image") and node.count_publishers("ovsam/masks")
               and node.count_subscribers("ovsam/prompts")):
        if time.monotonic() > deadline:
            raise TimeoutError("the OVSAM node did not appear")
        time.sleep(0.1)
    time.sleep(0.5)

    records: list[dict[str, Any]] = []
    lost = 0
    for w, h in sizes:
        # Three persistent clicks per frame, in this frame size's pixels.
        prompts.send_prompts([Prompt(points=[[w * 0.5, h * 0.5]]), Prompt(points=[[w * 0.25, h * 0.25]]),
                              Prompt(points=[[w * 0.75, h * 0.75]])], (w, h), persistent=True)
        time.sleep(0.5)
        pixels = shapes_frame(3, w, h)
        for i in range(warmup + frames):
            msg = image_message(pixels, "rgb8", Header(frame_id="camera_optical_frame"))
            attempts = 0
            while True:
                # Best-effort camera QoS may lose a large frame: send a new one (new stamp) after retry_s.
                now = time.time()  # stamped just before publishing, like a camera driver
                msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
                key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
                image_pub.publish(msg)
                sent = time.time()
                with cond:
                    ok = cond.wait_for(lambda: key in received, timeout=retry_s)
                if ok:
                    break
                lost += 1
                attempts += 1
                if attempts * retry_s > timeout:
                    raise TimeoutError(f"no result for frame {i} at {w}x{h} within {timeout} s "
                                       f"({lost} frames lost so far)")
            stamp_text = f"{key[0]}.{key[1]:09d}"
            with cond:  # the node's stage times of this very frame
                cond.wait_for(lambda: stamp_text in diagnostics, timeout=10)
                diag = diagnostics.get(stamp_text)
            t_recv, n = received[key]
            if i < warmup or diag is None:
                continue
            stamp = key[0] + key[1] * 1e-9
            rec = {"size": f"{w}x{h}", "instances": n, "e2e_ms": (t_recv - stamp) * 1e3,
                   "publish_call_ms": (sent - stamp) * 1e3}
            for stage in (*MODEL_STAGES, *NODE_STAGES):
                value = diag.get(f"{stage}_ms_last")
                rec[f"{stage}_ms"] = float(value) if value not in (None, "-") else 0.0
            value = diag.get("input_age_ms_last")
            rec["input_age_ms"] = float(value) if value not in (None, "-") else float("nan")
            records.append(rec)
            time.sleep(0.05)  # let the node go idle between frames
    out.write_text(json.dumps({"records": records, "lost_frames": lost}) + "\n", encoding="utf-8")
    # Stop the spinning thread before tearing down rclpy: shutting down under a running
    # executor intermittently killed the process after the records were written.
    executor.shutdown(timeout_sec=10.0)
    spin_thread.join(timeout=10.0)
    node.destroy_node()
    prompts.destroy_node()
    rclpy.try_shutdown()
    print(f"done ({lost} frame(s) lost and re-sent)", flush=True)


# ------------------------------------------------------------------------------------------ driver
def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in dict.fromkeys(r["size"] for r in records):
        rows = [r for r in records if r["size"] == size]
        model = [sum(r[f"{s}_ms"] for s in MODEL_STAGES) for r in rows]
        entry = {
            "frames": len(rows), "instances": rows[0]["instances"],
            "e2e": _stats([r["e2e_ms"] for r in rows]),
            "model": _stats(model),
            "overhead": _stats([r["e2e_ms"] - m for r, m in zip(rows, model)]),
            "node_preprocess": _stats([r["preprocess_ms"] for r in rows]),
            "node_publish": _stats([r["publish_ms"] for r in rows]),
            "transport": _stats([r["e2e_ms"] - r["total_ms"] for r in rows]),
            "transport_in": _stats([r.get("input_age_ms", float("nan")) for r in rows]),
            "queue": _stats([r.get("queue_ms", 0.0) for r in rows]),
            "transport_out": _stats([r["e2e_ms"] - r.get("input_age_ms", float("nan")) - r.get("queue_ms", 0.0)
                                     - r["total_ms"] for r in rows]),
        }
        out[size] = entry
    return out


def render(summary: dict[str, Any], command: str) -> str:
    lines = [f"command: {command}",
             f"{'frame':<10} {'n':>3} {'masks':>5}  {'e2e med/p90':>16}  {'model med':>10}  {'overhead med/p90':>17}  "
             f"{'ROS->numpy':>10}  {'publish':>8}  {'transport':>9}  {'in':>5}  {'queue':>5}  {'out':>5}   (ms)"]
    for size, e in summary.items():
        lines.append(
            f"{size:<10} {e['frames']:>3} {e['instances']:>5}  {e['e2e']['median_ms']:>7.1f} / {e['e2e']['p90_ms']:<7.1f}"
            f"  {e['model']['median_ms']:>10.1f}  {e['overhead']['median_ms']:>7.1f} / {e['overhead']['p90_ms']:<8.1f}"
            f"  {e['node_preprocess']['median_ms']:>10.1f}  {e['node_publish']['median_ms']:>8.1f}"
            f"  {e['transport']['median_ms']:>9.1f}  {e['transport_in']['median_ms']:>5.1f}"
            f"  {e['queue']['median_ms']:>5.1f}  {e['transport_out']['median_ms']:>5.1f}")
    lines.append("overhead = e2e (image stamp -> LabeledMaskArray received) - model (encode + decode + recognition, "
                 "from the node's per-frame /diagnostics); transport = e2e - the node's total = in (stamp -> node's "
                 "image callback) + queue (callback -> worker) + out (node done -> client callback); medians.")
    return "\n".join(lines)


# Fast DDS with a shared-memory segment large enough for raw HD frames (the built-in 512 KB segment
# is not: larger samples then go over UDP loopback in fragments, and a best-effort camera
# subscription loses many of them when the socket buffers overflow). This is the usual
# "large data" tuning for ROS 2 cameras; ``--dds default`` measures without it.
FASTDDS_LARGE_DATA_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>ovsam_shm</transport_id>
      <type>SHM</type>
      <segment_size>67108864</segment_size>
    </transport_descriptor>
    <transport_descriptor>
      <transport_id>ovsam_udp</transport_id>
      <type>UDPv4</type>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="ovsam_large_data" is_default_profile="true">
    <rtps>
      <userTransports>
        <transport_id>ovsam_shm</transport_id>
        <transport_id>ovsam_udp</transport_id>
      </userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    import yaml

    from ovsam_ros.ros.isolation import IsolatedRosGroup, isolation_available, wait_for_line

    ok, why = isolation_available()
    if not ok:
        raise RuntimeError(f"the ROS overhead benchmark needs a private network namespace: {why}")
    node_exe = Path(sys.executable).parent / "ovsam-node"
    if not node_exe.exists():
        raise FileNotFoundError(f"{node_exe} missing: install the package (tools/setup.sh) first")
    with tempfile.TemporaryDirectory(prefix="ovsam_ros_overhead_") as tmp:
        tmp = Path(tmp)
        from ovsam_ros.resources import find_bundled

        config = yaml.safe_load(find_bundled("config/ovsam.yaml").read_text())
        # Diagnostics at 4 Hz: the client waits for each frame's own status anyway. At 50 Hz the
        # status traffic itself skewed the figure (p90 overhead 160-270 ms: the client's executor
        # and the node's GIL were busy with /diagnostics when a frame or its result arrived).
        config["/**"]["ros__parameters"].update({
            "model": args.model, "num_threads": args.threads, "diagnostics_period": 0.25, "mode": "prompt",
            "publish_overlay": False, "max_rate_hz": 0.0, "publish_instance_ids": not args.no_instance_ids,
        })
        params = tmp / "params.yaml"
        params.write_text(yaml.safe_dump(config))
        records_path = tmp / "records.json"
        domain = 1 + zlib.crc32(f"ros_overhead{os.getpid()}".encode()) % 100
        env = {}
        if args.dds == "shm":
            profile = tmp / "fastdds_large_data.xml"
            profile.write_text(FASTDDS_LARGE_DATA_XML)
            env = {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile), "FASTRTPS_DEFAULT_PROFILES_FILE": str(profile)}
        with IsolatedRosGroup(domain_id=domain, workdir=tmp / "ros") as group:
            group.env.update(env)
            node = group.start([str(node_exe), "--params-file", str(params)])
            wait_for_line(node, "ovsam-node ready (active)", timeout=args.timeout)
            client = group.start([sys.executable, "-m", "ovsam_ros.benchmark.ros_overhead", "--client",
                                  str(records_path), "--frames", str(args.frames), "--warmup", str(args.warmup),
                                  "--timeout", str(args.timeout), "--sizes", *[f"{w}x{h}" for w, h in args.sizes]],
                                 cwd=str(tmp))
            try:
                lines = wait_for_line(client, "done",
                                      timeout=args.timeout + 60 * len(args.sizes) * (args.frames + args.warmup))
                code = client.wait(timeout=30)
            except TimeoutError as exc:
                lines, code = [str(exc)], None
            if code != 0 or not records_path.exists():
                rest = client.stdout.read().decode(errors="replace") if client.stdout and code is not None else ""
                group.stop(node)  # its log says why no result came back (e.g. a model error per frame)
                node_log = node.stdout.read().decode(errors="replace") if node.stdout else ""
                raise RuntimeError(f"benchmark client failed (exit code {code}):\n" + "\n".join(lines[-30:]) + rest
                                   + "\n--- node output (last 40 lines) ---\n" + "\n".join(node_log.splitlines()[-40:]))
            group.stop(node)
        data = json.loads(records_path.read_text())
    records = data["records"]
    summary = summarize(records)
    targets = []
    for size, entry in summary.items():
        if size == "1280x720":
            value = entry["overhead"]["median_ms"]
            targets.append({"name": "ros_overhead_720p", "target": "< 10 ms median", "measured_ms": value,
                            "pass": value < 10.0})
    return {"command": command, "model": args.model, "threads": args.threads, "dds": args.dds,
            "publish_instance_ids": not args.no_instance_ids, "summary": summary,
            "lost_frames": data["lost_frames"], "targets": targets, "records": records}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.benchmark.ros_overhead", description=__doc__.split("\n")[0],
                                     epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="model YAML / preset for the node (default tiny)")
    parser.add_argument("--sizes", type=image_size, nargs="+", default=[(640, 480), (1280, 720)], metavar="WxH")
    parser.add_argument("--frames", type=int, default=30, help="timed frames per size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed frames per size first")
    parser.add_argument("--threads", type=int, default=1, help="the node's torch threads")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--dds", choices=["shm", "default"], default="shm",
                        help="shm: Fast DDS profile with a 64 MB shared-memory segment (large-data tuning, default); "
                             "default: the RMW's built-in transports")
    parser.add_argument("--no-instance-ids", action="store_true",
                        help="node parameter publish_instance_ids false (no mono16 ID image per frame)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--client", type=Path, default=None, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.client is not None:
        run_client(args.client, args.sizes, args.frames, args.warmup, args.timeout)
        return 0
    command = shlex.join(["python", "-m", "ovsam_ros.benchmark.ros_overhead", *argv])
    print(f"command: {command}", flush=True)
    report = run(args, command)
    print(render(report["summary"], command))
    print(f"frames lost by best-effort QoS and re-sent (not timed): {report['lost_frames']}")
    for t in report["targets"]:
        print(f"target {t['name']}: {t['target']}; measured {t['measured_ms']:.1f} ms -> {'PASS' if t['pass'] else 'MISS'}")
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
