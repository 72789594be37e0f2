"""ROS overhead of the OVSAM node: end-to-end latency minus model time, over loopback DDS.

    python -m ovsam_ros.benchmark.ros_overhead                       # tiny model, 640x480 and 1280x720
    python -m ovsam_ros.benchmark.ros_overhead --frames 50 --json ros_overhead.json
    python -m ovsam_ros.benchmark.ros_overhead --sizes 1280x720 --presets old defaults   # outputs before/after

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

Bytes on the wire: the client takes ``~/masks`` and both instance-ID topics (``~/instance_ids``,
``sensor_msgs/Image``; ``~/instance_ids/compressed``, PNG ``CompressedImage``) as serialized
messages and records each one's CDR size per frame (what DDS carries, less its packet headers),
and the ``mask_encoding`` the masks arrived in. ``--presets`` runs the node once per output
setting: ``old`` = the outputs before issue #23 (raw mono8 masks, raw mono16 ID image),
``defaults`` = the node's own defaults (no output parameter set); ``--mask-encoding`` and
``--instance-ids`` override both.

Medians and p90 over the frames are printed and written as JSON. Numbers depend on the
CPU and on what else runs on the machine; rerun on a quiet machine for publication.
"""

from __future__ import annotations

import argparse
import json
import math
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
def click_points(count: int, w: int, h: int) -> list[tuple[float, float]]:
    """``count`` click positions: the three classic ones (centre, quarter, three quarters), more on a grid."""
    if count <= 3:
        return [(w * 0.5, h * 0.5), (w * 0.25, h * 0.25), (w * 0.75, h * 0.75)][:count]
    side = math.ceil(math.sqrt(count))
    grid = [((i + 0.5) * w / side, (j + 0.5) * h / side) for j in range(side) for i in range(side)]
    return grid[:count]


def run_client(out: Path, sizes: Sequence[tuple[int, int]], frames: int, warmup: int, timeout: float,
               retry_s: float = 3.0, clicks: int = 3) -> None:
    """Inside the isolated group: drive the node, write per-frame records to ``out``."""
    import threading

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image
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
    wire: dict[tuple[int, int], dict[str, Any]] = {}  # stamp -> CDR bytes per output, mask encoding
    diagnostics: dict[str, dict[str, str]] = {}

    def on_masks(data: bytes) -> None:  # serialized: its size is what went over the wire
        t = time.time()
        msg = deserialize_message(data, LabeledMaskArray)
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with cond:
            wire.setdefault(key, {})["masks_bytes"] = len(data)
            if msg.instances:
                wire[key]["mask_encoding"] = msg.instances[0].mask_encoding
            received[key] = (t, len(msg.instances))
            cond.notify_all()

    def on_ids(msg_type: Any, form: str):
        def callback(data: bytes) -> None:
            stamp = deserialize_message(data, msg_type).header.stamp
            with cond:
                entry = wire.setdefault((stamp.sec, stamp.nanosec), {})
                entry["ids_bytes"], entry["ids_form"] = len(data), form
        return callback

    def on_diag(msg) -> None:
        if msg.status and msg.status[0].hardware_id == "ovsam_ros":  # name: "<fully qualified name>: ovsam"
            values = values_of(msg)
            with cond:
                if "last_stamp" in values:
                    diagnostics[values["last_stamp"]] = values
                cond.notify_all()

    node.create_subscription(LabeledMaskArray, "ovsam/masks", on_masks, reliable, raw=True)
    node.create_subscription(Image, "ovsam/instance_ids", on_ids(Image, "raw"), reliable, raw=True)
    node.create_subscription(CompressedImage, "ovsam/instance_ids/compressed", on_ids(CompressedImage, "png"),
                             reliable, raw=True)
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
        # Persistent clicks (three by default), in this frame size's pixels: one instance each.
        prompts.send_prompts([Prompt(points=[[x, y]]) for x, y in click_points(clicks, w, h)], (w, h),
                             persistent=True)
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
                   "publish_call_ms": (sent - stamp) * 1e3, "key": list(key)}
            for stage in (*MODEL_STAGES, *NODE_STAGES):
                value = diag.get(f"{stage}_ms_last")
                rec[f"{stage}_ms"] = float(value) if value not in (None, "-") else 0.0
            value = diag.get("input_age_ms_last")
            rec["input_age_ms"] = float(value) if value not in (None, "-") else float("nan")
            records.append(rec)
            time.sleep(0.05)  # let the node go idle between frames
    time.sleep(0.5)  # the last ID images (published before the masks, on another topic) are in by now
    with cond:
        for rec in records:
            entry = wire.get(tuple(rec.pop("key")), {})
            rec["masks_bytes"] = entry.get("masks_bytes", 0)
            rec["ids_bytes"] = entry.get("ids_bytes", 0)
            rec["ids_form"] = entry.get("ids_form", "off")
            rec["mask_encoding"] = entry.get("mask_encoding", "")
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
        if "masks_bytes" in rows[0]:  # CDR bytes per frame on ~/masks and the instance-ID topic
            entry["wire"] = {
                "mask_encoding": rows[0]["mask_encoding"], "instance_ids": rows[0]["ids_form"],
                "masks_kb": round(statistics.median(r["masks_bytes"] for r in rows) / 1e3, 2),
                "ids_kb": round(statistics.median(r["ids_bytes"] for r in rows) / 1e3, 2),
                "total_kb": round(statistics.median(r["masks_bytes"] + r["ids_bytes"] for r in rows) / 1e3, 2),
            }
        out[size] = entry
    return out


