"""Checks of the node's parameter sources before they can silently do nothing.

* :func:`unknown_parameters`: names given to the node (params file, ``-p``, launch) that it
  does not declare. rclpy ignores them, so ``mdoe: everything`` would start the node in the
  default mode without a word; the node reports each one with the closest valid name.
* :func:`check_params_file`: a missing, unreadable or malformed params file is one clear
  error before rclpy starts (rcl's own message is a traceback without the YAML problem's
  context), and a file with no section for this node is a warning.

No ROS imports: the rules are plain Python and tested as such.
"""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import Iterable, Optional

import yaml

__all__ = ["ParamsFileError", "check_params_file", "closest", "unknown_parameters", "IGNORED_PREFIXES"]

#: Parameters rclpy declares on demand (QoS overrides of publishers/subscriptions).
IGNORED_PREFIXES = ("qos_overrides.",)


class ParamsFileError(ValueError):
    """A ROS parameters file that cannot be used."""


def closest(name: str, valid: Iterable[str]) -> Optional[str]:
    matches = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_parameters(given: Iterable[str], declared: Iterable[str]) -> dict[str, str]:
    """``{name: message}`` for every given parameter name that is not declared."""
    declared = set(declared)
    out = {}
    for name in sorted(set(given) - declared):
        if name.startswith(IGNORED_PREFIXES):
            continue
        guess = closest(name, declared)
        hint = f"; did you mean {guess!r}?" if guess else f"; valid names: {', '.join(sorted(declared))}"
        out[name] = f"unknown parameter {name!r} (it would be ignored){hint}"
    return out


def _section_applies(key: str, node_name: str, namespace: str) -> bool:
    """Whether a params-file top-level key addresses this node (rcl's wildcard rules, simplified:
    ``/**`` and ``*`` match any path part)."""
    full = "/" + "/".join(p for p in (namespace.strip("/"), node_name) if p)
    key = key if key.startswith("/") else "/" + key
    if key in (full, "/" + node_name):
        return True
    pattern = key.replace("/**", "/*").replace("**", "*")
    return fnmatch.fnmatchcase(full, pattern) or fnmatch.fnmatchcase(full, key.replace("**", "*"))


def check_params_file(path: str, node_name: str, namespace: str = "") -> list[str]:
    """Validate one ``--params-file``; returns warnings, raises :class:`ParamsFileError`."""
    file = Path(path).expanduser()
    if not file.exists():
        raise ParamsFileError(f"parameters file not found: {path}")
    if not file.is_file():
        raise ParamsFileError(f"parameters file {path} is not a file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise ParamsFileError(f"cannot read parameters file {path}: {error}") from None
    except UnicodeDecodeError as error:
        raise ParamsFileError(f"parameters file {path} is not UTF-8 text: {error}") from None
    except yaml.YAMLError as error:
        raise ParamsFileError(f"parameters file {path} is not valid YAML: {error}") from None
    example = "/**:\n  ros__parameters:\n    mode: everything"
    if not isinstance(data, dict) or not data:
        raise ParamsFileError(f"parameters file {path} must map node names to 'ros__parameters', e.g.\n{example}")
    for key, section in data.items():
        if not isinstance(section, dict) or "ros__parameters" not in section:
            # rcl allows nesting namespaces as mappings; accept those if they end in ros__parameters
            if not (isinstance(section, dict) and _has_params_below(section)):
                raise ParamsFileError(f"parameters file {path}: section {key!r} has no 'ros__parameters' "
                                      f"mapping, e.g.\n{example}")
        elif not isinstance(section["ros__parameters"], dict):
            raise ParamsFileError(f"parameters file {path}: {key}/ros__parameters must be a mapping of "
                                  f"names to values, got {type(section['ros__parameters']).__name__}")
    keys = [str(k) for k in data]
    if not any(_section_applies(k, node_name, namespace) for k in keys):
        guess = closest(node_name, [k.strip("/").split("/")[-1] for k in keys])
        hint = f" (did you mean the node name {guess!r}? start it with --name {guess})" if guess else ""
        return [f"parameters file {path} has no section for node "
                f"'{('/' + namespace.strip('/')) if namespace.strip('/') else ''}/{node_name}' "
                f"(sections: {', '.join(keys)}): none of its values apply{hint}"]
    return []


def _has_params_below(section: dict) -> bool:
    return any(isinstance(v, dict) and ("ros__parameters" in v or _has_params_below(v)) for v in section.values())
