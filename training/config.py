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
        else:
            out[key] = copy.deepcopy(value)
    return out


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
    return cfg


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
