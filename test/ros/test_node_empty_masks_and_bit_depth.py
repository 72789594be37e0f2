"""Issue #24 items 3 and 4 through the node: an empty mask is no object (left out, counted), and
16-bit camera frames are read with ``input_bits`` (a 12-bit camera in mono16 / rgb16 is not black)."""

from __future__ import annotations

import numpy as np
import pytest
from ros_node_helpers import test_image

pytest.importorskip("rclpy")

from ovsam_ros.image_input import RangeWarnings  # noqa: E402
from ovsam_ros.prompts import Prompt  # noqa: E402
from ovsam_ros.ros.diagnostics import values_of  # noqa: E402
from ovsam_ros.ros.image_conversion import numpy_to_image  # noqa: E402
from ovsam_ros.ros.mask_codec import decode_masks  # noqa: E402
from ovsam_ros.ros.prompt_input import prompt_array_msg  # noqa: E402
from ovsam_ros.shapes_world import world_scene  # noqa: E402


def _image(pixels: np.ndarray, encoding: str, stamp: tuple[int, int]):
    from std_msgs.msg import Header

    header = Header(frame_id="camera_optical_frame")
    header.stamp.sec, header.stamp.nanosec = stamp
    return numpy_to_image(np.ascontiguousarray(pixels), encoding, header)


def _run(node, msg):
    node._receive(msg, False)
    return node.process_pending()


def _scene():
    """A shapes-world frame and a box prompt around each of its objects (the shapes model finds them)."""
    rgb, instances = world_scene(0, 0, size=(128, 96))
    boxes = []
    for _, mask in instances:
        ys, xs = np.nonzero(mask)
        boxes.append(Prompt(box=[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]))
    return rgb, boxes


def _recorded(node, name: str) -> list:
    """What the node's ``name`` publisher is asked to send (the real publish still runs)."""
    pub = node.publishers_by_name[name]
    sent, publish = [], pub.publish
    pub.publish = lambda msg: (sent.append(msg), publish(msg))
    return sent


def test_empty_masks_are_left_out_and_counted(make_node):
    from ovsam_ros.srv import Segment

    node = make_node(model="shapes")
    rgb, boxes = _scene()
    node._on_prompts(prompt_array_msg(boxes[:1], persistent=True))
    sent = _recorded(node, "masks")
    detections = _recorded(node, "detections") if "detections" in node.publishers_by_name else None
    black = np.zeros_like(rgb)
    node.predictor.set_image(black)  # the model itself: the box gives a mask without a pixel
    assert [r.area for r in node.predictor.predict(boxes[:1])] == [0]

    out = _run(node, _image(black, "rgb8", (100, 1)))
    assert out is not None and len(sent) == 1 and list(sent[0].instances) == []
    if detections is not None:
        assert list(detections[-1].detections) == []
    assert values_of(node.publish_diagnostics())["empty_masks"] == "1"

    # The same persistent prompt on a frame with the object: published, with its prompt index.
    out = _run(node, _image(rgb, "rgb8", (100, 2)))
    assert [m.prompt_index for m in sent[1].instances] == [0]
    node.predictor.set_image(rgb)
    assert np.array_equal(decode_masks(sent[1])[0], node.predictor.predict(boxes[:1])[0].mask)
    assert sent[1].instances[0].track_id > 0  # tracked from its first non-empty frame
    assert values_of(node.publish_diagnostics())["empty_masks"] == "1"

    # The segment service follows the same rule.
    request = Segment.Request(image=_image(black, "rgb8", (100, 3)), mode="prompt",
                              prompts=prompt_array_msg(boxes, persistent=False).prompts)
    response = node._on_segment(request, Segment.Response())
    assert response.success and list(response.result.instances) == [], response.message
    assert values_of(node.publish_diagnostics())["empty_masks"] == str(1 + len(boxes))


@pytest.mark.parametrize("encoding, model", [("mono16", "tiny"), ("rgb16", "shapes")])
def test_12_bit_frames_give_the_masks_of_their_8_bit_original(make_node, encoding, model):
    from ovsam_ros.srv import Segment

    if model == "shapes":
        original, prompts = _scene()  # colour: the shapes model's objects
    else:
        original = test_image(seed=1).mean(-1).round().astype(np.uint8)  # grey: the tiny model's masks vary with it
        prompts = [Prompt(box=[20.0, 15.0, 80.0, 70.0]), Prompt(points=[[90.0, 40.0]])]
    twelve_bit = np.round(original.astype(np.float64) * 4095 / 255).astype(np.uint16)  # 0..4095
    eight_bit_encoding = "mono8" if encoding == "mono16" else "rgb8"

    def masks(node, pixels, enc, stamp):
        node._on_prompts(prompt_array_msg(prompts, persistent=True))
        out = _run(node, _image(pixels, enc, stamp))
        return decode_masks(out.masks), [m.prompt_index for m in out.masks.instances]

    node = make_node(model=model, input_bits=12, tracking=False)
    warned: list[str] = []
    node.range_warnings = RangeWarnings(emit=warned.append)
    reference, ref_index = masks(node, original, eight_bit_encoding, (100, 1))
    assert len(reference) == len(prompts) and all(m.any() for m in reference)
    got, index = masks(node, twelve_bit, encoding, (100, 2))
    assert index == ref_index and all(np.array_equal(a, b) for a, b in zip(got, reference))
    assert warned == []  # the frame uses its 12-bit range: nothing to say
    # The segment service reads its image by the same rule.
    request = Segment.Request(image=_image(twelve_bit, encoding, (100, 4)), mode="prompt",
                              prompts=prompt_array_msg(prompts, persistent=False).prompts)
    response = node._on_segment(request, Segment.Response())
    assert response.success, response.message
    assert all(np.array_equal(a, b) for a, b in zip(decode_masks(response.result), reference))
    assert len(response.result.instances) == len(reference)

    # Read as 16-bit (the default) the same frame is near-black: other masks, and a warning naming the fix.
    node16 = make_node(model=model, name="ovsam_16", tracking=False)
    node16.range_warnings = RangeWarnings(emit=warned.append)
    dark, dark_index = masks(node16, twelve_bit, encoding, (100, 3))
    assert (dark_index, [m.sum() for m in dark]) != (ref_index, [m.sum() for m in reference])
    assert len(warned) == 1 and "input_bits=12" in warned[0] and node16.image_topic in warned[0]
