"""The ROS overhead benchmark: summary math (fast) and one short real run in a private network namespace."""

import json
import subprocess
import sys

import pytest

from ovsam_ros.benchmark.ros_overhead import render, summarize


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
