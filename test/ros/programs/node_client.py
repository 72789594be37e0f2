"""Drive a running OVSAM node over DDS and record what comes back (test program).

Usage: node_client.py SCENARIO OUT_DIR [NAMESPACE]

Scenarios:
  stream  persistent point/box prompts made for a 2x larger image, two frames; a one-shot text
          query, one frame; the segment service. Writes sent images and received outputs.
  burst   one warm-up frame, then 200 frames as fast as possible with increasing stamps.
  bad     lying / truncated / corrupt frames and NaN prompts, then one good frame.
Writes OUT_DIR/summary.json plus serialized messages (*.bin); prints "done" at the end.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from diagnostic_msgs.msg import DiagnosticArray
from ovsam_ros.msg import LabeledMaskArray
from ovsam_ros.prompts import Prompt
from ovsam_ros.ros.camera_demo import image_message, shapes_frame
from ovsam_ros.ros.diagnostics import values_of
from ovsam_ros.ros.prompt_input import segmentation_prompt_msg
from ovsam_ros.ros.prompt_source import make_prompt_node
from ovsam_ros.srv import Segment

FRAME_ID = "camera_optical_frame"
H, W = 120, 160


def header(sec: int, nanosec: int = 0) -> Header:
    h = Header(frame_id=FRAME_ID)
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    return h


class Client:
    def __init__(self, out: Path, namespace: str) -> None:
        self.out = out
        ns = namespace.rstrip("/")
        self.node = rclpy.create_node("node_client")
        self.prompts = make_prompt_node("node_client_prompts", namespace=ns or None)
        self.image_pub = self.node.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data)
        self.compressed_pub = self.node.create_publisher(CompressedImage, f"{ns}/image/compressed",
                                                         qos_profile_sensor_data)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.cond = threading.Condition()
        self.masks: list = []
        self.ids: dict = {}
        self.diagnostics: list = []
        self.node.create_subscription(LabeledMaskArray, f"{ns}/ovsam/masks", self._on_masks, reliable)
        self.node.create_subscription(Image, f"{ns}/ovsam/instance_ids", self._on_ids, reliable)
        self.node.create_subscription(CompressedImage, f"{ns}/ovsam/instance_ids/compressed", self._on_ids, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable)
        self.segment = self.node.create_client(Segment, f"{ns}/ovsam/segment")
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        self.executor.add_node(self.prompts)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        self.ns = ns

    # -- receiving
    def _on_masks(self, msg) -> None:
        with self.cond:
            self.masks.append(msg)
            self.cond.notify_all()

    def _on_ids(self, msg) -> None:
        with self.cond:
            self.ids[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

    def _on_diag(self, msg) -> None:
        if msg.status and msg.status[0].hardware_id == "ovsam_ros":  # name: "<fully qualified node name>: ovsam"
            with self.cond:
                self.diagnostics.append(values_of(msg))
                self.cond.notify_all()

    def wait_for_stamp(self, sec: int, timeout: float, republish=None):
        """The masks for stamp ``sec``; republishes the frame every 3 s (best effort may lose it)."""
        deadline = time.monotonic() + timeout
        next_retry = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with self.cond:
                for msg in self.masks:
                    if msg.header.stamp.sec == sec:
                        return msg
                self.cond.wait(0.2)
            if republish is not None and time.monotonic() > next_retry:
                republish()
                next_retry = time.monotonic() + 3.0
        raise TimeoutError(f"no masks for stamp {sec} within {timeout} s; got {[m.header.stamp.sec for m in self.masks]}")

    def wait_for_node(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.node.count_subscribers(f"{self.ns}/image") > 0
                    and self.node.count_publishers(f"{self.ns}/ovsam/masks") > 0
                    and self.node.count_subscribers(f"{self.ns}/ovsam/prompts") > 0):
                time.sleep(0.5)  # let the matching finish on both sides
                return
            time.sleep(0.1)
        raise TimeoutError("the OVSAM node did not appear")

    def save(self, name: str, msg) -> None:
        (self.out / f"{name}.bin").write_bytes(serialize_message(msg))

    def publish(self, msg) -> None:
        self.image_pub.publish(msg)

    # -- scenarios
    def stream(self) -> dict:
        image = shapes_frame(3, W, H)
        # Prompts made on a 320x240 view of the same camera: the node rescales them by 1/2.
        prompts = [Prompt(points=[[160.0, 80.0]]), Prompt(box=[40.0, 40.0, 200.0, 200.0]),
                   Prompt(points=[[100.0, 120.0], [280.0, 60.0]], point_labels=[1, 0])]
        self.prompts.send_prompts(prompts, (320, 240), persistent=True)
        time.sleep(0.5)
        sent = []
        for i, (sec, encoding) in enumerate(((1000, "rgb8"), (1001, "bgr8"))):
            msg = image_message(image, encoding, header(sec, 123456789))
            self.save(f"image_{i}", msg)
            self.publish(msg)
            got = self.wait_for_stamp(sec, 60, lambda m=msg: self.publish(m))
            sent.append(sec)
            self.save(f"masks_{i}", got)
        # One-shot text query: applies to the next frame only, and wins over the persistent prompts.
        self.prompts.send_text("circle", max_instances=2)
        time.sleep(0.5)
        msg = image_message(image, "rgb8", header(1002, 5))
        self.save("image_2", msg)
        self.publish(msg)
        self.save("masks_2", self.wait_for_stamp(1002, 60, lambda: self.publish(msg)))
        time.sleep(0.5)  # instance-ID images were published before the masks; let them land
        for i, sec in enumerate((1000, 1001, 1002)):
            ids = next((m for (s, _), m in self.ids.items() if s == sec), None)
            if ids is not None:
                self.save(f"ids_{i}", ids)
        # The segment service, on an image of another size, with a box prompt.
        assert self.segment.wait_for_service(timeout_sec=30)
        request = Segment.Request(image=image_message(shapes_frame(7, 100, 80), "rgb8", header(2000)),
                                  prompts=[segmentation_prompt_msg(Prompt(box=[10.0, 10.0, 60.0, 50.0]))])
        future = self.segment.call_async(request)
        deadline = time.monotonic() + 60
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        response = future.result()
        self.save("segment_request", request)
        self.save("segment_response", response.result)
        return {"segment_success": response.success, "segment_message": response.message}

    def burst(self) -> dict:
        image = image_message(shapes_frame(0, W, H), "rgb8", header(1))
        self.prompts.send_prompts([Prompt(points=[[80.0, 60.0]])], persistent=True)
        time.sleep(0.5)
        self.publish(image)
        self.wait_for_stamp(1, 60, lambda: self.publish(image))  # warm-up: the node is up and matched
        published = []
        pixels = shapes_frame(5, W, H)
        for i in range(200):
            msg = image_message(pixels, "rgb8", header(100 + i, i))
            self.publish(msg)
            published.append(100 + i)
        self.wait_for_stamp(published[-1], 60)
        time.sleep(2.0)  # anything still coming would be a stale frame
        with self.cond:
            count = len(self.diagnostics)
            self.cond.wait_for(lambda: len(self.diagnostics) > count, timeout=10)
            diagnostics = self.diagnostics[-1] if self.diagnostics else {}
            processed = [m.header.stamp.sec for m in self.masks]
        return {"published": published, "processed": processed, "diagnostics": diagnostics}

    def bad(self) -> dict:
        good = shapes_frame(1, W, H)
        self.prompts.send_prompts([Prompt(points=[[80.0, 60.0]])], persistent=True)
        # One-shot NaN / off-image prompts: dropped with a reason, the frame is still answered.
        self.prompts.send_prompts([Prompt(points=[[float("nan"), 1.0]]), Prompt(box=[1e6, 1e6, 2e6, 2e6])])
        time.sleep(0.5)
        first = image_message(good, "rgb8", header(10))
        self.publish(first)
        self.save("masks_nan_prompts", self.wait_for_stamp(10, 60, lambda: self.publish(first)))
        bad = []
        lying = image_message(good, "rgb8", header(11))
        lying.step = 7
        bad.append(lying)
        truncated = image_message(good, "rgb8", header(12))
        truncated.data = bytes(truncated.data)[:100]
        bad.append(truncated)
        zero = image_message(good, "rgb8", header(13))
        zero.width = 0
        bad.append(zero)
        odd = image_message(good, "rgb8", header(14))
        odd.encoding = "yuv422"
        bad.append(odd)
        for msg in bad:
            self.publish(msg)
            time.sleep(0.4)  # one at a time, so each is seen (not replaced by the next)
        corrupt = CompressedImage(header=header(15), format="jpeg")
        corrupt.data = b"\xff\xd8\xff\xe0 definitely not a jpeg"
        self.compressed_pub.publish(corrupt)
        time.sleep(0.4)
        ok = image_message(good, "rgb8", header(20))
        self.publish(ok)
        self.save("masks_good", self.wait_for_stamp(20, 60, lambda: self.publish(ok)))
        with self.cond:
            count = len(self.diagnostics)
            self.cond.wait_for(lambda: len(self.diagnostics) > count, timeout=10)
            diagnostics = self.diagnostics[-1] if self.diagnostics else {}
            processed = [m.header.stamp.sec for m in self.masks]
        return {"processed": processed, "diagnostics": diagnostics}


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    namespace = sys.argv[3] if len(sys.argv) > 3 else ""
    out.mkdir(parents=True, exist_ok=True)
    rclpy.init()
    client = Client(out, namespace)
    print("waiting for the node", flush=True)
    client.wait_for_node()
    print("node found", flush=True)
    summary = getattr(client, scenario)()
    (out / "summary.json").write_text(json.dumps(summary))
    # Stop spinning before anything is destroyed (destroying under a spinning executor aborts).
    client.executor.shutdown(timeout_sec=2.0)
    client.spinner.join(timeout=5.0)
    client.prompts.destroy_node()
    client.node.destroy_node()
    rclpy.try_shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    main()
