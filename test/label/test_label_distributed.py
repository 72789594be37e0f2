"""ovsam-label under torchrun (2 CPU processes, gloo): the same dataset as one process; a rank killed with
SIGKILL mid-run and a rerun lose nothing and redo no finished shard; a rerun of a finished job labels nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from label_helpers import ROOT, free_port, label_args, run_label, subprocess_env


def _torchrun(args, port=None):
    exe = Path(sys.executable).parent / "torchrun"
    launcher = [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    return launcher + ["--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port or free_port()}",
                       "-m", "training.label", *args]


def _dataset(out: Path) -> dict:
    """What the run produced: labels.json bytes, data_report.json, every frame file's bytes."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}
    return {"labels": (out / "labels.json").read_bytes(), "report": json.loads((out / "data_report.json").read_text()),
            "images": files}


def _shards(out: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / ".label" / "shards").glob("*.json")}


def test_two_processes_give_the_dataset_of_one(reference, world_bags, tmp_path):
    out = tmp_path / "two"
    proc = subprocess.run(_torchrun(label_args(world_bags["bags"], out)), cwd=str(ROOT), env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "rank 0:" in proc.stdout and "rank 1:" in proc.stdout  # both ranks labelled
    summary = json.loads((out / "run_summary.json").read_text())
    # 7 shards of <= 2 frames (4 + 3), dealt round-robin: rank 0 gets 4 shards, rank 1 three
    assert summary["processes"] == 2 and [r["frames"] for r in summary["per_rank"]] == [8, 6]
    one, two = _dataset(reference["out"]), _dataset(out)
    assert one["images"] == two["images"] and len(one["images"]) == 14
    assert one["labels"] == two["labels"]
    assert one["report"] == two["report"]
    # a rerun of the finished job labels nothing, touches no shard and writes the same dataset
    before = _shards(out)
    proc = run_label(label_args(world_bags["bags"], out))
    assert "total: 0 frame(s) this run" in proc.stdout
    assert _shards(out) == before and _dataset(out)["labels"] == one["labels"]


def _children(pid: int) -> list:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(k) for k in text]
    return kids


def test_kill_9_of_a_rank_then_rerun_loses_and_repeats_nothing(reference, world_bags, tmp_path):
    out = tmp_path / "killed"
    args = label_args(world_bags["bags"], out)[:-3] + ["--shard-size", "1", "--no-progress"]
    launcher = subprocess.Popen(_torchrun(args), cwd=str(ROOT), env=subprocess_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    shard_dir = out / ".label" / "shards"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(list(shard_dir.glob("*.json"))) < 3:
            time.sleep(0.02)
        workers = _children(launcher.pid)
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)  # one rank, mid-run
        launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()
    assert launcher.returncode != 0
    done = _shards(out)
    assert 3 <= len(done) < 14, "the kill came too late (or too early) to test a resume"
    assert not (out / "labels.json").exists()
    proc = subprocess.run(_torchrun(args), cwd=str(ROOT), env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    after = _shards(out)
    assert {k: after[k] for k in done} == done  # finished shards were not redone
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["frames_labelled_this_run"] == 14 - len(done)  # ... and only the rest was labelled
    assert _dataset(out) == _dataset(reference["out"])


def test_rank_zero_gives_up_on_a_hung_rank_and_a_rerun_finishes(reference, world_bags, tmp_path):
    """Before: rank 0 polled forever for the shards of a rank that hangs (torchrun only stops ranks
    that die). Now it exits 2 after --wait-timeout without progress, naming the rank; the finished
    shards are kept and a plain rerun finishes the same dataset."""
    out = tmp_path / "hung"
    args = label_args(world_bags["bags"], out, "--wait-timeout", "4")
    cmd = _torchrun(args)
    cmd[cmd.index("training.label")] = "hang_rank_one"
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "without any progress from rank(s) [1]" in proc.stderr and "rerun the same command" in proc.stderr
    assert not (out / "labels.json").exists()
    kept = _shards(out)
    assert len(kept) == 4  # rank 0's four shards (round-robin of 7), finished before it gave up
    proc = run_label(label_args(world_bags["bags"], out))
    assert "total: 6 frame(s) this run" in proc.stdout  # only rank 1's three shards were redone
    assert {k: v for k, v in _shards(out).items() if k in kept} == kept
    assert _dataset(out)["labels"] == _dataset(reference["out"])["labels"]


def test_a_negative_wait_timeout_is_refused(world_bags, tmp_path):
    proc = run_label(label_args(world_bags["bags"], tmp_path / "o", "--wait-timeout", "-1"), check=False)
    assert proc.returncode == 2 and "--wait-timeout must be" in proc.stderr
