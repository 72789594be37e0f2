"""Depth to 3D against a rendered scene with known geometry (ray-cast planes and boxes)."""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import cv2
import numpy as np
import pytest

from ovsam_ros.robot import depth3d
from ovsam_ros.robot.depth3d import (DepthError, DepthRangeCheck, Intrinsics, backproject, check_pairing,
                                     depth_to_metres, implausible_depth, instance_geometry, quaternion_matrix,
                                     transform_points)

W, H = 640, 480
K = Intrinsics(fx=525.0, fy=525.0, cx=319.5, cy=239.5, width=W, height=H)

# Axis-aligned boxes (x0, x1, y0, y1, z0, z1) in metres, camera frame (x right, y down, z forward).
# Each box's x and y ranges contain 0 (on the optical axis) or the box is a thin card: then the only
# visible surface is its front face at z0, whose centre is the truth.
BOXES = {
    "card_near": (-0.45, -0.15, -0.25, 0.05, 0.8, 0.8),       # fronto-parallel plane at 0.8 m
    "box_axis": (-0.2, 0.25, -0.15, 0.3, 2.0, 2.5),           # a real box on the optical axis
    "card_far": (0.6, 1.2, -0.9, -0.3, 3.0, 3.0),             # plane at 3 m, up right
}
WALL_Z = 4.0


def render() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ray-cast depth (metres) and each object's exact pixel mask."""
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    dx, dy = (u - K.cx) / K.fx, (v - K.cy) / K.fy  # ray (dx, dy, 1): the hit depth is t
    depth = np.full((H, W), WALL_Z)
    owner = np.full((H, W), -1)
    for index, (x0, x1, y0, y1, z0, z1) in enumerate(BOXES.values()):
        # Slab test along the ray; only the front face (z = z0) can be the entry for these boxes.
        t = np.full((H, W), z0)
        hit = (dx * t >= x0) & (dx * t <= x1) & (dy * t >= y0) & (dy * t <= y1) & (t < depth)
        depth[hit], owner[hit] = t[hit], index
    return depth, {name: owner == i for i, name in enumerate(BOXES)}


def truth(name: str) -> np.ndarray:
    x0, x1, y0, y1, z0, _ = BOXES[name]
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, z0])


