"""Measure the robot features: frame matching under prompt delay, track-id stability, 3D error.

    python -m ovsam_ros.benchmark.robot_features            # ~1 min on 2 CPU cores, tiny model

Prints three markdown tables:

1. stamped prompts delivered ``delay`` ms after their 30 Hz frame, through the real
   node (in-process, tiny model): which frame they ran on (own / newest) and how
   many frames off the old "next frame" rule would have been;
2. track ids over the RGB-D demo clip (:mod:`ovsam_ros.ros.robot_demo`) from the
   true masks with a +-1 px rim jitter (the tracker alone), and through the node
   with the detector stand-in's boxes as prompts (tiny model);
3. 3D centroid error against the rendered truth, from the true masks grown by 3 px
   (rim bleeding onto the wall) with 16UC1 depth, sensor noise and dropouts, and
   through the node (tiny model masks: meaningless, so this row shows the plumbing,
   not accuracy).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import cv2
import numpy as np

from ovsam_ros.robot.depth3d import Intrinsics, backproject, depth_to_metres, instance_geometry
from ovsam_ros.robot.tracking import CroppedMask, InstanceTracker, Observation, TrackerConfig
from ovsam_ros.ros import robot_demo as scene

K = Intrinsics(scene.FX, scene.FY, scene.CX, scene.CY, scene.W, scene.H)


def true_masks(frame: scene.SceneFrame, i: int) -> dict[str, np.ndarray]:
    """Each object's visible pixels in frame ``i`` (re-rendered with one object id per pixel)."""
    depth_m = frame.depth_mm / 1000.0
    masks = {}
    for name, (_, z, *_rest) in scene.OBJECTS.items():
        x0, y0, x1, y1 = frame.boxes.get(name, (0, 0, 0, 0))
        box = np.zeros(depth_m.shape, bool)
        box[int(y0):int(y1), int(x0):int(x1)] = True
        mask = box & (np.abs(depth_m - z) < 1e-6)
        if mask.any():
            masks[name] = mask
    return masks


def tracker_only(frames: int, seed: int = 0) -> dict[str, set]:
    rng = np.random.default_rng(seed)
    tracker = InstanceTracker(TrackerConfig())
    ids: dict[str, set] = {}
    for i in range(frames):
        masks = true_masks(scene.render(i), i)
        names = list(masks)
        rng.shuffle(names)
        observations = []
        for name in names:
            mask = masks[name].astype(np.uint8)
            op = rng.integers(3)
            if op:
                mask = (cv2.dilate if op == 1 else cv2.erode)(mask, np.ones((3, 3), np.uint8))
            observations.append(Observation(CroppedMask.from_full(mask > 0)))
        for name, track_id in zip(names, tracker.update(observations, 100.0 + i / 4.0)):
            ids.setdefault(name, set()).add(track_id)
    return ids


def centroid_errors(frames: int, seed: int = 0) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    errors: dict[str, list[float]] = {}
    for i in range(frames):
        frame = scene.render(i)
        metres = frame.depth_mm / 1000.0
        noisy = np.round((metres + rng.normal(0, 0.0015 * metres ** 2)) * 1000).astype(np.uint16)
        noisy[rng.random(noisy.shape) < 0.05] = 0
        depth = depth_to_metres(noisy, "16UC1")
        for name, mask in true_masks(frame, i).items():
            bled = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
            geometry = instance_geometry(backproject(bled, depth, K))
            if geometry is not None:
                errors.setdefault(name, []).append(float(np.linalg.norm(np.array(geometry.centroid) - frame.centroids[name])))
    return errors


