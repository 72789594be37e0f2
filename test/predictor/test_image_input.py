"""Any camera image becomes uint8 RGB with one defined conversion."""

import numpy as np
import pytest

from ovsam_ros.image_input import to_uint8_rgb


def test_grey_and_single_channel_are_repeated():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for image in (grey, grey[:, :, None]):
        out = to_uint8_rgb(image)
        assert out.shape == (3, 4, 3) and np.array_equal(out[:, :, 1], grey)


def test_alpha_dropped_and_bgr_swapped():
    bgra = np.zeros((1, 1, 4), np.uint8)
    bgra[0, 0] = (1, 2, 3, 4)
    assert to_uint8_rgb(bgra, "BGRA")[0, 0].tolist() == [3, 2, 1]
    assert to_uint8_rgb(bgra, "RGBA")[0, 0].tolist() == [1, 2, 3]


def test_uint16_scaled_exactly():
    out = to_uint8_rgb(np.array([[0, 257, 65535]], dtype=np.uint16))
    assert out[0, :, 0].tolist() == [0, 1, 255]


def test_float_ranges_and_non_finite():
    assert to_uint8_rgb(np.array([[0.0, 0.5, 1.0]], np.float32))[0, :, 0].tolist() == [0, 128, 255]
    # 0..255 float data says so (float_max); it is never guessed from the values.
    assert to_uint8_rgb(np.array([[0.0, 128.0, 300.0]], np.float64), float_max=255)[0, :, 0].tolist() == [0, 128, 255]
    with pytest.warns(RuntimeWarning, match="2 non-finite"):
        out = to_uint8_rgb(np.array([[np.nan, 1.0, np.inf]], np.float32))
    assert out[0, :, 0].tolist() == [0, 255, 0]


@pytest.mark.parametrize("image", [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros(5, np.uint8)])
def test_non_images_are_rejected(image):
    with pytest.raises(ValueError):
        to_uint8_rgb(image)


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="image_format"):
        to_uint8_rgb(np.zeros((2, 2, 3), np.uint8), "YUV")


# ----------------------------------------------------------------------------- range rule (issue #24 item 4)
def test_one_pixel_above_one_does_not_switch_a_float_frame_to_0_255():
    """Before: the maximum chose the rule, so one pixel at 1.02 made a 0..1 frame near-black."""
    frame = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    hot = frame.copy()
    hot[0, 0] = 1.02
    expected = np.rint(frame * 255).astype(np.uint8)  # by hand: 0..1 -> 0..255
    out = to_uint8_rgb(hot)[..., 0]
    assert out[0, 0] == 255 and np.array_equal(out.ravel()[1:], expected.ravel()[1:])


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_input_bits_maps_the_camera_range_onto_0_255(bits):
    top = (1 << bits) - 1
    values = np.arange(top + 1, dtype=np.uint16)
    # Independent: float arithmetic, rounded (top is odd, so v * 255 / top never ends in .5).
    expected = np.rint(values.astype(np.float64) * 255 / top).astype(np.uint8)
    out = to_uint8_rgb(values.reshape(1, -1), input_bits=bits)[0, :, 0]
    assert np.array_equal(out, expected) and out[-1] == 255


def test_twelve_bit_data_is_as_bright_as_its_eight_bit_original():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    twelve = np.rint(rgb.astype(np.float64) * 4095 / 255).astype(np.uint16)  # what a 12-bit camera gives
    assert np.array_equal(to_uint8_rgb(twelve, input_bits=12), rgb)
    assert to_uint8_rgb(twelve).max() <= 16  # read as 16-bit: near-black (the max 16)


def test_values_beyond_input_bits_clip_to_white():
    assert to_uint8_rgb(np.array([[4095, 4096, 65535]], np.uint16), input_bits=12)[0, :, 0].tolist() == [255] * 3


@pytest.mark.parametrize("kwargs, message", [
    ({"input_bits": 7}, "input_bits must be an integer from 8 to 16"), ({"input_bits": 17}, "input_bits"),
    ({"input_bits": 12.0}, "input_bits"), ({"input_bits": True}, "input_bits"),
    ({"float_max": 0}, "float_max must be a finite number > 0"), ({"float_max": float("nan")}, "float_max"),
    ({"float_max": "255"}, "float_max"),
])
def test_bad_range_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        to_uint8_rgb(np.zeros((2, 2), np.uint16), **kwargs)


@pytest.mark.parametrize("image, options, expected", [
    (np.full((4, 4), 3000, np.uint16), {}, "looks like 12-bit data, set input_bits=12"),
    (np.full((4, 4), 900, np.uint16), {}, "looks like 10-bit data, set input_bits=10"),
    (np.full((4, 4), 200, np.uint16), {"input_bits": 12}, "looks like 8-bit data, set input_bits=8"),
    (np.array([[100, 5000]], np.uint16), {"input_bits": 12}, "1 pixel(s) above 4095"),
    (np.array([[0.0, 200.0]], np.float32), {}, "set float_max=255"),
    (np.full((2, 2), 0.01, np.float32), {}, "set float_max to the value that is white"),
])
def test_a_frame_using_a_tiny_part_of_its_range_is_warned_about(image, options, expected):
    seen = []
    before = to_uint8_rgb(image, **options, warn=lambda source, message: seen.append((source, message)))
    assert len(seen) == 1 and seen[0][0] == "image" and expected in seen[0][1], seen
    assert np.array_equal(before, to_uint8_rgb(image, **options, warn=lambda *_: None))  # advice only


@pytest.mark.parametrize("image, options", [
    (np.full((4, 4), 4096, np.uint16), {}),  # 1/16 of full scale: a dark but plausible 16-bit frame
    (np.full((4, 4), 4095, np.uint16), {"input_bits": 12}),
    (np.zeros((4, 4), np.uint16), {}),  # all black says nothing about the bit depth
    (np.array([[0.0, 0.5, 1.02]], np.float32), {}),
    (np.array([[0.0, 200.0]], np.float32), {"float_max": 255}),
    (np.full((4, 4), 65535, np.uint16), {}),
])
def test_frames_that_fit_their_range_draw_no_warning(image, options):
    seen = []
    to_uint8_rgb(image, **options, warn=lambda *args: seen.append(args))
    assert seen == []


def test_range_warnings_are_once_per_source_then_rate_limited(monkeypatch):
    from ovsam_ros import image_input

    now = [100.0]
    monkeypatch.setattr(image_input.time, "monotonic", lambda: now[0])
    emitted = []
    warn = image_input.RangeWarnings(period=60.0, emit=emitted.append)
    dark = np.full((4, 4), 3000, np.uint16)
    for _ in range(5):
        to_uint8_rgb(dark, source="/cam_a", warn=warn)
    to_uint8_rgb(dark, source="/cam_b", warn=warn)
    assert [m.split(":")[0] for m in emitted] == ["/cam_a", "/cam_b"]
    now[0] += 61.0
    to_uint8_rgb(dark, source="/cam_a", warn=warn)
    assert len(emitted) == 3 and emitted[2].endswith("(4 more frame(s) like it since the last warning)")


def test_the_default_warning_goes_to_the_log(caplog):
    to_uint8_rgb(np.full((4, 4), 3000, np.uint16), source="test_default_warning_source")
    assert "test_default_warning_source: 16-bit image uses only 0..3000 of 0..65535" in caplog.text
