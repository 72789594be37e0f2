"""Training configuration: code defaults <- YAML file <- ``--set key=value`` overrides.

A config is a nested dict. Every key a file or an override sets must exist in
the stage's defaults (a typo is an error that names the key and lists the
valid ones); mappings whose default is ``{}`` (``model.overrides``) are free-form.
Override values are parsed as YAML (``--set train.lr=2e-4``,
``--set data.scale_range=[0.5,1.5]``, ``--set model.init_checkpoint=null``).

Bundled files live in ``training/configs/`` and can be named without a path:
``--config stage2_tiny``.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _numbers(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-4`` as a string; take such strings as the floats they mean."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def resolve_config(name_or_path: str) -> Path:
    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    choices = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} not found (not a file, not one of the bundled {choices})")


def merge(base: Dict[str, Any], update: Dict[str, Any], where: str = "") -> Dict[str, Any]:
    """Recursive merge; unknown keys raise :class:`ConfigError` unless the default is ``{}``."""
    out = copy.deepcopy(base)
    if not isinstance(update, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(update).__name__}")
    free_form = isinstance(base, dict) and not base and where != ""
    for key, value in update.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in out and not free_form:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {sorted(out)}")
        if isinstance(out.get(key), dict) and out[key] and isinstance(value, dict):
            out[key] = merge(out[key], value, path)
        elif isinstance(out.get(key), dict) and out[key] and value is not None:
            raise ConfigError(f"config key {path!r} is a section; got {value!r}")
        elif isinstance(out.get(key), bool) and _boolean_look_alike(value):
            # bool("false") is True: a quoted "false" or a 0/1 would silently mean something else
            raise ConfigError(f"config key {path!r} takes true or false (a YAML boolean, unquoted), got {value!r}")
        else:
            out[key] = copy.deepcopy(value)
    return out


_BOOLEAN_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n"}


def _boolean_look_alike(value: Any) -> bool:
    """A value given for a true/false key that is not a YAML boolean but reads like one: a quoted
    word ("false"), or a number. (Other strings pass: a few keys also take named modes.)"""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS


def parse_override(text: str) -> Dict[str, Any]:
    """``"a.b.c=value"`` -> ``{"a": {"b": {"c": value}}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: bad key {key!r}")
    try:
        value = _numbers(yaml.safe_load(raw)) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from None
    node: Dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return node


def load_config(defaults: Dict[str, Any], config: Optional[str] = None,
                overrides: Sequence[str] = ()) -> Dict[str, Any]:
    cfg = copy.deepcopy(defaults)
    if config:
        path = resolve_config(config)
        try:
            data = _numbers(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        try:
            cfg = merge(cfg, data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        cfg["_config_file"] = str(path)
    for text in overrides:
        try:
            cfg = merge(cfg, parse_override(text))
        except ConfigError as err:
            raise ConfigError(f"--set {text}: {err}") from None
    bad = _non_finite(cfg)
    if bad:  # checked before any data is read or any output written
        raise ConfigError(f"{bad[0][0]} must be a finite number, got {bad[0][1]} (NaN and infinities are refused)")
    problem = _bad_range_option(cfg.get("data"))
    if problem:
        raise ConfigError(problem)
    problem = _bad_count(cfg)
    if problem:
        raise ConfigError(problem)
    problem = bad_train_value(cfg)
    if problem:
        raise ConfigError(problem)
    return cfg


#: train.free_space_check's choices (training.engine.FREE_SPACE_CHECKS; a test pins them equal).
FREE_SPACE_CHOICES = ("refuse", "warn", "off")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bad_train_value(cfg: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the values every run reads before it trains (seed, train.lr, batch_size,
    max_steps / epochs, free_space_check), naming the key; None when nothing is. Checked when the
    config is loaded, so a typo fails before any output folder is touched."""
    if "seed" in cfg and not (_is_int(cfg["seed"]) and cfg["seed"] >= 0):
        return f"seed must be an integer >= 0, got {cfg['seed']!r}"
    tcfg = cfg.get("train")
    if not isinstance(tcfg, dict):
        return None
    lr = tcfg.get("lr", 1.0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        return f"train.lr must be a number > 0, got {lr!r}"
    if "batch_size" in tcfg and not (_is_int(tcfg["batch_size"]) and tcfg["batch_size"] >= 1):
        return f"train.batch_size must be an integer >= 1 (images per optimizer step), got {tcfg['batch_size']!r}"
    steps = tcfg.get("max_steps")
    if steps is not None and not (_is_int(steps) and steps >= 1):
        return f"train.max_steps must be an integer >= 1, or null to train for train.epochs, got {steps!r}"
    if steps is None and "epochs" in tcfg and not (_is_int(tcfg["epochs"]) and tcfg["epochs"] >= 1):
        return f"train.epochs must be an integer >= 1 (or set train.max_steps), got {tcfg['epochs']!r}"
    if "free_space_check" in tcfg and tcfg["free_space_check"] not in FREE_SPACE_CHOICES:
        return (f"train.free_space_check must be one of {', '.join(FREE_SPACE_CHOICES)}, "
                f"got {tcfg['free_space_check']!r}")
    return None


#: Counts without which a stage-2 loss is undefined (0 sampled points: the mask loss is 0/0) or a step
#: trains on nothing (0 prompts per image); each must be a whole number >= 1.
POSITIVE_COUNTS = (("loss", "num_points"), ("data", "instances_per_image"))


def _bad_count(cfg: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a :data:`POSITIVE_COUNTS` key of ``cfg`` (the first), or None."""
    for section, key in POSITIVE_COUNTS:
        part = cfg.get(section)
        if not isinstance(part, dict) or key not in part:
            continue
        value = part[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            why = ("the mask loss averages over these points: 0 makes it undefined (NaN)" if key == "num_points"
                   else "0 prompts per image trains on nothing")
            return f"{section}.{key} must be a whole number >= 1, got {value!r} ({why})"
    return None


def _bad_range_option(data: Any) -> Optional[str]:
    """What is wrong with ``data.input_bits`` / ``data.float_max`` (the node's and the CLI's rule), or None."""
    if not isinstance(data, dict):
        return None
    from ovsam_ros.image_input import check_float_max, check_input_bits

    for key, check in (("input_bits", check_input_bits), ("float_max", check_float_max)):
        if key in data:
            try:
                check(data[key])
            except ValueError as err:  # "input_bits must be ...": prefixed, it names the config key
                return f"data.{err}"
    return None


def _non_finite(value: Any, prefix: str = "") -> List[Tuple[str, float]]:
    """``(dotted.key, value)`` of every NaN / infinite float in a nested config."""
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _non_finite(v, f"{prefix}{k}.")]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in _non_finite(v, f"{prefix}{i}.")]
    if isinstance(value, float) and not math.isfinite(value):
        return [(prefix.rstrip("."), value)]
    return []


def dump(cfg: Dict[str, Any]) -> str:
    return yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=False)
