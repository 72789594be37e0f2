"""ovsam-label --out: never an input, replaced only when it holds an earlier ovsam-label run, every
argument checked before anything is deleted, and a rerun on changed inputs refused (not stale)."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import pytest

from training.label.cli import main


def _run(capsys, *args) -> tuple:
    code = main(["--no-progress", "--points-per-side", "4", "--shard-size", "2", *args])  # (the last value wins)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _images(folder, first: int, count: int):
    from ovsam_ros.shapes_world import world_scene

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + count):
        cv2.imwrite(str(folder / f"f{i}.png"), world_scene(4242, 70 + i, (96, 72))[0][:, :, ::-1])
    return folder


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _labelled(out):
    return sorted(im["file_name"] for im in json.loads((out / "labels.json").read_text())["images"])


@pytest.fixture()
def shots(tmp_path):
    return _images(tmp_path / "shots", 0, 3)


@pytest.mark.parametrize("where, why", [
    ("same", "is the input"), ("parent", "contains the input"), ("inside", "lies inside the input")])
def test_out_that_is_contains_or_lies_in_an_input_is_refused(shots, tmp_path, capsys, where, why):
    out = {"same": shots, "parent": tmp_path, "inside": shots / "labels"}[where]
    before = _tree(tmp_path)
    code, _, err = _run(capsys, str(shots), "--out", str(out), "--overwrite")
    assert code == 2 and why in err, err
    assert len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == before  # the input (and everything else) is untouched


def test_out_through_a_symlink_is_still_the_input(shots, tmp_path, capsys):
    link = tmp_path / "alias"
    os.symlink(shots, link)
    code, _, err = _run(capsys, str(shots), "--out", str(link), "--overwrite")
    assert code == 2 and "is the input" in err, err
    assert len(list(shots.iterdir())) == 3


def test_overwrite_never_deletes_a_folder_it_did_not_write(shots, tmp_path, capsys):
    mine = tmp_path / "mydata"
    (mine / "precious").mkdir(parents=True)
    (mine / "precious" / "notes.txt").write_text("important")
    # a typo'd input: the error is about the input, the folder is untouched
    code, _, err = _run(capsys, str(tmp_path / "nope"), "--out", str(mine), "--overwrite")
    assert code == 2 and "input not found" in err, err
    assert (mine / "precious" / "notes.txt").read_text() == "important"
    # a good input: still refused, naming what is there
    code, _, err = _run(capsys, str(shots), "--out", str(mine), "--overwrite")
    assert code == 2 and "no earlier ovsam-label run" in err and "precious" in err, err
    assert (mine / "precious" / "notes.txt").read_text() == "important"


@pytest.fixture()
def earlier_run(shots, tmp_path, capsys):
    out = tmp_path / "labels"
    code, _, err = _run(capsys, str(shots), "--out", str(out))
    assert code == 0, err
    return out


@pytest.mark.parametrize("bad", [["--shard-size", "0"], ["--vocabulary", "EMPTY"], ["--model", "no_such_model"],
                                 ["--pred-iou", "2"], ["MISSING_INPUT"]])
def test_overwrite_checks_every_argument_before_deleting(shots, earlier_run, tmp_path, capsys, bad):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    bad = [str(empty) if b == "EMPTY" else b for b in bad]
    inputs = [str(shots)] + ([str(tmp_path / "typo")] if bad == ["MISSING_INPUT"] else [])
    bad = [] if bad == ["MISSING_INPUT"] else bad
    before = {p: p.read_bytes() for p in earlier_run.rglob("*") if p.is_file()}
    code, _, err = _run(capsys, *inputs, "--out", str(earlier_run), "--overwrite", *bad)
    assert code == 2, err
    assert {p: p.read_bytes() for p in earlier_run.rglob("*") if p.is_file()} == before


def test_overwrite_refuses_a_run_folder_holding_other_files(shots, earlier_run, capsys):
    (earlier_run / "my_notes.md").write_text("mine")
    code, _, err = _run(capsys, str(shots), "--out", str(earlier_run), "--overwrite")
    assert code == 2 and "my_notes.md" in err, err
    assert (earlier_run / "labels.json").is_file() and (earlier_run / "my_notes.md").read_text() == "mine"


def test_overwrite_replaces_an_earlier_run(shots, earlier_run, capsys):
    (shots / "f0.png").unlink()
    code, _, err = _run(capsys, str(shots), "--out", str(earlier_run), "--overwrite")
    assert code == 0, err
    assert _labelled(earlier_run) == ["shots/f1.png", "shots/f2.png"]
    assert not (earlier_run / "images" / "shots" / "f0.png").exists()


def test_rerun_on_changed_inputs_is_refused_and_unchanged_rerun_resumes(shots, earlier_run, capsys):
    assert _labelled(earlier_run) == ["shots/f0.png", "shots/f1.png", "shots/f2.png"]
    # unchanged: resumes (nothing left to label) and keeps the dataset
    code, out, err = _run(capsys, str(shots), "--out", str(earlier_run))
    assert code == 0 and "total: 0 frame(s) this run" in out, err
    # two added, one removed: refused with the counts, the dataset as it was
    _images(shots, 3, 2)
    (shots / "f0.png").unlink()
    code, _, err = _run(capsys, str(shots), "--out", str(earlier_run))
    assert code == 2, err
    assert f"input {shots.resolve()} changed (2 added, 1 removed, 0 modified" in err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert _labelled(earlier_run) == ["shots/f0.png", "shots/f1.png", "shots/f2.png"]
    # a file rewritten in place (same name) counts too
    shutil.copy(shots / "f3.png", shots / "f1.png")
    os.utime(shots / "f1.png", ns=(1, 1))
    code, _, err = _run(capsys, str(shots), "--out", str(earlier_run))
    assert code == 2 and "modified" in err, err
    code, _, err = _run(capsys, str(shots), "--out", str(earlier_run), "--overwrite")
    assert code == 0, err
    assert _labelled(earlier_run) == ["shots/f1.png", "shots/f2.png", "shots/f3.png", "shots/f4.png"]
