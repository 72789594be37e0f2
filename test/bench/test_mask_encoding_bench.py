"""The mask-encoding benchmark (issue #23): every row decodes back bit for bit, bytes add up, the target
row is the default setting at 720p with 20 instances."""

import json

import numpy as np
import pytest

pytest.importorskip("rclpy")

from ovsam_ros.benchmark import mask_encoding  # noqa: E402
from ovsam_ros.ros.mask_codec import DEFAULT_MASK_ENCODING, MASK_ENCODINGS  # noqa: E402


def test_random_results_are_predictor_shaped():
    results = mask_encoding.random_results(160, 90, 12, seed=3)
    assert len(results) == 12
    for r in results:
        x0, y0, x1, y1 = r.box
        assert r.crop.shape == (y1 - y0, x1 - x0) and 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 90
        assert r.crop[0].any() and r.crop[-1].any() and r.crop[:, 0].any() and r.crop[:, -1].any()  # tight
    noisy = mask_encoding.random_results(160, 90, 12, seed=3, noise=0.3)
    assert np.mean([a.crop.mean() for a in noisy]) != np.mean([a.crop.mean() for a in results])


def test_rows_totals_and_target(tmp_path):
    out = tmp_path / "m.json"
    assert mask_encoding.main(["--sizes", "1280x720", "--instances", "20", "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["output"], r["form"]): r for r in report["rows"]}
    assert set(rows) == {("masks", e) for e in MASK_ENCODINGS} | {("instance_ids", "raw"), ("instance_ids", "png")}
    assert rows[("instance_ids", "raw")]["bytes"] > 1280 * 720 * 2  # mono16 + header
    assert rows[("masks", "raw")]["bytes"] > 10 * rows[("masks", DEFAULT_MASK_ENCODING)]["bytes"]
    totals = {t["setting"].split(":")[0]: t for t in report["totals"]}
    assert totals["old defaults"]["bytes"] == rows[("masks", "raw")]["bytes"] + rows[("instance_ids", "raw")]["bytes"]
    assert totals["new defaults"]["bytes"] == rows[("masks", DEFAULT_MASK_ENCODING)]["bytes"]
    [target] = report["targets"]
    assert target["name"] == "wire_720p_20" and target["pass"] == (target["measured_kb"] <= 100)
    assert target["measured_kb"] == pytest.approx(rows[("masks", DEFAULT_MASK_ENCODING)]["bytes"] / 1e3)


def test_a_decode_that_differs_is_an_error(monkeypatch):
    from ovsam_ros.ros import mask_codec

    results = mask_encoding.random_results(64, 48, 3)
    monkeypatch.setattr(mask_codec, "decode_mask_crop", lambda m: np.zeros((m.bbox.height, m.bbox.width), bool))
    with pytest.raises(AssertionError, match="differs"):
        mask_encoding.measure_masks(results, (48, 64), "png", repeats=1)
