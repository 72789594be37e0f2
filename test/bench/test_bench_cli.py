"""`ovsam bench` smoke test on the tiny model (CPU, seconds) and the harness helpers."""

import json
import sys

import pytest
import torch

from ovsam_ros import cli
from ovsam_ros.benchmark.cli import main as bench_main
from ovsam_ros.benchmark.harness import Timing, measure_memory, percentile, time_call
from ovsam_ros.benchmark.stages import StageRunner, TimingOptions
from ovsam_ros.model.vocabulary import VILD_TEMPLATES

PROMPTS = (1, 3)
VOCABS = (80, 1203)
GRIDS = (4,)

IMAGE_STAGES = ["preprocess", "clip_encoder", "sam2clip", "fpn", "encode_image",
                "baseline.sam_encoder", "baseline.clip_dense"]
PROMPT_STAGES = ["prompt_decoder", "roi_head", "decode", "clip_region_branch", "postprocess", "predict",
                 "baseline.sam_decoder", "baseline.feature_crop", "baseline.image_crop"]
COUNTED = {"clip_encoder", "sam2clip", "fpn", "encode_image", "baseline.sam_encoder", "baseline.clip_dense",
           "prompt_decoder", "roi_head", "decode", "clip_region_branch", "baseline.sam_decoder",
           "baseline.feature_crop", "baseline.image_crop", "recognition"}


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    previous = torch.get_num_threads()
    argv = ["bench", "--model", "tiny", "--threads", "1", "--frame", "320x240",
            "--prompts", *map(str, PROMPTS), "--vocab", *map(str, VOCABS), "--grid", *map(str, GRIDS),
            "--repeats", "2", "--warmup", "0", "--json", str(out), "-q"]
    try:
        assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(previous)
    return json.loads(out.read_text())


def test_bench_json_has_every_stage_with_timing_memory_and_flops(bench_report):
    assert bench_report["command"].startswith("ovsam bench --model tiny")
    (run,) = bench_report["runs"]
    stages = {s["label"]: s for s in run["stages"]}
    expected = list(IMAGE_STAGES)
    expected += [f"{name}[prompts={n}]" for n in PROMPTS for name in PROMPT_STAGES]
    expected += [f"recognition[prompts={n},classes={c}]" for n in PROMPTS for c in VOCABS]
    expected += [f"everything[grid={g}x{g}]" for g in GRIDS]
    expected += [f"text_encoder[texts={256 // len(VILD_TEMPLATES) * len(VILD_TEMPLATES)}]"]
    missing = [label for label in expected if label not in stages]
    assert not missing, missing
    for label in expected:
        stage = stages[label]
        t = stage["timing"]
        assert t is not None and t["repeats"] == 2 and 0 < t["median_ms"] <= t["p90_ms"], label
        assert stage["memory"]["kind"] == "cpu_rss_sampled" and stage["memory"]["peak_mb"] >= 0, label
        if stage["name"] in COUNTED:
            assert stage["gmacs"] is not None and stage["flops"] > 0, label
    assert stages["encode_image"]["flops"] == sum(stages[k]["flops"] for k in ("clip_encoder", "sam2clip", "fpn"))
    # Recognition is timed as the inference path runs it: the packed matrix of the valid synonyms
    # (LVIS-sized: fewer rows than 1203 classes x 8 padded slots).
    note = stages["recognition[prompts=1,classes=1203]"]["note"]
    assert note.startswith("packed text [") and 1203 <= int(note.split("[")[1].split(",")[0]) < 1203 * 8, note


def test_text_encoder_row_scales_one_batch_to_each_vocabulary(bench_report):
    """set_vocabulary's cost: one real encode_vocabulary batch, times the batch count of each size
    (classes x the shipped vocabulary's mean synonyms / names per batch)."""
    import math

    from ovsam_ros.benchmark.vocab_shape import synonym_shape

    (run,) = bench_report["runs"]
    (row,) = [s for s in run["stages"] if s["name"] == "text_encoder"]
    assert row["group"] == "vocabulary"
    per_batch = 256 // len(VILD_TEMPLATES)
    batch_s = row["timing"]["median_ms"] / 1000
    for c in VOCABS:
        batches = math.ceil(c * synonym_shape(c)[1] / per_batch)
        assert run["text_encode_estimate_s"][str(c)] == pytest.approx(batches * batch_s, rel=1e-3, abs=1e-3)
        assert f"{c} classes" in row["note"]
    assert run["text_encode_estimate_s"]["1203"] > run["text_encode_estimate_s"]["80"]


