"""argparse ``type=`` checkers for numeric options and image sizes: NaN, infinities and
out-of-range values are usage errors at parse time, before any file is read or written and
before a model loads.

    parser.add_argument("--rate", type=number(float, min=0, min_exclusive=True))
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional, Union

Number = Union[int, float]


def number(kind: type = float, min: Optional[Number] = None, max: Optional[Number] = None,
           min_exclusive: bool = False) -> Callable[[str], Number]:
    """A converter that accepts a finite ``kind`` (int or float) within ``[min, max]``
    (``(min, max]`` with ``min_exclusive``); anything else raises ``ArgumentTypeError``
    with the accepted range, which argparse prints with the option's name."""

    def convert(text: str) -> Number:
        what = "an integer" if kind is int else "a number"
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if min is not None and (value <= min if min_exclusive else value < min):
            raise argparse.ArgumentTypeError(f"must be {'>' if min_exclusive else '>='} {min:g}, got {text}")
        if max is not None and value > max:
            raise argparse.ArgumentTypeError(f"must be <= {max:g}, got {text}")
        return value

    convert.__name__ = "int" if kind is int else "float"  # argparse names the type in some errors
    return convert


#: Common cases.
positive_int = number(int, min=1)
non_negative_int = number(int, min=0)
unit_interval = number(float, min=0.0, max=1.0)
positive_float = number(float, min=0.0, min_exclusive=True)
non_negative_float = number(float, min=0.0)


def image_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (``640x480``, case-insensitive ``X``), both positive, as ``(width, height)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h
