"""Masks on the wire (issue #23): every encoding decodes bit for bit to the predictor's masks, the
payloads are what the reference libraries write and read, and bad payloads are refused before a C
decoder sees them."""

from __future__ import annotations

import struct
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from ovsam_ros.ros import mask_codec
from ovsam_ros.ros.mask_codec import COCO_RLE, MASK_ENCODINGS, PNG, RAW, MaskDecodeError

pytest.importorskip("rclpy")
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from ovsam_ros.msg import LabeledMask, LabeledMaskArray  # noqa: E402
from ovsam_ros.results import InstanceResult, LabelScore, mask_box  # noqa: E402
from ovsam_ros.ros import outputs  # noqa: E402
from ovsam_ros.ros.messages import labeled_mask_msg  # noqa: E402


def _edge_masks() -> list[tuple[str, np.ndarray]]:
    """(name, full-frame mask) of the cases a codec gets wrong first; odd frame sizes."""
    h, w = 37, 53
    rng = np.random.default_rng(7)
    cases = {"empty": np.zeros((h, w), bool), "full frame": np.ones((h, w), bool)}
    one = np.zeros((h, w), bool)
    one[17, 29] = True
    cases["one pixel"] = one
    corner = np.zeros((h, w), bool)
    corner[h - 1, w - 1] = True
    cases["one pixel, last corner"] = corner
    first = np.zeros((h, w), bool)
    first[0, 0] = True
    cases["one pixel, first corner"] = first
    border = np.zeros((h, w), bool)
    border[0, :] = border[:, 0] = border[-1, 5:9] = border[3:30, -1] = True
    cases["touching all borders"] = border
    cases["checkerboard"] = (np.indices((h, w)).sum(0) % 2).astype(bool)  # a run per pixel
    cases["noise"] = rng.random((h, w)) < 0.5
    row = np.zeros((h, w), bool)
    row[20, 3:40] = True
    cases["one row"] = row
    col = np.zeros((h, w), bool)
    col[2:35, 52] = True
    cases["one column at the right border"] = col
    return list(cases.items())


@pytest.fixture(scope="module")
def predictor_results() -> list[InstanceResult]:
    """Real masks: the bundled shapes model in everything mode on a shapes-world scene (odd size)."""
    import torch

    from ovsam_ros.loading import build_predictor
    from ovsam_ros.shapes_world import world_scene

    torch.set_num_threads(1)
    predictor = build_predictor("shapes", text_cache_dir=None)
    rgb, _ = world_scene(3, 0, (321, 241))
    predictor.set_image(rgb)
    results = predictor.everything()
    assert len(results) >= 3 and all(r.crop is not None for r in results)
    return results


def _roundtrip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


@pytest.mark.parametrize("encoding", MASK_ENCODINGS)
def test_predictor_masks_decode_bit_for_bit(predictor_results, encoding):
    """The node's path (labeled_mask_array from the predictor's crops) -> CDR -> decode_masks."""
    array = outputs.labeled_mask_array(predictor_results, Header(frame_id="cam"), (241, 321), mode="everything",
                                       mask_encoding=encoding)
    received = _roundtrip(array)
    assert all(m.mask_encoding == encoding for m in received.instances)
    decoded = mask_codec.decode_masks(received)
    assert len(decoded) == len(predictor_results)
    for got, r in zip(decoded, predictor_results):
        assert got.dtype == bool and got.shape == (241, 321)
        assert np.array_equal(got, r.mask)


@pytest.mark.parametrize("encoding", MASK_ENCODINGS)
@pytest.mark.parametrize("name,mask", _edge_masks(), ids=[n for n, _ in _edge_masks()])
def test_edge_case_masks_decode_bit_for_bit(encoding, name, mask):
    msg = _roundtrip(labeled_mask_msg(mask, instance_id=0, mask_encoding=encoding))
    assert msg.mask_encoding == encoding
    assert np.array_equal(mask_codec.decode_mask(msg, mask.shape), mask), name
    x0, y0, x1, y1 = mask_box(mask)
    assert np.array_equal(mask_codec.decode_mask_crop(msg), mask[y0:y1, x0:x1])
    if not mask.any():  # zero-area box: nothing travels
        assert (msg.bbox.width, msg.bbox.height) == (0, 0) and len(msg.mask_data) == 0


