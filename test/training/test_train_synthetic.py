"""The synthetic dataset generator: deterministic, valid COCO, known classes and split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from training.data import CocoInstances
from training.synthetic import CLASSES, main, make_dataset


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_dataset(tmp_path / "a", train=4, val=2, seed=7, fmt="mixed", class_folders=1)
    b = make_dataset(tmp_path / "b", train=4, val=2, seed=7, fmt="mixed", class_folders=1)
    c = make_dataset(tmp_path / "c", train=4, val=2, seed=8, fmt="mixed", class_folders=1)
    digest = lambda paths: _digest(Path(paths["root"]) / "images") + _digest(Path(paths["root"]) / "annotations")  # noqa: E731
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_annotations_are_valid_coco_with_split(synth):
    data = json.loads(Path(synth["train"]).read_text())
    assert [c["name"] for c in data["categories"]] == [c.name for c in CLASSES]
    assert {c["split"] for c in data["categories"]} == {"base", "novel"}
    kinds = {type(a["segmentation"]).__name__ for a in data["annotations"]}
    assert kinds == {"list", "dict"}  # mixed: polygons and RLE
    coco = CocoInstances(synth["train"], synth["images"])
    assert coco.vocab.split.count("novel") == 2
    assert not coco.skipped  # the generator writes nothing that needs skipping
    for index in range(len(coco)):
        record = coco.images[index]
        image, masks = coco.load(index)
        assert image.shape == (record.height, record.width, 3)
        for inst, m in zip(record.instances, masks):
            ys, xs = np.nonzero(m)
            x, y, w, h = inst.bbox
            assert (xs.min(), ys.min(), xs.max() + 1 - x, ys.max() + 1 - y) == (x, y, w, h)
            # the object's pixels carry its class colour (up to jitter/shading), so the label is learnable
            colour = image[m].mean(axis=0)
            assert np.abs(colour - np.array(CLASSES[inst.label].color)).max() < 60


def test_cli_writes_dataset_and_class_folders(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--train", "3", "--val", "1", "--format", "polygon",
                 "--class-folders", "2"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "instances" in out
    assert (tmp_path / "vocabulary.json").is_file()
    for c in CLASSES:
        assert len(list((tmp_path / "classes" / c.name).glob("*.png"))) == 2
    data = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert all(isinstance(a["segmentation"], list) for a in data["annotations"])
