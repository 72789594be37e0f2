"""The compile option: CUDA-graph modes CUDA-only (CPU runs unaffected), inductor modes anywhere,
validated, with a persistent cache in the user's cache directory (XDG_CACHE_HOME respected).

Actually compiling takes minutes on a CPU (7.5 min for the tiny model on this loaded VM), so the
cold/warm start-up is measured by ``python -m ovsam_ros.benchmark.startup`` (docs/benchmarks.md),
not here."""

import logging

import numpy as np
import pytest
import torch

from ovsam_ros.model.compile import (CompileCache, check_compile_mode, compile_model, default_compile_cache_dir,
                                     resolve_compile_cache_dir)


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
    assert "ignored on cpu" in caplog.text  # reduce-overhead = CUDA graphs: nothing to do on a CPU


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
    # torch writes its own default (/tmp/torchinductor_<user>) into the environment when anything
    # asks for it first: that is replaced; a directory the user set is kept.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    CompileCache(tmp_path / "b")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "b" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    CompileCache(tmp_path / "c")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    cache.save()  # nothing compiled yet: no file or an empty artefact set, never an error


def test_inductor_modes_compile_on_cpu_with_the_cache(tiny_model_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    model = tiny_model_factory("rn")
    forwards = (model.backbone.forward, model.sam2clip.forward, model.decoder.forward)
    cache = compile_model(model, "default", str(tmp_path / "cc"), torch.device("cpu"))  # wraps; compiles lazily
    assert isinstance(cache, CompileCache) and cache.directory == tmp_path / "cc" and not cache.loaded
    assert model._compile_mode == "default"
    assert all(a != b for a, b in zip(forwards, (model.backbone.forward, model.sam2clip.forward,
                                                  model.decoder.forward)))


def test_cache_dir_default_follows_xdg_cache_home(tmp_path, monkeypatch):
    import pathlib

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_compile_cache_dir() == tmp_path / "xdg" / "ovsam_ros" / "compile"
    assert resolve_compile_cache_dir("default") == tmp_path / "xdg" / "ovsam_ros" / "compile"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the spec says: ignore relative paths
    assert default_compile_cache_dir() == pathlib.Path.home() / ".cache" / "ovsam_ros" / "compile"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_compile_cache_dir() == pathlib.Path.home() / ".cache" / "ovsam_ros" / "compile"
    monkeypatch.setenv("OVSAM_TEST_DIR", str(tmp_path))
    assert resolve_compile_cache_dir("$OVSAM_TEST_DIR/c") == tmp_path / "c"
    assert all(resolve_compile_cache_dir(v) is None for v in (None, "", "off", False))


def test_model_yaml_default_is_the_user_cache():
    from ovsam_ros.loading import PredictorSpec, load_specs

    assert PredictorSpec().compile_cache_dir == "default"
    for name in ("rn50x16", "rn50x16_coco"):
        _, spec = load_specs(name)
        assert spec.compile_cache_dir == "default" and spec.compile in (False, "off")
