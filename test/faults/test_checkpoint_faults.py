"""Checkpoint faults: half-written or corrupt training state, a training state.pt given as a
model. A checkpoint folder counts only with its completion marker (sizes + sha256, written
last); --resume takes the newest complete one and says which and why it skipped others."""

from __future__ import annotations

import logging

import pytest
import torch

from ovsam_ros.model.checkpoints import CheckpointError, read_ovsam_checkpoint
from ovsam_ros.model.config import OVSAMConfig
from ovsam_ros.model.ovsam import OVSAM
from training import engine


@pytest.fixture
def run_dir(tmp_path):
    torch.manual_seed(0)
    model = OVSAM(OVSAMConfig.tiny())
    manager = engine.CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        state = {"format": "ovsam_ros.train_state", "version": 1, "step": step, "rng": engine.rng_state(),
                 "optimizer": {"state": {0: {"exp_avg": torch.randn(64)}}}}
        manager.save(step, model, state, include_backbone=False, extra={})
    return tmp_path


def _step(run_dir, n):
    return run_dir / "checkpoints" / f"step-{n:08d}"


def test_a_truncated_state_falls_back_to_the_previous_complete_checkpoint(run_dir, caplog):
    newest = _step(run_dir, 3) / "state.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # what a full disk or a power cut leaves
    caplog.set_level(logging.INFO)
    # Before: --resume took step 3 and died with a raw PytorchStreamReader traceback.
    chosen = engine.resolve_resume("auto", run_dir)
    assert chosen == _step(run_dir, 2)
    assert f"skipping {_step(run_dir, 3)}: state.pt is {len(data) // 2} bytes" in caplog.text
    assert f"resuming from {_step(run_dir, 2)} (newest complete checkpoint)" in caplog.text
    assert engine.load_resume_state(chosen)["step"] == 2
    with pytest.raises(FileNotFoundError, match=f"truncated.*the newest complete one is {_step(run_dir, 2)}"):
        engine.resolve_resume(str(_step(run_dir, 3)), run_dir)


def test_corruption_of_the_same_size_is_caught_by_the_hash(run_dir, caplog):
    model = _step(run_dir, 3) / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    assert engine.resolve_resume("auto", run_dir) == _step(run_dir, 2)
    assert "model.pt content differs from its sha256" in caplog.text


def test_a_folder_without_its_marker_does_not_count(run_dir, caplog):
    (_step(run_dir, 3) / engine.MARKER).unlink()  # killed between the files and the marker
    assert engine.CheckpointManager(run_dir).latest() == _step(run_dir, 2)
    assert engine.resolve_resume("auto", run_dir) == _step(run_dir, 2)
    assert "no complete.json" in caplog.text
    for n in (1, 2):
        (_step(run_dir, n) / "state.pt").write_bytes(b"")
    assert engine.resolve_resume("auto", run_dir) is None  # nothing complete: a fresh start, said loudly
    assert "no complete checkpoint" in caplog.text


def test_an_unreadable_state_is_one_error_naming_the_file(tmp_path):
    folder = tmp_path / "step-00000001"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=f"{folder / 'state.pt'}: unreadable training state"):
        engine.load_resume_state(folder)


def test_the_training_state_given_as_a_model_says_which_file_to_use(run_dir):
    state = _step(run_dir, 3) / "state.pt"
    # Before: "pass weights_only=False", advice a model-YAML user cannot act on.
    with pytest.raises(CheckpointError) as info:
        read_ovsam_checkpoint(state)
    message = str(info.value)
    assert "is a training-state file" in message and str(_step(run_dir, 3) / "model.pt") in message
    assert "weights_only" not in message
    from ovsam_ros.loading import build_predictor

    with pytest.raises(CheckpointError, match="training-state file"):
        build_predictor({"model": {"ovsam_checkpoint": str(state)}, "predictor": {"text_cache_dir": None}})
    other = run_dir / "pickled.pt"
    torch.save({"w": torch.zeros(2), "meta": engine.DistEnv}, other)  # a class reference: not weights-only
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors"):
        read_ovsam_checkpoint(other)


class _Touch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_resume_never_runs_code_from_a_state_file(run_dir, tmp_path):
    """--resume may point at a run folder copied from anywhere: state.pt is read with the safe
    loader (numpy RNG arrays are data, see the test above) and a code payload is refused."""
    folder = _step(run_dir, 3)
    state = torch.load(folder / "state.pt", weights_only=False)
    marker = tmp_path / "ran"
    state["extra"] = _Touch(marker)
    torch.save(state, folder / "state.pt")
    with pytest.raises(CheckpointError, match="refused to load.*builtins.exec.*Nothing from the file was executed"):
        engine.load_resume_state(folder)
    assert not marker.exists()
