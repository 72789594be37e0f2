"""Messages and the instance-ID image built from masks cropped to their boxes equal those built
from the full-frame masks (the predictor's results never hold a full-frame mask)."""

import numpy as np
import pytest

from ovsam_ros.results import InstanceResult, LabelScore, mask_box
from ovsam_ros.ros import outputs
from ovsam_ros.ros.messages import instance_id_image, instance_id_image_from_crops, labeled_mask_msg


def _masks(h: int = 40, w: int = 60, n: int = 6, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(n):
        m = np.zeros((h, w), bool)
        if i != 2:  # mask 2 stays empty
            x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
            m[y0 : y0 + rng.integers(2, 20), x0 : x0 + rng.integers(2, 30)] = True
            m[rng.integers(0, h), rng.integers(0, w)] = True  # a stray pixel widens the box
        masks.append(m)
    return masks


def _crop(mask):
    x0, y0, x1, y1 = mask_box(mask)
    return mask[y0:y1, x0:x1], (x0, y0, x1, y1)


def test_instance_ids_from_crops_equal_full_masks():
    masks = _masks()
    crops, boxes = zip(*(_crop(m) for m in masks))
    assert np.array_equal(instance_id_image_from_crops(crops, boxes, 40, 60), instance_id_image(masks, 40, 60))


def test_labeled_mask_from_crop_equals_full_mask_message():
    for mask in _masks():
        crop, box = _crop(mask)
        a = labeled_mask_msg(mask, instance_id=1, labels=[(3, "cup", 0.7)])
        b = labeled_mask_msg(crop, instance_id=1, labels=[(3, "cup", 0.7)], crop_box=box)
        assert a.bbox == b.bbox and a.mask == b.mask
    with pytest.raises(ValueError, match="does not fit"):
        labeled_mask_msg(np.ones((3, 3), bool), instance_id=0, crop_box=(0, 0, 4, 3))


def test_outputs_use_crops_without_building_full_masks():
    from std_msgs.msg import Header

    masks = _masks()
    results = []
    for i, mask in enumerate(masks):
        crop, box = _crop(mask)
        results.append(InstanceResult(None, 0.9, 0.8, box, [LabelScore(i, f"c{i}", 0.5)], prompt_index=i,
                                      crop=crop, image_size=(40, 60)))
    array = outputs.labeled_mask_array(results, Header(), (40, 60), mode="prompt")
    ids = outputs.instance_ids_msg(results, Header(), (40, 60))
    assert all(r.__dict__.get("_mask") is None for r in results)  # no full-frame mask was built
    full = [InstanceResult(m, 0.9, 0.8, mask_box(m), [LabelScore(i, f"c{i}", 0.5)], prompt_index=i)
            for i, m in enumerate(masks)]
    assert outputs.labeled_mask_array(full, Header(), (40, 60), mode="prompt").instances == array.instances
    assert outputs.instance_ids_msg(full, Header(), (40, 60)) == ids
    assert [r.area for r in results] == [int(m.sum()) for m in masks]
    assert all(np.array_equal(r.mask, m) for r, m in zip(results, masks))  # built on demand


# ----------------------------------------------------------------- independent slow references
def _reference_ids(masks, h, w, values=None):
    """Pixel by pixel, in plain Python: the first mask (in order) with a non-zero value owns a pixel."""
    ids = [[0] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            for i, m in enumerate(masks):
                value = i + 1 if values is None else values[i]
                if value and m[y][x]:
                    ids[y][x] = value
                    break
    return np.array(ids, dtype=np.uint16)


def _speckled_masks(h=24, w=36, n=7, seed=3):
    """Overlapping masks, speckled (random pixels: no run of equal pixels to lean on), one empty."""
    rng = np.random.default_rng(seed)
    masks = [rng.random((h, w)) < p for p in rng.uniform(0.05, 0.7, n)]
    masks[4][:] = False
    for m in masks[:3]:  # and a solid block each, overlapping the others
        x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
        m[y0:y0 + 8, x0:x0 + 8] = True
    return masks


@pytest.mark.parametrize("values", [None, [5, 0, 65535, 7, 9, 1, 300]])
def test_instance_id_image_equals_a_pixelwise_reference(values):
    masks = _speckled_masks()
    expected = _reference_ids([m.tolist() for m in masks], 24, 36, values)
    assert np.array_equal(instance_id_image(masks, 24, 36, values), expected)
    crops, boxes = zip(*(_crop(m) for m in masks))
    assert np.array_equal(instance_id_image_from_crops(crops, boxes, 24, 36, values=values), expected)
    out = np.zeros((24, 36), np.uint16)  # drawn into a given buffer (the message's pixels)
    assert instance_id_image_from_crops(crops, boxes, 24, 36, out=out, values=values) is out
    assert np.array_equal(out, expected)


def test_instance_id_image_rejects_what_does_not_fit():
    masks = _speckled_masks()[:2]
    with pytest.raises(ValueError, match="does not fit a mono16"):
        instance_id_image(masks, 24, 36, [1, 70000])
    with pytest.raises(ValueError, match="does not fit box"):
        instance_id_image_from_crops([np.ones((3, 3), bool)], [(34, 0, 37, 3)], 24, 36)
    with pytest.raises(ValueError, match="uint16"):
        instance_id_image_from_crops([], [], 24, 36, out=np.zeros((24, 36), np.int32))


def test_mask_message_pixels_equal_a_pixelwise_reference():
    from ovsam_ros.ros.image_conversion import image_to_numpy

    for mask in _speckled_masks():
        crop, box = _crop(mask)
        msg = labeled_mask_msg(crop, instance_id=0, crop_box=box)
        x0, y0, x1, y1 = box
        rows = [[255 if mask[y][x] else 0 for x in range(x0, x1)] for y in range(y0, y1)]
        assert (msg.mask.encoding, msg.mask.step, msg.mask.width, msg.mask.height) == ("mono8", x1 - x0, x1 - x0, y1 - y0)
        assert bytes(msg.mask.data) == bytes(v for row in rows for v in row)
        if rows:  # an empty mask travels as a 0x0 image (readers go through its 0x0 bbox)
            assert image_to_numpy(msg.mask).tolist() == rows
        # A non-contiguous crop view (e.g. a slice of a bigger array) gives the same bytes.
        wide = np.zeros((crop.shape[0], 2 * crop.shape[1] + 1), bool)
        wide[:, ::2][:, :crop.shape[1]] = crop
        view = wide[:, ::2][:, :crop.shape[1]]
        assert bytes(labeled_mask_msg(view, instance_id=0, crop_box=box).mask.data) == bytes(msg.mask.data)
