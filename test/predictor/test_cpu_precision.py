"""fp16 on a CPU runs fp32 (issue #28): the published rn50x16 YAML says ``device: auto`` and
``precision: fp16``, and fp16 on a CPU gave no result in 10 minutes against 33 s in fp32.

Every entry point that builds a predictor from a model YAML (CLI, ROS node, ovsam-evaluate,
benchmarks) goes through :func:`ovsam_ros.loading.build_predictor`, which applies
:func:`ovsam_ros.runtime.resolve_precision` and logs ONE warning saying so. Large models also log
their load progress (logger ``ovsam_ros.load``); tiny ones stay quiet.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ovsam_ros.loading import build_predictor
from ovsam_ros.prompts import Prompt
from ovsam_ros.resources import SAMPLES_DIR

FALLBACK = "running fp32 instead"
CUDA = torch.cuda.is_available()


def tiny_yaml(tmp_path: Path, precision: str, device: str = "cpu", name: str = "model.yaml", **model) -> Path:
    """A tiny-preset model YAML (config/models/tiny.yaml with ``precision`` and ``device``)."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "model": {"preset": "tiny", "seed": 0, **model},
        "predictor": {"vocabulary": "cat, dog, cup", "templates": "vild", "device": device,
                      "precision": precision, "top_k": 3, "text_cache_dir": None},
    }))
    return path


def fallback_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ovsam_ros.runtime" and FALLBACK in r.getMessage()]


def run(predictor, image: np.ndarray):
    predictor.set_image(image)
    return predictor.predict([Prompt(points=[[200, 150]], point_labels=[1]), Prompt(box=[40, 30, 300, 260])])


@pytest.mark.parametrize("device", ["cpu", pytest.param("auto", marks=pytest.mark.skipif(
    CUDA, reason="device auto resolves to CUDA here, where fp16 stays fp16"))])
def test_fp16_yaml_on_a_cpu_runs_fp32_bit_for_bit_and_says_so_once(tmp_path, caplog, device):
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    with caplog.at_level(logging.WARNING):
        half = build_predictor(tiny_yaml(tmp_path, "fp16", device, "half.yaml"))
    (record,) = fallback_records(caplog)  # exactly one line, a warning, naming the YAML and the cost
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert message.startswith("precision fp16 (model YAML ") and "half.yaml" in message
    assert "on cpu: running fp32 instead" in message and "slower than fp32" in message
    assert "bf16" in message  # the opt-in where it is faster, or why not on this CPU

    assert half.device.type == "cpu" and half.precision == "fp32"
    model = half.model
    for part in (model.backbone.clip.visual, model.sam2clip, model.clip2sam, model.decoder):
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    assert half._packed_text is None or half._packed_text.matrix.dtype == torch.float32

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        full = build_predictor(tiny_yaml(tmp_path, "fp32", device, "full.yaml"))
    assert not fallback_records(caplog)  # fp32 asks for nothing to fall back from
    for a, b in zip(run(half, image), run(full, image), strict=True):
        assert a.mask.dtype == b.mask.dtype and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.low_res_logits, b.low_res_logits)
        assert a.predicted_iou == b.predicted_iou and [(l.name, l.score) for l in a.labels] == [
            (l.name, l.score) for l in b.labels]
    assert half.features.clip_features[-1].dtype == torch.float32


def test_explicit_fp16_on_cpu_also_falls_back_and_says_it_was_requested(tmp_path, caplog):
    """``--precision fp16 --device cpu`` (an override of build_predictor): fp32 too, and the line
    says the request was explicit. bf16 asked for on a CPU is honoured."""
    with caplog.at_level(logging.WARNING):
        predictor = build_predictor(tiny_yaml(tmp_path, "fp32", "auto"), device="cpu", precision="fp16")
    (record,) = fallback_records(caplog)
    assert predictor.precision == "fp32" and record.getMessage().startswith("precision fp16 (requested) on cpu")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        bf16 = build_predictor(tiny_yaml(tmp_path, "fp32"), precision="bf16")
    assert bf16.precision == "bf16" and not fallback_records(caplog)
    assert {p.dtype for p in bf16.model.sam2clip.parameters()} == {torch.bfloat16}


