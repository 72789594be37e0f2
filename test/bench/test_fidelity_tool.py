"""The fidelity comparison tool (docs/fidelity.md quotes its numbers): per-prompt IoU / label /
logit differences, with the setting under test switched for the second run of every image."""

import numpy as np
import pytest
import torch

from ovsam_ros.benchmark.fidelity import Report, compare
from ovsam_ros.model import OVSAM, OVSAMConfig
from ovsam_ros.predictor import OVSAMPredictor


def tiny_model() -> OVSAM:
    torch.manual_seed(0)
    return OVSAM(OVSAMConfig.tiny()).eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    frames = []
    for i in range(2):
        frame = rng.integers(0, 60, (90, 130, 3), dtype=np.uint8)
        frame[20:60, 30 + 20 * i:90] = (200, 40, 40)
        frames.append((f"img{i}", frame))
    return frames


def test_same_setting_gives_identity_and_the_switch_brackets_every_image(images):
    predictor = OVSAMPredictor(tiny_model(), vocabulary="cat, dog, cup")
    calls = []
    report = compare(predictor, predictor, images, per_side=2, switch=calls.append)
    assert calls == [False, True, False, True]  # first run off, second on, for every image
    s = report.summary()
    assert s["prompts"] >= 8 and (s["mean_iou"], s["min_iou"], s["label_agreement"], s["max_logit_diff"]) == (1, 1, 1, 0)
    assert {r.kind for r in report.rows} == {"point", "box"}
    assert "ALL" in report.table()


def test_a_real_change_shows_up(images):
    """cv2 vs PIL resize on a 130 px frame upscaled to the tiny model's input changes the pixels."""
    predictor = OVSAMPredictor(tiny_model(), vocabulary="cat, dog, cup")

    def use_cv2(on):
        predictor.transform.resize = "cv2" if on else "pil"

    report = compare(predictor, predictor, images, per_side=2, switch=use_cv2)
    assert report.summary()["max_logit_diff"] > 0
    assert isinstance(report, Report)


def test_point_rule_table_counts_same_pixels_against_the_reference():
    """The point-rule comparison: reference_point equals the whole-mask reference on every mask; the old
    exact-EDT rule does not (its column is the 'before' of docs/fidelity.md)."""
    pytest.importorskip("kornia")
    from ovsam_ros.benchmark.fidelity import point_rule_masks, point_rule_table

    kinds = [kind for kind, _ in point_rule_masks(6, (60, 80))]
    assert kinds == ["thin bar", "rotated rectangle", "rotated ellipse"] * 2
    table = point_rule_table(6, (60, 80), 128)
    row = next(line for line in table.splitlines() if line.startswith("ALL"))
    n, before_same, _, _, after_same, after_median, after_max = row.split()[1:]
    assert (n, after_same, after_median, after_max) == ("6", "6", "0.0", "0.0")
    assert int(before_same) < 6
