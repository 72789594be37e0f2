"""The node as users run it: `ovsam-node` in one process, a client in another, real DDS on loopback.

Every test runs in a private network namespace with its own ROS_DOMAIN_ID (``ros_group``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_node_helpers import assert_outputs_match, full_masks

from ovsam_ros.ros.isolation import wait_for_line

PROGRAMS = Path(__file__).parent / "programs"
ROOT = Path(__file__).resolve().parents[2]
NODE = Path(sys.executable).parent / "ovsam-node"

pytestmark = [pytest.mark.ros, pytest.mark.e2e]


def start_node(ros_group, tmp_path: Path, *args: str, **params):
    """`ovsam-node --params-file <config/ovsam.yaml + params>`; returns once it is active."""
    config = yaml.safe_load((ROOT / "config" / "ovsam.yaml").read_text())
    # model: the bundled demo model (the node's default, rn50x16, needs downloaded weight files)
    config["/**"]["ros__parameters"].update({"num_threads": 1, "diagnostics_period": 0.5, "model": "shapes", **params})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(config))
    assert NODE.exists(), f"{NODE} missing: run tools/setup.sh (console scripts from setup.py)"
    node = ros_group.start([str(NODE), "--params-file", str(path), *args])
    node.startup_lines = wait_for_line(node, "ovsam-node ready (active)", timeout=120)
    return node


def run_client(ros_group, scenario: str, out: Path, namespace: str = "", timeout: float = 240) -> dict:
    client = ros_group.start([sys.executable, str(PROGRAMS / "node_client.py"), scenario, str(out), namespace])
    wait_for_line(client, "done", timeout=timeout)
    assert client.wait(timeout=30) == 0
    return json.loads((out / "summary.json").read_text())


def load(path: Path, msg_type):
    from rclpy.serialization import deserialize_message

    return deserialize_message(path.read_bytes(), msg_type)


def test_images_and_prompts_in_one_process_masks_out_of_another(ros_group, tmp_path):
    from sensor_msgs.msg import CompressedImage, Image

    from ovsam_ros.msg import LabeledMaskArray
    from ovsam_ros.srv import Segment

    # the ID image is off by default; on, it travels as a PNG (instance_ids_format: png)
    node = start_node(ros_group, tmp_path, "--namespace", "robot1", publish_instance_ids=True)
    out = tmp_path / "out"
    summary = run_client(ros_group, "stream", out, namespace="/robot1")
    assert node.poll() is None

    results = []
    for i in range(3):
        image = load(out / f"image_{i}.bin", Image)
        masks = load(out / f"masks_{i}.bin", LabeledMaskArray)
        ids = load(out / f"ids_{i}.bin", CompressedImage)
        # Header verbatim from the source image, masks in its size, ID image agrees with the masks.
        assert_outputs_match(masks, ids, image.header, (image.height, image.width))
        results.append(masks)
    for masks in results[:2]:  # persistent prompts, made for 320x240, rescaled to 160x120
        assert masks.mode == "prompt"
        assert [m.prompt_index for m in masks.instances] == [0, 1, 2]
        assert all(m.label and m.alternatives for m in masks.instances)
    # rgb8 and bgr8 frames of the same pixels give the same masks
    for a, b in zip(full_masks(results[0]), full_masks(results[1])):
        assert np.array_equal(a, b)
    text = results[2]
    assert (text.mode, text.query) == ("text", "circle") and len(text.instances) <= 2

    assert summary["segment_success"], summary["segment_message"]
    request = load(out / "segment_request.bin", Segment.Request)
    response = load(out / "segment_response.bin", LabeledMaskArray)
    assert_outputs_match(response, None, request.image.header, (80, 100))
    assert len(response.instances) == 1 and response.mode == "prompt"


def test_burst_of_200_frames_never_processes_a_stale_frame(ros_group, tmp_path):
    start_node(ros_group, tmp_path)
    summary = run_client(ros_group, "burst", tmp_path / "out")
    published, processed = summary["published"], summary["processed"]
    burst = [s for s in processed if s >= published[0]]
    assert processed[0] == 1  # the warm-up frame
    assert all(a < b for a, b in zip(processed, processed[1:])), processed  # strictly increasing
    assert burst[-1] == published[-1]  # the newest frame was processed, and it was the last
    assert len(burst) < len(published) // 4, f"processed {len(burst)} of {len(published)}: a backlog"
    diag = summary["diagnostics"]
    received, done = int(diag["frames_received"]), int(diag["frames_processed"])
    # Frames the node saw but skipped are reported as dropped (the rest never left DDS's depth-1 queue).
    assert int(diag["frames_dropped"]) == received - done - int(diag["frames_idle"]) - int(diag["frames_rejected"])
    assert done == len(processed)


def test_bad_frames_and_prompts_do_not_stop_the_node(ros_group, tmp_path):
    from ovsam_ros.msg import LabeledMaskArray

    node = start_node(ros_group, tmp_path, model="tiny")  # pins the UNTRAINED warning of a random model
    out = tmp_path / "out"
    summary = run_client(ros_group, "bad", out)
    assert node.poll() is None
    assert summary["processed"] == [10, 20]  # no output for any of the bad frames 11..15
    assert int(summary["diagnostics"]["frames_rejected"]) >= 4
    nan_prompts = load(out / "masks_nan_prompts.bin", LabeledMaskArray)
    # Both one-shot prompts rejected: the frame runs the persistent prompt instead of coming back empty.
    assert nan_prompts.mode == "prompt" and [m.prompt_index for m in nan_prompts.instances] == [0]
    good = load(out / "masks_good.bin", LabeledMaskArray)
    assert len(good.instances) == 1 and good.header.stamp.sec == 20  # persistent prompt again
    ros_group.stop(node)
    log = node.stdout.read().decode(errors="replace")
    # (the corrupt JPEG the client also sends goes to image/compressed, which a raw-transport node does
    # not subscribe: corrupt compressed data is covered in test_node.py and below with transport compressed)
    for reason in ("step 7 is smaller than one row", "zero size", "unsupported image encoding 'yuv422'",
                   "point coordinates must be finite",
                   "has no area inside the 160x120 image"):
        assert reason in log, reason
    assert "UNTRAINED MODEL" in "\n".join(node.startup_lines)


def test_ovsam_demo_runs_the_ros_pipeline(ros_group, tmp_path):
    """The untrained tiny model on the bundled photos: runs end to end, says loudly it is untrained. The
    model YAML and vocabulary are the user's own files, outside the node's default model_dirs /
    vocabulary_dirs: named on the demo's command line, the node may read them."""
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "my_tiny.yaml"
    model.write_text((ROOT / "config" / "models" / "tiny.yaml").read_text())
    (tmp_path / "vocab").mkdir()
    vocab = tmp_path / "vocab" / "mine.txt"
    vocab.write_text("cat\ndog\nball\n")
    demo = ros_group.start([str(Path(sys.executable).parent / "ovsam"), "demo", "--frames", "3", "--model", str(model),
                            "--vocab", str(vocab), "--scenes", "samples", "--robot-frames", "4",
                            "--output-dir", str(tmp_path / "demo"), "--threads", "1"])
    lines = wait_for_line(demo, "overlays:", timeout=180)
    assert demo.wait(timeout=30) == 0
    text = "\n".join(lines)
    assert "UNTRAINED MODEL" in text
    assert "demo done: 3 frames" in text
    for mode in ("[prompt]", "[text 'cat']", "[everything]"):
        assert mode in text
    # Robot phase: late detections ran on their own frames, with track ids, detector classes and 3D.
    assert "robot phase done: 4 results, 4 on the frame their detections were made for" in text
    assert "detector ball 0.90" in text and "centroid (" in text and "truth (" in text
    assert len(list((tmp_path / "demo").glob("frame_*.png"))) == 3


