"""ovsam-train-bench: the training throughput benchmark runs end to end and its estimates add up."""

from __future__ import annotations

import json

import pytest

from training import bench


def test_hour_estimates_by_hand():
    res = {"stage1-teacher": {"images_per_s": 4.0}, "stage1-cached": {"images_per_s": 20.0},
           "stage2": {"images_per_s": 10.0}}
    est = bench.estimate_hours(res)
    # stage 1: the teacher's epoch, then 23 cached epochs; stage 2: 12 epochs
    assert est["robot stage 1 (10K frames, 24 epochs)"] == pytest.approx((10_000 / 4 + 23 * 10_000 / 20) / 3600)
    assert est["robot stage 2 (10K labelled frames, 12 epochs)"] == pytest.approx(12 * 10_000 / 10 / 3600)
    assert est["reference stage 2 (COCO train2017, 12 epochs)"] == pytest.approx(12 * 118_287 / 10 / 3600)
    assert bench.estimate_hours({"stage2": {"images_per_s": 10.0}})["robot stage 1 (10K frames, 24 epochs)"] is None


def test_summary_skips_warmup_steps():
    hist = [{"step": 1, "step_s": 10.0, "data_s": 9.0}, {"step": 2, "step_s": 0.5, "data_s": 0.1},
            {"step": 3, "step_s": 1.5, "data_s": 0.1}]
    s = bench.summarize(hist, warmup=1, batch=4)
    assert s["steps"] == 2 and s["images_per_s"] == pytest.approx(8 / 2.0) and s["data_wait"] == pytest.approx(0.1)


@pytest.mark.e2e
def test_tiny_benchmark_runs_all_stages(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--model", "tiny", "--steps", "1", "--warmup", "1", "--batch-size", "2",
                       "--num-workers", "0", "--source-size", "96", "128", "--instances", "2",
                       "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["stages"]) == set(bench.STAGES)
    for r in report["stages"].values():
        assert r["images_per_s"] > 0 and r["steps"] == 1
    assert all(h is not None and h > 0 for h in report["estimated_hours"].values())
    table = capsys.readouterr().out
    assert "| stage1-cached |" in table and "robot stage 2" in table
    # the cached pass really read the cache: the teacher pass filled it, one entry per image
    assert len(list((tmp_path / "work" / "teacher_cache").rglob("*.pt"))) == 4
