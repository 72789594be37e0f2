"""The node's conversion of camera messages follows the package's one range rule (issue #24
item 4): mono16 from a 12-bit camera is as bright as its 8-bit picture with input_bits=12, a
0..1 float image is never switched to 0..255 by one pixel, and a frame using a tiny part of
its range is warned about through the caller's (the node's) rate-limited warner."""

import numpy as np
import pytest

from ovsam_ros.image_input import RangeWarnings
from ovsam_ros.ros.image_conversion import ImageConversionError, image_to_numpy, numpy_to_image, to_model_rgb

pytest.importorskip("sensor_msgs")

rng = np.random.default_rng(0)


def _decoded(pixels, encoding):
    msg = numpy_to_image(pixels, encoding)
    return image_to_numpy(msg, copy=False), msg.encoding


@pytest.mark.parametrize("encoding, channels", [("mono16", 1), ("16UC1", 1), ("rgb16", 3), ("bgr16", 3),
                                                ("bgra16", 4)])
def test_twelve_bit_data_in_sixteen_bit_encodings(encoding, channels):
    shape = (6, 9) if channels == 1 else (6, 9, channels)
    picture = rng.integers(0, 256, shape, dtype=np.uint8)  # what the camera saw, at 8 bits
    twelve = np.rint(picture.astype(np.float64) * 4095 / 255).astype(np.uint16)
    seen = []
    out = to_model_rgb(*_decoded(twelve, encoding), input_bits=12, warn=lambda *a: seen.append(a))
    expected = picture[..., None].repeat(3, axis=2) if channels == 1 else picture[..., :3]
    if encoding.startswith("bgr"):
        expected = expected[..., ::-1]
    assert np.array_equal(out, expected) and seen == []
    dark = to_model_rgb(*_decoded(twelve, encoding), source="/camera/image_raw", warn=lambda *a: seen.append(a))
    assert dark.max() <= 16  # the near-black frame, now with a warning naming the fix
    assert len(seen) == 1 and seen[0][0] == "/camera/image_raw" and "set input_bits=12" in seen[0][1]


def test_float_frames_are_zero_to_one_unless_float_max_says_otherwise():
    frame = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    frame[0, 0] = 1.02
    out = to_model_rgb(*_decoded(frame, "32FC1"))[..., 0]
    assert out[0, 0] == 255 and np.array_equal(out.ravel()[1:], np.rint(frame.ravel()[1:] * 255).astype(np.uint8))
    assert np.array_equal(to_model_rgb(*_decoded(frame * 255, "32FC1"), float_max=255.0)[..., 0], out)


def test_a_node_side_warner_rate_limits_per_topic():
    emitted = []
    warn = RangeWarnings(period=3600.0, emit=emitted.append)
    dark = np.full((4, 4), 2000, np.uint16)
    for _ in range(10):
        to_model_rgb(*_decoded(dark, "mono16"), source="/cam", warn=warn)
    assert len(emitted) == 1 and emitted[0].startswith("/cam: 16-bit image uses only 0..2000 of 0..65535")


def test_bad_option_is_a_conversion_error():
    with pytest.raises(ImageConversionError, match="input_bits"):
        to_model_rgb(np.zeros((2, 2), np.uint16), "mono16", input_bits=4)
