"""sensor_msgs/Image <-> numpy: every supported layout round-trips; lying headers fail clearly."""

import numpy as np
import pytest

from ovsam_ros.ros.image_conversion import (
    ImageConversionError,
    compressed_to_numpy,
    image_to_numpy,
    numpy_to_image,
    to_rgb,
)

rng = np.random.default_rng(0)


@pytest.mark.parametrize(
    "encoding, shape, dtype",
    [
        ("rgb8", (5, 7, 3), np.uint8),
        ("bgr8", (5, 7, 3), np.uint8),
        ("rgba8", (5, 7, 4), np.uint8),
        ("bgra8", (5, 7, 4), np.uint8),
        ("mono8", (5, 7), np.uint8),
        ("mono16", (5, 7), np.uint16),
        ("rgb16", (5, 7, 3), np.uint16),
        ("32FC1", (5, 7), np.float32),
    ],
)
def test_roundtrip(encoding, shape, dtype):
    pixels = (rng.random(shape) * 1000).astype(dtype)
    msg = numpy_to_image(pixels, encoding)
    assert msg.step == shape[1] * (shape[2] if len(shape) == 3 else 1) * np.dtype(dtype).itemsize
    back = image_to_numpy(msg)
    assert back.dtype == dtype and np.array_equal(back, pixels)


def test_padded_rows_are_skipped():
    pixels = rng.integers(0, 255, (4, 3, 3), dtype=np.uint8)
    msg = numpy_to_image(pixels, "rgb8")
    padded = np.zeros((4, 16), np.uint8)  # step 16 > 9 bytes of pixels per row
    padded[:, :9] = pixels.reshape(4, 9)
    msg.step, msg.data = 16, padded.tobytes()
    assert np.array_equal(image_to_numpy(msg), pixels)


def test_node_decode_reads_the_message_buffer_without_a_copy():
    from ovsam_ros.ros.frames import decode_frame

    pixels = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
    msg = numpy_to_image(pixels, "rgb8")
    view = image_to_numpy(msg, copy=False)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8)) and np.array_equal(view, pixels)
    rgb = decode_frame(msg, compressed=False)  # the node's path: no copy of an rgb8 frame
    assert np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8)) and np.array_equal(rgb, pixels)
    owned = image_to_numpy(msg)  # the default still owns its memory
    assert not np.shares_memory(owned, np.frombuffer(msg.data, np.uint8)) and np.array_equal(owned, pixels)
    # Layouts that need converting are converted all the same without copy=True.
    bgr = numpy_to_image(np.ascontiguousarray(pixels[:, :, ::-1]), "bgr8")
    assert np.array_equal(decode_frame(bgr, compressed=False), pixels)
    big = numpy_to_image(np.array([[1, 256]], np.uint16), "mono16")
    big.is_bigendian, big.data = 1, np.array([[1, 256]], ">u2").tobytes()
    assert np.array_equal(image_to_numpy(big, copy=False), [[1, 256]])


def test_big_endian_16_bit():
    pixels = np.array([[1, 256], [4095, 65535]], dtype=np.uint16)
    msg = numpy_to_image(pixels, "mono16")
    msg.is_bigendian, msg.data = 1, pixels.astype(">u2").tobytes()
    assert np.array_equal(image_to_numpy(msg), pixels)


def test_bgr_to_rgb_and_mono_to_rgb():
    bgr = np.zeros((1, 1, 3), np.uint8)
    bgr[0, 0] = (10, 20, 30)
    assert to_rgb(bgr, "bgr8")[0, 0].tolist() == [30, 20, 10]
    assert to_rgb(np.full((2, 2), 7, np.uint8), "mono8").shape == (2, 2, 3)
    bgra = np.zeros((1, 1, 4), np.uint8)
    bgra[0, 0] = (1, 2, 3, 4)
    assert to_rgb(bgra, "bgra8")[0, 0].tolist() == [3, 2, 1]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "unsupported image encoding"),
        (lambda m: setattr(m, "width", 0), "zero size"),
        (lambda m: setattr(m, "step", 3), "step 3 is smaller"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "truncated"),
        (lambda m: setattr(m, "height", 100000), "truncated|exceeds"),
    ],
)
def test_lying_headers_fail_clearly(mutate, match):
    msg = numpy_to_image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    mutate(msg)
    with pytest.raises(ImageConversionError, match=match):
        image_to_numpy(msg)


def test_numpy_to_image_rejects_mismatched_arrays():
    with pytest.raises(ImageConversionError, match="does not fit"):
        numpy_to_image(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="dtype"):
        numpy_to_image(np.zeros((4, 4), np.float64), "mono8")


def test_compressed_png_and_corrupt_data():
    import cv2
    from sensor_msgs.msg import CompressedImage

    bgr = rng.integers(0, 255, (6, 9, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    pixels, encoding = compressed_to_numpy(CompressedImage(format="png", data=png.tobytes()))
    assert encoding == "bgr8" and np.array_equal(pixels, bgr)
    with pytest.raises(ImageConversionError, match="could not decode"):
        compressed_to_numpy(CompressedImage(format="jpeg", data=b"\xff\xd8garbage"))
    with pytest.raises(ImageConversionError, match="no data"):
        compressed_to_numpy(CompressedImage(format="jpeg", data=b""))


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (IHDR) claiming width x height grey pixels, with one tiny IDAT: what a
    decompression bomb looks like before decoding (a real 20,000 x 20,000 zero PNG is ~400 kB)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("pillow_limit", ["default", "off"])
@pytest.mark.parametrize("width, height", [(16385, 16384), (40000, 40000), (70000, 70000)])
def test_a_compressed_image_claiming_too_many_pixels_is_refused_before_decoding(width, height, pillow_limit,
                                                                                 monkeypatch):
    """Anything on the DDS domain can send a small PNG whose header claims gigapixels: before, it went
    to cv2.imdecode, bounded only by OpenCV's 2^30 pixels (3 GiB of BGR). Now the header is read first
    (Pillow, no pixels) and the frame refused, cv2 never called: by Pillow's decompression-bomb limit
    (179 Mpx), or, where an application turned that off, by the raw-image limit MAX_PIXELS."""
    import cv2
    from PIL import Image
    from sensor_msgs.msg import CompressedImage

    from ovsam_ros.ros.image_conversion import MAX_PIXELS, compressed_size

    data = _png_claiming(width, height)
    assert len(data) < 200 and width * height > MAX_PIXELS
    if pillow_limit == "off":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
        assert compressed_size(data) == (width, height)  # the header's claim, read without decoding
        expected = f"{width}x{height} pixels exceeds the limit of {MAX_PIXELS}"
    else:
        expected = "exceeds the pixel limit"
    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(a))
    with pytest.raises(ImageConversionError, match=expected):
        compressed_to_numpy(CompressedImage(format="png", data=data))
    assert calls == []
    # at the limit the header passes (the decode then fails on the tiny IDAT: a clear error, no bomb)
    monkeypatch.undo()
    with pytest.raises(ImageConversionError, match="could not decode"):
        compressed_to_numpy(CompressedImage(format="png", data=_png_claiming(64, 64)))
