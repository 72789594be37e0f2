"""Checks of the node's parameter sources before they can silently do nothing.

* :func:`unknown_parameters`: names given to the node (params file, ``-p``, launch) that it
  does not declare. rclpy ignores them, so ``mdoe: everything`` would start the node in the
  default mode without a word; the node reports each one with the closest valid name.
* :func:`read_params_file`: a missing, unreadable or malformed params file is one clear
  error before rclpy starts (rcl's own message is a traceback without the YAML problem's
  context); :func:`section_warning`: a file with no section for the node, by the name the
  node really got (launch_ros sets name and namespace as remaps), is a warning.

No ROS imports: the rules are plain Python and tested as such.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Iterable, Optional

import yaml

__all__ = ["ParamsFileError", "check_params_file", "closest", "read_params_file", "section_applies",
           "section_warning", "unknown_parameters", "IGNORED_PREFIXES"]

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


def section_applies(key: str, fully_qualified_name: str) -> bool:
    """Whether a params-file section (``/**``, ``ovsam``, ``/front/*``, ...) addresses the node
    ``fully_qualified_name`` (``/front/ovsam``), by rcl's rules: the leading ``/`` is optional,
    ``*`` is exactly one name token and ``**`` any number of them, zero included
    (test_node_bad_config pins this against rclpy itself)."""
    pattern = "".join("(/[^/]+)*" if token == "**" else "/[^/]+" if token == "*" else "/" + re.escape(token)
                      for token in key.strip("/").split("/") if token)
    return re.fullmatch(pattern or "/", fully_qualified_name) is not None


def read_params_file(path: str) -> list[str]:
    """Validate one ``--params-file``; its sections' node names (nested mappings joined with ``/``).

    Raises :class:`ParamsFileError` for a file rcl would refuse with a traceback, or one that
    would silently set nothing.
    """
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
    sections = []
    for key, section in data.items():
        if not isinstance(section, dict) or "ros__parameters" not in section:
            # rcl allows nesting namespaces as mappings; accept those if they end in ros__parameters
            if not (isinstance(section, dict) and _has_params_below(section)):
                raise ParamsFileError(f"parameters file {path}: section {key!r} has no 'ros__parameters' "
                                      f"mapping, e.g.\n{example}")
            sections += [f"{key}/{below}" for below in _sections_below(section)]
        elif not isinstance(section["ros__parameters"], dict):
            raise ParamsFileError(f"parameters file {path}: {key}/ros__parameters must be a mapping of "
                                  f"names to values, got {type(section['ros__parameters']).__name__}")
        else:
            sections.append(str(key))
    return sections


def section_warning(path: str, sections: list[str], fully_qualified_name: str) -> Optional[str]:
    """A warning when no section of a params file applies to the node, else None.

    ``fully_qualified_name`` must be the name the node really has (``node.get_fully_qualified_name()``),
    after every remap: launch_ros passes the namespace and name as ``__ns`` / ``__node`` remaps.
    """
    if any(section_applies(key, fully_qualified_name) for key in sections):
        return None
    node_name = fully_qualified_name.rsplit("/", 1)[-1]
    names = {key.strip("/").split("/")[-1] for key in sections}
    guess = closest(node_name, names - {"*", "**"})
    if guess and guess != node_name:
        hint = (f" (did you mean the node name {guess!r}? name it so: ovsam-node --name {guess}, "
                f"-r __node:={guess}, or name='{guess}' in a launch file)")
    elif guess:
        hint = (f" (a section names {guess!r} in another namespace: use '/**/{guess}' or the node's "
                f"namespace)")
    else:
        hint = ""
    return (f"parameters file {path} has no section for node '{fully_qualified_name}' "
            f"(sections: {', '.join(sections)}): none of its values apply{hint}")


def check_params_file(path: str, node_name: str, namespace: str = "") -> list[str]:
    """Validate one ``--params-file`` for a node named ``node_name`` in ``namespace``; returns warnings."""
    sections = read_params_file(path)
    full = "/" + "/".join(p for p in (namespace.strip("/"), node_name) if p)
    warning = section_warning(path, sections, full)
    return [warning] if warning else []


def _has_params_below(section: dict) -> bool:
    return any(isinstance(v, dict) and ("ros__parameters" in v or _has_params_below(v)) for v in section.values())


def _sections_below(section: dict) -> list[str]:
    out = []
    for key, value in section.items():
        if isinstance(value, dict) and "ros__parameters" in value:
            out.append(str(key))
        elif isinstance(value, dict):
            out += [f"{key}/{below}" for below in _sections_below(value)]
    return out
