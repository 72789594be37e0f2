"""Checkpoint pruning counts complete checkpoints only: incomplete step folders (a save cut short by
an older ovsam_ros, a truncated file after a full disk) never push a complete one out, and are left
in place for inspection (they are never resumed from: test_checkpoint_faults)."""

from __future__ import annotations

import shutil

import torch

from ovsam_ros.model.config import OVSAMConfig
from ovsam_ros.model.ovsam import OVSAM
from training import engine


def test_pruning_keeps_the_newest_complete_checkpoints_whatever_incomplete_folders_lie_around(tmp_path):
    torch.manual_seed(0)
    model = OVSAM(OVSAMConfig.tiny())
    manager = engine.CheckpointManager(tmp_path, keep=2)
    for step in (1, 2):
        manager.save(step, model, {"step": step}, include_backbone=False, extra={})
    # Newer than anything complete: a folder without its marker and one with a truncated state.pt.
    no_marker = manager.root / engine.STEP_DIR.format(8)
    no_marker.mkdir()
    (no_marker / "model.pt").write_bytes(b"half a model")
    truncated = manager.root / engine.STEP_DIR.format(9)
    shutil.copytree(manager.root / engine.STEP_DIR.format(2), truncated)
    state = truncated / "state.pt"
    state.write_bytes(state.read_bytes()[:10])
    assert engine.checkpoint_problem(truncated, hash_files=False) is not None
    assert [p.name for p in manager.list()] == ["step-00000001", "step-00000002"]

    manager.save(3, model, {"step": 3}, include_backbone=False, extra={})

    # keep=2 complete ones: step 2 and step 3 (counting the incomplete 8 and 9 would have kept only 3)
    assert [p.name for p in manager.list()] == ["step-00000002", "step-00000003"]
    assert no_marker.is_dir() and truncated.is_dir()  # never a checkpoint, never silently deleted
    assert engine.resolve_resume("auto", tmp_path) == manager.root / "step-00000003"
