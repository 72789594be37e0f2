"""Training says what it does and does what it says (issue #28, items 6 and 7).

Before: a stage-1 run with a ViT-H teacher printed nothing for 13 minutes (the teacher encoded
the first batch inside step 1, no line said so); a wrong data folder was reported after the
models had loaded (39 s, 7.4 GB); ``train.max_steps=300`` stopped at 40 steps (it only capped
epochs x steps); a 3-step run with ``warmup_steps: 500`` trained at lr ~ 0 without a word; a
16UC1 depth topic extracted from a bag became stage-1 training images; ``ovsam segment -v``
was a usage error; TensorBoard lost (or, in readers that do not purge, doubled) the points
around a resume; and ``kill -9`` of the torchrun agent left its workers training to the end,
writing model.pt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from training import engine, stage1, stage2
from training.config import load_config
from training.data import DataError, ImageFolderDataset
from training.data.rosbag import extract_bag, main as extract_main
from training.engine import DistEnv
from training_helpers import (
    PYTHON,
    ROOT,
    free_port,
    image_msg,
    read_metrics,
    stage2_overrides,
    subprocess_env,
    typestore_with_ovsam,
    write_bag,
)


class _Records(logging.Handler):
    """Every record of the ``training`` logger, in order (attached to it directly: works whether
    or not launch's logging made project loggers non-propagating)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> List[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def training_log():
    handler = _Records()
    logger = logging.getLogger("training")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _stage1_cfg(synth, out, *extra):
    return load_config(stage1.DEFAULTS, "stage1_tiny", [
        f"data.images={synth['images']}/train", f"output_dir={out}", "train.batch_size=4", "train.progress=false",
        "train.tensorboard=false", "train.checkpoint_every=0", *extra])


# ----------------------------------------------------------------------------- a: teacher encoding is announced
def test_teacher_encoding_is_announced_before_it_runs_with_counts(synth, tmp_path, training_log, monkeypatch):
    seen_at_first_call = []
    real = stage1.Stage1Task.run_teacher

    def spy(self, images, *args, **kwargs):
        if not seen_at_first_call:
            seen_at_first_call.append(list(training_log.messages()))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(stage1.Stage1Task, "run_teacher", spy)
    cfg = _stage1_cfg(synth, tmp_path / "run", "train.max_steps=2", f"teacher.cache_dir={tmp_path / 'cache'}")
    stage1.train(cfg, quiet=False)
    before = "\n".join(seen_at_first_call[0])
    # the run's plan: how many images, how many already cached (none), before the first step
    assert f"0 of 24 images are in the teacher cache {tmp_path / 'cache'}; the other 24 are encoded" in before
    # and the call itself, with its counts, before the teacher ran
    assert "teacher tiny (float32): encoding 4 of this step's 4 image(s) on cpu" in before
    after = "\n".join(training_log.messages())
    assert "teacher tiny (float32): 4 image(s) in " in after  # how long it took, per image


def test_a_long_teacher_call_says_it_is_still_encoding(synth, tmp_path, training_log):
    cfg = _stage1_cfg(synth, tmp_path / "run", "teacher.batch_size=2")
    task = stage1.Stage1Task(cfg, DistEnv(), None)
    task.heartbeat_s = 0.05
    forward = task.teacher.forward

    def slow(x):
        time.sleep(0.3)
        return forward(x)

    task.teacher.forward = slow
    items = [task.dataset[(0, i)] for i in range(4)]
    batch = {"images": torch.stack([it["image"] for it in items]), "teacher": [None] * 4, "cache_key": [None] * 4}
    task.prepare(batch, DistEnv())
    task.close()
    beats = [m for m in training_log.messages() if "still encoding" in m]
    assert beats, training_log.messages()
    assert any(" of 4 image(s) done after " in m for m in beats)
    assert any("2 of 4 image(s) done" in m for m in beats)  # progress per teacher.batch_size chunk


# ----------------------------------------------------------------------------- b: inputs before models
@pytest.fixture
def no_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the data was checked")

    monkeypatch.setattr(engine, "build_model", refuse)
    monkeypatch.setattr(stage1, "build_teacher", refuse)


def test_stage1_checks_its_images_before_building_any_model(synth, tmp_path, no_models):
    with pytest.raises(FileNotFoundError, match=f"image folder not found: {tmp_path / 'nope'}"):
        stage1.train(_stage1_cfg(synth, tmp_path / "run", f"data.images={tmp_path / 'nope'}"), quiet=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="contains no images"):
        stage1.train(_stage1_cfg(synth, tmp_path / "run", f"data.images={tmp_path / 'empty'}"), quiet=True)


def test_stage2_checks_annotations_and_class_folders_before_building_any_model(synth, tmp_path, no_models):
    def cfg(*extra):
        return load_config(stage2.DEFAULTS, "stage2_tiny",
                           stage2_overrides(synth, str(tmp_path / "unused.pt"), tmp_path / "run", *extra))

    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        stage2.train(cfg(f"data.annotations={tmp_path / 'missing.json'}"), quiet=True)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cup"}]}))
    with pytest.raises(DataError):
        stage2.train(cfg(f"data.annotations={empty}"), quiet=True)
    with pytest.raises(FileNotFoundError, match="class folder root not found"):
        stage2.train(cfg(f"data.class_folders.root={tmp_path / 'no_classes'}"), quiet=True)


# ----------------------------------------------------------------------------- c, d: run length, warmup
@pytest.fixture(scope="module")
def long_short_run(synth, tmp_path_factory):
    """24 images, batch 4: 6 steps per epoch; epochs=1 but max_steps=8; warmup 500 steps."""
    out = tmp_path_factory.mktemp("max_steps") / "run"
    handler = _Records()
    logger = logging.getLogger("training")
    logger.addHandler(handler)
    try:
        info = stage1.train(_stage1_cfg(synth, out, "train.epochs=1", "train.max_steps=8", "train.warmup_steps=500",
                                        "train.log_every=1"), quiet=False)
    finally:
        logger.removeHandler(handler)
    return info, out, handler.records


def test_max_steps_is_the_number_of_steps_epochs_cycle(long_short_run):
    info, out, records = long_short_run
    assert info.steps == 8
    metrics = read_metrics(out)
    assert [r["step"] for r in metrics] == list(range(1, 9))
    assert [r["epoch"] for r in metrics] == [0] * 6 + [1] * 2  # the second epoch's data order, as resume expects
    info_lines = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert any("train.max_steps=8 sets the run length: 8 optimizer steps = 1.33 epochs of 6 steps" in m
               and "train.epochs=1 is ignored" in m for m in info_lines), info_lines
    assert engine.run_length({"epochs": 3, "max_steps": None}, 6) == 18
    assert engine.run_length({"epochs": 3, "max_steps": 5}, 6) == 5  # shorter than the epochs: still the count


def test_a_warmup_longer_than_the_run_is_a_warning(long_short_run):
    _, out, records = long_short_run
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING and "warmup" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "train.warmup_steps=500 is more than the run's 8 steps" in warnings[0]
    assert "never reaches train.lr=0.002" in warnings[0]
    assert max(r["lr"] for r in read_metrics(out)) < 0.1 * 0.002


def test_no_warmup_warning_when_the_run_is_long_enough(synth, tmp_path, training_log):
    stage1.train(_stage1_cfg(synth, tmp_path / "run", "train.max_steps=2", "train.warmup_steps=2"), quiet=False)
    assert not [m for m in training_log.messages() if "warmup_steps" in m]


# ----------------------------------------------------------------------------- e: depth topics in bags
T0 = 1_700_000_000_000_000_000
RAW, DEPTH = "/cam/color/image_raw", "/cam/depth/image_raw"


def _depth_msg(store, stamp: int, depth: np.ndarray, encoding: str):
    Image = store.types["sensor_msgs/msg/Image"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    return Image(header=Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam"),
                 height=depth.shape[0], width=depth.shape[1], encoding=encoding, is_bigendian=0,
                 step=depth.shape[1] * depth.itemsize, data=np.ascontiguousarray(depth).reshape(-1).view(np.uint8))


@pytest.fixture(scope="module")
def rgbd_bag(tmp_path_factory):
    store = typestore_with_ovsam()
    msgs = []
    for i in range(4):
        stamp = T0 + i * 100_000_000
        rgb = np.random.default_rng(i).integers(0, 255, (12, 16, 3), dtype=np.uint8)
        msgs.append((RAW, stamp + 1, image_msg(store, stamp, "cam", rgb)))
        msgs.append((DEPTH, stamp + 2, _depth_msg(store, stamp, np.full((12, 16), 3500 + i, np.uint16), "16UC1")))
    topics = {RAW: "sensor_msgs/msg/Image", DEPTH: "sensor_msgs/msg/Image"}
    return write_bag(tmp_path_factory.mktemp("rgbd") / "bag", "mcap", topics, msgs, store)


def test_extracting_a_depth_topic_for_training_is_refused(rgbd_bag, tmp_path, capsys):
    out = tmp_path / "robot"
    assert extract_main([str(rgbd_bag), "--topic", DEPTH, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"topic {DEPTH} carries 16UC1 frames" in err
    assert RAW in err and "colour" in err and "--depth keep" in err  # which topic to take instead, how to override
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []  # nothing half-written
    # the colour topic goes through, and --depth keep extracts depth on purpose
    assert extract_main([str(rgbd_bag), "--topic", RAW, "--out", str(out)]) == 0
    keep = tmp_path / "rgbd"
    assert extract_main([str(rgbd_bag), "--topic", RAW, "--topic", DEPTH, "--depth", "keep", "--out", str(keep)]) == 0
    assert len(json.loads((keep / "manifest.json").read_text())["frames"]) == 8


def test_stage1_refuses_an_extraction_folder_of_depth_frames(rgbd_bag, tmp_path):
    out = tmp_path / "rgbd"
    extract_bag(str(rgbd_bag), [RAW, DEPTH], str(out), depth="keep")
    with pytest.raises(DataError) as info:
        ImageFolderDataset(str(out / "images"), 64)
    message = str(info.value)
    assert f"topic {DEPTH} (16UC1, 4 frame(s))" in message and RAW in message
    with pytest.raises(DataError, match="16UC1"):
        ImageFolderDataset(str(out / "images" / "cam_depth_image_raw"), 64)
    assert len(ImageFolderDataset(str(out / "images" / "cam_color_image_raw"), 64)) == 4  # the colour folder is fine


# ----------------------------------------------------------------------------- f: ovsam segment -v
def test_verbose_is_accepted_after_the_command_too():
    from ovsam_ros.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["segment", "img.png", "-v"]).verbose is True
    assert parser.parse_args(["everything", "--verbose", "img.png"]).verbose is True
    assert parser.parse_args(["-v", "query", "img.png", "cup"]).verbose is True
    assert parser.parse_args(["segment", "img.png"]).verbose is False
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["segment", "-v", "--help"])
    assert info.value.code == 0


# ----------------------------------------------------------------------------- g: TensorBoard after a resume
def test_tensorboard_shows_each_step_once_after_a_resume(synth, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    sets = ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=3", "train.tensorboard=true"]
    stage1.train(_stage1_cfg(synth, out, *sets), quiet=True)
    # what a kill right before the end leaves: steps 3-4 logged, the last checkpoint is step 2
    shutil.rmtree(out / "checkpoints" / "step-00000004")
    (out / "model.pt").unlink()
    stage1.train(_stage1_cfg(synth, out, *sets), resume="auto", quiet=True)
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 2
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("stage1/loss")]
    assert steps == [1, 2, 3, 4], steps  # before: step 2 purged too ([1, 3, 4])
    losses = {r["step"]: r["loss"] for r in read_metrics(out)}
    assert [e.value for e in acc.Scalars("stage1/loss")] == pytest.approx([losses[s] for s in steps], rel=1e-6)


# ----------------------------------------------------------------------------- h: workers die with their agent
def _state(pid: int) -> str:
    """The process state letter, or '' when it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def _gone(pid: int) -> bool:
    return _state(pid) in ("", "Z", "X")


def _children(pid: int) -> List[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _wait_gone(pids, timeout: float) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout and not all(_gone(p) for p in pids):
        time.sleep(0.05)
    return time.time() - t0


def _kill(pids) -> None:
    for pid in pids:
        if not _gone(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_process_stops_when_its_parent_is_killed(monkeypatch):
    from training import parent_watch

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert parent_watch.stop_with_torchrun_agent() is None  # outside torchrun: nothing (nohup keeps working)
    child = ("import time; from training.parent_watch import stop_with_parent; "
             "print(stop_with_parent(), flush=True); time.sleep(120)")
    parent = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
              "print(p.pid, flush=True); p.wait()")
    proc = subprocess.Popen([PYTHON, "-c", parent], cwd=str(ROOT), env=subprocess_env(), stdout=subprocess.PIPE,
                            text=True)
    pid = None
    try:
        pid = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "prctl"  # armed, by the kernel
        assert not _gone(pid)
        proc.kill()  # SIGKILL: the parent cannot pass anything on
        proc.wait(timeout=10)
        waited = _wait_gone([pid], 10)
        assert _gone(pid), "the child outlived its killed parent"
        assert waited < 5
    finally:
        if pid is not None:
            _kill([pid])
        proc.kill()


def _torchrun() -> list:
    exe = Path(sys.executable).parent / "torchrun"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_kill_9_of_the_torchrun_agent_stops_its_workers_without_a_model(synth, tmp_path):
    out = tmp_path / "run"
    sets = [f"data.images={synth['images']}/train", "train.batch_size=4", "train.max_steps=5000",
            "train.epochs=1000", "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0",
            "train.log_every=1000", "train.device=cpu", "train.warmup_steps=0"]
    cmd = _torchrun() + ["--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                         "-m", "training.stage1", "--config", "stage1_tiny", "--output-dir", str(out)]
    for s in sets:
        cmd += ["--set", s]
    log_file = open(tmp_path / "torchrun.log", "w")
    agent = subprocess.Popen(cmd, cwd=str(ROOT), env=subprocess_env(), stdout=log_file, stderr=subprocess.STDOUT)
    workers: List[int] = []
    try:
        deadline = time.time() + 150
        metrics = out / "metrics.jsonl"
        while time.time() < deadline and agent.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        assert agent.poll() is None, (tmp_path / "torchrun.log").read_text()[-3000:]
        workers = _children(agent.pid)
        assert len(workers) == 2, workers
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
        waited = _wait_gone(workers, 20)
        alive = [w for w in workers if not _gone(w)]
        assert not alive, f"workers {alive} still training {waited:.1f} s after their agent was killed"
        assert waited < 10
        print(f"both workers gone {waited:.2f} s after their agent's SIGKILL")
        time.sleep(1.0)
        assert not (out / "model.pt").exists()
        steps = len(metrics.read_text().splitlines())
        assert 3 <= steps < 5000
    finally:
        _kill(workers)
        if agent.poll() is None:
            agent.kill()
        log_file.close()