def render(summary: dict[str, Any], command: str) -> str:
    lines = [f"command: {command}"] if command else []
    lines += [f"{'frame':<10} {'n':>3} {'masks':>5}  {'e2e med/p90':>16}  {'model med':>10}  {'overhead med/p90':>17}  "
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


def render_wire(presets: dict[str, Any]) -> str:
    """One row per output setting and frame size: what went on the wire, and the node's publish time."""
    lines = ["| outputs | frame | masks | mask encoding | ~/masks kB | instance ids | ids kB | total kB/frame "
             "| publish ms (median) | overhead ms (median) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in presets.items():
        for size, e in run["summary"].items():
            wire = e.get("wire", {})
            lines.append(f"| {name} | {size} | {e['instances']} | {wire.get('mask_encoding', '?')} "
                         f"| {wire.get('masks_kb', float('nan')):.1f} | {wire.get('instance_ids', '?')} "
                         f"| {wire.get('ids_kb', float('nan')):.1f} | {wire.get('total_kb', float('nan')):.1f} "
                         f"| {e['node_publish']['median_ms']:.2f} | {e['overhead']['median_ms']:.1f} |")
    lines.append("kB = CDR bytes of the serialized messages (DDS adds its packet headers); masks + the instance-ID "
                 "topic that carried data. publish = the node's building and publishing of all outputs per frame.")
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


# Output settings a run can compare (node parameters over config/ovsam.yaml). "defaults" sets none:
# whatever the node and its config YAML default to. "old": the outputs before issue #23.
PRESETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "old": {"mask_encoding": "raw", "publish_instance_ids": True, "instance_ids_format": "raw"},
}
INSTANCE_ID_FORMS = ("off", "raw", "png")


def node_overrides(args: argparse.Namespace, preset: str) -> dict[str, Any]:
    """The preset's output parameters, then --mask-encoding / --instance-ids / --no-instance-ids."""
    values = dict(PRESETS[preset])
    if args.mask_encoding:
        values["mask_encoding"] = args.mask_encoding
    ids = "off" if args.no_instance_ids else args.instance_ids
    if ids == "off":
        values["publish_instance_ids"] = False
        values.pop("instance_ids_format", None)
    elif ids:
        values.update(publish_instance_ids=True, instance_ids_format=ids)
    return values


def run_once(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """One node + client run in a private network namespace: the client's records and lost frames."""
    import yaml

    from ovsam_ros.ros.isolation import IsolatedRosGroup, wait_for_line

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
            "publish_overlay": False, "max_rate_hz": 0.0, **overrides,
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
                                  "--timeout", str(args.timeout), "--clicks", str(args.clicks),
                                  "--sizes", *[f"{w}x{h}" for w, h in args.sizes]],
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
        return json.loads(records_path.read_text())


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from ovsam_ros.ros.isolation import isolation_available

    ok, why = isolation_available()
    if not ok:
        raise RuntimeError(f"the ROS overhead benchmark needs a private network namespace: {why}")
    presets: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for preset in args.presets:
        overrides = node_overrides(args, preset)
        data = run_once(args, overrides)
        for rec in data["records"]:
            rec["preset"] = preset
        records += data["records"]
        presets[preset] = {"node_parameters": overrides, "summary": summarize(data["records"]),
                           "lost_frames": data["lost_frames"]}
    first = presets[args.presets[0]]
    targets = []
    for size, entry in first["summary"].items():
        if size == "1280x720":
            value = entry["overhead"]["median_ms"]
            targets.append({"name": "ros_overhead_720p", "target": "< 10 ms median", "measured_ms": value,
                            "pass": value < 10.0})
    defaults = presets.get("defaults", {}).get("summary", {}).get("1280x720")
    if defaults and defaults["instances"] == 20 and "wire" in defaults:
        kb = defaults["wire"]["total_kb"]
        targets.append({"name": "wire_720p_20", "target": "<= 100 kB masks + instance ids per frame (defaults)",
                        "measured_kb": kb, "pass": kb <= 100.0})
    return {"command": command, "model": args.model, "threads": args.threads, "dds": args.dds, "clicks": args.clicks,
            "presets": presets, "summary": first["summary"],
            "lost_frames": sum(p["lost_frames"] for p in presets.values()), "targets": targets, "records": records}


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
    parser.add_argument("--clicks", type=int, default=3,
                        help="persistent click prompts per frame = instances per frame (default 3; 20 for the "
                             "issue #23 wire target)")
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["defaults"],
                        help="output settings to run, one node each: defaults (the node's own) and/or old "
                             "(raw masks + raw instance-ID image, the outputs before issue #23)")
    parser.add_argument("--mask-encoding", choices=["coco_rle", "png", "raw"], default=None,
                        help="node parameter mask_encoding for every preset")
    parser.add_argument("--instance-ids", choices=INSTANCE_ID_FORMS, default=None,
                        help="~/instance_ids for every preset: off, raw (mono16 Image) or png (CompressedImage)")
    parser.add_argument("--no-instance-ids", action="store_true", help="same as --instance-ids off")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--client", type=Path, default=None, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.client is not None:
        run_client(args.client, args.sizes, args.frames, args.warmup, args.timeout, clicks=args.clicks)
        return 0
    if args.clicks < 1:
        parser.error("--clicks must be >= 1")
    command = shlex.join(["python", "-m", "ovsam_ros.benchmark.ros_overhead", *argv])
    print(f"command: {command}", flush=True)
    report = run(args, command)
    for name, preset in report["presets"].items():
        print(f"\noutputs: {name} {preset['node_parameters'] or '(node defaults)'}")
        print(render(preset["summary"], ""))  # the command heads the output already
    print("\n" + render_wire(report["presets"]))
    print(f"frames lost by best-effort QoS and re-sent (not timed): {report['lost_frames']}")
    for t in report["targets"]:
        measured = f"{t['measured_ms']:.1f} ms" if "measured_ms" in t else f"{t['measured_kb']:.1f} kB"
        print(f"target {t['name']}: {t['target']}; measured {measured} -> {'PASS' if t['pass'] else 'MISS'}")
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