def as_16uc1(depth_m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A structured-light-like sensor: noise growing with z^2, millimetre quantisation, dropouts."""
    noisy = depth_m + rng.normal(0, 0.0015 * depth_m ** 2)
    mm = np.round(noisy * 1000).astype(np.uint16)
    mm[rng.random(mm.shape) < 0.05] = 0  # 5 % missing returns
    return mm


@pytest.mark.parametrize("encoding", ["16UC1", "mono16", "32FC1"])
def test_centroids_within_1cm_of_the_rendered_truth(encoding):
    rng = np.random.default_rng(1)
    depth_true, masks = render()
    raw = depth_true.astype(np.float32) if encoding == "32FC1" else as_16uc1(depth_true, rng)
    if encoding == "32FC1":
        raw[rng.random(raw.shape) < 0.05] = np.nan
    depth = depth_to_metres(raw, encoding)
    for name, mask in masks.items():
        # A segmenter's mask bleeds: grow it by 3 px, so its rim lands on the wall behind.
        bled = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        geometry = instance_geometry(backproject(bled, depth, K))
        error = np.linalg.norm(np.array(geometry.centroid) - truth(name))
        assert error < 0.01, (name, geometry.centroid, truth(name), error)
        x0, x1, y0, y1, z0, _ = BOXES[name]
        assert geometry.extent_min[0] == pytest.approx(x0, abs=0.03) and geometry.extent_max[0] == pytest.approx(x1, abs=0.03)
        assert geometry.extent_min[1] == pytest.approx(y0, abs=0.03) and geometry.extent_max[1] == pytest.approx(y1, abs=0.03)
        assert geometry.point_count > 0.8 * mask.sum()


def test_without_the_depth_band_the_bleeding_rim_drags_the_centroid():
    """The robust band is what keeps the rim out: a plain mean of the bled mask is centimetres off."""
    depth_true, masks = render()
    bled = cv2.dilate(masks["card_near"].astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    points = backproject(bled, depth_true.astype(np.float32), K)
    assert np.linalg.norm(points.mean(axis=0) - truth("card_near")) > 0.05


def test_backprojection_is_the_inverse_of_projection():
    points = np.array([[0.1, -0.2, 1.5], [-0.7, 0.3, 2.2]])
    uv = K.project(points)
    depth = np.full((H, W), np.nan, np.float32)
    mask = np.zeros((H, W), bool)
    for (u, v), p in zip(np.round(uv).astype(int), points):
        depth[v, u], mask[v, u] = p[2], True
    back = backproject(mask, depth, K)
    # Pixel rounding moves a point by at most half a pixel's footprint.
    for p in points:
        assert np.min(np.linalg.norm(back - p, axis=1)) < 0.5 * p[2] / K.fx * math.sqrt(2) + 1e-9


def test_invalid_depth_values_and_encodings():
    mm = np.array([[0, 1000], [65535, 250]], np.uint16)
    metres = depth_to_metres(mm, "16UC1")
    assert np.isnan(metres[0, 0]) and metres[0, 1] == 1.0 and metres[1, 1] == pytest.approx(0.25)
    f = depth_to_metres(np.array([[np.nan, -1.0, np.inf, 2.5]], np.float32), "32FC1")
    assert np.isnan(f[0, :3]).all() and f[0, 3] == 2.5
    with pytest.raises(DepthError, match="not supported"):
        depth_to_metres(mm, "rgb8")
    with pytest.raises(DepthError, match="uint16"):
        depth_to_metres(mm.astype(np.float32), "16UC1")


def test_pairing_and_intrinsics_errors():
    with pytest.raises(DepthError, match="aligned"):
        check_pairing((240, 320), (480, 640), K)
    with pytest.raises(DepthError, match="CameraInfo is for 640x480"):
        check_pairing((240, 320), (240, 320), K)
    with pytest.raises(DepthError, match="uncalibrated"):
        Intrinsics.from_camera_info(NS(k=[0.0] * 9, width=640, height=480))
    with pytest.raises(DepthError, match="9 values"):
        Intrinsics.from_camera_info(NS(k=[1.0] * 4, width=640, height=480))
    assert Intrinsics.from_camera_info(NS(k=[500, 0, 320, 0, 510, 240, 0, 0, 1], width=640, height=480)).fy == 510


def test_too_few_points_give_no_geometry():
    assert instance_geometry(np.zeros((5, 3))) is None
    assert instance_geometry(np.zeros((0, 3))) is None


def test_rigid_transform_hand_computed():
    # 90 degrees about z: (1, 0, 0) -> (0, 1, 0); then translate by (1, 2, 3).
    q = (0.0, 0.0, math.sin(math.pi / 4), math.cos(math.pi / 4))
    out = transform_points(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), (1, 2, 3), q)
    assert out == pytest.approx(np.array([[1.0, 3.0, 3.0], [1.0, 2.0, 5.0]]))
    assert quaternion_matrix((0, 0, 0, 2)) == pytest.approx(np.eye(3))  # normalised
    with pytest.raises(DepthError):
        quaternion_matrix((0, 0, 0, 0))


def test_backprojection_uses_fx_for_columns_and_fy_for_rows_hand_computed():
    """fx != fy (non-square pixels, or a resized image): x = (u - cx) z / fx, y = (v - cy) z / fy."""
    k = Intrinsics(fx=400.0, fy=800.0, cx=10.0, cy=20.0)
    depth = np.full((120, 60), np.nan, np.float32)
    mask = np.zeros((120, 60), bool)
    for u, v, z in ((50, 60, 2.0), (10, 100, 4.0), (0, 0, 1.0)):
        depth[v, u], mask[v, u] = z, True
    points = backproject(mask, depth, k)  # row-major order: (0, 0), (50, 60), (10, 100)
    # (0-10)*1/400, (0-20)*1/800; (50-10)*2/400, (60-20)*2/800; (10-10)*4/400, (100-20)*4/800
    assert points == pytest.approx(np.array([[-0.025, -0.025, 1.0], [0.2, 0.1, 2.0], [0.0, 0.4, 4.0]]))
    assert k.project(points) == pytest.approx(np.array([[0.0, 0.0], [50.0, 60.0], [10.0, 100.0]]))


def test_mono16_depth_is_millimetres_like_16uc1():
    mm = np.array([[0, 1000], [65535, 250]], np.uint16)
    metres = depth_to_metres(mm, "mono16")
    assert np.isnan(metres[0, 0]) and metres[0, 1] == 1.0 and metres[1, 0] == pytest.approx(65.535)
    assert metres[1, 1] == pytest.approx(0.25)
    np.testing.assert_array_equal(metres, depth_to_metres(mm, "16UC1"))
    with pytest.raises(DepthError, match="uint16"):
        depth_to_metres(mm.astype(np.float32), "mono16")


# ----------------------------------------------------------------------------- plausible range per encoding
def scene_mm() -> np.ndarray:
    """The rendered scene (0.8 .. 4 m) in millimetres, as float32: what a driver sending mm as 32FC1 emits."""
    return (render()[0] * 1000.0).astype(np.float32)


def test_millimetres_sent_as_32fc1_warn_once_and_are_not_rescaled():
    warnings = []
    check = DepthRangeCheck(warn=warnings.append)
    for _ in range(3):
        metres = depth_to_metres(scene_mm(), "32FC1", range_check=check)
    assert len(warnings) == 1, warnings  # once, not per frame
    assert "32FC1" in warnings[0] and "millimetres" in warnings[0] and "REP 118" in warnings[0]
    assert check.last_problem == warnings[0]
    assert float(np.nanmedian(metres)) > 1000.0  # used as they are: no unit guessed
    # Another encoding's problem is its own warning.
    depth_to_metres(np.round(render()[0]).astype(np.uint16), "16UC1", range_check=check)
    assert len(warnings) == 2 and "16UC1" in warnings[1] and "metres" in warnings[1]


def test_depth_to_metres_warns_through_logging_by_default(monkeypatch, caplog):
    monkeypatch.setattr(depth3d, "DEFAULT_RANGE_CHECK", DepthRangeCheck())
    with caplog.at_level("WARNING", logger="ovsam_ros.robot.depth3d"):
        depth_to_metres(scene_mm(), "32FC1")
        depth_to_metres(scene_mm(), "32FC1")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "millimetres sent as 32FC1" in caplog.records[0].getMessage()


@pytest.mark.parametrize("encoding, depth, problem", [
    # Plausible: metres, millimetres, a far scene, a third of the pixels absurd (the median decides).
    ("32FC1", render()[0].astype(np.float32), None),
    ("32FC1", np.full((48, 64), 90.0, np.float32), None),
    ("32FC1", np.where(np.arange(48 * 64).reshape(48, 64) % 3 == 0, 5000.0, 2.0).astype(np.float32), None),
    ("16UC1", np.full((48, 64), 1500, np.uint16), None),
    ("mono16", np.full((48, 64), 25, np.uint16), None),  # 25 mm: close, but a real depth
    ("32FC1", np.full((48, 64), np.nan, np.float32), None),  # nothing valid: nothing to judge
    # Implausible.
    ("32FC1", np.full((48, 64), 1500.0, np.float32), "millimetres sent as 32FC1"),
    ("16UC1", np.full((48, 64), 2, np.uint16), "metres"),
    ("mono16", np.where(np.arange(48 * 64).reshape(48, 64) % 4 == 0, 0, 3).astype(np.uint16), "metres"),
])
def test_plausible_range_rule_per_encoding(encoding, depth, problem):
    found = implausible_depth(depth_to_metres(depth, encoding, range_check=DepthRangeCheck(warn=lambda m: None)),
                              encoding)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and encoding in found


def test_sparse_depth_is_judged_on_all_its_pixels():
    """A lidar projected into the image: 60 valid pixels of 307,200, none of them on the sample grid
    (every 4th row and column) that estimates the median of dense images."""
    depth = np.full((H, W), np.nan, np.float32)
    rng = np.random.default_rng(0)
    rows, cols = 4 * rng.integers(0, H // 4, 60) + 1, 4 * rng.integers(0, W // 4, 60) + 2
    depth[rows, cols] = rng.uniform(2000.0, 9000.0, 60)  # millimetres
    assert "millimetres sent as 32FC1" in implausible_depth(depth, "32FC1")
    assert implausible_depth(depth / 1000.0, "32FC1") is None
