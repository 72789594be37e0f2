"""``ovsam demo``: the whole ROS pipeline in one process, with rclpy alone.

Four nodes on one MultiThreadedExecutor, talking over real DDS (loopback only):

* the OVSAM node (lifecycle, configured + activated here),
* a demo camera (stamped, frame_id set) publishing either new scenes of the
  shapes world with their ground truth (``scenes='world'``, the default: what the
  bundled ``shapes`` model knows) or the bundled photos (``scenes='samples'``),
* a prompt source: on world scenes it boxes every object, clicks every object
  (one interior point) and asks for a class in the scene by name (base and novel
  classes in turn); on photos it cycles fixed point/box prompts, a text query and
  everything mode,
* a listener printing one line per ``LabeledMaskArray`` (on world scenes also the
  IoU of each mask against the truth and whether its label is right, and a scored
  summary at the end, see :mod:`ovsam_ros.demo_scoring`) and writing the node's
  overlay images to ``outputs/demo/``.

The camera publishes the next frame once the previous result arrived (or after
a timeout), at most ``rate`` frames per second, so every run shows all three
modes. Then ``robot_frames`` frames of the robot phase
(:mod:`ovsam_ros.ros.robot_demo`): an RGB-D camera, a detector stand-in
answering 100 ms late, track ids and 3D centroids. Everything lives in the
namespace ``/ovsam_demo``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ovsam_ros.demo_scoring import WORLD_EVERYTHING
from ovsam_ros.prompts import Prompt
from ovsam_ros.ros.discovery import default_to_local

NAMESPACE = "/ovsam_demo"
SCHEDULE = ("prompt", "text", "everything")
WORLD_SCHEDULE = ("box", "point", "text")
WORLD_FRAME_SIZE = (320, 240)
# Prompts are made for a 600x400 image: coffee.png is that size; chelsea.png (451x300)
# has the same aspect ratio within 1%, so the node rescales them (and says nothing).
PROMPT_IMAGE_SIZE = (600, 400)
DEMO_PROMPTS = [
    Prompt(points=[[300.0, 200.0]], point_labels=[1]),
    Prompt(box=[60.0, 40.0, 360.0, 360.0]),
    Prompt(points=[[180.0, 160.0], [480.0, 80.0]], point_labels=[1, 0]),
]


@dataclass
class DemoResult:
    frames: int = 0
    instances: int = 0
    latencies_ms: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    overlays: list = field(default_factory=list)
    stages_ms: dict = field(default_factory=dict)
    robot: Any = None  # robot_demo.RobotResult
    scores: Any = None  # demo_scoring.Scoreboard on world scenes


def _listener(context: Any, output_dir: Path, result: DemoResult, printer, scoring: bool = False) -> Any:
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from ovsam_ros.demo_scoring import Scoreboard, TruthObject
    from ovsam_ros.msg import LabeledMaskArray
    from ovsam_ros.ros.camera_demo import TRUTH_QOS_DEPTH
    from ovsam_ros.ros.image_conversion import image_to_numpy
    from ovsam_ros.ros.qos import OUTPUT_QOS
    from ovsam_ros.ros.messages import mask_from_msg
    from ovsam_ros.shapes_world import WORLD_CLASSES
    from ovsam_ros.visualize import save_rgb

    splits = {c.name: c.split for c in WORLD_CLASSES}
    if scoring:
        result.scores = Scoreboard()

    class DemoListener(Node):
        def __init__(self) -> None:
            super().__init__("demo_listener", namespace=NAMESPACE, context=context)
            self.overlays: dict[tuple[int, int], Any] = {}
            self.paused = False  # the robot phase has its own listener
            self.truth: dict[tuple[int, int], list] = {}
            self.kinds: dict[tuple[int, int], str] = {}  # stamp -> box | point (prompt frames of world scenes)
            self.received = threading.Condition()
            self.create_subscription(Image, "ovsam/overlay", self.on_overlay, OUTPUT_QOS)
            self.create_subscription(LabeledMaskArray, "ovsam/masks", self.on_masks, OUTPUT_QOS)
            if scoring:
                self.create_subscription(LabeledMaskArray, "image/ground_truth", self.on_truth,
                                         TRUTH_QOS_DEPTH)

        def on_overlay(self, msg: Any) -> None:
            self.overlays[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

        def on_truth(self, msg: Any) -> None:
            h, w = msg.image_height, msg.image_width
            self.truth[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = [
                TruthObject(m.label, splits.get(m.label, "base"), mask_from_msg(m, h, w)) for m in msg.instances]

        def score(self, msg: Any, key: tuple[int, int]) -> list[str]:
            truth = self.truth.pop(key, None)
            if truth is None:
                return ["    (no ground truth received for this frame: not scored)"]
            h, w = msg.image_height, msg.image_width
            if msg.mode == "text":
                masks = [mask_from_msg(m, h, w) for m in msg.instances]
                return result.scores.score_query(msg.query, truth, masks)
            kind = self.kinds.pop(key, "box")
            results = [(m.prompt_index, mask_from_msg(m, h, w), m.label) for m in msg.instances]
            return result.scores.score_prompts(kind, truth, results)

        def on_masks(self, msg: Any) -> None:
            if self.paused:
                return
            stamp = msg.header.stamp
            latency_ms = (self.get_clock().now().nanoseconds - (stamp.sec * 10**9 + stamp.nanosec)) / 1e6
            index = result.frames
            labels = ", ".join(
                f"{m.label or '?'} {m.score:.2f}" for m in msg.instances[:4]) + (" ..." if len(msg.instances) > 4 else "")
            overlay = self.overlays.pop((stamp.sec, stamp.nanosec), None)
            written = ""
            if overlay is not None:
                path = output_dir / f"frame_{index:03d}_{msg.mode}.png"
                save_rgb(str(path), image_to_numpy(overlay))
                result.overlays.append(path)
                written = f" -> {path}"
            query = f" {msg.query!r}" if msg.query else ""
            key = (stamp.sec, stamp.nanosec)
            kind = self.kinds.get(key, msg.mode) if scoring else msg.mode
            line = (f"frame {index:3d}  stamp {stamp.sec}.{stamp.nanosec:09d}  {msg.header.frame_id}  "
                    f"{msg.image_width}x{msg.image_height}  [{kind}{query}]  {len(msg.instances)} instance(s)"
                    f"{': ' + labels if labels and not scoring else ''}  latency {latency_ms:.0f} ms{written}")
            printer(line)
            if scoring:
                result.scores.latencies_ms.append(latency_ms)
                for extra in self.score(msg, key):
                    printer(extra)
            with self.received:
                result.frames += 1
                result.instances += len(msg.instances)
                result.latencies_ms.append(latency_ms)
                result.lines.append(line)
                self.received.notify_all()

        def wait_for(self, count: int, timeout: float) -> bool:
            with self.received:
                return self.received.wait_for(lambda: result.frames >= count, timeout)

    return DemoListener()


def _world_prompts(phase: str, truth: list) -> list:
    from ovsam_ros.demo_scoring import TruthObject

    objs = [TruthObject(name, split, m) for name, split, m in truth]
    if phase == "box":
        return [Prompt(box=o.box) for o in objs]
    return [Prompt(points=[o.point], point_labels=[1]) for o in objs]


def _world_query(truth: list, want_novel: bool, index: int) -> Optional[str]:
    """A class present in the scene: a novel one when asked for and present, else a base one."""
    names = sorted({name for name, split, _ in truth if (split == "novel") == want_novel})
    if not names:
        names = sorted({name for name, _, _ in truth})
    return names[index % len(names)] if names else None


def run_ros_demo(
    *,
    frames: int = 30,
    rate: float = 2.0,
    output_dir: Path = Path("outputs/demo"),
    model: str = "shapes",
    vocabulary: Optional[str] = None,
    device: Optional[str] = None,
    precision: Optional[str] = None,
    synonyms: Optional[str] = None,
    num_threads: int = 2,
    top_k: Optional[int] = None,
    frame_timeout: float = 60.0,
    robot_frames: int = 12,
    scenes: str = "world",
    printer=print,
) -> DemoResult:
    """Run the demo; returns what the listener saw. Raises RuntimeError if the node cannot start.

    ``scenes``: ``world`` (new shapes-world scenes + ground truth, scored) or ``samples``.
    """
    if scenes not in ("world", "samples"):
        raise ValueError(f"scenes must be 'world' or 'samples', got {scenes!r}")
    world = scenes == "world"
    # Demo traffic stays on this machine unless the user chose otherwise; the ament index is this environment.
    default_to_local()
    os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from ovsam_ros.ros.camera_demo import make_camera_node
    from ovsam_ros.ros.node import OVSAMNode
    from ovsam_ros.ros.prompt_source import make_prompt_node

    output_dir.mkdir(parents=True, exist_ok=True)
    result = DemoResult()
    context = Context()
    rclpy.init(args=[], context=context)
    overrides = [
        Parameter("model", value=model),
        Parameter("vocabulary", value=vocabulary or ""),
        Parameter("device", value=device or ""),
        Parameter("precision", value=precision or ""),
        Parameter("synonyms", value=synonyms or ""),
        Parameter("num_threads", value=num_threads),
        Parameter("mode", value="everything"),
        Parameter("top_k", value=top_k or 3),
        Parameter("publish_overlay", value=True),
        Parameter("diagnostics_period", value=1.0),
    ]
    # The user's own command line names these files: the node may read them (it refuses paths outside
    # model_dirs / vocabulary_dirs, which is right for parameters anyone on the network can set).
    for value, dirs in ((model, "model_dirs"), (vocabulary, "vocabulary_dirs")):
        if value and os.path.isfile(os.path.expanduser(value)):
            overrides.append(Parameter(dirs, value=os.path.dirname(os.path.realpath(os.path.expanduser(value)))))
    if world:
        # text queries pick among everything-mode masks: a 12 x 12 grid covers every object
        overrides += [Parameter(name, value=value) for name, value in WORLD_EVERYTHING.items()]
        overrides += [Parameter("max_instances", value=5)]
    else:
        # An untrained model's IoU / stability estimates are noise: keep every mask, show a few.
        overrides += [Parameter("points_per_side", value=8), Parameter("pred_iou_thresh", value=0.0),
                      Parameter("stability_score_thresh", value=0.0), Parameter("min_mask_area", value=16),
                      Parameter("max_instances", value=5)]
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    nodes: list[Any] = []
    spinner: Optional[threading.Thread] = None
    try:
        node = OVSAMNode("ovsam", namespace=NAMESPACE, context=context, parameter_overrides=overrides)
        nodes.append(node)
        if not node.autostart():
            raise RuntimeError(f"the OVSAM node did not start: {node.last_error}")
        camera = make_camera_node(source="world" if world else "samples", frame_id="camera_optical_frame",
                                  size=WORLD_FRAME_SIZE, namespace=NAMESPACE, context=context)
        prompts = make_prompt_node(namespace=NAMESPACE, context=context)
        listener = _listener(context, output_dir, result, printer, scoring=world)
        nodes += [camera, prompts, listener]
        for n in nodes:
            executor.add_node(n)
        spinner = threading.Thread(target=executor.spin, name="demo-executor", daemon=True)
        spinner.start()
        time.sleep(1.0)  # discovery between the nodes
        period = 1.0 / rate if rate > 0 else 0.0
        queries = 0
        for i in range(frames):
            started = time.monotonic()
            if world:
                phase = WORLD_SCHEDULE[i % len(WORLD_SCHEDULE)]
                # every other text query is for a novel class: its frame is the next scene that has one
                want_novel = phase == "text" and queries % 2 == 0
                truth = camera.prepare_next(with_split="novel" if want_novel else None)
                if phase == "text":
                    query = _world_query(truth, want_novel=want_novel, index=queries // 2)
                    queries += 1
                    if query:
                        prompts.send_text(query, persistent=False, max_instances=3)
                elif truth:
                    prompts.send_prompts(_world_prompts(phase, truth), WORLD_FRAME_SIZE, persistent=False)
                camera.on_header = lambda header, phase=phase: listener.kinds.__setitem__(
                    (header.stamp.sec, header.stamp.nanosec), phase)
                time.sleep(0.3)  # the prompt is on another topic: let it arrive before the frame
            else:
                phase = SCHEDULE[i % len(SCHEDULE)]
                if phase == "prompt":
                    prompts.send_prompts(DEMO_PROMPTS, PROMPT_IMAGE_SIZE, persistent=False)
                elif phase == "text":
                    prompts.send_text("cat", persistent=False, max_instances=3)
                if phase != "everything":
                    time.sleep(0.3)  # the prompt is on another topic: let it arrive before the frame
            camera.publish_next()
            if not listener.wait_for(i + 1, frame_timeout):
                printer(f"frame {i}: no result within {frame_timeout:.0f} s (continuing)")
            remaining = period - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)
        snap = node.stats.snapshot()
        result.stages_ms = {name: s["mean"] * 1000 for name, s in snap["stages"].items() if s}
        if robot_frames > 0:
            from ovsam_ros.ros.robot_demo import make_robot_nodes, run_robot_phase

            listener.paused = True
            # Detections are the prompts now; frames without them are not segmented. On a busy CPU
            # results can be more than the default 1 s track lifetime apart: keep tracks longer.
            node.set_parameters([Parameter("mode", value="prompt"), Parameter("track_lifetime", value=5.0)])
            robot_nodes = make_robot_nodes(NAMESPACE, context)
            for n in robot_nodes:
                nodes.append(n)
                executor.add_node(n)
            time.sleep(1.0)  # discovery
            result.robot = run_robot_phase(*robot_nodes, frames=robot_frames, frame_timeout=frame_timeout,
                                           printer=printer)
        return result
    finally:
        # The spinning thread must be gone before nodes are destroyed (a race there
        # intermittently killed the benchmark client that used the same pattern).
        executor.shutdown(timeout_sec=2.0)
        if spinner is not None:
            spinner.join(timeout=5.0)
        for n in nodes:
            if isinstance(n, OVSAMNode):
                n.stop_worker()
            n.destroy_node()
        rclpy.try_shutdown(context=context)


def print_summary(result: DemoResult, output_dir: Path, printer=print) -> None:
    lat = sorted(result.latencies_ms)
    median = lat[len(lat) // 2] if lat else float("nan")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in result.stages_ms.items())
    printer(f"demo done: {result.frames} frames, {result.instances} instances, "
            f"median latency {median:.0f} ms (camera stamp -> result received)")
    printer(f"per-stage latency, mean ms: {stages}")
    if result.robot is not None:
        from ovsam_ros.ros.robot_demo import print_robot_summary

        print_robot_summary(result.robot, printer)
    printer(f"overlays: {len(result.overlays)} PNGs in {output_dir}/")
    if result.scores is not None:
        for line in result.scores.summary():
            printer(line)
