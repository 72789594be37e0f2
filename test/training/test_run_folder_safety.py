"""A training run's output folder: config values checked before it is touched, an --overwrite that
fails before its first step puts the previous run back, a failed first run leaves nothing that
refuses the corrected command, and one run at a time (a lock on <out>/.lock)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time

import pytest

from training import engine, stage1
from training.config import FREE_SPACE_CHOICES, ConfigError, load_config
from training_helpers import ROOT, subprocess_env


def _cfg(synth, out, *extra):
    return load_config(stage1.DEFAULTS, "stage1_tiny", [
        f"data.images={synth['images']}/train", f"output_dir={out}", "train.max_steps=2", "train.batch_size=4",
        "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=1", *extra])


def _files(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != engine.LOCK_FILE}


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr must be a number > 0, got 'abc'"),
    ("train.lr=", "train.lr must be a number > 0, got None"),
    ("train.lr=0", "train.lr must be a number > 0"),
    ("train.lr=-1e-3", "train.lr must be a number > 0"),
    ("train.batch_size=0", "train.batch_size must be an integer >= 1"),
    ("train.batch_size=2.5", "train.batch_size must be an integer >= 1"),
    ("train.max_steps=-1", "train.max_steps must be an integer >= 1, or null"),
    ("train.max_steps=0", "train.max_steps must be an integer >= 1, or null"),
    ("train.free_space_check=nope", "train.free_space_check must be one of refuse, warn, off, got 'nope'"),
    ("seed=abc", "seed must be an integer >= 0"),
    ("seed=-3", "seed must be an integer >= 0"),
])
def test_bad_train_values_are_refused_when_the_config_loads(override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace("+", r"\+")) as err:
        load_config(stage1.DEFAULTS, "stage1_tiny", ["train.max_steps=3", override])
    assert len(str(err.value).splitlines()) == 1


def test_good_train_values_load():
    cfg = load_config(stage1.DEFAULTS, "stage1_tiny", ["train.max_steps=null", "train.epochs=2", "train.lr=1",
                                                         "train.free_space_check=warn", "seed=7"])
    assert cfg["train"]["lr"] == 1 and cfg["train"]["max_steps"] is None


def test_free_space_choices_match_the_engine():
    assert FREE_SPACE_CHOICES == engine.FREE_SPACE_CHECKS


@pytest.fixture(scope="module")
def previous_run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("prev") / "run"
    stage1.train(_cfg(synth, out), quiet=True)
    assert (out / "model.pt").is_file() and list((out / "checkpoints").iterdir())
    return out


def test_overwrite_that_fails_before_its_first_step_keeps_the_previous_run(previous_run, synth, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(previous_run, out)
    before = _files(out)
    # 24 images are fewer than one batch of 1000: refused inside the run, after the model and data loaded
    with pytest.raises(ValueError, match="fewer than one batch"):
        stage1.train(_cfg(synth, out, "train.batch_size=1000"), quiet=True, overwrite=True)
    assert _files(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != engine.LOCK_FILE]
    # the corrected command replaces it
    stage1.train(_cfg(synth, out, "train.max_steps=1"), quiet=True, overwrite=True)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(engine._TRASH)]


def test_a_first_run_that_fails_before_its_first_step_does_not_block_the_corrected_one(synth, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="fewer than one batch"):
        stage1.train(_cfg(synth, out, "train.batch_size=1000"), quiet=True)
    assert engine.run_folder_contents(out) == []
    info = stage1.train(_cfg(synth, out, "train.max_steps=1"), quiet=True)  # no --overwrite needed
    assert info.final_model.is_file()


HOLD = """
import sys, time
from training.engine import lock_output_dir
fd, err = lock_output_dir(sys.argv[1])
print("locked" if fd is not None else err, flush=True)
time.sleep(120)
"""


def test_a_second_run_in_a_locked_folder_is_refused_at_once(synth, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=str(ROOT), env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(engine.RunFolderError) as err:
            stage1.train(_cfg(synth, out), quiet=True)
        assert time.monotonic() - t0 < 30
        message = str(err.value)
        assert str(out) in message and f"pid {holder.pid}" in message and len(message.splitlines()) == 1
        assert engine.run_folder_contents(out) == []  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with its process: the folder is free
    info = stage1.train(_cfg(synth, out, "train.max_steps=1"), quiet=True)
    assert info.final_model.is_file()
    # and a finished run released its own lock (this process can take it again)
    fd, problem = engine.lock_output_dir(out)
    assert problem is None
    os.close(fd)


def test_the_lock_is_exclusive_between_two_descriptors(tmp_path):
    first, problem = engine.lock_output_dir(tmp_path / "o")
    assert problem is None
    try:
        second, problem = engine.lock_output_dir(tmp_path / "o")
        assert second is None and "in use by another training run" in problem and f"pid {os.getpid()}" in problem
    finally:
        os.close(first)
    third, problem = engine.lock_output_dir(tmp_path / "o")
    assert problem is None
    os.close(third)
