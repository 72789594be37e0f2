"""An SQLite bag whose schema and B-tree survive but whose rows' pages were lost in the middle
(power loss with rosbag2's ``synchronous=OFF``): it opens normally and used to kill
``ovsam-extract-bag`` with ``apsw.CorruptError`` while reading. Every row whose pages survive
is extracted, the unreadable ones are counted, exit 0 with a warning. The kept rows are pinned
from SQLite's own page map (``dbstat``, via the cut-bag test's helper), not from the recovery code."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_cut_bag_faults import N, RAW, T0, _complete_rows, _frame, _page_size
from training.data.rosbag import main
from training_helpers import image_msg, typestore_with_ovsam

LOST = range(300, 306)  # 1-based pages 300-305: overflow pages of two rows' image data


def _write(path, compression: str):
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    store = typestore_with_ovsam()
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3)
    if compression:
        writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
    with writer:
        conn = writer.add_connection(RAW, "sensor_msgs/msg/Image", typestore=store)
        for i in range(N):
            msg = image_msg(store, T0 + i * 100_000_000, "cam", _frame(i))
            writer.write(conn, T0 + i * 100_000_000 + 1, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    return path


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    made = {}

    def bag(compression: str = ""):
        if compression not in made:
            made[compression] = _write(tmp_path_factory.mktemp("sqlite") / "bag", compression)
        return made[compression]
    return bag


def _hole(intact, tmp_path, keep_metadata: bool):
    copy = tmp_path / "holed"
    shutil.copytree(intact, copy)
    if not keep_metadata:
        (copy / "metadata.yaml").unlink()
    [file] = copy.glob("*.db3")
    page_size = _page_size(intact)
    data = bytearray(file.read_bytes())
    assert len(data) >= LOST.stop * page_size
    data[(LOST.start - 1) * page_size:(LOST.stop - 1) * page_size] = bytes(len(LOST) * page_size)
    file.write_bytes(bytes(data))
    return copy


# (a message-compressed bag needs its metadata.yaml: only it says the rows are zstd frames)
@pytest.mark.parametrize("compression, keep_metadata", [("", True), ("", False), ("zstd", True)])
def test_rows_on_lost_middle_pages_are_skipped_and_counted(bags, tmp_path, capsys, compression, keep_metadata):
    intact = bags(compression)
    bag = _hole(intact, tmp_path, keep_metadata)
    complete = _complete_rows(intact, lambda pageno: pageno not in LOST)
    assert 0 < len(complete) < N and complete[-1] == N  # rows on both sides of the hole survive

    # Before: apsw.CorruptError escaped from the reader's message loop (a traceback, nothing written).
    assert main([str(bag), "--topic", RAW, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    lost = N - len(complete)
    assert f"damaged sqlite3 bag; recovered every complete message; {lost} message(s) unreadable " \
           "(database corrupt: CorruptError: database disk image is malformed)" in err
    assert "Traceback" not in err
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    kept = [(f["stamp_ns"] - T0) // 100_000_000 for f in man["frames"]]
    assert kept == [row - 1 for row in complete]  # exactly the rows off the zeroed pages, once each, in order
    report = man["bag_report"]
    assert report["recovered"] and report["problem"].startswith("database corrupt: CorruptError")
    assert report["lost_messages"] == lost and report["notes"] == []
    assert man["counts"][RAW] == {"kept": len(complete), "messages": len(complete)}
    from training.data import read_image

    for f, i in zip(man["frames"], kept):
        assert np.array_equal(read_image(tmp_path / "out" / f["file"]), _frame(i))  # intact pixels


def test_the_reader_gives_the_same_rows_on_every_pass_and_honours_its_window(bags, tmp_path):
    """ovsam-label reads a bag twice (plan, then pixels) and matches frames by (topic, stamp,
    occurrence): the second pass, already on the recovered rows, must give the same sequence;
    a time window and a topic filter still apply after the switch."""
    from training.data.bag_recovery import open_bag

    intact = bags()
    bag = _hole(intact, tmp_path, keep_metadata=True)
    complete = _complete_rows(intact, lambda pageno: pageno not in LOST)
    reader, report = open_bag(bag)
    try:
        assert not report.recovered  # opens normally: the damage shows only while reading
        first = [(c.topic, t, d) for c, t, d in reader.messages(connections=reader.connections)]
        assert report.recovered and report.lost_messages == N - len(complete)
        second = [(c.topic, t, d) for c, t, d in reader.messages(connections=reader.connections)]
        assert second == first and [t for _, t, _ in first] == [T0 + (r - 1) * 100_000_000 + 1 for r in complete]
        lo, hi = T0 + 10 * 100_000_000, T0 + 40 * 100_000_000  # bag times of rows 11..40 are lo+1 .. hi-1e8+1
        window = [t for _, t, _ in reader.messages(connections=reader.connections, start=lo, stop=hi)]
        assert window == [t for _, t, _ in first if lo <= t < hi]
        assert list(reader.messages(connections=[c._replace(topic="/other") for c in reader.connections])) == []
    finally:
        reader.close()


def test_ovsam_label_reports_the_lost_rows_of_a_holed_bag(bags, tmp_path, capsys):
    """ovsam-label plans a bag before reading its rows: the damage found while reading must still reach
    data_report.json (before: `recovered: false`, 0 lost, for a bag that lost rows)."""
    from training.label.cli import main as label_main

    intact = bags()
    bag = _hole(intact, tmp_path, keep_metadata=True)
    complete = _complete_rows(intact, lambda pageno: pageno not in LOST)
    out = tmp_path / "labels"
    # --rate 2 of a 10 Hz topic: every 5th frame (the labelling itself is not what is tested here)
    assert label_main([str(bag), "--topic", RAW, "--out", str(out), "--rate", "2", "--no-progress"]) == 0, \
        capsys.readouterr().err
    [source] = json.loads((out / "data_report.json").read_text())["sources"]
    report = source["bag_report"]
    assert report["recovered"] and report["lost_messages"] == N - len(complete)
    assert report["problem"].startswith("database corrupt: CorruptError")
    assert source["read"]["messages"] == len(complete)
