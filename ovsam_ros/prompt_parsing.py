"""Text forms of prompts shared by the CLI and the ROS prompt tools: ``X,Y``, ``X0,Y0,X1,Y1``, objects.

Lives below both ``ovsam_ros.cli`` and ``ovsam_ros.ros`` (which must not import the CLI).
Parsers raise ``argparse.ArgumentTypeError`` so they work as argparse ``type=`` functions.
"""

from __future__ import annotations

import argparse
import math

from ovsam_ros.prompts import Prompt


def _floats(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}") from None
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{what} must be finite numbers (no nan/inf), got {text!r}")
    return values


def parse_object(spec: str) -> Prompt:
    """``"p:120,80 n:150,90 b:10,20,200,180"`` -> one Prompt (p positive, n negative point, b box)."""
    points, labels, box = [], [], None
    for part in spec.replace(";", " ").split():
        kind, _, value = part.partition(":")
        if kind in ("p", "n"):
            points.append(_floats(value, 2, f"point {part!r}"))
            labels.append(1 if kind == "p" else 0)
        elif kind == "b":
            if box is not None:
                raise argparse.ArgumentTypeError(f"object {spec!r} has more than one box")
            box = _floats(value, 4, f"box {part!r}")
        else:
            raise argparse.ArgumentTypeError(f"object part {part!r} must start with p:, n: or b:")
    if not points and box is None:
        raise argparse.ArgumentTypeError(f"object {spec!r} has no point and no box")
    return Prompt(points=points or None, point_labels=labels or None, box=box)


def parse_point(text: str) -> Prompt:
    """``"X,Y"`` -> a one-click positive prompt."""
    return Prompt(points=[_floats(text, 2, "--point")], point_labels=[1])


def parse_box(text: str) -> Prompt:
    """``"X0,Y0,X1,Y1"`` -> a box prompt."""
    return Prompt(box=_floats(text, 4, "--box"))
