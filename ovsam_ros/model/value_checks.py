"""Checks of single settings read from YAML: one wording for every key.

Every check takes the dotted key (``predictor.top_k``) and the value as read, and either
returns the value (ints given for floats become floats) or raises a :class:`ValueError`
that names the key, the value, what it is in YAML terms and what the key expects::

    predictor.top_k must be a whole number >= 1; got 'five' (a string)

Booleans are YAML's own (``true``/``false``, also ``yes``/``no``/``on``/``off`` unquoted):
a quoted ``"false"`` is a string, and a non-empty string would otherwise read as true.
Numbers are never booleans, and floats must be finite (``.nan`` / ``.inf`` are refused).
:func:`check_hint` checks a value against a dataclass field's type hint (the model config).
"""

from __future__ import annotations

import math
import typing
from typing import Any, Optional, Sequence

_YAML_TYPES = {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", type(None): "null",
               list: "a list", tuple: "a list", dict: "a mapping"}


def shown(value: Any) -> str:
    """``'five' (a string)``: the value and its YAML type, for error messages."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    kind = next((name for t, name in _YAML_TYPES.items() if type(value) is t), type(value).__name__)
    return f"{text} ({kind})"


def fail(key: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{key} must be {expected}; got {shown(value)}")


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(key, "true or false (a YAML boolean, not quoted)", value)
    return value


def _range_text(low: Optional[float], high: Optional[float]) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def check_int(key: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low) \
            or (high is not None and value > high):
        raise fail(key, "a whole number" + _range_text(low, high), value)
    return value


def check_float(key: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                above: Optional[float] = None) -> float:
    """A finite number (an int is taken as a float) in ``[low, high]`` and ``> above``."""
    expected = "a finite number" + _range_text(low, high) + (f" > {above}" if above is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(key, expected, value)
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high) \
            or (above is not None and value <= above):
        raise fail(key, expected, value)
    return value


def check_str(key: str, value: Any, choices: Optional[Sequence[str]] = None, what: str = "a string") -> str:
    if choices is not None:
        if not isinstance(value, str) or value not in choices:
            raise fail(key, f"one of {', '.join(choices)}", value)
        return value
    if not isinstance(value, str) or not value.strip():
        raise fail(key, f"{what} (not empty)", value)
    return value


def check_optional_str(key: str, value: Any, what: str = "a string") -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(key, f"{what} (not empty), or null", value)
    return value


def check_str_list(key: str, value: Any, allow_str: bool = True, what: str = "a list of strings") -> Any:
    """A non-empty string (if ``allow_str``) or a non-empty list of non-empty strings."""
    if allow_str and isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
        return list(value)
    raise fail(key, ("a string or " if allow_str else "") + what + " (not empty)", value)


# ----------------------------------------------------------------------------------------- hints
def _hint_text(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        parts = [_hint_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (", or null" if type(None) in args else "")
    if origin in (tuple, list):
        return f"a list of {_hint_text(args[0]).replace('a ', '', 1)}s" if args else "a list"
    return {bool: "true or false (a YAML boolean, not quoted)", int: "a whole number", float: "a finite number",
            str: "a string", dict: "a mapping"}.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(hint: Any, value: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Union:
        return any(_matches(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args else Any
        return all(_matches(item, v) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_hint(key: str, value: Any, hint: Any) -> Any:
    """``value`` if it has the type ``hint`` describes (``int``, ``float``, ``bool``, ``str``,
    ``Optional[...]``, ``Tuple[int, ...]``); floats given as ints become floats."""
    if not _matches(hint, value):
        raise fail(key, _hint_text(hint), value)
    if hint is float or (typing.get_origin(hint) is typing.Union and float in typing.get_args(hint)
                         and isinstance(value, int) and not isinstance(value, bool)):
        return float(value)
    return value


__all__ = ["check_bool", "check_float", "check_hint", "check_int", "check_optional_str", "check_str",
           "check_str_list", "fail", "shown"]
