"""Aligned depth + pinhole intrinsics -> per-instance 3D centroid, extent and point count.

Conventions (REP 103 / REP 118, ``sensor_msgs/CameraInfo``):

* depth ``16UC1`` (and ``mono16``) is millimetres, ``32FC1`` metres; 0, NaN, inf
  and negative values mean "no measurement" and are ignored;
* pixel (u, v) = (column, row); ``K = [fx 0 cx; 0 fy cy; 0 0 1]`` maps a camera-frame
  point (x right, y down, z forward) to ``u = fx x / z + cx``, ``v = fy y / z + cy``;
* a depth image whose median valid depth is implausible for its encoding (32FC1 above
  100 m: millimetres sent as metres; 16UC1/mono16 below 20 mm: metres sent as
  millimetres) is used as it is, with one warning per encoding (:class:`DepthRangeCheck`):
  a guessed unit would turn a publisher's bug into plausible-looking wrong positions;
* "aligned" means the depth image is on the colour image's pixel grid: a depth
  image of another size is an error (no silent resampling).

Robustness: a mask's rim often bleeds onto the background, putting far points in
an object. Points whose depth lies outside ``median +- max(4 * 1.4826 * MAD,
band_floor)`` are dropped before the centroid (their mean) and the extent
(``percentile`` .. ``100 - percentile`` per axis) are taken.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

MILLIMETRE_ENCODINGS = ("16UC1", "mono16")
METRE_ENCODINGS = ("32FC1",)
DEPTH_ENCODINGS = MILLIMETRE_ENCODINGS + METRE_ENCODINGS


class DepthError(ValueError):
    """Depth, intrinsics or their pairing cannot give 3D; the message says why."""


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int = 0  # 0 = unknown (not checked)
    height: int = 0

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
            raise DepthError(f"camera intrinsics are unusable: fx={self.fx}, fy={self.fy}, cx={self.cx}, cy={self.cy} "
                             "(need finite values and fx, fy > 0; an all-zero K means an uncalibrated camera)")

    @classmethod
    def from_camera_info(cls, info: Any) -> "Intrinsics":
        """From a ``sensor_msgs/CameraInfo``-shaped object (``k``: row-major 3x3, ``width``, ``height``)."""
        k = [float(v) for v in info.k]
        if len(k) != 9:
            raise DepthError(f"CameraInfo.k must have 9 values, got {len(k)}")
        return cls(fx=k[0], fy=k[4], cx=k[2], cy=k[5], width=int(info.width), height=int(info.height))

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) camera-frame points -> (N, 2) pixel (u, v)."""
        points = np.asarray(points, dtype=np.float64)
        return np.stack([self.fx * points[:, 0] / points[:, 2] + self.cx,
                         self.fy * points[:, 1] / points[:, 2] + self.cy], axis=1)


@dataclass(frozen=True)
class InstanceGeometry:
    centroid: tuple[float, float, float]  # metres, camera frame (or the frame points were transformed to)
    extent_min: tuple[float, float, float]  # robust lower corner (percentile)
    extent_max: tuple[float, float, float]  # robust upper corner (100 - percentile)
    point_count: int  # points used (valid depth, inside the depth band)


def depth_to_metres(depth: np.ndarray, encoding: str,
                    range_check: Optional["DepthRangeCheck"] = None) -> np.ndarray:
    """A depth image -> float32 metres with NaN where there is no measurement.

    The values are never rescaled by guesswork; ``range_check`` (default: the module's
    :data:`DEFAULT_RANGE_CHECK`, which logs) warns once per encoding when they are implausible
    for the encoding (see :func:`implausible_depth`)."""
    if encoding in MILLIMETRE_ENCODINGS:
        if depth.dtype != np.uint16:
            raise DepthError(f"{encoding} depth must be uint16 millimetres, got {depth.dtype}")
        metres = depth.astype(np.float32) / 1000.0
        metres[depth == 0] = np.nan
    elif encoding in METRE_ENCODINGS:
        metres = np.asarray(depth, dtype=np.float32).copy()
        metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    else:
        raise DepthError(f"depth encoding {encoding!r} is not supported; use 16UC1 or mono16 (mm) or 32FC1 (m)")
    (range_check or DEFAULT_RANGE_CHECK)(metres, encoding)
    return metres


#: Plausible median depth in metres, per unit of the encoding. A depth camera's scene has a median
#: between a few centimetres and a few tens of metres (long-range stereo and lidar-projected depth
#: included). A 32FC1 median above 100 "m" is what millimetres sent as 32FC1 look like (1.5 m ->
#: 1,500); a 16UC1 median below 20 mm is what whole metres (or another coarse unit) written into a
#: millimetre image look like (1.5 m -> 1 or 2).
METRE_MEDIAN_MAX = 100.0
MILLIMETRE_MEDIAN_MIN = 0.02
_RANGE_SAMPLE = 4  # every 4th row and column estimate the median (720p: ~1.5 ms instead of ~17 for all)


