"""ovsam-extract-bag --out: never the bag (or a folder holding it, or one inside it); --overwrite
replaces only an earlier extraction or an empty folder, atomically, once the new one is finished."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from training.data.rosbag import main
from training_helpers import image_msg, typestore_with_ovsam, write_bag

TOPIC = "/cam/image_raw"


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """Two recordings side by side (sqlite3 and MCAP), 3 frames each."""
    store = typestore_with_ovsam()
    root = tmp_path_factory.mktemp("bags")
    for storage in ("sqlite3", "mcap"):
        msgs = [(TOPIC, 10 + i, image_msg(store, 1_000 + i, "cam", np.full((8, 8, 3), 40 * i, np.uint8)))
                for i in range(3)]
        write_bag(root / f"rec_{storage}", storage, {TOPIC: "sensor_msgs/msg/Image"}, msgs, store)
    return root


@pytest.fixture()
def copy(bags, tmp_path):
    dest = tmp_path / "recordings"
    shutil.copytree(bags, dest)
    return dest


def _extract(capsys, bag, out, *extra):
    code = main([str(bag), "--topic", TOPIC, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("where, why", [
    ("same", "is the input"), ("parent", "contains the input"), ("inside", "lies inside the input")])
def test_out_that_is_contains_or_lies_in_the_bag_is_refused(copy, capsys, where, why):
    bag = copy / "rec_sqlite3"
    out = {"same": bag, "parent": copy, "inside": bag / "frames"}[where]
    before = _tree(copy)
    code, err = _extract(capsys, bag, out, "--overwrite")
    assert code == 2 and why in err, err
    assert len(err.strip().splitlines()) == 1
    assert _tree(copy) == before and not (bag / "frames").exists()
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_bag_file_in_out_counts_too(copy, capsys):
    db3 = next((copy / "rec_sqlite3").glob("*.db3"))
    code, err = _extract(capsys, db3, copy / "rec_sqlite3", "--overwrite")
    assert code == 2 and "contains the input" in err, err
    assert db3.is_file()


def test_overwrite_refuses_a_folder_it_did_not_write(copy, tmp_path, capsys):
    mine = tmp_path / "mydata"
    (mine / "precious").mkdir(parents=True)
    (mine / "precious" / "notes.txt").write_text("important")
    code, err = _extract(capsys, copy / "rec_mcap", mine, "--overwrite")
    assert code == 2 and "no earlier ovsam-extract-bag run" in err and "precious" in err, err
    assert (mine / "precious" / "notes.txt").read_text() == "important"


def test_overwrite_replaces_an_earlier_extraction_only(copy, tmp_path, capsys):
    out = tmp_path / "frames"
    assert _extract(capsys, copy / "rec_sqlite3", out)[0] == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["bag"].endswith("rec_sqlite3") and len(first["frames"]) == 3
    code, err = _extract(capsys, copy / "rec_mcap", out, "--overwrite")
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["bag"].endswith("rec_mcap")
    # a file the extraction did not write: the next --overwrite is refused, naming it
    (out / "my_notes.md").write_text("mine")
    code, err = _extract(capsys, copy / "rec_sqlite3", out, "--overwrite")
    assert code == 2 and "my_notes.md" in err, err
    assert json.loads((out / "manifest.json").read_text())["bag"].endswith("rec_mcap")
    assert sorted(os.listdir(tmp_path)) == ["frames", "recordings"]  # no staging / aside folder left


def test_overwrite_into_an_empty_folder_is_fine(copy, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    code, err = _extract(capsys, copy / "rec_mcap", out, "--overwrite")
    assert code == 0, err
    assert len(json.loads((out / "manifest.json").read_text())["frames"]) == 3