def test_ovsam_demo_default_scores_the_bundled_model_on_world_scenes(ros_group, tmp_path):
    """The default demo: the bundled shapes model on new world scenes, every result scored against the truth."""
    demo = ros_group.start([str(Path(sys.executable).parent / "ovsam"), "demo", "--frames", "3",
                            "--output-dir", str(tmp_path / "demo"), "--threads", "1"])
    lines = wait_for_line(demo, "latency (stamp -> result)", timeout=240)
    assert demo.wait(timeout=30) == 0
    text = "\n".join(lines)
    assert "UNTRAINED MODEL" not in text and "knows only the synthetic shapes world" in text
    assert "demo done: 3 frames" in text
    for mode in ("[box]", "[point]", "[text '"):
        assert mode in text
    # every prompted object gets a line with its IoU against the truth and the label verdict
    object_lines = [line for line in lines if " IoU " in line and "label " in line]
    assert len(object_lines) >= 2
    assert "score against the ground truth" in text and "label accuracy, novel" in text
    assert "query '" in text
    assert len(list((tmp_path / "demo").glob("frame_*.png"))) == 3


def test_lifecycle_and_parameters_over_dds_recover_from_a_missing_checkpoint(ros_group, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  preset: tiny\n  ovsam_checkpoint: /nonexistent/ovsam.pth\n"
                      "predictor:\n  text_cache_dir: null\n")
    config = yaml.safe_load((ROOT / "config" / "ovsam.yaml").read_text())
    config["/**"]["ros__parameters"].update({"num_threads": 1, "model": str(broken), "model_dirs": str(tmp_path)})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(config))
    node = ros_group.start([str(NODE), "--params-file", str(params), "--no-autostart"])
    wait_for_line(node, "ovsam-node ready (unconfigured)", timeout=120)
    out = tmp_path / "steps.json"
    client = ros_group.start([sys.executable, str(PROGRAMS / "lifecycle_client.py"), str(out)])
    wait_for_line(client, "done", timeout=180)
    steps = json.loads(out.read_text())
    assert steps["initial_state"] == "unconfigured"
    assert steps["configure_missing_checkpoint"] is False
    assert steps["configure_missing_checkpoint_state"] == "unconfigured"  # alive, can try again
    assert steps["set_bad_mode"][0] is False and "one of" in steps["set_bad_mode"][1]
    assert steps["set_model"] == [True, ""]
    assert steps["configure"] is True and steps["configure_state"] == "inactive"
    assert steps["set_model_while_configured"][0] is False and "cleanup" in steps["set_model_while_configured"][1]
    assert steps["activate"] is True and steps["activate_state"] == "active"
    # SIGINT: clean shutdown, exit code 0. The wait is a hang guard (SIGKILL after it gives -9), not a speed
    # bound: the node's own shutdown took > 10 s on a loaded machine.
    assert ros_group.stop(node, timeout=120) == 0
    log = node.stdout.read().decode(errors="replace")
    assert "configure failed" in log and "/nonexistent/ovsam.pth" in log


