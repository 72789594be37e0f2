"""Issue #24 item 6: one validation for every key of a model YAML.

Before: ``ensemble_alpha: .nan`` ran and printed NaN scores; ``everything_multimask: "false"``
read as true (``names_only: "false"`` was refused); ``top_k: "five"``, ``templates: 3`` and
``text_cache_dir: 5`` crashed with raw TypeErrors; ``seed: "abc"`` did not name the key. Now
each key has one rule (ovsam_ros.model_yaml_values) and an error names the file, the key, the
value and what the key takes, before anything loads."""

from __future__ import annotations

import math
import re
from dataclasses import fields

import pytest
import yaml

from ovsam_ros.loading import CONFIG_DIR, ModelSpec, PredictorSpec, build_predictor, load_specs
from ovsam_ros.model_yaml_values import PREDICTOR_RULES, check_model_values

NAN, INF = float("nan"), float("inf")

# (section, key, bad value, words the error must contain besides the key and the value[, key text, value text])
BAD_VALUES = [
    ("model", "preset", "huge", "unknown model preset"),
    ("model", "preset", 5, "one of"),
    ("model", "overrides", "decoder", "a mapping"),
    ("model", "clip_weights", 5, "a file path"),
    ("model", "ovsam_checkpoint", ["a.pt"], "a file path"),
    ("model", "sam_checkpoint", True, "a file path"),
    ("model", "sam2clip_checkpoint", "", "a file path"),
    ("model", "clip2sam_checkpoint", 1.5, "a file path"),
    ("model", "seed", "abc", "a whole number"),
    ("model", "seed", -1, "a whole number from 0"),
    ("model", "seed", True, "a whole number"),
    ("model", "seed", 2.5, "a whole number"),
    ("model", "backend", "tensorrt", "one of onnx, torch"),
    ("model", "onnx_dir", 5, "a folder path"),
    ("model", "onnx_providers", "CPUExecutionProvider", "a list of ONNX Runtime execution provider"),
    ("model", "onnx_providers", [5], "a provider name", "model.onnx_providers[0] must be", "got 5 (a whole number)"),
    ("model", "notice", 5, "a text"),
    ("predictor", "vocabulary", 5, "a string or a list of class names"),
    ("predictor", "vocabulary", [], "a string or a list of class names"),
    ("predictor", "vocabulary", ["cup", 3], "a string or a list of class names"),
    ("predictor", "templates", 3, "a list of templates"),
    ("predictor", "templates", [], "a list of templates"),
    ("predictor", "templates", ["no braces"], "exactly one '{}'", "predictor.templates", "'no braces'"),
    ("predictor", "device", 0, "auto, cpu, cuda or cuda:N"),
    ("predictor", "device", "gpu", "auto, cpu, cuda or cuda:N"),
    ("predictor", "precision", "fp8", "one of bf16, fp16, fp32"),
    ("predictor", "precision", 16, "one of bf16, fp16, fp32"),
    ("predictor", "top_k", "five", "a whole number >= 1"),
    ("predictor", "top_k", 0, "a whole number >= 1"),
    ("predictor", "top_k", 2.5, "a whole number >= 1"),
    ("predictor", "top_k", True, "a whole number >= 1"),
    ("predictor", "text_cache_dir", 5, "a folder path"),
    ("predictor", "optimize", "false", "true or false"),
    ("predictor", "attention", "fast", "one of chunked, flex, full"),
    ("predictor", "compile", True, "one of off, default"),
    ("predictor", "compile", "fast", "one of off, default"),
    ("predictor", "compile_cache_dir", 5, "a folder path"),
    ("predictor", "sam_iou", "no", "true or false"),
    ("predictor", "everything_multimask", "false", "true or false"),
    ("predictor", "clip_ensemble", 1, "true or false"),
    ("predictor", "ensemble_alpha", NAN, "a finite number from 0.0 to 1.0"),
    ("predictor", "ensemble_alpha", INF, "a finite number from 0.0 to 1.0"),
    ("predictor", "ensemble_alpha", 1.5, "a finite number from 0.0 to 1.0"),
    ("predictor", "ensemble_alpha", "0.1", "a finite number from 0.0 to 1.0"),
    ("predictor", "ensemble_alpha", True, "a finite number from 0.0 to 1.0"),
    ("predictor", "ensemble_beta", -0.1, "a finite number from 0.0 to 1.0"),
    ("predictor", "names_only", "false", "true or false"),
    ("predictor", "exclude_unused", "yes", "true or false"),
    ("predictor", "max_synonyms", 0, "a whole number >= 1"),
    ("predictor", "max_synonyms", "3", "a whole number >= 1"),
    ("predictor", "resize", "bilinear", "one of pil, cv2"),
    ("predictor", "roi_box", "box", "one of mask, largest_component"),
]


def _spec_keys(cls):
    return {f.name for f in fields(cls)}


def test_every_key_has_a_rule_and_a_bad_value_here():
    """A new YAML key without a rule (or without a case below) fails here."""
    assert set(PREDICTOR_RULES) == _spec_keys(PredictorSpec)
    assert set(check_model_values.__globals__["_model_rules"](["tiny"])) == _spec_keys(ModelSpec)
    covered = {(case[0], case[1]) for case in BAD_VALUES}
    assert covered == {("model", k) for k in _spec_keys(ModelSpec)} | {("predictor", k) for k in _spec_keys(PredictorSpec)}


def _write(tmp_path, section, key, value):
    data = {"model": {"preset": "tiny"}, "predictor": {"device": "cpu", "text_cache_dir": None}}
    data[section][key] = value
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")  # nan -> .nan, inf -> .inf: as a user writes them
    return path


