"""Fixtures for the ovsam-label tests: generated bags of held-out shapes-world scenes, one reference run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from label_helpers import label_args, record_world_bag, run_label  # noqa: E402


@pytest.fixture(scope="session")
def world_bags(tmp_path_factory):
    """Two bags (MCAP raw frames, sqlite3 JPEG frames): 14 scenes, and their ground truth by stamp."""
    root = tmp_path_factory.mktemp("bags")
    truth = record_world_bag(root / "drive_a", 0, 8, "mcap")
    truth.update(record_world_bag(root / "drive_b", 8, 6, "sqlite3", compressed=True))
    return {"bags": [str(root / "drive_a"), str(root / "drive_b")], "truth": truth, "root": root}


@pytest.fixture(scope="session")
def reference(world_bags, tmp_path_factory):
    """One plain process over both bags: the output every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "labels"
    proc = run_label(label_args(world_bags["bags"], out))
    return {"out": out, "stdout": proc.stdout}
