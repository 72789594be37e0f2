"""Helpers for the training tests: rosbag2 writing, subprocess runs, small configs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subprocess_env(threads: int = 1) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_module(module: str, args: Sequence[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([PYTHON, "-m", module, *args], cwd=str(ROOT), env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def stage2_overrides(synth, init: str, out, *extra: str) -> List[str]:
    return [f"data.annotations={synth['train']}", f"data.images={synth['images']}", f"model.init_checkpoint={init}",
            f"output_dir={out}", "train.progress=false", "train.tensorboard=false", *extra]


def read_metrics(output_dir: Path) -> List[Dict[str, Any]]:
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- rosbag2
def typestore_with_ovsam():
    from rosbags.typesys import Stores, get_typestore

    from training.data.rosbag import ovsam_types

    store = get_typestore(Stores.LATEST)
    store.register(ovsam_types())
    return store


def image_msg(store, stamp_ns: int, frame_id: str, rgb: np.ndarray, encoding: str = "rgb8"):
    """A little-endian sensor_msgs/Image of ``rgb`` (H, W, 3 RGB, or H, W grey for mono) in ``encoding``.

    ``rgb``'s dtype is the encoding's (uint8 for ``rgb8``, uint16 for ``rgb16`` / ``mono16``); ``bgr*``
    encodings get the channels reversed, ``mono*`` ones the first channel of a colour array."""
    Image = store.types["sensor_msgs/msg/Image"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    pixels = rgb[:, :, ::-1] if encoding.startswith("bgr") and rgb.ndim == 3 else rgb
    if encoding.startswith("mono") and pixels.ndim == 3:
        pixels = rgb[:, :, 0]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    pixels = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))  # is_bigendian=0
    return Image(header=Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id),
                 height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, is_bigendian=0,
                 step=rgb.shape[1] * channels * pixels.itemsize, data=pixels.reshape(-1).view(np.uint8))


def compressed_msg(store, stamp_ns: int, frame_id: str, rgb: np.ndarray, data: Optional[bytes] = None):
    import cv2

    Msg = store.types["sensor_msgs/msg/CompressedImage"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    if data is None:
        ok, enc = cv2.imencode(".png", rgb[:, :, ::-1])
        assert ok
        data = enc.tobytes()
    return Msg(header=Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id),
               format="png", data=np.frombuffer(data, np.uint8))


def labeled_array_msg(store, stamp_ns: int, frame_id: str, shape, instances: Iterable[tuple],
                      mask_encoding: str = "raw"):
    """instances: (mask bool HxW, label, class_index, score); masks in ``mask_encoding`` (LabeledMask)."""
    from ovsam_ros.ros.mask_codec import RAW, encode_crop
    T = store.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    ROI, Arr = T["sensor_msgs/msg/RegionOfInterest"], T["ovsam_ros/msg/LabeledMaskArray"]
    LM, LS = T["ovsam_ros/msg/LabeledMask"], T["ovsam_ros/msg/LabelScore"]
    Point = T["geometry_msgs/msg/Point"]
    header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)
    out = []
    for i, (mask, label, idx, score) in enumerate(instances):
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        crop = (mask[y0:y1, x0:x1].astype(np.uint8) * 255)
        payload = b"" if mask_encoding == RAW else encode_crop(crop > 0, mask_encoding)
        if payload:  # compressed: the mask travels in mask_data, the image stays empty
            crop = np.zeros((0, 0), np.uint8)
        m = image_msg(store, stamp_ns, frame_id, np.repeat(crop[:, :, None], 3, 2), "mono8")
        out.append(LM(instance_id=i, prompt_index=-1, label=label, class_index=idx, score=score,
                      alternatives=[LS(label=label, class_index=idx, score=score)], predicted_iou=0.9,
                      stability_score=0.9,
                      bbox=ROI(x_offset=int(x0), y_offset=int(y0), height=int(y1 - y0), width=int(x1 - x0),
                               do_rectify=False), mask_encoding=mask_encoding, mask=m,
                      mask_data=np.frombuffer(payload, np.uint8),
                      track_id=0, source_id="", source_class_id="", source_score=0.0, has_position=False,
                      centroid=Point(x=0.0, y=0.0, z=0.0), extent_min=Point(x=0.0, y=0.0, z=0.0),
                      extent_max=Point(x=0.0, y=0.0, z=0.0), point_count=0))
    return Arr(header=header, image_height=shape[0], image_width=shape[1], mode="everything", query="",
               vocabulary_name="test", vocabulary_version="1", tracked=False, position_frame_id="",
               position_status="", instances=out)


def write_bag(path: Path, storage: str, topics: Dict[str, str], messages: Sequence[tuple], store=None) -> Path:
    """messages: (topic, bag_time_ns, msg). topics: topic -> msgtype."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = store or typestore_with_ovsam()
    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {t: writer.add_connection(t, ty, typestore=store) for t, ty in topics.items()}
        for topic, t, msg in messages:
            writer.write(conns[topic], t, store.serialize_cdr(msg, topics[topic]))
    return path
