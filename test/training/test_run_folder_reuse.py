"""One run per output folder (issue #28, item 2).

Before: the same command again without --resume started over silently in the old run's folder,
truncated metrics.jsonl, and its new checkpoints were rotated away at once (the old, higher
step folders counted as newest); a later --resume then continued the OLD run, whatever the config
said, and overwrote the new model.pt with the old run's weights. Now such a folder is refused
before any model is loaded (--resume continues it, --overwrite deletes it), and --resume refuses
a checkpoint trained with other settings than training.engine.SAFE_RESUME_KEYS allows.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from training import engine, stage1, stage2
from training.config import load_config
from training_helpers import ROOT, free_port, read_metrics, stage2_overrides, subprocess_env


def _cfg(synth, out, *extra):
    return load_config(stage1.DEFAULTS, "stage1_tiny", [
        f"data.images={synth['images']}/train", f"output_dir={out}", "train.batch_size=4", "train.max_steps=3",
        "train.checkpoint_every=1", "train.keep_checkpoints=2", "train.progress=false", "train.tensorboard=true",
        *extra])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, synth):
    """A finished 3-step stage-1 run (checkpoints step 2 and 3, metrics, model.pt, config.yaml, tb/)."""
    out = tmp_path_factory.mktemp("first_run") / "run"
    stage1.train(_cfg(synth, out), quiet=True)
    return out


@pytest.fixture
def run_dir(tmp_path, first_run):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    for i, events in enumerate(sorted((out / "tb").rglob("events.out.tfevents.*"))):
        # a name no new writer can take (they hold the time, the host and the pid, as the fixture's did)
        events.rename(events.with_name(f"events.out.tfevents.0.first-run.{i}"))
    return out


def _snapshot(folder: Path):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _steps(folder: Path):
    return sorted(p.name for p in (folder / "checkpoints").iterdir())


@pytest.fixture
def no_model(monkeypatch):
    """Any model or data loading fails the test: a refusal must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(stage1, "Stage1Task", refuse)
    monkeypatch.setattr(stage2, "Stage2Task", refuse)


def test_a_second_run_into_the_same_folder_is_refused_and_changes_nothing(synth, run_dir, no_model):
    before = _snapshot(run_dir)
    with pytest.raises(ValueError) as info:
        stage1.train(_cfg(synth, run_dir), quiet=True)
    message = str(info.value)
    assert f"output folder {run_dir} already holds a training run" in message
    for what in ("checkpoints/ (2: step-00000002, step-00000003)", "metrics.jsonl (3 steps)", "model.pt",
                 "config.yaml", "tb/"):
        assert what in message
    assert "--resume" in message and "--overwrite" in message
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("leftover", ["metrics.jsonl", "config.yaml", "model.pt", "checkpoints/step-00000001/x"])
def test_stage2_refuses_any_trace_of_a_run(synth, tmp_path, leftover, no_model):
    out = tmp_path / "s2"
    (out / leftover).parent.mkdir(parents=True, exist_ok=True)
    (out / leftover).write_text("{}\n")
    cfg = load_config(stage2.DEFAULTS, "stage2_tiny", stage2_overrides(synth, str(tmp_path / "unused.pt"), out))
    with pytest.raises(ValueError, match=f"output folder {out} already holds a training run: .*--overwrite"):
        stage2.train(cfg, quiet=True)
    assert (out / leftover).read_text() == "{}\n"


def test_an_empty_or_unrelated_folder_is_fine():
    plan = engine.plan_output_dir(Path("/nonexistent/run"), {}, None, None)
    assert plan.error is None and not plan.clear


def test_overwrite_leaves_only_the_new_run(synth, run_dir):
    old = _snapshot(run_dir)
    old_events = {k for k in old if k.startswith("tb/")}
    assert old_events
    (run_dir / "notes.txt").write_text("mine")  # not the run's: stays
    info = stage1.train(_cfg(synth, run_dir, "train.max_steps=2", "train.lr=4e-3"), quiet=True, overwrite=True)
    assert info.steps == 2
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert _steps(run_dir) == ["step-00000001", "step-00000002"]
    for step in (1, 2):  # the new run's checkpoints, with the new config
        state = torch.load(run_dir / "checkpoints" / f"step-{step:08d}" / "state.pt", weights_only=False)
        assert state["step"] == step and state["config"]["train"]["lr"] == 4e-3
    assert (run_dir / "model.pt").read_bytes() != old["model.pt"]
    new = _snapshot(run_dir)
    assert not old_events & set(new), "the old run's TensorBoard events are still there"
    assert any(k.startswith("tb/") for k in new)
    assert "lr: 0.004" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert not list(run_dir.glob(".overwritten-*"))


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_load(synth, run_dir, tmp_path):
    before = _snapshot(run_dir)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        stage1.train(_cfg(synth, run_dir, f"data.images={tmp_path / 'nothing'}"), quiet=True, overwrite=True)
    assert _snapshot(run_dir) == before


def test_overwrite_with_resume_is_a_contradiction(synth, run_dir, no_model):
    with pytest.raises(ValueError, match="--overwrite and --resume contradict each other"):
        stage1.train(_cfg(synth, run_dir), resume="auto", quiet=True, overwrite=True)


