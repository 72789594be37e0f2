"""The ROS overhead benchmark: summary math (fast) and one short real run in a private network namespace."""

import argparse
import json
import subprocess
import sys

import pytest

from ovsam_ros.benchmark.ros_overhead import click_points, node_overrides, render, render_wire, summarize


def test_overhead_is_e2e_minus_model_time():
    records = [
        {"size": "1280x720", "instances": 3, "e2e_ms": 50.0 + i, "encode_ms": 30.0, "decode_ms": 5.0,
         "recognition_ms": 1.0, "preprocess_ms": 0.5, "publish_ms": 4.0, "total_ms": 41.0,
         "input_age_ms": 6.0, "queue_ms": 1.0}
        for i in range(5)
    ]
    summary = summarize(records)["1280x720"]
    assert summary["model"]["median_ms"] == 36.0
    assert summary["overhead"]["median_ms"] == 16.0  # 52 - 36
    assert summary["transport"]["median_ms"] == 11.0  # 52 - 41
    # split: in = the node's input age, queue = callback -> worker, out = the rest (52 - 6 - 1 - 41)
    assert summary["transport_in"]["median_ms"] == 6.0 and summary["queue"]["median_ms"] == 1.0
    assert summary["transport_out"]["median_ms"] == 4.0
    assert summary["frames"] == 5 and summary["instances"] == 3
    assert "1280x720" in render(summarize(records), "cmd")


def test_wire_bytes_are_medians_of_what_the_client_received():
    records = [
        {"size": "1280x720", "instances": 20, "e2e_ms": 50.0, "encode_ms": 30.0, "decode_ms": 5.0,
         "recognition_ms": 1.0, "preprocess_ms": 0.5, "publish_ms": 2.0 + i, "total_ms": 41.0, "input_age_ms": 6.0,
         "queue_ms": 1.0, "masks_bytes": 20_000 + 1000 * i, "ids_bytes": [30_000, 10_000, 20_000][i], "ids_form": "png",
         "mask_encoding": "coco_rle"}
        for i in range(3)
    ]
    wire = summarize(records)["1280x720"]["wire"]
    assert wire == {"mask_encoding": "coco_rle", "instance_ids": "png", "masks_kb": 21.0, "ids_kb": 20.0,
                    "total_kb": 42.0}  # per-frame sums (50, 31, 42 kB), then their median: not 21 + 20
    table = render_wire({"defaults": {"summary": summarize(records)}})
    assert "| defaults | 1280x720 | 20 | coco_rle | 21.0 | png | 20.0 | 42.0 | 3.00 |" in table


def test_output_presets_and_overrides():
    args = argparse.Namespace(mask_encoding=None, instance_ids=None, no_instance_ids=False)
    assert node_overrides(args, "defaults") == {}  # the node's (and its config YAML's) own defaults
    assert node_overrides(args, "old") == {"mask_encoding": "raw", "publish_instance_ids": True,
                                           "instance_ids_format": "raw"}
    args = argparse.Namespace(mask_encoding="png", instance_ids="png", no_instance_ids=False)
    assert node_overrides(args, "old") == {"mask_encoding": "png", "publish_instance_ids": True,
                                           "instance_ids_format": "png"}
    args = argparse.Namespace(mask_encoding=None, instance_ids=None, no_instance_ids=True)
    assert node_overrides(args, "old") == {"mask_encoding": "raw", "publish_instance_ids": False}


def test_click_points():
    assert click_points(3, 100, 60) == [(50.0, 30.0), (25.0, 15.0), (75.0, 45.0)]
    points = click_points(20, 1280, 720)
    assert len(points) == 20 == len(set(points))
    assert all(0 < x < 1280 and 0 < y < 720 for x, y in points)


@pytest.mark.ros
@pytest.mark.e2e
def test_ros_overhead_benchmark_runs_isolated(tmp_path):
    from ovsam_ros.ros.isolation import isolation_available

    ok, why = isolation_available()
    if not ok:
        pytest.skip(f"needs a private network namespace: {why}")
    out = tmp_path / "ros_overhead.json"
    proc = subprocess.run([sys.executable, "-m", "ovsam_ros.benchmark.ros_overhead", "--sizes", "320x240",
                           "--frames", "3", "--warmup", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "command: python -m ovsam_ros.benchmark.ros_overhead" in proc.stdout
    report = json.loads(out.read_text())
    entry = report["summary"]["320x240"]
    assert entry["frames"] == 3 and entry["instances"] == 3
    assert entry["e2e"]["median_ms"] > entry["model"]["median_ms"] > 0
    assert entry["transport_in"]["median_ms"] > 0  # the node's per-frame input age reached the client
    assert report["dds"] == "shm"
    # what went on the wire with the node's defaults: compressed masks, no ID image
    from ovsam_ros.ros.mask_codec import DEFAULT_MASK_ENCODING

    assert entry["wire"]["mask_encoding"] == DEFAULT_MASK_ENCODING and entry["wire"]["instance_ids"] == "off"
    assert 0 < entry["wire"]["masks_kb"] == entry["wire"]["total_kb"] < 100


@pytest.mark.ros
@pytest.mark.e2e
def test_ros_floor_benchmark_times_a_bare_echo(tmp_path):
    from ovsam_ros.ros.isolation import isolation_available

    ok, why = isolation_available()
    if not ok:
        pytest.skip(f"needs a private network namespace: {why}")
    out = tmp_path / "ros_floor.json"
    proc = subprocess.run([sys.executable, "-m", "ovsam_ros.benchmark.ros_floor", "--sizes", "160x120", "--frames", "3",
                           "--warmup", "1", "--executor", "single", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = json.loads(out.read_text())["results"]["single"]["160x120"]
    assert row["frames"] + row["lost"] == 3 and row["frames"] >= 1
    assert 0 < row["in_ms"] < row["round_trip_ms"]  # the echo answered after its callback saw the frame
