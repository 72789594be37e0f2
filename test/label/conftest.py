"""Fixtures for the ovsam-label tests: generated bags of held-out shapes-world scenes, one reference run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from label_helpers import ROOT, TOPIC, record_world_bag, subprocess_env  # noqa: E402


@pytest.fixture(scope="session")
def world_bags(tmp_path_factory):
    """Two bags (MCAP raw frames, sqlite3 JPEG frames): 14 scenes, and their ground truth by stamp."""
    root = tmp_path_factory.mktemp("bags")
    truth = record_world_bag(root / "drive_a", 0, 8, "mcap")
    truth.update(record_world_bag(root / "drive_b", 8, 6, "sqlite3", compressed=True))
    return {"bags": [str(root / "drive_a"), str(root / "drive_b")], "truth": truth, "root": root}


def label_args(bags, out, *extra):
    return [*bags, "--topic", TOPIC, "--out", str(out), "--shard-size", "2", "--no-progress", *extra]


def run_label(args, timeout=300, check=True):
    proc = subprocess.run([sys.executable, "-m", "training.label", *args], cwd=str(ROOT), env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ovsam-label failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def reference(world_bags, tmp_path_factory):
    """One plain process over both bags: the output every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "labels"
    proc = run_label(label_args(world_bags["bags"], out))
    return {"out": out, "stdout": proc.stdout}
