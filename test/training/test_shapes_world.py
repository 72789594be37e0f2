"""The compositional shapes world and stage 0 (CLIP pretraining) pieces."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from training.data import CocoInstances
from training.stage0 import BatchMaker, crop_instance, split_names
from training.synthetic import COLORS, NOVEL_COMBOS, SHAPES, WORLD_CLASSES, make_dataset, main, shape_polygon


def test_every_colour_and_shape_is_seen_in_base_only_pairs_are_novel():
    assert len(WORLD_CLASSES) == len(COLORS) * len(SHAPES) == 36
    novel = [c for c in WORLD_CLASSES if c.split == "novel"]
    base = [c for c in WORLD_CLASSES if c.split == "base"]
    assert {(c.color_name, c.shape) for c in novel} == set(NOVEL_COMBOS)
    # one novel pair per colour and per shape: each word is still trained in 5 base classes
    assert sorted(c.color_name for c in novel) == sorted(COLORS)
    assert sorted(c.shape for c in novel) == sorted(SHAPES)
    for word in COLORS:
        assert sum(c.color_name == word for c in base) == 5
    for shape in SHAPES:
        assert sum(c.shape == shape for c in base) == 5
    assert all(c.name == f"{c.color_name} {c.shape}" for c in WORLD_CLASSES)


def test_crescent_is_a_crescent():
    import cv2

    poly = shape_polygon("crescent", 50, 50, 40, 0.0)
    mask = np.zeros((100, 100), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    disc = np.pi * 44 ** 2  # the outer disc (radius 1.1 x 40)
    # unit disc minus a 0.85 disc centred at 0.5: about 40 % of the disc is left (hand computation:
    # lens area of the two circles = 1.61 of pi = 3.14)
    assert 0.3 < mask.sum() / disc < 0.55
    assert mask[50, 50 + 30] == 0  # the bite is on the +x side


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_shapes_world_dataset(tmp_path):
    a = make_dataset(tmp_path / "a", seed=5, world="shapes", captions=True, splits={"train": 6, "val": 6})
    make_dataset(tmp_path / "b", seed=5, world="shapes", captions=True, splits={"train": 6, "val": 6})
    make_dataset(tmp_path / "c", seed=6, world="shapes", splits={"train": 6, "val": 6})
    assert _digest(tmp_path / "a" / "images") == _digest(tmp_path / "b" / "images")
    assert _digest(tmp_path / "a" / "images") != _digest(tmp_path / "c" / "images")
    train = CocoInstances(a["train"], a["images"])
    assert len(train.vocab) == 36 and train.vocab.split.count("novel") == 6
    labels = [i.label for r in train.images for i in r.instances]
    assert labels and all(train.split_of(c) == "base" for c in labels)  # no novel pair in a training image
    assert not train.skipped
    captions = json.loads((tmp_path / "a" / "annotations" / "captions_train.json").read_text())
    assert len(captions["annotations"]) == 6
    first = captions["annotations"][0]
    names = [train.vocab.classes[i.label] for i in train.images[0].instances]
    assert all(n in first["caption"] for n in names)
    # the vocabulary file is the package's built-in 'shapes' vocabulary
    from ovsam_ros.model.vocabulary import load_vocabulary

    shipped = load_vocabulary("shapes")
    assert shipped.classes == train.vocab.classes and shipped.split == train.vocab.split
    assert len(load_vocabulary("shapes_novel")) == 6


def test_cli_world_option(tmp_path, capsys):
    assert main(["--world", "shapes", "--out", str(tmp_path), "--train", "2", "--val", "1", "--captions"]) == 0
    assert "purple crescent (base)" in capsys.readouterr().out
    assert (tmp_path / "annotations" / "captions_val.json").is_file()


def test_crop_instance_centres_the_box():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 120:160] = 255  # a 40 x 20 box
    crop = crop_instance(image, (120, 40, 160, 60), 32, 2.0, (0.0, 0.0))
    # side = 2 x 40 = 80 px -> 32 px: the box covers the middle 16 x 8 pixels
    assert crop.shape == (32, 32, 3)
    ys, xs = np.nonzero(crop[..., 0] > 127)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (8, 23, 12, 19)


def test_batches_never_repeat_a_caption_within_a_contrastive_group():
    names = [c.name for c in WORLD_CLASSES if c.split == "base"]
    labels = np.repeat(np.arange(len(names)), 3)
    crops = np.zeros((len(labels), 8, 8, 3), np.uint8)
    maker = BatchMaker(crops, labels, names, ["a photo of a {}."], True, seed=0)
    batch, groups = maker.batch(0)
    assert [g[0] for g in groups] == ["class", "colour", "shape"]
    assert len(batch) == len(names) + 6 + 6
    for _kind, start, end, texts in groups:
        assert len(texts) == end - start == len(set(texts))
    assert split_names(["red circle", "big blue square"]) is None


@pytest.mark.parametrize("bad", [["cup"], []])
def test_no_attribute_groups_without_two_word_names(bad):
    assert split_names(bad) is None