@pytest.mark.parametrize("encoding", MASK_ENCODINGS)
def test_a_crop_that_is_not_tight_keeps_its_empty_rows(encoding):
    """labeled_mask_msg with crop_box: the crop travels as given (no re-cropping, no loss)."""
    crop = np.zeros((6, 9), bool)
    crop[2:4, 3:5] = True
    msg = _roundtrip(labeled_mask_msg(crop, instance_id=1, crop_box=(10, 20, 19, 26), mask_encoding=encoding))
    full = mask_codec.decode_mask(msg, (30, 40))
    expected = np.zeros((30, 40), bool)
    expected[20:26, 10:19] = crop
    assert np.array_equal(full, expected)


def test_payloads_are_what_pycocotools_and_opencv_read(predictor_results):
    """Independent of our decoder: pycocotools decodes the RLE payload, cv2.imdecode the PNG one
    (what a C++ consumer calls), with the box's size."""
    from pycocotools import mask as mask_utils

    for r in predictor_results:
        rle = labeled_mask_msg(r.crop, instance_id=0, crop_box=r.box, mask_encoding=COCO_RLE)
        h, w = rle.bbox.height, rle.bbox.width
        counts = bytes(rle.mask_data)
        assert counts == mask_utils.encode(np.asfortranarray(r.crop.astype(np.uint8)))["counts"]
        assert np.array_equal(mask_utils.decode({"size": [h, w], "counts": counts}), r.crop)
        png = labeled_mask_msg(r.crop, instance_id=0, crop_box=r.box, mask_encoding=PNG)
        pixels = cv2.imdecode(np.frombuffer(bytes(png.mask_data), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert pixels.dtype == np.uint8 and set(np.unique(pixels)) <= {0, 255}
        assert np.array_equal(pixels > 0, r.crop)
        assert mask_codec.png_size(bytes(png.mask_data))[2] == 1  # 1-bit: 8x fewer bytes to deflate
        raw = labeled_mask_msg(r.crop, instance_id=0, crop_box=r.box, mask_encoding=RAW)
        assert raw.mask.encoding == "mono8" and len(raw.mask_data) == 0


def test_png_from_other_producers_nonzero_is_the_object():
    """8-bit greyscale PNGs with 0/1 or 0/255 (cv::imwrite of a CV_8U mask) decode like our 1-bit ones."""
    mask = np.zeros((9, 14), bool)
    mask[2:7, 3:12] = True
    mask[4, 5] = False
    for pixels in (mask.astype(np.uint8), mask.astype(np.uint8) * 255):
        payload = cv2.imencode(".png", pixels)[1].tobytes()
        assert mask_codec.png_size(payload)[2] == 8
        assert np.array_equal(mask_codec.decode_crop(payload, PNG, 9, 14), mask)


def test_rle_runs_match_a_hand_count():
    """rle_counts (the guard before pycocotools) against runs counted in numpy, column-major."""
    rng = np.random.default_rng(3)
    from pycocotools import mask as mask_utils

    for h, w, p in [(1, 1, 1.0), (1, 1, 0.0), (5, 3, 0.5), (40, 70, 0.02), (64, 33, 0.97), (300, 2, 0.5)]:
        mask = rng.random((h, w)) < p
        flat = mask.T.reshape(-1).astype(np.int8)  # column-major, as COCO
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate(([0], edges, [flat.size])))
        if flat[0]:
            runs = np.concatenate(([0], runs))  # COCO RLE starts with a run of zeros
        counts = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        assert mask_codec.rle_counts(counts, h, w).tolist() == runs.tolist()
    # large counts (multi-character values, deltas of both signs)
    big = np.zeros((4000, 3000), bool)
    big[123:3999, 7:2500] = True
    counts = mask_utils.encode(np.asfortranarray(big.astype(np.uint8)))["counts"]
    runs = mask_codec.rle_counts(counts, 4000, 3000)
    assert runs.sum() == 4000 * 3000 and runs[0] == 7 * 4000 + 123 and runs[1] == 3999 - 123


def _rle_msg(counts: bytes, h: int, w: int):
    msg = LabeledMask(mask_encoding=COCO_RLE)
    msg.bbox.height, msg.bbox.width = h, w
    msg.mask_data = list(counts)
    return msg


@pytest.mark.parametrize("counts,why", [
    (b"3", "cover"),  # 3 pixels for a 4x4 box: pycocotools would leave 13 pixels uninitialised
    (b"0`1", "cover"),  # 0 zeros then 48 ones: more than the box (rleDecode would write past it)
    (b"1O", "negative"),  # second count negative (0x10 sign bit on a one-character value)
    (b"1\x7f", "byte"),  # outside '0'..'o'
    (b"1 ", "byte"),
    (b"1P", "truncated"),  # 0x20 'more' on the last character: rleFrString reads past the string
    (b"PPPPPP1", "characters"),  # a 7-character value
    (b"", "empty"),
])
def test_malformed_rle_is_refused_before_pycocotools(counts, why):
    with pytest.raises(MaskDecodeError, match=why):
        mask_codec.decode_mask_crop(_rle_msg(counts, 4, 4))


def _png_with_header(width: int, height: int, depth: int = 1, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 12


def _png_msg(payload: bytes, h: int, w: int):
    msg = LabeledMask(mask_encoding=PNG)
    msg.bbox.height, msg.bbox.width = h, w
    msg.mask_data = list(payload)
    return msg


def test_bad_png_payloads_are_refused():
    good = mask_codec.encode_crop(np.ones((8, 8), bool), PNG)
    with pytest.raises(MaskDecodeError, match="PNG mask is 8x8, its box 9x8"):
        mask_codec.decode_mask_crop(_png_msg(good, 8, 9))
    # a header that claims 100000 x 100000 pixels: refused from the header, nothing is inflated
    with pytest.raises(MaskDecodeError, match="100000x100000"):
        mask_codec.decode_mask_crop(_png_msg(_png_with_header(100000, 100000), 8, 8))
    rgb = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    with pytest.raises(MaskDecodeError, match="colour type 2"):
        mask_codec.decode_mask_crop(_png_msg(rgb, 4, 4))
    deep = cv2.imencode(".png", np.zeros((4, 4), np.uint16))[1].tobytes()
    with pytest.raises(MaskDecodeError, match="bit depth 16"):
        mask_codec.decode_mask_crop(_png_msg(deep, 4, 4))
    with pytest.raises(MaskDecodeError, match="not a PNG"):
        mask_codec.decode_mask_crop(_png_msg(b"GIF89a" + b"\x00" * 40, 4, 4))
    with pytest.raises(MaskDecodeError, match="could not decode"):
        mask_codec.decode_mask_crop(_png_msg(good[:40], 8, 8))  # truncated after the header


def test_contradictions_and_bounds_are_errors_not_guesses():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    msg = labeled_mask_msg(mask, instance_id=0, mask_encoding=COCO_RLE)
    msg.mask_encoding = "rle"  # a typo must not be read as some other encoding
    with pytest.raises(MaskDecodeError, match="'rle' is unknown; known: coco_rle, png, raw"):
        mask_codec.decode_mask(msg, (10, 12))
    raw = labeled_mask_msg(mask, instance_id=0)
    raw.mask_data = [1, 2, 3]
    with pytest.raises(MaskDecodeError, match="set mask_encoding"):
        mask_codec.decode_mask_crop(raw)
    with pytest.raises(MaskDecodeError, match="does not fit the 5x10 image"):
        mask_codec.decode_mask(labeled_mask_msg(mask, instance_id=0), (10, 5))
    huge = LabeledMask(mask_encoding=COCO_RLE)
    huge.bbox.height = huge.bbox.width = 100000  # 10^10 pixels: refused before any allocation
    with pytest.raises(MaskDecodeError, match="out of range"):
        mask_codec.decode_mask_crop(huge)
    with pytest.raises(MaskDecodeError, match="out of range"):
        mask_codec.decode_mask(labeled_mask_msg(mask, instance_id=0), (100000, 100000))
    empty_box = LabeledMask(mask_encoding=PNG)
    empty_box.mask_data = [1]
    with pytest.raises(MaskDecodeError, match="zero area"):
        mask_codec.decode_mask_crop(empty_box)
    with pytest.raises(ValueError, match="unknown mask encoding 'jpeg'"):
        labeled_mask_msg(mask, instance_id=0, mask_encoding="jpeg")
    with pytest.raises(ValueError, match="unknown mask encoding 'jpeg'"):
        outputs.labeled_mask_array([], Header(), (10, 12), mode="prompt", mask_encoding="jpeg")


def test_a_message_of_the_old_definition_reads_as_raw():
    """A bag recorded before mask_encoding existed (rosbags decodes it with the bag's own definition)."""
    mask = np.zeros((6, 7), bool)
    mask[1:3, 2:6] = True
    new = labeled_mask_msg(mask, instance_id=0)
    old = SimpleNamespace(bbox=new.bbox, mask=new.mask)  # no mask_encoding, no mask_data
    assert np.array_equal(mask_codec.decode_mask(old, (6, 7)), mask)
    assert LabeledMask().mask_encoding == RAW  # the field's default: a producer that only fills `mask`


def test_rosbags_reads_what_rclpy_wrote(predictor_results):
    """Bag extraction decodes with rosbags' typestore built from msg/ (training/data/rosbag.py):
    the CDR bytes rclpy published decode there too, every encoding."""
    from training.data.rosbag import make_typestore

    store = make_typestore()
    for encoding in MASK_ENCODINGS:
        array = outputs.labeled_mask_array(predictor_results, Header(), (241, 321), mode="everything",
                                           mask_encoding=encoding)
        msg = store.deserialize_cdr(serialize_message(array), "ovsam_ros/msg/LabeledMaskArray")
        for got, r in zip(mask_codec.decode_masks(msg), predictor_results):
            assert np.array_equal(got, r.mask), encoding


def test_labeled_mask_array_default_stays_raw():
    """Library callers that build arrays themselves keep the old form; the node passes its parameter."""
    r = InstanceResult(mask=None, crop=np.ones((2, 3), bool), image_size=(5, 5), box=(1, 1, 4, 3),
                       predicted_iou=1.0, stability_score=1.0, labels=[LabelScore(0, "a", 1.0)])
    array: LabeledMaskArray = outputs.labeled_mask_array([r], Header(), (5, 5), mode="prompt")
    assert array.instances[0].mask_encoding == RAW and array.instances[0].mask.encoding == "mono8"


@pytest.mark.parametrize("encoding", MASK_ENCODINGS)
@pytest.mark.parametrize("track_ids", [None, "tracked"])
def test_the_instance_id_image_rebuilds_from_the_masks_alone(predictor_results, encoding, track_ids):
    """~/instance_ids is off by default: a consumer rebuilds it, pixel for pixel, from ~/masks."""
    from ovsam_ros.ros.messages import instance_id_image_from_msg

    tracks = None if track_ids is None else [70000 + 3 * i if i != 1 else 0 for i in range(len(predictor_results))]
    extras = outputs.FrameExtras(track_ids=tracks)
    array = _roundtrip(outputs.labeled_mask_array(predictor_results, Header(), (241, 321), mode="everything",
                                                  extras=extras, mask_encoding=encoding))
    expected = outputs.instance_id_pixels(predictor_results, (241, 321), tracks)
    assert np.array_equal(instance_id_image_from_msg(array), expected)
    assert (expected > 0).sum() > 100
