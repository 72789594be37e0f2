"""ovsam-extract-bag and 16-bit / depth CompressedImage frames: one rule for raw and compressed.

A 12-bit camera's picture sent as a raw ``rgb16`` Image and as a ``rgb16; png compressed``
CompressedImage must both be extracted losslessly (16-bit PNG, the same manifest fields), so stage 1
applies ``data.input_bits`` when reading. CompressedImage topics that declare a depth / 16-bit mono /
float encoding (``16UC1; png compressed`` ...) are refused like their raw encodings, and ``--depth
keep`` extracts them losslessly. Expected pixels are the arrays sent, the 8-bit pictures they were
made of, and ``ovsam_ros.image_input.to_uint8_rgb``; never the extraction code.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from ovsam_ros.image_input import to_uint8_rgb
from training.data import DataError, ImageFolderDataset, read_image
from training.data.rosbag import declared_encoding, main
from training_helpers import compressed_msg, image_msg, typestore_with_ovsam, write_bag

T0 = 1_700_000_000_000_000_000
IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
H, W = 12, 16


def _picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _to12(v8: np.ndarray) -> np.ndarray:
    """The 12-bit value a camera gives for an 8-bit picture: round(v8 * 4095 / 255) maps back to v8."""
    return np.round(v8.astype(np.float64) * 4095 / 255).astype(np.uint16)


def _compressed(store, stamp: int, cv2_pixels: np.ndarray, fmt: str, ext: str = ".png"):
    """A CompressedImage of ``cv2_pixels`` (cv2 channel order) encoded as ``ext``, format string ``fmt``."""
    ok, data = cv2.imencode(ext, cv2_pixels)
    assert ok
    msg = compressed_msg(store, stamp, "cam", np.zeros((1, 1, 3), np.uint8), data=data.tobytes())
    msg.format = fmt
    return msg


def _extract(bag, out, *topics: str, extra=()) -> int:
    return main([str(bag), *[a for t in topics for a in ("--topic", t)], "--out", str(out), *extra])


def _frames(out) -> dict:
    return {f["topic"]: f for f in json.loads((out / "manifest.json").read_text())["frames"]}


def _file(out, frame) -> np.ndarray:
    return cv2.imread(str(out / frame["file"]), cv2.IMREAD_UNCHANGED)


# ----------------------------------------------------------------------------- 1: 16-bit colour, raw and PNG
PICTURE = _picture(1)
SENT = _to12(PICTURE)  # RGB, 0..4095
COLOUR = {  # topic -> (message type, manifest encoding)
    "/cam/rgb16": (IMAGE, "rgb16"),
    "/cam/bgr16": (IMAGE, "bgr16"),
    "/cam/png_rgb16": (COMPRESSED, "compressed:rgb16; png compressed"),
    "/cam/png_bgr16": (COMPRESSED, "compressed:bgr16; png compressed bgr16"),
    "/cam/png": (COMPRESSED, "compressed:png"),
}


@pytest.fixture(scope="module")
def bag12(tmp_path_factory):
    store = typestore_with_ovsam()
    msgs = []
    for topic, (msgtype, encoding) in COLOUR.items():
        if msgtype == IMAGE:
            msg = image_msg(store, T0, "cam", SENT, encoding)
        else:  # image_transport's PNG holds BGR(A) in cv2 order whatever the source encoding
            msg = _compressed(store, T0, SENT[:, :, ::-1], encoding.split(":", 1)[1])
        msgs.append((topic, T0 + len(msgs), msg))
    return write_bag(tmp_path_factory.mktemp("b12") / "cam12", "mcap", {t: ty for t, (ty, _) in COLOUR.items()},
                     msgs, store)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_a_12bit_picture_raw_or_png_compressed_is_extracted_as_the_exact_16bit_array_sent(bag12, tmp_path, fmt):
    out = tmp_path / "out"
    assert _extract(bag12, out, *COLOUR, extra=["--format", fmt]) == 0  # colour 16-bit is no depth: not refused
    frames = _frames(out)
    assert sorted(frames) == sorted(COLOUR)
    for topic, (_, encoding) in COLOUR.items():
        f = frames[topic]
        assert f["file"].endswith(".png"), topic  # lossless whatever --format says, as for raw rgb16 before
        assert (f["encoding"], f["dtype"], f["channels"]) == (encoding, "uint16", 3), topic
        pixels = _file(out, f)
        assert pixels.dtype == np.uint16 and pixels.shape == (H, W, 3), topic
        assert np.array_equal(pixels[:, :, ::-1], SENT), topic  # the file holds BGR: cv2's order
        read = read_image(out / f["file"], input_bits=12)
        assert np.array_equal(read, to_uint8_rgb(SENT, input_bits=12)), topic
        assert np.array_equal(read, PICTURE), topic  # the camera's picture at full brightness, not 16x too dark


def test_stage1_reads_the_extracted_16bit_frames_with_input_bits(bag12, tmp_path):
    out = tmp_path / "out"
    assert _extract(bag12, out, *COLOUR) == 0
    dataset = ImageFolderDataset(str(out / "images"), 32, input_bits=12, check_images=True)
    assert len(dataset) == len(COLOUR) and not dataset.skipped  # colour 16-bit is a camera picture: taken
    picture = tmp_path / "picture"
    picture.mkdir()
    assert cv2.imwrite(str(picture / "p.png"), PICTURE[:, :, ::-1])
    expected = ImageFolderDataset(str(picture), 32)[0]["image"]  # the 8-bit picture, as stage 1 feeds it
    for i in range(len(dataset)):
        item = dataset[i]
        assert torch.equal(item["image"], expected), item["file"]


# ----------------------------------------------------------------------------- 2: depth-like CompressedImage
COLOUR_TOPIC = "/cam/color/image_raw"
DEPTH16 = np.full((H, W), 3500, np.uint16)  # millimetres
DEPTH16[0, 0], DEPTH16[1, 1] = 0, 65535
IR16 = _to12(_picture(2)[:, :, 0])
DEPTH32 = np.linspace(0.25, 7.5, H * W, dtype=np.float32).reshape(H, W)
DEPTH32[2, 2] = np.nan
DEPTHLIKE = {  # topic -> (format, declared encoding, sent pixels, file suffix)
    "/depth/png": ("16UC1; png compressed", "16UC1", DEPTH16, ".png"),
    "/ir/png": ("mono16; png compressed", "mono16", IR16, ".png"),
    "/depth/tiff": ("32FC1; tiff compressed", "32FC1", DEPTH32, ".tiff"),
}


@pytest.fixture(scope="module")
def depth_bag(tmp_path_factory):
    store = typestore_with_ovsam()
    msgs = [(COLOUR_TOPIC, T0, image_msg(store, T0, "cam", _picture(3)))]
    for topic, (fmt, _, pixels, suffix) in DEPTHLIKE.items():
        msgs.append((topic, T0 + len(msgs), _compressed(store, T0, pixels, fmt, suffix)))
    topics = {COLOUR_TOPIC: IMAGE, **{t: COMPRESSED for t in DEPTHLIKE}}
    return write_bag(tmp_path_factory.mktemp("depth") / "rgbd", "mcap", topics, msgs, store)


@pytest.mark.parametrize("topic", sorted(DEPTHLIKE))
def test_a_compressed_depth_or_mono16_topic_is_refused_like_its_raw_encoding(depth_bag, tmp_path, capsys, topic):
    out = tmp_path / "out"
    assert _extract(depth_bag, out, topic) == 2
    err = capsys.readouterr().err
    fmt, declared = DEPTHLIKE[topic][:2]
    assert f"topic {topic} carries {declared} frames" in err and fmt in err, err  # as the raw one's message says
    assert COLOUR_TOPIC in err and "--depth keep" in err, err  # which topic to take instead, how to override
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []  # nothing half-written


def test_depth_keep_extracts_compressed_depth_losslessly_and_stage1_refuses_it(depth_bag, tmp_path):
    out = tmp_path / "out"
    assert _extract(depth_bag, out, COLOUR_TOPIC, *DEPTHLIKE, extra=["--depth", "keep"]) == 0
    frames = _frames(out)
    for topic, (fmt, _, pixels, suffix) in DEPTHLIKE.items():
        f = frames[topic]
        assert f["file"].endswith(suffix), topic
        assert (f["encoding"], f["dtype"], f["channels"]) == (f"compressed:{fmt}", str(pixels.dtype), 1), topic
        stored = _file(out, f)
        assert stored.dtype == pixels.dtype and np.array_equal(stored, pixels, equal_nan=True), topic
    with pytest.raises(DataError, match="depth / 16-bit mono / float"):
        ImageFolderDataset(str(out / "images"), 64)


@pytest.mark.parametrize("fmt, encoding", [
    ("rgb16; png compressed", "rgb16"), ("16UC1; compressedDepth png", "16UC1"),
    (" mono16 ; png compressed", "mono16"), ("bgr8; jpeg compressed bgr8", "bgr8"),
    ("png", ""), ("jpeg", ""), ("", ""),
])
def test_the_declared_encoding_of_a_compressed_format_string(fmt, encoding):
    class Msg:
        format = fmt

    assert declared_encoding(Msg(), COMPRESSED) == encoding
    from training.label import sources

    assert sources.declared_encoding is declared_encoding  # ovsam-label and ovsam-extract-bag: one parser


def test_raw_and_png_compressed_frames_of_one_picture_give_the_same_file(tmp_path):
    """mono8 stays one channel, 8-bit colour becomes BGR, mono16 stays 16-bit: whichever way it was sent."""
    store = typestore_with_ovsam()
    grey8, rgb8 = _picture(4)[:, :, 0], _picture(5)
    sent = {"mono8": (grey8, grey8), "rgb8": (rgb8, rgb8[:, :, ::-1]), "mono16": (IR16, IR16)}
    msgs, topics = [], {}
    for enc, (pixels, cv2_pixels) in sent.items():
        topics[f"/raw/{enc}"], topics[f"/png/{enc}"] = IMAGE, COMPRESSED
        msgs.append((f"/raw/{enc}", T0 + len(msgs), image_msg(store, T0, "cam", pixels, enc)))
        msgs.append((f"/png/{enc}", T0 + len(msgs), _compressed(store, T0, cv2_pixels, f"{enc}; png compressed")))
    bag = write_bag(tmp_path / "bag", "mcap", topics, msgs, store)
    out = tmp_path / "out"
    assert _extract(bag, out, *topics, extra=["--depth", "keep"]) == 0
    frames = _frames(out)
    for enc, (pixels, cv2_pixels) in sent.items():
        raw, png = frames[f"/raw/{enc}"], frames[f"/png/{enc}"]
        assert (raw["dtype"], raw["channels"]) == (png["dtype"], png["channels"]) == (str(pixels.dtype),
                                                                                      1 if pixels.ndim == 2 else 3)
        assert np.array_equal(_file(out, raw), cv2_pixels) and np.array_equal(_file(out, png), cv2_pixels), enc


def test_a_huge_format_string_is_cut_in_the_refusal(tmp_path, capsys):
    store = typestore_with_ovsam()
    fmt = "16UC1; png compressed " + "x" * 100_000  # anything on the DDS domain can be recorded
    bag = write_bag(tmp_path / "bag", "mcap", {"/depth": COMPRESSED},
                    [("/depth", T0, _compressed(store, T0, DEPTH16, fmt))], store)
    assert _extract(bag, tmp_path / "out", "/depth") == 2
    err = capsys.readouterr().err
    assert "topic /depth carries 16UC1 frames" in err and "x" * 200 not in err and len(err) < 2000, len(err)
