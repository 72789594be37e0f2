"""Fixtures for the training-pipeline tests (CPU, tiny models, synthetic data)."""

from __future__ import annotations

import pytest

from training.synthetic import make_dataset


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """A small synthetic COCO-format dataset (24 train / 8 val images, mixed RLE + polygons)."""
    root = tmp_path_factory.mktemp("synth")
    return make_dataset(root, train=24, val=8, seed=3, fmt="mixed", class_folders=2)


@pytest.fixture(scope="session")
def stage1_checkpoint(tmp_path_factory, synth):
    """A tiny model after a few stage-1 steps (an ovsam_ros checkpoint; stage-2 tests start from it)."""
    from training import stage1
    from training.config import load_config

    out = tmp_path_factory.mktemp("stage1")
    cfg = load_config(stage1.DEFAULTS, "stage1_tiny", [
        f"data.images={synth['images']}/train", f"output_dir={out}", "train.max_steps=2", "train.batch_size=4",
        "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0"])
    info = stage1.train(cfg, quiet=True)
    return str(info.final_model)