def through_node(delays_ms: Sequence[int], frames: int, prompts_per_delay: int):
    """(frame-matching rows, ids per object, 3D errors per object) with the real node, in-process."""
    from ovsam_ros.ros.discovery import default_to_local

    default_to_local()
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter
    from std_msgs.msg import Header

    from ovsam_ros.prompts import Prompt
    from ovsam_ros.robot.detections import prompts_from_detections
    from ovsam_ros.ros.image_conversion import numpy_to_image
    from ovsam_ros.ros.node import OVSAMNode
    from ovsam_ros.ros.prompt_input import PromptSet, prompt_array_msg

    context = Context()
    rclpy.init(args=[], context=context)
    node = OVSAMNode("ovsam_measure", context=context, start_worker=False,
                     parameter_overrides=[Parameter("model", value="tiny"), Parameter("num_threads", value=1)])
    try:
        if not node.autostart():
            raise RuntimeError(node.last_error)
        t0 = 1_700_000_000 * 10**9
        counter = [0]

        def header_for(k: int) -> Header:
            ns = t0 + k * 10**9 // 30
            h = Header(frame_id="cam")
            h.stamp.sec, h.stamp.nanosec = ns // 10**9, ns % 10**9
            return h

        def feed(k: int, rgb: np.ndarray, depth: Optional[np.ndarray] = None) -> Header:
            h = header_for(k)
            if depth is not None:
                node._on_depth(numpy_to_image(depth, "16UC1", h))
            node._receive(numpy_to_image(rgb, "rgb8", h), False)
            node.process_pending()  # prompt mode without prompts: nothing to do
            return h

        rows = []
        rgb0 = scene.render(0).rgb
        for delay in delays_ms:
            behind = int(round(delay / (1000 / 30)))
            own = newest = 0
            offsets = []
            for _ in range(prompts_per_delay):
                k = counter[0]
                made_for = feed(k, rgb0)
                for j in range(1, behind + 1):
                    feed(k + j, rgb0)
                counter[0] += behind + 1
                node._on_prompts(prompt_array_msg([Prompt(box=[100.0, 60.0, 200.0, 160.0])], (0, 0),
                                                  frame_id="cam", stamp=made_for.stamp))
                out = node.process_pending()
                ran = (out.masks.header.stamp.sec, out.masks.header.stamp.nanosec)
                if ran == (made_for.stamp.sec, made_for.stamp.nanosec):
                    own += 1
                else:
                    newest += 1
                    offsets.append(behind)
            rows.append((delay, behind, own, newest, behind + 1))
        # Detector-prompted clip with depth: track ids and 3D through the node.
        from sensor_msgs.msg import CameraInfo

        info = CameraInfo(width=scene.W, height=scene.H)
        info.k = [scene.FX, 0.0, scene.CX, 0.0, scene.FY, scene.CY, 0.0, 0.0, 1.0]
        node._on_camera_info(info)
        ids: dict[str, set] = {}
        errors: dict[str, list] = {}
        base = counter[0] + 100
        for i in range(frames):
            frame = scene.render(i)
            h = feed(base + 8 * i, frame.rgb, frame.depth_mm)  # 4 Hz: 8 frames of 30 Hz apart
            converted = prompts_from_detections(scene.detection_array(h, frame.boxes))
            node._accept_oneshot(PromptSet(converted.prompts, (0, 0), "cam", False,
                                           stamp=h.stamp.sec * 10**9 + h.stamp.nanosec,
                                           sources=converted.sources, indices=converted.indices))
            out = node.process_pending()
            for m in out.masks.instances:
                ids.setdefault(m.source_id, set()).add(m.track_id)
                if m.has_position and m.source_id in frame.centroids:
                    c = np.array([m.centroid.x, m.centroid.y, m.centroid.z])
                    errors.setdefault(m.source_id, []).append(float(np.linalg.norm(c - frame.centroids[m.source_id])))
        return rows, ids, errors
    finally:
        node.stop_worker()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def _stats(values: list[float]) -> str:
    if not values:
        return "- | - | -"
    return f"{np.median(values) * 100:.2f} | {np.percentile(values, 95) * 100:.2f} | {np.max(values) * 100:.2f}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovsam_ros.benchmark.robot_features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=24, help="frames of the RGB-D clip (default 24)")
    parser.add_argument("--prompts", type=int, default=5, help="stamped prompts per delay (default 5)")
    parser.add_argument("--delays", default="0,33,100,500,967,1000,1500",
                        help="prompt delays in ms after their frame (30 Hz camera; default: %(default)s)")
    args = parser.parse_args(argv)
    delays = [int(v) for v in args.delays.split(",")]

    rows, node_ids, node_errors = through_node(delays, args.frames, args.prompts)
    print("\n### Stamped prompts under delay (30 Hz camera, frame_buffer_size 30, real node, tiny model)\n")
    print("| delay ms | frames newer at arrival | ran on own frame | ran on newest (counted) | old rule: frames off |")
    print("|---|---|---|---|---|")
    for delay, behind, own, newest, off in rows:
        print(f"| {delay} | {behind} | {own}/{own + newest} | {newest}/{own + newest} | {off} |")

    print(f"\n### Track ids over the {args.frames}-frame RGB-D clip (distinct ids per object; 1 = stable)\n")
    tracked = tracker_only(args.frames)
    print("| object | tracker on true masks, +-1 px rim jitter | node, detector boxes as prompts (tiny model) |")
    print("|---|---|---|")
    for name in scene.OBJECTS:
        print(f"| {name} | {len(tracked.get(name, ()))} {sorted(tracked.get(name, ()))} | "
              f"{len(node_ids.get(name, ()))} {sorted(node_ids.get(name, ()))} |")

    print("\n### 3D centroid error vs rendered truth, cm (median | p95 | max)\n")
    errors = centroid_errors(args.frames)
    print("| object (distance) | true mask +3 px bleed, 16UC1 + noise + 5 % dropouts | node, tiny-model masks |")
    print("|---|---|---|")
    for name, (_, z, *_r) in scene.OBJECTS.items():
        print(f"| {name} ({z} m) | {_stats(errors.get(name, []))} | {_stats(node_errors.get(name, []))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