def _shown(value):
    return "nan" if isinstance(value, float) and math.isnan(value) else repr(value)


@pytest.mark.parametrize("case", BAD_VALUES, ids=[f"{c[0]}.{c[1]}={c[2]!r}" for c in BAD_VALUES])
def test_a_bad_value_is_one_error_naming_file_key_value_and_expectation(tmp_path, monkeypatch, case):
    section, key, value, words = case[:4]
    key_text, value_text = case[4:] if len(case) > 4 else (f"{section}.{key} must be", f"got {_shown(value)} (")
    monkeypatch.setattr("ovsam_ros.loading.build_model", _no_model)
    path = _write(tmp_path, section, key, value)
    with pytest.raises(ValueError) as info:
        build_predictor(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert key_text in message and value_text in message and words in message, message
    assert "\n" not in message


def _no_model(*args, **kwargs):
    raise AssertionError("the model was built before the YAML's values were checked")


def test_the_issue_examples_in_yaml_text(tmp_path, monkeypatch):
    """The exact YAML lines of the report, parsed by the YAML loader (quoted strings stay strings)."""
    monkeypatch.setattr("ovsam_ros.loading.build_model", _no_model)
    cases = {
        "ensemble_alpha: .nan": "predictor.ensemble_alpha must be a finite number from 0.0 to 1.0; got nan (a number)",
        'everything_multimask: "false"':
            "predictor.everything_multimask must be true or false (a YAML boolean, not quoted); got 'false' (a string)",
        'names_only: "false"': "predictor.names_only must be true or false",
        'top_k: "five"': "predictor.top_k must be a whole number >= 1; got 'five' (a string)",
        "templates: 3": "predictor.templates must be a string or a list of templates",
        "text_cache_dir: 5": "predictor.text_cache_dir must be a folder path",
    }
    for line, expected in cases.items():
        path = tmp_path / "m.yaml"
        path.write_text(f"model:\n  preset: tiny\npredictor:\n  device: cpu\n  {line}\n", encoding="utf-8")
        with pytest.raises(ValueError, match=re.escape(f"{path}: {expected}")):
            build_predictor(path)
    path.write_text('model:\n  preset: tiny\n  seed: "abc"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}: model.seed must be a whole number from 0 to")):
        load_specs(path)


@pytest.mark.parametrize("overrides, expected", [
    ({"decoder": {"depth": "2"}}, "decoder.depth must be a whole number; got '2' (a string)"),
    ({"decoder": {"depth": 0}}, "decoder.depth must be a whole number >= 1; got 0"),
    ({"decoder": {"label_token": "false"}}, "decoder.label_token must be true or false"),
    ({"clip2sam": {"finest_scale": NAN}}, "clip2sam.finest_scale must be a finite number"),
    ({"clip2sam": {"roi_level": 7}}, "clip2sam.roi_level must be a whole number from 0 to 3; got 7"),
    ({"sam2clip": {"strides": "4"}}, "sam2clip.strides must be a list of whole numbers"),
    ({"image_size": -32}, "image_size must be a whole number >= 32; got -32"),
    ({"backbone": {"quick_gelu": "yes"}}, "backbone.quick_gelu must be true or false (a YAML boolean, not quoted), or null"),
])
def test_model_overrides_are_checked_field_by_field(tmp_path, overrides, expected):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "tiny", "overrides": overrides}}), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}: model.overrides: {expected}")):
        load_specs(path)


def test_yaml_booleans_numbers_and_off_are_read_as_yaml_means_them(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model:\n  preset: tiny\npredictor:\n  everything_multimask: off\n  names_only: yes\n"
                    "  clip_ensemble: false\n  ensemble_alpha: 0\n  ensemble_beta: 1\n  compile: off\n"
                    "  compile_cache_dir: off\n  text_cache_dir: null\n", encoding="utf-8")
    _, predictor = load_specs(path)
    assert predictor.everything_multimask is False and predictor.names_only is True
    assert predictor.ensemble_alpha == 0.0 and isinstance(predictor.ensemble_alpha, float)
    assert predictor.ensemble_beta == 1.0 and isinstance(predictor.ensemble_beta, float)
    assert predictor.compile == "off" and predictor.compile_cache_dir is None and predictor.text_cache_dir is None


def test_overrides_of_build_predictor_follow_the_same_rules(monkeypatch):
    monkeypatch.setattr("ovsam_ros.loading.build_model", _no_model)
    with pytest.raises(ValueError, match=re.escape("predictor.top_k must be a whole number >= 1; got 'five'")):
        build_predictor("tiny", top_k="five")
    with pytest.raises(ValueError, match=re.escape("predictor.clip_ensemble must be true or false (a YAML boolean, "
                                                   "not quoted); got 'on' (a string)")):
        build_predictor("tiny", clip_ensemble="on")


def test_the_shipped_yamls_still_load():
    """Every bundled model YAML passes the rules (config/models/*.yaml, among them the shapes model's
    YAML for ovsam_ros/data/models/shapes.pt), and the shapes model builds and labels."""
    paths = sorted((CONFIG_DIR / "models").glob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        model, predictor = load_specs(path)
        assert predictor.compile == "off" and isinstance(predictor.ensemble_alpha, float)
        if model.overrides:
            model.config()
    predictor = build_predictor("shapes")
    assert predictor.trained and predictor.vocabulary.name == "shapes"
    assert predictor.everything_multimask is False and predictor.roi_box == "largest_component"
