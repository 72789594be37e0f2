"""Generated recordings for the ovsam-label tests: held-out shapes-world scenes recorded into bags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from training_helpers import (  # noqa: E402
    ROOT, compressed_msg, free_port, image_msg, subprocess_env, typestore_with_ovsam, write_bag)

__all__ = ["ROOT", "free_port", "subprocess_env", "record_world_bag", "TOPIC", "WORLD_SEED", "label_args", "run_label"]

TOPIC = "/camera/image_raw"
WORLD_SEED = 4242  # not a seed the demo model's data used (tools/train_demo_model.sh): held-out scenes
SIZE = (160, 120)  # (width, height)


def label_args(bags, out, *extra):
    return [*bags, "--topic", TOPIC, "--out", str(out), "--shard-size", "2", "--no-progress", *extra]


def run_label(args, timeout=300, check=True):
    proc = subprocess.run([sys.executable, "-m", "training.label", *args], cwd=str(ROOT), env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ovsam-label failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def record_world_bag(path: Path, first: int, count: int, storage: str = "mcap", compressed: bool = False,
                     hz: float = 10.0, size: Tuple[int, int] = SIZE) -> Dict[str, List]:
    """Scenes ``first .. first+count-1`` of the shapes world at ``hz`` into a bag; returns the ground truth
    ``{stamp_ns: [(class name, mask), ...]}``."""
    from ovsam_ros.shapes_world import world_classes, world_scene

    store = typestore_with_ovsam()
    classes = world_classes("shapes")
    truth, messages = {}, []
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    for k in range(count):
        rgb, instances = world_scene(WORLD_SEED, first + k, size)
        stamp = 1_700_000_000_000_000_000 + int((first + k) * 1e9 / hz)
        msg = compressed_msg(store, stamp, "cam", rgb) if compressed else image_msg(store, stamp, "cam", rgb)
        messages.append((TOPIC, stamp, msg))
        truth[stamp] = [(classes[c].name, m) for c, m in instances]
    write_bag(path, storage, {TOPIC: msgtype}, messages, store)
    return truth