def test_resume_with_a_changed_lr_is_refused_naming_the_key(synth, run_dir, no_model):
    before = _snapshot(run_dir)
    with pytest.raises(ValueError) as info:
        stage1.train(_cfg(synth, run_dir, "train.lr=4e-3", "train.max_steps=6", "seed=1"), resume="auto",
                     quiet=True)
    message = str(info.value)
    assert f"cannot resume from {run_dir / 'checkpoints' / 'step-00000003'}" in message
    assert "  train.lr: 0.002 -> 0.004\n" in message and "  seed: 0 -> 1\n" in message
    assert "--set seed=0 --set train.lr=0.002" in message
    assert "train.max_steps: " not in message  # a safe change is not named as a reason
    assert _snapshot(run_dir) == before


def test_resume_with_only_safe_changes_continues(synth, run_dir, caplog):
    old_lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    caplog.set_level(logging.INFO, logger="training")
    cfg = _cfg(synth, run_dir, "train.max_steps=5", "train.log_every=1", "train.checkpoint_every=2",
               "train.keep_checkpoints=3", "train.tensorboard=false")
    info = stage1.train(cfg, resume="auto", quiet=False)
    assert info.steps == 5
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines[:3] == old_lines and [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5]
    assert _steps(run_dir) == ["step-00000003", "step-00000004", "step-00000005"]
    assert "resuming with changed settings: " in caplog.text
    assert "train.max_steps 3 -> 5" in caplog.text and "train.checkpoint_every 1 -> 2" in caplog.text
    assert "the cosine schedule now ends at step 5 instead of 3" in caplog.text


def test_resume_from_an_older_checkpoint_with_newer_ones_is_refused(synth, run_dir, no_model):
    older = run_dir / "checkpoints" / "step-00000002"
    with pytest.raises(ValueError, match=r"holds newer checkpoints of its run \(step-00000003\)"):
        stage1.train(_cfg(synth, run_dir), resume=str(older), quiet=True)


def test_resume_into_another_folder_that_holds_a_run_is_refused(synth, run_dir, tmp_path, no_model):
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match=f"output folder {other} already holds a training run"):
        stage1.train(_cfg(synth, other), resume=str(run_dir), quiet=True)


def test_resume_before_the_first_checkpoint_restarts_cleanly(synth, run_dir):
    # what a run killed before its first checkpoint leaves: config, metrics, events
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "model.pt").unlink()
    old_events = {k for k in _snapshot(run_dir) if k.startswith("tb/")}
    assert old_events
    info = stage1.train(_cfg(synth, run_dir, "train.max_steps=2", "train.log_every=1"), resume="auto", quiet=True)
    assert info.steps == 2 and [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert not old_events & set(_snapshot(run_dir)), "the first attempt's TensorBoard events are still there"


def test_resume_before_the_first_checkpoint_with_another_config_is_refused(synth, run_dir, no_model):
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "model.pt").unlink()
    with pytest.raises(ValueError, match=r"(?s)holds the start of another run.*train\.batch_size: 4 -> 8"):
        stage1.train(_cfg(synth, run_dir, "train.batch_size=8"), resume="auto", quiet=True)


def test_config_changes_names_dotted_keys():
    old = {"seed": 0, "_config_file": "a.yaml", "model": {"overrides": {}}, "train": {"lr": 1e-3, "log_every": 5}}
    new = {"seed": 0, "_config_file": "b.yaml", "model": {"overrides": {"backbone": {"width": 2}}},
           "train": {"lr": 1e-3, "log_every": 7, "new_key": 1}}
    defaults = {"seed": 0, "model": {"overrides": {}}, "train": {"lr": 1e-4, "log_every": 10, "new_key": 1}}
    # train.new_key: added by a newer version, at its default: not a change
    assert engine.config_changes(old, new, defaults) == [
        ("model.overrides.backbone", engine._ABSENT, {"width": 2}), ("train.log_every", 5, 7)]
    assert all(k.count(".") <= 1 for k in engine.SAFE_RESUME_KEYS)


def test_the_cli_refuses_with_exit_2_and_overwrite_is_a_flag(synth, run_dir, capsys, no_model):
    args = ["--config", "stage1_tiny", "--output-dir", str(run_dir), "--set", f"data.images={synth['images']}/train"]
    assert stage1.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ovsam-train-stage1: error: output folder {run_dir} already holds a training run")
    from training.cli_common import STAGE_COMMANDS, build_parser

    assert build_parser(*STAGE_COMMANDS["stage2"]).parse_args(["--overwrite"]).overwrite
    with pytest.raises(SystemExit):  # stage 0 does not use the engine: no such flag
        build_parser(*STAGE_COMMANDS["stage0"]).parse_args(["--overwrite"])


@pytest.mark.e2e
def test_torchrun_ranks_refuse_together_and_overwrite_once(synth, run_dir):
    exe = Path(subprocess.sys.executable)
    torchrun = [str(exe.parent / "torchrun")] if (exe.parent / "torchrun").is_file() else \
        [str(exe), "-m", "torch.distributed.run"]
    sets = [f"data.images={synth['images']}/train", "train.batch_size=4", "train.max_steps=2",
            "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=1", "train.device=cpu"]
    args = ["-m", "training.stage1", "--config", "stage1_tiny", "--output-dir", str(run_dir)]
    for s in sets:
        args += ["--set", s]

    def launch(*extra):
        cmd = torchrun + ["--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                          *args, *extra]
        return subprocess.run(cmd, cwd=str(ROOT), env=subprocess_env(), capture_output=True, text=True, timeout=240)

    before = _snapshot(run_dir)
    proc = launch()
    assert proc.returncode != 0
    assert proc.stderr.count("already holds a training run") == 2, proc.stderr[-3000:]  # both ranks, no hang
    assert _snapshot(run_dir) == before
    proc = launch("--overwrite")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert _steps(run_dir) == ["step-00000001", "step-00000002"]
