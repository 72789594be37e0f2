"""Image files are read upright: the EXIF orientation is applied wherever a file is read (the
CLI, training and evaluation), as the reference's mmcv loader (cv2 IMREAD_COLOR) does; 16-bit,
float and alpha files still read as before (issue #29 item 4).

The expected pictures come from PIL (``ImageOps.exif_transpose``), not from OpenCV, which
does the reading."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from ovsam_ros.cli import main, read_image
from ovsam_ros.image_input import decode_image_file
from training.data import read_image as training_read_image
from training.data.coco import CocoInstances

ORIENTATION = 0x0112


def _picture() -> np.ndarray:
    """40 x 80 RGB of flat 8x8-aligned blocks (JPEG keeps them nearly exactly), no symmetry."""
    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[:, :] = (30, 60, 90)
    rgb[:16, :24] = (250, 20, 20)
    rgb[24:, 56:] = (20, 220, 40)
    rgb[8:16, 40:72] = (240, 240, 20)
    return rgb


def _with_orientation(path, orientation: int, rgb=None, **save) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(_picture() if rgb is None else rgb).save(path, exif=exif.tobytes(), **save)


def _upright_by_pil(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_orientation_is_applied_like_pil(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    _with_orientation(path, orientation, quality=100)
    expected = _upright_by_pil(path)
    assert expected.shape == ((80, 40, 3) if orientation >= 5 else (40, 80, 3))
    for read in (lambda p: read_image(p), training_read_image):  # CLI, training / evaluation
        got = read(path)
        assert got.shape == expected.shape
        assert np.abs(got.astype(int) - expected).max() <= 3  # two JPEG decoders, same file
    if orientation != 1:  # the stored (sideways / mirrored) pixels really differ
        stored = np.asarray(Image.open(path).convert("RGB"))
        assert stored.shape != expected.shape or np.abs(stored.astype(int) - expected).max() > 100


def test_png_and_tiff_orientation_are_applied_too(tmp_path):
    for name in ("o6.png", "o6.tif"):  # cv2.imread cannot even open such a TIFF (OpenCV 4.x)
        path = tmp_path / name
        _with_orientation(path, 6)
        assert np.array_equal(training_read_image(path), _upright_by_pil(path)), name


def test_sixteen_bit_float_and_alpha_files_still_read_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, (6, 7), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    with Image.open(tmp_path / "g16.png") as image:  # PIL: mode I;16
        assert np.array_equal(decode_image_file(tmp_path / "g16.png"), np.asarray(image))
    bgr16 = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), bgr16)
    got = decode_image_file(tmp_path / "c16.png")
    assert got.dtype == np.uint16 and np.array_equal(got, bgr16[:, :, ::-1])
    rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as image:
        rgb = np.asarray(image)[:, :, :3]  # alpha dropped, colour untouched (not composited)
    assert np.array_equal(decode_image_file(tmp_path / "a.png"), rgb)
    assert np.array_equal(training_read_image(tmp_path / "a.png"), rgb)
    floats = rng.random((6, 7)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "f.tif"), floats)
    assert np.array_equal(decode_image_file(tmp_path / "f.tif"), floats)


def test_evaluation_and_training_load_a_rotated_phone_photo_with_its_annotation(tmp_path):
    """COCO records give the upright size (80 high, 40 wide): before, the sideways read failed
    'decoded size 80x40 differs from the annotation's 40x80'."""
    _with_orientation(tmp_path / "phone.jpg", 6, quality=100)
    upright = _upright_by_pil(tmp_path / "phone.jpg")
    coco = {"images": [{"id": 1, "file_name": "phone.jpg", "width": 40, "height": 80}],
            "categories": [{"id": 1, "name": "cup"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 16, 24], "area": 384,
                             "iscrowd": 0, "segmentation": [[0, 0, 16, 0, 16, 24, 0, 24]]}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    image, masks = CocoInstances(tmp_path / "ann.json", tmp_path, ["cup"]).load(0)
    assert image.shape == upright.shape and np.abs(image.astype(int) - upright).max() <= 3
    assert masks[0].shape == (80, 40)


def test_ovsam_segment_reports_the_upright_size(tmp_path):
    _with_orientation(tmp_path / "phone.jpg", 6, quality=95)
    out = tmp_path / "r.json"
    assert main(["segment", str(tmp_path / "phone.jpg"), "--box", "2,2,30,70", "--threads", "1", "-q",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (data["width"], data["height"]) == (40, 80)
