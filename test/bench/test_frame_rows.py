"""frame[N] rows: both paths measured side by side with their aten-op counts (the CPU proxy for
kernel launches per frame, which must not grow silently)."""

from ovsam_ros.benchmark.flops import random_text
from ovsam_ros.benchmark.frame import frame_table_rows, time_frames
from ovsam_ros.benchmark.stages import random_frame
from ovsam_ros.model.config import OVSAMConfig

# aten ops of one optimised tiny frame[1] (set_image + predict, 180x320, fp32), measured with
# torch 2.14; raise it only on purpose (a new op per frame is a kernel launch on a GPU).
OPTIMIZED_FRAME1_OPS = 3000


def test_frame_rows_compare_the_two_paths():
    import torch

    text = random_text(80, 1, 64)
    rows = time_frames(OVSAMConfig.tiny(), text, random_frame(180, 320), [1], torch.device("cpu"), "fp32",
                       repeats=1, warmup=1, memory=False)
    by = {r["path"]: r for r in rows}
    assert set(by) == {"plain", "optimized"}
    plain, fast = by["plain"], by["optimized"]
    assert plain["batch_norm_ops"] > 0 and fast["batch_norm_ops"] == 0
    assert fast["aten_ops"] < plain["aten_ops"]
    assert fast["aten_ops"] <= OPTIMIZED_FRAME1_OPS * 1.05, f"{fast['aten_ops']} aten ops per frame (budget)"
    assert fast["fps"] > 0 and fast["timing"]["repeats"] == 1
    table = frame_table_rows(rows)
    assert table[0][0] == "frame[1]" and table[0][6] == str(plain["aten_ops"])