def test_resolve_precision_changes_only_fp16_on_a_cpu(caplog):
    from ovsam_ros.runtime import resolve_precision

    with caplog.at_level(logging.WARNING):
        assert resolve_precision("fp16", torch.device("cuda")) == "fp16"  # no CUDA needed to decide
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
        assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("fp16", torch.device("cpu"), source="x.yaml") == "fp32"
    assert [r.getMessage()[:31] for r in caplog.records] == ["precision fp16 (x.yaml) on cpu:"]
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_cli_segment_with_an_fp16_yaml_on_cpu_completes_and_prints_the_fallback_line(tmp_path):
    script = Path(sys.executable).with_name("ovsam")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "ovsam_ros.cli"]
    out = tmp_path / "result.json"
    result = subprocess.run(
        [*command, "segment", str(SAMPLES_DIR / "chelsea.png"), "--model", str(tiny_yaml(tmp_path, "fp16", "auto")),
         "--point", "200,150", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    fallback = [line for line in result.stderr.splitlines() if FALLBACK in line]
    assert len(fallback) == 1 and fallback[0].startswith("WARNING ovsam_ros.runtime: precision fp16 (model YAML ")
    assert "ovsam_ros.load:" not in result.stderr  # a tiny model loads quietly
    assert out.is_file() and "1 instance(s)" in result.stdout


def test_large_loads_log_each_stage_and_weight_file_even_under_a_warning_root(tmp_path, caplog, monkeypatch):
    """What a user sees while rn50x16 loads (here: the tiny model with its SAM2CLIP / CLIP2SAM /
    SAM files, counted as large): every stage and file with its size, then per-stage times, at
    INFO, although the root logger is at WARNING (as ``ovsam`` configures it). Tiny loads: quiet."""
    from ovsam_ros import loading
    from ovsam_ros.model.checkpoints import export_reference_checkpoints, file_size_text

    from predictor_helpers import tiny_model

    sam2clip, clip2sam = export_reference_checkpoints(tiny_model())
    torch.save(sam2clip, tmp_path / "sam2clip.pth")
    torch.save(clip2sam, tmp_path / "clip2sam.pth")
    sam = {k: v for k, v in tiny_model().decoder.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    torch.save(sam, tmp_path / "sam.pth")
    files = {"sam_checkpoint": str(tmp_path / "sam.pth"), "sam2clip_checkpoint": str(tmp_path / "sam2clip.pth"),
             "clip2sam_checkpoint": str(tmp_path / "clip2sam.pth")}
    config = tiny_yaml(tmp_path, "fp32", **files)
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.WARNING)  # as `ovsam` runs; caplog's handler on the root takes every level
    try:
        build_predictor(config)
        assert not [r for r in caplog.records if r.name == "ovsam_ros.load"]  # small files: quiet
        monkeypatch.setattr(loading, "LARGE_LOAD_BYTES", 1)
        caplog.clear()
        build_predictor(config)
    finally:
        root.setLevel(previous)
    lines = [r.getMessage() for r in caplog.records if r.name == "ovsam_ros.load" and r.levelno == logging.INFO]
    assert lines[0].startswith("loading model tiny on cpu in fp32: 3 weight file(s), ")
    assert lines[1].startswith("CLIP ") and lines[1].endswith("image + text towers: random init (no clip_weights)")
    assert lines[2].startswith("SAM2CLIP, CLIP2SAM, prompt encoder/decoder: building")
    for stage, name in (("SAM prompt encoder/decoder", "sam.pth"), ("SAM2CLIP", "sam2clip.pth"),
                        ("CLIP2SAM", "clip2sam.pth")):
        path = tmp_path / name
        assert f"{stage}: loading {path} ({file_size_text(path)})" in lines, (stage, lines)
        assert file_size_text(path).endswith(("kB", "MB"))
    assert any(line.startswith("inference path + vocabulary: cpu, fp32, vocabulary") for line in lines)
    assert lines[-1].startswith("model tiny ready in ") and "CLIP2SAM" in lines[-1]
    assert logging.getLogger("ovsam_ros.load").level == logging.NOTSET  # raised during the load only
