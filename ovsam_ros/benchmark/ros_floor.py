"""Transport floor of rclpy + DDS for a raw camera frame: the part of the ROS overhead no node code can remove.

    python -m ovsam_ros.benchmark.ros_floor                       # 1280x720 rgb8, 30 frames, both executors
    python -m ovsam_ros.benchmark.ros_floor --sizes 640x480 1280x720 --executor single

An echo node that does nothing but answer each ``sensor_msgs/Image`` with a ``std_msgs/Header``
(carrying how long after the image's stamp its callback ran) and a client that stamps each frame
just before publishing it, in an :class:`~ovsam_ros.ros.isolation.IsolatedRosGroup` with the same
Fast DDS large-data (shared-memory) profile as ``ros_overhead``. Per frame: ``publish call`` (the
client's ``publish()``), ``in`` (stamp -> the echo's callback: DDS + rclpy's conversion + executor)
and ``round trip`` (stamp -> the answer's callback). Compare with ``ros_overhead``'s transport
columns: what they exceed the floor by is the OVSAM node's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Optional, Sequence

from ovsam_ros.cli_types import image_size

from .report import write_json


def _echo(executor_kind: str) -> None:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    rclpy.init()
    node = rclpy.create_node("ros_floor_echo")
    pub = node.create_publisher(Header, "echo", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))

    def on_image(msg) -> None:
        age = time.time() - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
        pub.publish(Header(stamp=msg.header.stamp, frame_id=f"{age * 1e3:.3f}"))

    node.create_subscription(Image, "image", on_image, qos_profile_sensor_data)
    executor = MultiThreadedExecutor(num_threads=4) if executor_kind == "multi" else SingleThreadedExecutor()
    executor.add_node(node)
    print("echo ready", flush=True)
    executor.spin()


def _client(sizes: Sequence[tuple[int, int]], frames: int, warmup: int) -> None:
    import numpy as np
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from ovsam_ros.ros.image_conversion import numpy_to_image

    rclpy.init()
    node = rclpy.create_node("ros_floor_client")
    pub = node.create_publisher(Image, "image", qos_profile_sensor_data)
    cond = threading.Condition()
    got: dict[tuple[int, int], tuple[float, float]] = {}

    def on_echo(msg) -> None:
        t = time.time()
        with cond:
            got[(msg.stamp.sec, msg.stamp.nanosec)] = (t, float(msg.frame_id))
            cond.notify_all()

    node.create_subscription(Header, "echo", on_echo, QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    deadline = time.monotonic() + 60
    while not (node.count_subscribers("image") and node.count_publishers("echo")):
        if time.monotonic() > deadline:
            raise TimeoutError("the echo node did not appear")
        time.sleep(0.1)
    time.sleep(1.0)
    rows = {}
    rng = np.random.default_rng(0)
    for w, h in sizes:
        msg = numpy_to_image(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "rgb8")
        calls, ins, trips, lost = [], [], [], 0
        for i in range(warmup + frames):
            now = time.time()
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            pub.publish(msg)
            sent = time.time()
            with cond:
                ok = cond.wait_for(lambda: key in got, timeout=3.0)
            if not ok:
                lost += 1  # best-effort camera QoS: a lost frame is not timed
            elif i >= warmup:
                t, age_ms = got[key]
                calls.append((sent - now) * 1e3)
                ins.append(age_ms)
                trips.append((t - now) * 1e3)
            time.sleep(0.05)
        rows[f"{w}x{h}"] = {"frames": len(trips), "lost": lost,
                            **{name: round(statistics.median(v), 3) if v else None
                               for name, v in (("publish_call_ms", calls), ("in_ms", ins), ("round_trip_ms", trips))}}
    print("RESULT " + json.dumps(rows), flush=True)
    os._exit(0)  # skip rclpy teardown under a spinning executor


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.benchmark.ros_floor", description=__doc__.split("\n")[0],
                                     epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=image_size, nargs="+", default=[(1280, 720)], metavar="WxH")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--executor", choices=["single", "multi", "both"], default="both",
                        help="the echo node's rclpy executor (the OVSAM node uses a MultiThreadedExecutor)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--role", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "client":
        _client(args.sizes, args.frames, args.warmup)
        return 0
    if args.role in ("single", "multi"):
        _echo(args.role)
        return 0

    from ovsam_ros.benchmark.ros_overhead import FASTDDS_LARGE_DATA_XML
    from ovsam_ros.ros.isolation import IsolatedRosGroup, isolation_available, wait_for_line

    ok, why = isolation_available()
    if not ok:
        raise RuntimeError(f"the ROS floor benchmark needs a private network namespace: {why}")
    sizes = [f"{w}x{h}" for w, h in args.sizes]
    report = {"command": " ".join(["python -m ovsam_ros.benchmark.ros_floor", *(argv or sys.argv[1:])]), "results": {}}
    print(f"command: {report['command']}", flush=True)
    print(f"{'executor':<9} {'frame':<10} {'n':>3} {'lost':>4}  {'publish call':>12}  {'in':>6}  {'round trip':>10}   (ms, medians)")
    with tempfile.TemporaryDirectory(prefix="ovsam_ros_floor_") as tmp:
        profile = Path(tmp) / "fastdds_large_data.xml"
        profile.write_text(FASTDDS_LARGE_DATA_XML)
        for kind in (["single", "multi"] if args.executor == "both" else [args.executor]):
            domain = 1 + zlib.crc32(f"ros_floor{os.getpid()}{kind}".encode()) % 100
            with IsolatedRosGroup(domain_id=domain, workdir=Path(tmp) / f"ros_{kind}") as group:
                group.env.update(FASTDDS_DEFAULT_PROFILES_FILE=str(profile), FASTRTPS_DEFAULT_PROFILES_FILE=str(profile))
                echo = group.start([sys.executable, "-m", "ovsam_ros.benchmark.ros_floor", "--role", kind])
                wait_for_line(echo, "echo ready", timeout=120)
                client = group.start([sys.executable, "-m", "ovsam_ros.benchmark.ros_floor", "--role", "client",
                                      "--frames", str(args.frames), "--warmup", str(args.warmup), "--sizes", *sizes])
                lines = wait_for_line(client, "RESULT", timeout=120 + 10 * len(sizes) * (args.frames + args.warmup))
                rows = json.loads(lines[-1].split("RESULT", 1)[1])
                group.stop(echo)
            report["results"][kind] = rows
            for size, r in rows.items():
                print(f"{kind:<9} {size:<10} {r['frames']:>3} {r['lost']:>4}  {r['publish_call_ms']:>12.2f}  "
                      f"{r['in_ms']:>6.2f}  {r['round_trip_ms']:>10.2f}")
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
