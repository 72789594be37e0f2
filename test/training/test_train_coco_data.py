"""COCO-format parsing: masks decode right, and every kind of bad input is an error or a counted skip."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data import CocoInstances, DataError, decode_segmentation, polygon_self_intersects
from training.synthetic import encode_segmentation

H, W = 48, 64
SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]


def _write(tmp_path: Path, annotations, images=None, categories=None, image_files=("a.png",)) -> Path:
    rng = np.random.default_rng(0)
    for name in image_files:
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    data = {
        "images": images if images is not None else [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": annotations,
        "categories": categories if categories is not None else [
            {"id": 1, "name": "cup", "split": "base"}, {"id": 2, "name": "door handle", "split": "novel"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _ann(i=1, seg=None, bbox=(10, 10, 20, 20), cat=1, **kw):
    return {"id": i, "image_id": 1, "category_id": cat, "segmentation": [SQUARE] if seg is None else seg,
            "bbox": list(bbox) if bbox is not None else None, "iscrowd": 0, **kw}


def test_polygon_and_rle_decode_to_the_same_mask(tmp_path):
    mask = np.zeros((H, W), bool)
    mask[5:25, 8:40] = True
    mask[30:40, 50:60] = True
    poly, poly_mask = encode_segmentation(mask, "polygon")
    rle, _ = encode_segmentation(mask, "rle")
    from pycocotools import mask as mu

    uncompressed = {"size": [H, W], "counts": [int(c) for c in _uncompressed_counts(mask)]}
    assert np.array_equal(decode_segmentation(rle, H, W), mask)
    assert np.array_equal(decode_segmentation(uncompressed, H, W), mask)
    assert np.array_equal(decode_segmentation(poly, H, W), poly_mask)
    assert (poly_mask == mask).mean() > 0.97  # polygons trace the pixel grid
    assert mu.area(mu.encode(np.asfortranarray(mask.astype(np.uint8)))) == mask.sum()


def test_hand_polygons_decode_to_hand_masks():
    # COCO polygons are [x0, y0, x1, y1, ...] in pixel-edge coordinates; a pixel (row y, column x)
    # belongs to the object when its centre (x + 0.5, y + 0.5) lies inside the polygon.
    yy, xx = np.mgrid[:H, :W] + 0.5
    rect = [8, 5, 40, 5, 40, 25, 8, 25]  # x 8..40, y 5..25: columns 8..39, rows 5..24
    expected_rect = np.zeros((H, W), bool)
    expected_rect[5:25, 8:40] = True
    assert np.array_equal(decode_segmentation([rect], H, W), expected_rect)
    # A non-symmetric triangle (a wrong x/y order or a transpose cannot map it onto itself):
    # corners (50, 10), (62, 10), (50, 40); inside: x >= 50, y >= 10, and left of the hypotenuse.
    tri = [50, 10, 62, 10, 50, 40]
    expected_tri = (xx >= 50) & (yy >= 10) & ((xx - 50) / 12 + (yy - 10) / 30 < 1)
    assert expected_tri.sum() > 150
    assert np.array_equal(decode_segmentation([tri], H, W), expected_tri)
    # Two polygons of one object are merged (union), not just the first one kept.
    assert np.array_equal(decode_segmentation([rect, tri], H, W), expected_rect | expected_tri)


def _uncompressed_counts(mask):
    flat = mask.T.reshape(-1).astype(np.uint8)  # column-major
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts


def test_split_and_keep_splits(tmp_path):
    path = _write(tmp_path, [_ann(1), _ann(2, cat=2)])
    coco = CocoInstances(path)
    assert coco.num_instances == 2 and coco.vocab.split == ["base", "novel"]
    base = CocoInstances(path, keep_splits=["base"])
    assert base.num_instances == 1 and base.skipped.counts["class_split_novel"] == 1


def test_corrupt_image_error_or_skip(tmp_path):
    path = _write(tmp_path, [_ann(1)])
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    coco = CocoInstances(path)  # only existence is checked up front ...
    with pytest.raises(DataError, match="a.png"):  # ... and loading names the file
        coco.load(0)
    with pytest.raises(DataError, match="a.png"):
        CocoInstances(path, check_images=True)
    skipped = CocoInstances(path, check_images=True, corrupt_images="skip")
    assert len(skipped) == 0 and skipped.skipped.counts["corrupt_image"] == 1


def test_missing_image_files_are_listed_or_counted(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W},
              {"id": 2, "file_name": "gone.png", "height": H, "width": W}]
    anns = [_ann(1), {**_ann(2), "image_id": 2}]
    path = _write(tmp_path, anns, images=images)
    with pytest.raises(DataError, match="gone.png"):
        CocoInstances(path)
    coco = CocoInstances(path, missing_images="skip")
    assert len(coco) == 1
    assert coco.skipped.counts["missing_image_file"] == 1
    assert coco.skipped.counts["annotation_of_missing_image"] == 1


def test_empty_and_degenerate_polygons_are_counted(tmp_path):
    anns = [_ann(1, seg=[]), _ann(2, seg=[[1.0, 2.0, 3.0, 4.0]]), _ann(3, seg=[[5, 5, 5, 5, 5, 5]]),
            _ann(4, seg=[SQUARE, []]), _ann(5, seg=[[1.0, float("nan"), 3.0, 4.0, 5.0, 6.0]])]
    coco = CocoInstances(_write(tmp_path, anns))
    assert [i.ann_id for i in coco.images[0].instances] == [4]
    assert coco.skipped.counts["instance_without_usable_polygon"] == 4
    assert coco.skipped.counts["empty_or_degenerate_polygon"] == 4  # ann 1 has no polygon at all


def test_self_intersecting_polygon_policies(tmp_path):
    bowtie = [10.0, 10.0, 30.0, 30.0, 30.0, 10.0, 10.0, 30.0]
    assert polygon_self_intersects(bowtie) and not polygon_self_intersects(SQUARE)
    # a contour tracer's back-and-forth spike is collinear, not a crossing
    assert not polygon_self_intersects([10, 10, 20, 10, 30, 10, 20, 10, 20, 20])
    path = _write(tmp_path, [_ann(1, seg=[bowtie]), _ann(2)])
    coco = CocoInstances(path)
    assert [i.ann_id for i in coco.images[0].instances] == [2]
    assert coco.skipped.counts["self_intersecting_polygon"] == 1
    kept = CocoInstances(path, self_intersecting="keep")
    assert kept.num_instances == 2 and kept.skipped.counts["self_intersecting_polygon_kept"] == 1
    with pytest.raises(DataError, match="annotation id 1"):
        CocoInstances(path, self_intersecting="error")


def test_zero_area_and_invalid_boxes_are_counted(tmp_path):
    anns = [_ann(1, bbox=(10, 10, 0, 5)), _ann(2, bbox=(10, 10, 5, -1)), _ann(3, bbox=(1, 2, 3)), _ann(4)]
    coco = CocoInstances(_write(tmp_path, anns))
    assert coco.num_instances == 1
    assert coco.skipped.counts["zero_area_bbox"] == 2 and coco.skipped.counts["invalid_bbox"] == 1


def test_class_ids_outside_the_vocabulary(tmp_path):
    # category id not even declared in the file
    with pytest.raises(DataError, match="annotation id 7.*category_id 99"):
        CocoInstances(_write(tmp_path, [_ann(7, cat=99)]))
    # declared, but not in the vocabulary we train with
    path = _write(tmp_path, [_ann(1), _ann(2, cat=2)])
    with pytest.raises(DataError, match="door handle"):
        CocoInstances(path, vocabulary="cup, person")
    coco = CocoInstances(path, vocabulary="cup, person", unknown_category="skip")
    assert coco.num_instances == 1 and coco.skipped.counts["category_not_in_vocabulary"] == 1
    # a built-in vocabulary with COCO ids maps by id
    coco80 = CocoInstances(_write(tmp_path, [_ann(1, cat=47)], categories=[{"id": 47, "name": "cup"}]), vocabulary="coco")
    assert coco80.vocab.classes[coco80.images[0].instances[0].label] == "cup"


def test_rle_size_mismatch_and_unknown_image_are_errors(tmp_path):
    rle, _ = encode_segmentation(np.ones((H + 1, W), bool), "rle")
    with pytest.raises(DataError, match="annotation id 1.*RLE size"):
        CocoInstances(_write(tmp_path, [_ann(1, seg=rle)]))
    with pytest.raises(DataError, match="annotation id 3.*image_id 5"):
        CocoInstances(_write(tmp_path, [{**_ann(3), "image_id": 5}]))


def test_crowd_and_missing_segmentation_counted(tmp_path):
    coco = CocoInstances(_write(tmp_path, [_ann(1, iscrowd=1), {**_ann(2), "segmentation": None}, _ann(3)]))
    assert coco.num_instances == 1
    assert coco.skipped.counts["crowd"] == 1 and coco.skipped.counts["no_segmentation"] == 1


def test_not_coco_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        CocoInstances(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO instance file"):
        CocoInstances(bad)
    with pytest.raises(FileNotFoundError):
        CocoInstances(tmp_path / "nope.json")


def test_decoded_size_must_match_the_record(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": H + 2, "width": W}]
    rle, _ = encode_segmentation(np.ones((H + 2, W), bool), "rle")
    coco = CocoInstances(_write(tmp_path, [_ann(1, seg=rle)], images=images))
    with pytest.raises(DataError, match="differs from the annotation"):
        coco.load(0)


def test_lvis_entries_without_file_name_use_the_coco_url_split_folder(tmp_path):
    # LVIS v1 image entries have no file_name, only the COCO url; the file lies in <root>/<split>/<name>.
    (tmp_path / "val2017").mkdir()
    cv2.imwrite(str(tmp_path / "val2017" / "000000397133.jpg"), np.zeros((H, W, 3), np.uint8))
    images = [{"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000397133.jpg", "height": H, "width": W}]
    data = CocoInstances(_write(tmp_path, [_ann()], images=images, image_files=()))
    assert [Path(r.file) for r in data.images] == [(tmp_path / "val2017" / "000000397133.jpg").resolve()]
    assert len(data.images[0].instances) == 1

    with pytest.raises(DataError, match="without 'id'/'file_name'"):
        CocoInstances(_write(tmp_path, [_ann()], images=[{"id": 1, "height": H, "width": W}], image_files=()))
