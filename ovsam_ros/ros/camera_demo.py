"""``ovsam-demo-camera``: a stand-in camera for demos and tests.

Publishes the bundled sample images, a short generated clip of moving
shapes, or new scenes of the shapes world (``world``: what the bundled ``shapes``
model was trained on, never its training images) as ``sensor_msgs/Image`` (or
``CompressedImage``) on ``image`` at a fixed rate. Each frame is stamped with the
publisher's clock at the moment it is "captured" and carries a ``frame_id``, like a
real driver. With ``world`` the exact instance masks and class names of each frame
go out as ``ovsam_ros/LabeledMaskArray`` on ``image/ground_truth`` (same header).

    ovsam-demo-camera --source samples --rate 2 --frames 10
    ovsam-demo-camera --source shapes --size 640x480 --rate 15 --compressed jpeg
    ovsam-demo-camera --source world --seed 2026 --size 320x240
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any, Iterator, Optional, Sequence

import cv2
import numpy as np

from ovsam_ros.cli_types import image_size
from ovsam_ros.resources import SAMPLES_DIR  # package data: travels with the code
SOURCES = ("samples", "shapes", "world")
#: Scene stream of the demo camera's shapes world: no training run uses it.
WORLD_DEMO_SEED = 2026


def sample_images() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) for every bundled sample image."""
    images = []
    for path in sorted(SAMPLES_DIR.glob("*.png")):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            images.append((path.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    if not images:
        raise FileNotFoundError(f"no sample images in {SAMPLES_DIR}")
    return images


def shapes_frame(index: int, width: int = 640, height: int = 480, frames: int = 60) -> np.ndarray:
    """Frame ``index`` of a clip: a disc, a square and a triangle moving over a gradient (RGB uint8)."""
    t = (index % frames) / frames
    yy, xx = np.mgrid[:height, :width]
    canvas = np.stack([(xx * 80 // max(1, width)) + 40, (yy * 80 // max(1, height)) + 60,
                       np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    s = min(width, height)
    cx = int(width * (0.2 + 0.6 * t))
    cv2.circle(canvas, (cx, int(height * 0.35)), max(2, s // 8), (220, 40, 40), -1)
    x0 = int(width * (0.75 - 0.5 * t))
    cv2.rectangle(canvas, (x0, int(height * 0.6)), (x0 + s // 5, int(height * 0.6) + s // 5), (40, 200, 60), -1)
    ty = int(height * (0.25 + 0.5 * t))
    tri = np.array([[width // 2, ty], [width // 2 - s // 10, ty + s // 6], [width // 2 + s // 10, ty + s // 6]])
    cv2.fillPoly(canvas, [tri.astype(np.int32)], (230, 210, 30))
    return canvas


def world_frames(size: tuple[int, int] = (320, 240), seed: int = WORLD_DEMO_SEED) -> Iterator[tuple[str, np.ndarray, list]]:
    """Endless (name, RGB frame, [(class name, split, mask)]) over new shapes-world scenes."""
    from ovsam_ros.shapes_world import WORLD_CLASSES, world_scene

    for i in itertools.count():
        rgb, instances = world_scene(seed, i, size)
        truth = [(WORLD_CLASSES[c].name, WORLD_CLASSES[c].split, m) for c, m in instances]
        yield f"world_{seed}_{i:04d}", rgb, truth


def frame_source(source: str, size: tuple[int, int] = (640, 480), clip_frames: int = 60,
                 seed: int = WORLD_DEMO_SEED) -> Iterator[tuple[str, np.ndarray]]:
    """Endless (name, RGB frame) iterator: the samples in a loop, the shapes clip in a loop, or world scenes."""
    if source == "samples":
        yield from itertools.cycle(sample_images())
    elif source == "shapes":
        for i in itertools.count():
            yield f"shapes_{i % clip_frames:03d}", shapes_frame(i, size[0], size[1], clip_frames)
    elif source == "world":
        for name, rgb, _truth in world_frames(size, seed):
            yield name, rgb
    else:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


def truth_message(truth: Sequence[tuple[str, str, np.ndarray]], header: Any) -> Any:
    """Ground truth of one frame as a LabeledMaskArray (label = class name, score 1, split in ``mode``)."""
    from ovsam_ros.msg import LabeledMaskArray
    from ovsam_ros.ros.messages import labeled_mask_msg
    from ovsam_ros.shapes_world import WORLD_CLASSES

    index = {c.name: i for i, c in enumerate(WORLD_CLASSES)}
    msg = LabeledMaskArray()
    msg.header = header
    if truth:
        msg.image_height, msg.image_width = (int(v) for v in truth[0][2].shape)
    msg.mode, msg.vocabulary_name = "ground_truth", "shapes"
    msg.instances = [labeled_mask_msg(m, instance_id=i, prompt_index=i, labels=[(index.get(name, -1), name, 1.0)])
                     for i, (name, _split, m) in enumerate(truth)]
    return msg


def image_message(rgb: np.ndarray, encoding: str, header: Any) -> Any:
    """RGB uint8 -> sensor_msgs/Image in ``encoding`` (rgb8, bgr8, rgba8, bgra8, mono8, mono16)."""
    from ovsam_ros.ros.image_conversion import numpy_to_image

    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding in ("rgba8", "bgra8"):
        base = rgb if encoding == "rgba8" else rgb[:, :, ::-1]
        pixels = np.dstack([base, np.full(rgb.shape[:2], 255, np.uint8)])
    elif encoding == "mono8":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding == "mono16":
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    else:
        raise ValueError(f"unsupported demo encoding {encoding!r}")
    return numpy_to_image(np.ascontiguousarray(pixels), encoding, header)


def compressed_message(rgb: np.ndarray, fmt: str, header: Any) -> Any:
    from sensor_msgs.msg import CompressedImage

    ok, data = cv2.imencode("." + ("jpg" if fmt == "jpeg" else fmt), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode a {fmt} image")
    msg = CompressedImage(header=header, format=fmt)
    msg.data = data.tobytes()
    return msg


#: Ground truth is published reliably (a consumer scoring results must not miss it).
TRUTH_QOS_DEPTH = 10


def make_camera_node(*, source: str = "samples", encoding: str = "rgb8", compressed: str = "",
                     frame_id: str = "camera_optical_frame", size: tuple[int, int] = (640, 480),
                     node_name: str = "demo_camera", seed: int = WORLD_DEMO_SEED, **node_kwargs: Any):
    """A node with ``publish_next()`` that publishes the next frame now (stamped now).

    ``source='world'``: also publishes each frame's ground truth on ``image/ground_truth``
    (published first, so it is there when the frame's result is) and keeps it in ``last_truth``.
    """
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")

    class DemoCamera(Node):
        def __init__(self) -> None:
            super().__init__(node_name, **node_kwargs)
            self.world = world_frames(size, seed) if source == "world" else None
            self.frames = None if self.world is not None else frame_source(source, size)
            self.last_truth: list = []
            self._pending: Optional[tuple] = None
            self.on_header: Optional[Any] = None  # called with each frame's header before it is published
            self.count = 0
            if compressed:
                self.pub = self.create_publisher(CompressedImage, "image/compressed", qos_profile_sensor_data)
            else:
                self.pub = self.create_publisher(Image, "image", qos_profile_sensor_data)
            self.truth_pub = None
            if self.world is not None:
                from ovsam_ros.msg import LabeledMaskArray

                self.truth_pub = self.create_publisher(LabeledMaskArray, "image/ground_truth", TRUTH_QOS_DEPTH)

        def prepare_next(self, with_split: Optional[str] = None, max_skip: int = 50) -> list:
            """Draw the next world scene now (publish_next sends it); returns its ground truth.

            ``with_split`` ("novel"): skip scenes without an object of that split (at most
            ``max_skip``), e.g. for a novel-class text query: whether a scene qualifies depends on
            its ground truth only, never on what the model makes of it."""
            if self.world is None:
                return []
            if self._pending is None:
                self._pending = next(self.world)
            for _ in range(max_skip if with_split else 0):
                if any(split == with_split for _, split, _ in self._pending[2]):
                    break
                self._pending = next(self.world)
            return self._pending[2]

        def publish_next(self) -> tuple[str, Any]:
            if self.world is not None:
                self.prepare_next()
                (name, rgb, self.last_truth), self._pending = self._pending, None
            else:
                name, rgb = next(self.frames)
            header = Header(frame_id=frame_id, stamp=self.get_clock().now().to_msg())
            if self.on_header is not None:
                self.on_header(header)
            msg = compressed_message(rgb, compressed, header) if compressed else image_message(rgb, encoding, header)
            if self.truth_pub is not None:
                self.truth_pub.publish(truth_message(self.last_truth, header))
            self.pub.publish(msg)
            self.count += 1
            return name, msg

    return DemoCamera()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ovsam-demo-camera", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=list(SOURCES), default="samples",
                        help="samples: the bundled photos; shapes: a moving-shapes clip; world: new scenes of the "
                             "shapes world (the bundled model's world) + their ground truth on image/ground_truth")
    parser.add_argument("--seed", type=int, default=WORLD_DEMO_SEED, help="scene stream of --source world")
    parser.add_argument("--rate", type=float, default=2.0, help="frames per second (default 2)")
    parser.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = run until Ctrl-C)")
    parser.add_argument("--frame-id", default="camera_optical_frame")
    parser.add_argument("--encoding", default="rgb8", choices=["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"])
    parser.add_argument("--compressed", choices=["png", "jpeg"], default=None,
                        help="publish sensor_msgs/CompressedImage on image/compressed instead")
    parser.add_argument("--size", type=image_size, default=None,
                        help="shapes clip / world scene size (default 640x480 for shapes, 320x240 for world)")
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(ros_args)])
    if args.rate <= 0:
        parser.error("--rate must be > 0")

    from ovsam_ros.ros.node_cli import ros_environment_defaults

    ros_environment_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=["ovsam-demo-camera", *ros_args])
    size = args.size or ((320, 240) if args.source == "world" else (640, 480))
    node = make_camera_node(source=args.source, encoding=args.encoding, compressed=args.compressed or "",
                            frame_id=args.frame_id, size=size, seed=args.seed)

    period, next_time = 1.0 / args.rate, time.monotonic()
    try:
        while rclpy.ok():
            now = time.monotonic()
            if now >= next_time:
                name, msg = node.publish_next()
                next_time = max(next_time + period, now)  # no catch-up bursts after a stall
                node.get_logger().info(
                    f"frame {node.count}: {name} stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}",
                    throttle_duration_sec=5.0)
                if args.frames and node.count >= args.frames:
                    time.sleep(0.5)  # let the last frame leave before the participant goes away
                    break
            rclpy.spin_once(node, timeout_sec=max(0.0, min(0.05, next_time - time.monotonic())))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
