"""Model and CLI input faults: a preset that contradicts the checkpoint, misleading load
logs, a typo'd vocabulary through the real ``ovsam`` command."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from ovsam_ros.cli import SAMPLES_DIR
from ovsam_ros.loading import build_predictor
from ovsam_ros.model.checkpoints import save_ovsam
from ovsam_ros.model.config import OVSAMConfig
from ovsam_ros.model.ovsam import OVSAM


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ck") / "model.pt"
    save_ovsam(OVSAM(OVSAMConfig.tiny("rn")), path)  # backbone weights included
    return path


def _spec(checkpoint, **model):
    return {"model": {"ovsam_checkpoint": str(checkpoint), **model},
            "predictor": {"vocabulary": "cup, door", "device": "cpu", "text_cache_dir": None}}


def test_a_preset_that_contradicts_the_checkpoint_is_an_error(checkpoint):
    # Before: preset rn50x16 + a checkpoint of another architecture silently used the checkpoint's.
    with pytest.raises(ValueError) as info:
        build_predictor(_spec(checkpoint, preset="tiny-convnext"))
    message = str(info.value)
    assert "'tiny-convnext'" in message and "ovsam-tiny-convnext" in message and "ovsam-tiny-rn" in message
    assert build_predictor(_spec(checkpoint, preset="tiny")).trained  # agreeing preset: fine
    assert build_predictor(_spec(checkpoint)).trained  # no preset: the checkpoint's own


def test_the_log_says_what_was_loaded_from_where(checkpoint, caplog):
    caplog.set_level(logging.INFO)
    build_predictor(_spec(checkpoint))
    # Before: open_clip's "No pretrained weights loaded ... initialized randomly" for a trained model.
    assert "No pretrained weights loaded" not in caplog.text
    assert f"loaded OVSAM (ovsam-tiny-rn) from {checkpoint}; CLIP backbone weights from the same file" in caplog.text


def test_the_ovsam_command_refuses_a_typoed_vocabulary():
    """The real process: exit status 2 and nothing on stdout. One run (each costs seconds of imports):
    the other refusals (a missing vocabulary file, ...) are pinned in-process by
    test_cli::test_inputs_are_checked_before_the_model_loads, through the same main()."""
    image = SAMPLES_DIR / "coffee.png"
    done = subprocess.run([sys.executable, "-m", "ovsam_ros.cli", "segment", str(image), "--point", "160,120",
                           "--vocab", "lvsi"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "unknown vocabulary 'lvsi'" in done.stderr, done.stderr
    assert done.stdout == ""  # no table of masks labeled "lvsi"