def implausible_depth(depth_m: np.ndarray, encoding: str) -> Optional[str]:
    """Why ``depth_m`` (metres, NaN = none, as :func:`depth_to_metres` returns it) is implausible for
    ``encoding``, or None. Decided by the median of the valid pixels (never by a few outliers),
    estimated on every 4th row and column (on all pixels when that sample has fewer than 100 valid
    ones):

    * 32FC1 (metres): implausible when the median is above :data:`METRE_MEDIAN_MAX` (100 m);
    * 16UC1 / mono16 (millimetres): implausible when the median is below
      :data:`MILLIMETRE_MEDIAN_MIN` (20 mm).
    """
    depth_m = np.asarray(depth_m)
    # A grid over the whole image (a flat stride would sample a few columns only when the width is a
    # multiple of it).
    sample = depth_m[::_RANGE_SAMPLE, ::_RANGE_SAMPLE] if depth_m.ndim == 2 else depth_m
    valid = sample[np.isfinite(sample)]
    if valid.size < 100:
        valid = depth_m[np.isfinite(depth_m)]
    if valid.size == 0:
        return None
    median = float(np.median(valid))
    if encoding in METRE_ENCODINGS and median > METRE_MEDIAN_MAX:
        return (f"{encoding} depth has a median of {median:,.0f} m: {encoding} is metres (REP 118), so this is "
                f"most likely millimetres sent as {encoding}; 3D positions come out 1,000 times too far. Publish "
                "16UC1 millimetres, or divide by 1000 before publishing 32FC1 (the values are used as they are: "
                "no unit is guessed)")
    if encoding in MILLIMETRE_ENCODINGS and median < MILLIMETRE_MEDIAN_MIN:
        return (f"{encoding} depth has a median of {median * 1000:.0f} mm: {encoding} is millimetres (REP 118), so "
                "this is most likely metres (or another coarse unit) written as whole numbers; 3D positions "
                "will be wrong. Publish millimetres, or 32FC1 metres (the values are used as they are: no unit "
                "is guessed)")
    return None


class DepthRangeCheck:
    """Calls ``warn`` with :func:`implausible_depth`'s reason the first time an encoding's depth is
    implausible, and stays quiet for that encoding afterwards (a stream does not change units; a
    warning per frame would flood the log). ``last_problem`` keeps the reason of the last frame
    checked (None when plausible), for diagnostics."""

    def __init__(self, warn: Optional[Callable[[str], None]] = None) -> None:
        self.warn = warn or logging.getLogger(__name__).warning
        self.warned: set[str] = set()
        self.last_problem: Optional[str] = None

    def __call__(self, depth_m: np.ndarray, encoding: str) -> Optional[str]:
        self.last_problem = implausible_depth(depth_m, encoding)
        if self.last_problem is not None and encoding not in self.warned:
            self.warned.add(encoding)
            self.warn(self.last_problem)
        return self.last_problem


#: The check :func:`depth_to_metres` uses unless given one: logs through :mod:`logging`, once per
#: encoding per process.
DEFAULT_RANGE_CHECK = DepthRangeCheck()


def check_pairing(depth_hw: tuple[int, int], image_hw: tuple[int, int], intrinsics: Intrinsics) -> None:
    """Raise DepthError unless depth, colour image and CameraInfo describe the same pixel grid."""
    if tuple(depth_hw) != tuple(image_hw):
        raise DepthError(f"depth image is {depth_hw[1]}x{depth_hw[0]}, the colour image {image_hw[1]}x{image_hw[0]}: "
                         "3D needs depth aligned to the colour image (same size)")
    if intrinsics.width and intrinsics.height and (intrinsics.height, intrinsics.width) != tuple(depth_hw):
        raise DepthError(f"CameraInfo is for {intrinsics.width}x{intrinsics.height}, the depth image is "
                         f"{depth_hw[1]}x{depth_hw[0]}")


def backproject(mask: np.ndarray, depth_m: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """(N, 3) float64 camera-frame points of the mask's pixels that have a depth."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != depth_m.shape:
        raise DepthError(f"mask {mask.shape} and depth {depth_m.shape} differ in size")
    v, u = np.nonzero(mask & np.isfinite(depth_m))
    z = depth_m[v, u].astype(np.float64)
    x = (u - intrinsics.cx) * z / intrinsics.fx
    y = (v - intrinsics.cy) * z / intrinsics.fy
    return np.stack([x, y, z], axis=1)


def depth_inliers(z: np.ndarray, band_floor: float = 0.05) -> np.ndarray:
    """Boolean mask of the depths inside the object's depth band (median +- robust spread)."""
    if z.size == 0:
        return np.zeros(0, dtype=bool)
    median = float(np.median(z))
    mad = float(np.median(np.abs(z - median)))
    band = max(4.0 * 1.4826 * mad, band_floor + 0.01 * median)  # floor grows with range (sensor noise does)
    return np.abs(z - median) <= band


def instance_geometry(points: np.ndarray, *, percentile: float = 2.0, min_points: int = 10,
                      band_floor: float = 0.05) -> Optional[InstanceGeometry]:
    """Centroid, robust extent and count of one instance's points; None if too few points."""
    if not 0.0 <= percentile < 50.0:
        raise ValueError(f"percentile must be in [0, 50), got {percentile}")
    points = np.asarray(points, dtype=np.float64)
    if len(points) < min_points:
        return None
    kept = points[depth_inliers(points[:, 2], band_floor)]
    if len(kept) < min_points:
        return None
    lo = np.percentile(kept, percentile, axis=0)
    hi = np.percentile(kept, 100.0 - percentile, axis=0)
    centroid = kept.mean(axis=0)
    return InstanceGeometry(tuple(float(v) for v in centroid), tuple(float(v) for v in lo),
                            tuple(float(v) for v in hi), int(len(kept)))


def quaternion_matrix(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix of a unit quaternion (x, y, z, w) (geometry_msgs order)."""
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if not math.isfinite(n) or n < 1e-9:
        raise DepthError(f"transform rotation is not a quaternion: {tuple(q)}")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def transform_points(points: np.ndarray, translation: Sequence[float], rotation_xyzw: Sequence[float]) -> np.ndarray:
    """Apply a rigid transform (what ``geometry_msgs/Transform`` holds) to (N, 3) points."""
    return np.asarray(points, dtype=np.float64) @ quaternion_matrix(rotation_xyzw).T + np.asarray(translation, float)