def test_bench_report_params_summary_and_targets(bench_report):
    (run,) = bench_report["runs"]
    params = run["params"]
    assert params["ovsam_image_path"] == sum(params[k] for k in (
        "clip_image_encoder", "sam2clip", "clip2sam", "prompt_encoder_and_decoder"))
    assert run["baseline_sam"] == "tiny" and params["baseline_image_path"] > 0
    per = {e["prompts"]: e for e in run["summary"]["per_prompts"]}
    assert set(per) == set(PROMPTS)
    for entry in per.values():
        assert entry["ovsam"]["time_ms"] > 0 and entry["ovsam"]["gmacs"] > 0
        for b in ("feature-crop", "image-crop"):
            assert entry[b]["time_ratio"] > 0 and entry[b]["gmacs_ratio"] > 0
    names = {t["name"] for t in bench_report["targets"]}
    assert {"flops_ratio_vs_two_backbone", "recognition_vs_encoder", "one_more_prompt_vs_encoder"} <= names
    # The paper's targets are about RN50x16: a tiny model is never judged.
    assert all(t["pass"] is None for t in bench_report["targets"])
    env = bench_report["environment"]
    assert env["device"] == "cpu" and env["torch_threads"] == 1


def test_bench_flops_only_needs_no_timing(tmp_path, capsys):
    out = tmp_path / "f.json"
    assert cli.main(["bench", "--model", "tiny", "--flops-only", "--prompts", "2", "--vocab", "coco",
                     "--grid", "--baseline", "none", "--json", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "command: ovsam bench --model tiny --flops-only" in printed
    report = json.loads(out.read_text())
    stages = report["runs"][0]["stages"]
    assert all(s["timing"] is None for s in stages)
    assert any(s["label"] == "decode[prompts=2]" and s["flops"] > 0 for s in stages)
    assert not any(s["name"].startswith("baseline.") for s in stages)


def test_bench_rejects_bad_settings(capsys):
    assert cli.main(["bench", "--flops-only", "--input-size", "100", "-q"]) == 2
    assert "multiples of 32" in capsys.readouterr().err


def test_percentile_and_timing_helpers():
    assert percentile([5.0], 90) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90) == pytest.approx(9.1)
    t = Timing.from_samples([0.001, 0.003, 0.002], warmup=1)
    assert t.median_ms == pytest.approx(2.0) and t.min_ms == pytest.approx(1.0) and t.repeats == 3
    calls = []
    timing = time_call(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=2)
    assert len(calls) == 5 and timing.repeats == 3
    mem = measure_memory(lambda: torch.ones(2_000_000), torch.device("cpu"))  # ~8 MB
    assert mem.kind == "cpu_rss_sampled" and mem.peak_mb >= 0


def test_cpu_memory_of_a_stage_sees_a_known_allocation():
    # A stage that allocates (and touches) 8 MiB. The runner first times it, so the same 8 MiB have
    # been allocated and freed several times before the memory call: the measurement must still see them.
    runner = StageRunner(TimingOptions(device=torch.device("cpu"), repeats=3, warmup=1))
    eight = runner.run("alloc", "image", lambda: torch.ones(2 * 2**20)).memory  # 2 Mi float32 = 8 MiB
    assert eight.kind == "cpu_rss_sampled" and 6 <= eight.peak_mb <= 12, eight
    thirty_two = runner.run("alloc", "image", lambda: torch.ones(8 * 2**20), params={"mb": 32}).memory
    assert 30 <= thirty_two.peak_mb <= 40, thirty_two
    tiny = runner.run("none", "image", lambda: torch.ones(16)).memory
    assert tiny.peak_mb < 1, tiny


@pytest.mark.parametrize("argv0, prog", [("/opt/ros/install/bin/ovsam-bench", "ovsam-bench"),
                                         ("/src/ovsam_ros/bench.py", "python -m ovsam_ros.bench")])
def test_help_names_the_command_that_ran(monkeypatch, capsys, argv0, prog):
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    with pytest.raises(SystemExit) as done:
        bench_main()
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {prog} ")