def test_console_scripts_camera_prompts_node_pipeline(ros_group, tmp_path):
    """ovsam-demo-camera (JPEG on image/compressed) + ovsam-demo-prompts + ovsam-node, as separate processes."""
    from ovsam_ros.msg import LabeledMaskArray

    bindir = Path(sys.executable).parent
    start_node(ros_group, tmp_path, image_transport="compressed")  # the camera below sends JPEG only
    got = tmp_path / "got.bin"
    listener = ros_group.start([sys.executable, str(PROGRAMS / "labeled_mask_listener.py"), str(got),
                                "--ros-args", "-r", "masks:=/ovsam/masks"])
    wait_for_line(listener, "listening", timeout=60)
    ros_group.start([str(bindir / "ovsam-demo-prompts"), "--box", "40,30,280,200", "--image-size", "320x240",
                     "--persistent", "--period", "0.5", "--count", "0"])
    ros_group.start([str(bindir / "ovsam-demo-camera"), "--source", "shapes", "--size", "160x120", "--rate", "5",
                     "--compressed", "jpeg", "--frame-id", "front_camera"])
    wait_for_line(listener, "received 1 instances", timeout=120)
    msg = load(got, LabeledMaskArray)
    assert msg.header.frame_id == "front_camera" and msg.header.stamp.sec > 0
    assert (msg.image_width, msg.image_height, msg.mode) == (160, 120, "prompt")
