"""``ovsam-demo-camera``: a stand-in camera for demos and tests.

Publishes the bundled sample images, or a short generated clip of moving
shapes, as ``sensor_msgs/Image`` (or ``CompressedImage``) on ``image`` at a
fixed rate. Each frame is stamped with the publisher's clock at the moment it
is "captured" and carries a ``frame_id``, like a real driver.

    ovsam-demo-camera --source samples --rate 2 --frames 10
    ovsam-demo-camera --source shapes --size 640x480 --rate 15 --compressed jpeg
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any, Iterator, Optional, Sequence

import cv2
import numpy as np

from ovsam_ros.resources import SAMPLES_DIR  # package data: travels with the code


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


def frame_source(source: str, size: tuple[int, int] = (640, 480), clip_frames: int = 60) -> Iterator[tuple[str, np.ndarray]]:
    """Endless (name, RGB frame) iterator: the samples in a loop, or the shapes clip in a loop."""
    if source == "samples":
        yield from itertools.cycle(sample_images())
    elif source == "shapes":
        for i in itertools.count():
            yield f"shapes_{i % clip_frames:03d}", shapes_frame(i, size[0], size[1], clip_frames)
    else:
        raise ValueError(f"source must be 'samples' or 'shapes', got {source!r}")


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


def make_camera_node(*, source: str = "samples", encoding: str = "rgb8", compressed: str = "",
                     frame_id: str = "camera_optical_frame", size: tuple[int, int] = (640, 480),
                     node_name: str = "demo_camera", **node_kwargs: Any):
    """A node with ``publish_next()`` that publishes the next frame now (stamped now)."""
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header

    class DemoCamera(Node):
        def __init__(self) -> None:
            super().__init__(node_name, **node_kwargs)
            self.frames = frame_source(source, size)
            self.count = 0
            if compressed:
                self.pub = self.create_publisher(CompressedImage, "image/compressed", qos_profile_sensor_data)
            else:
                self.pub = self.create_publisher(Image, "image", qos_profile_sensor_data)

        def publish_next(self) -> tuple[str, Any]:
            name, rgb = next(self.frames)
            header = Header(frame_id=frame_id, stamp=self.get_clock().now().to_msg())
            msg = compressed_message(rgb, compressed, header) if compressed else image_message(rgb, encoding, header)
            self.pub.publish(msg)
            self.count += 1
            return name, msg

    return DemoCamera()


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ovsam-demo-camera", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=["samples", "shapes"], default="samples")
    parser.add_argument("--rate", type=float, default=2.0, help="frames per second (default 2)")
    parser.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = run until Ctrl-C)")
    parser.add_argument("--frame-id", default="camera_optical_frame")
    parser.add_argument("--encoding", default="rgb8", choices=["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"])
    parser.add_argument("--compressed", choices=["png", "jpeg"], default=None,
                        help="publish sensor_msgs/CompressedImage on image/compressed instead")
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="shapes clip size (default 640x480)")
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(ros_args)])
    if args.rate <= 0:
        parser.error("--rate must be > 0")

    from ovsam_ros.ros.node import ros_environment_defaults

    ros_environment_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=["ovsam-demo-camera", *ros_args])
    node = make_camera_node(source=args.source, encoding=args.encoding, compressed=args.compressed or "",
                            frame_id=args.frame_id, size=args.size)

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
