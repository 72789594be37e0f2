"""The compile option: CUDA-only (CPU runs are unaffected), validated, with a persistent cache."""

import logging

import numpy as np
import pytest
import torch

from ovsam_ros.model.compile import CompileCache, check_compile_mode, compile_model


def test_modes_are_checked_and_yaml_off_means_off():
    assert check_compile_mode(False) == "off" and check_compile_mode(None) == "off"  # YAML 'off' is False
    assert check_compile_mode("reduce-overhead") == "reduce-overhead"
    with pytest.raises(ValueError, match="compile must be one of"):
        check_compile_mode("reduce_overhead")


def test_cpu_runs_are_untouched(tiny_model_factory, caplog):
    model = tiny_model_factory("rn")
    forwards = (model.backbone.forward, model.sam2clip.forward, model.decoder.forward)
    with caplog.at_level(logging.INFO, logger="ovsam_ros.model.compile"):
        assert compile_model(model, "reduce-overhead", None, torch.device("cpu")) is None
    assert (model.backbone.forward, model.sam2clip.forward, model.decoder.forward) == forwards
    assert "ignored on cpu" in caplog.text


def test_predictor_option_on_cpu_still_predicts(tiny_model_factory, tmp_path):
    from ovsam_ros.predictor import OVSAMPredictor
    from ovsam_ros.prompts import Prompt

    predictor = OVSAMPredictor(tiny_model_factory("rn"), vocabulary=None, compile="reduce-overhead",
                               compile_cache_dir=str(tmp_path))
    assert not predictor.compiled
    predictor.set_image(np.zeros((64, 96, 3), np.uint8))
    assert len(predictor.predict([Prompt(points=[[10, 10]])])) == 1
    with pytest.raises(ValueError, match="compile must be one of"):
        OVSAMPredictor(tiny_model_factory("rn"), vocabulary=None, compile="fast")


def test_cache_directory_and_a_broken_cache_file(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    (tmp_path / "ovsam_compile_artifacts.bin").write_bytes(b"not a cache")
    with caplog.at_level(logging.WARNING, logger="ovsam_ros.model.compile"):
        cache = CompileCache(tmp_path)
    assert not cache.loaded and "compiling from scratch" in caplog.text
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"].startswith(str(tmp_path))
    cache.save()  # nothing compiled yet: no file or an empty artefact set, never an error
