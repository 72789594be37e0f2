"""Cut bags (recorder killed, power loss): every complete message before the cut is
recovered, the loss is counted, and extraction exits 0 with a warning (2 when nothing is
readable). Both storage formats, written with ``rosbags`` and then truncated."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from training.data import DataError
from training.data.rosbag import extract_bag, main
from training_helpers import image_msg, typestore_with_ovsam, write_bag

T0 = 1_700_000_000_000_000_000
RAW = "/cam/image_raw"
N = 60


def _frame(i: int) -> np.ndarray:  # 57.6 kB per message: MCAP chunks (1 MiB) hold ~18
    return np.random.default_rng(i).integers(0, 255, (120, 160, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def intact(request, tmp_path_factory):
    store = typestore_with_ovsam()
    msgs = [(RAW, T0 + i * 100_000_000 + 1, image_msg(store, T0 + i * 100_000_000, "cam", _frame(i)))
            for i in range(N)]
    return request.param, write_bag(tmp_path_factory.mktemp(request.param) / "bag", request.param,
                                     {RAW: "sensor_msgs/msg/Image"}, msgs, store)


def _cut(intact, tmp_path, fraction: float, keep_metadata: bool = False):
    storage, bag = intact
    copy = tmp_path / "cut"
    shutil.copytree(bag, copy)
    if not keep_metadata:
        (copy / "metadata.yaml").unlink()  # rosbag2 writes it when the recording ends
    [file] = [p for p in copy.iterdir() if p.suffix in (".mcap", ".db3")]
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * fraction)])
    return storage, copy


def _messages_in_chunks_before(intact_bag, cut_bag) -> int:
    from rosbags.rosbag2.storage_mcap import McapReader

    [cut] = cut_bag.glob("*.mcap")
    [whole] = intact_bag.glob("*.mcap")
    reader = McapReader(whole)
    reader.open()
    try:
        size = cut.stat().st_size
        return sum(sum(c.channel_count.values()) for c in reader.chunks
                   if c.chunk_start_offset + c.chunk_length <= size)
    finally:
        reader.close()


def _page_size(intact_bag) -> int:
    import sqlite3

    [db] = intact_bag.glob("*.db3")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("PRAGMA page_size").fetchone()[0]
    finally:
        con.close()


def _complete_rows(intact_bag, present) -> list:
    """Ids of the ``messages`` rows whose every page survives (``present(pageno)``): the table's
    B-tree pages on the row's path (root, interior, leaf) and its overflow chain. From the intact
    file's page map (SQLite's ``dbstat``), independent of the recovery code under test."""
    import sqlite3

    [db] = intact_bag.glob("*.db3")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        pages = con.execute("SELECT path, pageno, pagetype, ncell FROM dbstat WHERE name = 'messages'").fetchall()
        ids = [row for (row,) in con.execute("SELECT id FROM messages ORDER BY id")]
    finally:
        con.close()
    # dbstat paths: '/' root, '/00a/' its child, '/00a/003+000001' overflow page 1 of cell 3 of that leaf
    tree = [(path, pageno) for path, pageno, kind, _ in pages if kind != "overflow"]
    overflow = [(path, pageno) for path, pageno, kind, _ in pages if kind == "overflow"]
    leaves = sorted((path, pageno, ncell) for path, pageno, kind, ncell in pages if kind == "leaf")
    complete, k = [], 0
    for path, pageno, ncell in leaves:  # leaves in key order, cells in rowid order within each
        above = [p for prefix, p in tree if path.startswith(prefix)]  # ancestors and the leaf itself
        for cell in range(ncell):
            chain = [p for prefix, p in overflow if prefix.startswith(f"{path}{cell:03x}+")]
            if all(present(p) for p in above + chain):
                complete.append(ids[k])
            k += 1
    assert k == len(ids) == N  # the page map covers every row
    return complete


@pytest.mark.parametrize("keep_metadata", [False, True])
def test_a_cut_bag_yields_every_complete_message_before_the_cut(intact, tmp_path, capsys, keep_metadata):
    storage, bag = _cut(intact, tmp_path, 0.6, keep_metadata)
    # Before: "File end magic is invalid" / "database disk image is malformed", nothing extracted.
    assert main([str(bag), "--topic", RAW, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"damaged {storage} bag" in err and "recovered every complete message" in err
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    kept = [(f["stamp_ns"] - T0) // 100_000_000 for f in man["frames"]]
    assert 0 < len(kept) < N and kept == list(range(len(kept)))  # a prefix, in order, no gaps
    report = man["bag_report"]
    if storage == "mcap":  # exactly the chunks that end before the cut (from the intact file's index)
        assert len(kept) == _messages_in_chunks_before(intact[1], bag) and report["lost_bytes"] > 0
    else:  # exactly the rows whose pages all lie before the cut (rosbag2 numbers rows 1..N in order)
        size, page_size = next(bag.glob("*.db3")).stat().st_size, _page_size(intact[1])
        complete = _complete_rows(intact[1], lambda pageno: pageno * page_size <= size)  # 1-based pages
        assert kept == [row - 1 for row in complete]
    # with metadata.yaml the loss is exact; without it, unknown (and said so) rather than guessed
    assert report["lost_messages"] == (N - len(kept) if keep_metadata else None)
    assert ("unreadable" in err) == keep_metadata
    from training.data import read_image

    for f, i in zip(man["frames"], kept):
        assert np.array_equal(read_image(tmp_path / "out" / f["file"]), _frame(i))  # intact pixels


def test_a_bag_folder_without_metadata_is_read_through_its_file(intact, tmp_path):
    storage, bag = intact
    copy = tmp_path / "nometa"
    shutil.copytree(bag, copy)
    (copy / "metadata.yaml").unlink()
    man = extract_bag(str(copy), [RAW], str(tmp_path / "out"))
    assert len(man["frames"]) == N and not man["bag_report"]["recovered"]
    (copy / "second.db3").write_bytes(b"")
    with pytest.raises(DataError, match="several bag files .*pass one of them"):
        extract_bag(str(copy), [RAW], str(tmp_path / "out2"))


def test_a_bag_cut_before_any_message_is_an_error(intact, tmp_path, capsys):
    storage, bag = _cut(intact, tmp_path, 0.002)
    assert main([str(bag), "--topic", RAW, "--out", str(tmp_path / "out")]) == 2
    assert "ovsam-extract-bag: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("intact", ["sqlite3"], indirect=True)
def test_a_sqlite_bag_with_lost_pages_yields_every_row_after_them_too(intact, tmp_path, capsys):
    """Power loss with rosbag2's ``synchronous=OFF``: the OS writes pages back in any order, so pages
    in the middle can be missing (zeros) while later ones made it. Here the timestamp index and the
    first row's overflow chain are lost: the normal reader refuses the file, the in-order scan stops
    at row 1, and row-by-row probing must still recover every later row (pinned from the page map)."""
    import sqlite3

    _, bag = intact
    copy = tmp_path / "holed"
    shutil.copytree(bag, copy)
    (copy / "metadata.yaml").unlink()
    [file] = copy.glob("*.db3")
    page_size = _page_size(bag)
    con = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        [(index_page,)] = con.execute("SELECT pageno FROM dbstat WHERE name = 'timestamp_idx'").fetchall()
    finally:
        con.close()
    lost = range(index_page, index_page + 6)  # the index page and the five after it (1-based pages)
    data = bytearray(file.read_bytes())
    data[(lost.start - 1) * page_size:(lost.stop - 1) * page_size] = bytes(len(lost) * page_size)
    file.write_bytes(bytes(data))
    complete = _complete_rows(bag, lambda pageno: pageno not in lost)
    assert complete[0] > 1 and len(complete) == complete[-1] - complete[0] + 1  # rows after the hole only

    assert main([str(copy), "--topic", RAW, "--out", str(tmp_path / "out")]) == 0
    assert "damaged sqlite3 bag" in capsys.readouterr().err
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    kept = [(f["stamp_ns"] - T0) // 100_000_000 for f in man["frames"]]
    assert kept == [row - 1 for row in complete]
    # the highest row is readable, so the loss is known without metadata.yaml
    assert man["bag_report"]["lost_messages"] == N - len(complete)
    from training.data import read_image

    for f, i in zip(man["frames"], kept):
        assert np.array_equal(read_image(tmp_path / "out" / f["file"]), _frame(i))
