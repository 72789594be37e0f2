"""The value rules of every key of a model YAML (``model:`` and ``predictor:`` sections).

:func:`ovsam_ros.loading.load_specs` checks each key a YAML sets, before any path is resolved
or anything loads, and :func:`ovsam_ros.loading.build_predictor` checks its overrides with the
same rules. An error names the file, the key, the value with its YAML type and what the key
takes (wording of :mod:`ovsam_ros.model.value_checks`)::

    robot.yaml: predictor.ensemble_alpha must be a finite number from 0.0 to 1.0; got nan (a number)

Booleans are YAML booleans only (a quoted ``"false"`` is refused, never read as true); floats
are finite and in range; ``compile: off`` / ``compile_cache_dir: off`` (YAML reads an unquoted
``off`` as false) mean off. ``model.overrides`` is checked field by field by
:meth:`ovsam_ros.model.config.OVSAMConfig.from_dict`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Sequence

from ovsam_ros.model.compile import COMPILE_MODES
from ovsam_ros.model.inference import REL_POS_ATTENTIONS
from ovsam_ros.model.ovsam import ROI_BOXES
from ovsam_ros.model.transforms import RESIZE_BACKENDS
from ovsam_ros.model.value_checks import (
    check_bool,
    check_float,
    check_int,
    check_optional_str,
    check_str,
    check_str_list,
    fail,
    shown,
)
from ovsam_ros.runtime import PRECISIONS

#: torch.manual_seed takes at most 64-bit seeds; a negative one is almost surely a typo.
MAX_SEED = 2**63 - 1


def _choices(names: Sequence[str]) -> Callable[[str, Any], Any]:
    return lambda key, value: check_str(key, value, list(names))


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda key, value: None if value is None else check(key, value)


def _device(key: str, value: Any) -> str:
    import torch

    expected = "auto, cpu, cuda or cuda:N (a string)"
    if not isinstance(value, str) or not value.strip():
        raise fail(key, expected, value)
    if value != "auto":
        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise fail(key, expected, value) from None
    return value


def _templates(key: str, value: Any) -> Any:
    from ovsam_ros.model.vocabulary import get_templates

    value = check_str_list(key, value, what="a list of templates with one '{}'")
    try:
        get_templates(value)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None
    return value


def _compile(key: str, value: Any) -> str:
    if value is False:  # YAML 1.1 reads an unquoted `off` as false
        return "off"
    return check_str(key, value, list(COMPILE_MODES))


def _cache_dir(key: str, value: Any) -> Any:
    """A folder, or none: null, off (YAML false) or '' (what the CLI and node pass for none)."""
    if value is False or value == "":
        return None
    return check_optional_str(key, value, "a folder path, or null / off for none")


def _providers(key: str, value: Any) -> Any:
    """Execution-provider names, or ``[name, {options}]`` pairs (ovsam_ros.export.backend.resolve_providers)."""
    expected = "a list of ONNX Runtime execution provider names or [name, {options}] pairs, or null"
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise fail(key, expected, value)
    for i, entry in enumerate(value):
        if isinstance(entry, str) and entry.strip():
            continue
        if (isinstance(entry, list) and 1 <= len(entry) <= 2 and isinstance(entry[0], str)
                and (len(entry) == 1 or isinstance(entry[1], dict))):
            continue
        raise fail(f"{key}[{i}]", "a provider name or a [name, {options}] pair", entry)
    return value


def _mapping(key: str, value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(key, "a mapping of model config fields, e.g. {decoder: {label_token: false}}", value)
    return value


def _vocabulary(key: str, value: Any) -> Any:
    if value is None or isinstance(value, str):  # the string's meaning: load_vocabulary's rules and errors
        return value
    return check_str_list(key, value, what="a list of class names")


PREDICTOR_RULES: Dict[str, Callable[[str, Any], Any]] = {
    "vocabulary": _vocabulary,
    "templates": _templates,
    "device": _device,
    "precision": _choices(sorted(PRECISIONS)),
    "top_k": lambda k, v: check_int(k, v, 1),
    "text_cache_dir": _cache_dir,
    "optimize": check_bool,
    "attention": _choices(REL_POS_ATTENTIONS),
    "compile": _compile,
    "compile_cache_dir": _cache_dir,
    "sam_iou": check_bool,
    "everything_multimask": check_bool,
    "clip_ensemble": check_bool,
    "ensemble_alpha": lambda k, v: check_float(k, v, 0.0, 1.0),
    "ensemble_beta": lambda k, v: check_float(k, v, 0.0, 1.0),
    "names_only": check_bool,
    "exclude_unused": check_bool,
    "max_synonyms": _optional(lambda k, v: check_int(k, v, 1)),
    "resize": _choices(RESIZE_BACKENDS),
    "roi_box": _choices(ROI_BOXES),
}


def _model_rules(presets: Sequence[str]) -> Dict[str, Callable[[str, Any], Any]]:
    from ovsam_ros import backends

    def preset(key: str, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or value not in presets):
            raise ValueError(f"{key} must be one of {', '.join(sorted(presets))}, or left out; got {shown(value)}: "
                             f"unknown model preset {value!r}")
        return value

    path = _optional(lambda k, v: check_str(k, v, what="a file path"))
    return {
        "preset": preset,
        "overrides": _mapping,
        "clip_weights": path,
        "ovsam_checkpoint": path,
        "sam_checkpoint": path,
        "sam2clip_checkpoint": path,
        "clip2sam_checkpoint": path,
        "seed": lambda k, v: check_int(k, v, 0, MAX_SEED),
        "backend": lambda k, v: check_str(k, v, backends.names()),
        "onnx_dir": _optional(lambda k, v: check_str(k, v, what="a folder path")),
        "onnx_providers": _providers,
        "notice": lambda k, v: check_optional_str(k, v, "a text"),
    }


def _check(rules: Mapping[str, Callable[[str, Any], Any]], section: str, values: Mapping[str, Any],
           where: str) -> Dict[str, Any]:
    out = {}
    for key, value in values.items():
        if key not in rules:  # unknown keys are the loader's error (it lists the known ones)
            continue
        try:
            out[key] = rules[key](f"{section}.{key}", value)
        except ValueError as error:
            raise ValueError(f"{where}: {error}" if where else str(error)) from None
    return out


def check_predictor_values(values: Mapping[str, Any], where: str = "") -> Dict[str, Any]:
    """``values`` (keys of a ``predictor:`` section) checked; returns them normalised (floats as
    floats, ``compile: false`` as ``"off"``). ValueError naming ``where``, the key and the value."""
    return _check(PREDICTOR_RULES, "predictor", values, where)


def check_model_values(values: Mapping[str, Any], presets: Sequence[str], where: str = "") -> Dict[str, Any]:
    """The same for a ``model:`` section (``presets``: the preset names the loader knows)."""
    return _check(_model_rules(presets), "model", values, where)


__all__ = ["PREDICTOR_RULES", "check_model_values", "check_predictor_values"]
