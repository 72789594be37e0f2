"""The benchmark's random text has the synonym shape of the shipped vocabularies, counted here
straight from the JSON files (not through the benchmark's own reader)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovsam_ros.benchmark.flops import random_text
from ovsam_ros.benchmark.run import synonyms_for
from ovsam_ros.benchmark.vocab_shape import shipped_vocabulary_for, synonym_shape

VOCABULARY_DIR = Path(__file__).resolve().parents[2] / "ovsam_ros" / "data" / "vocabularies"


def _json_counts(name: str) -> list[int]:
    data = json.loads((VOCABULARY_DIR / f"{name}.json").read_text())
    return [len(dict.fromkeys(entry["synonyms"])) for entry in data["classes"]]


@pytest.mark.parametrize("name, classes", [("coco", 80), ("lvis", 1203)])
def test_width_and_mean_are_those_of_the_shipped_file(name, classes):
    counts = _json_counts(name)
    assert len(counts) == classes
    width, mean = synonym_shape(classes)
    assert width == max(counts) == synonyms_for(classes)
    assert mean == pytest.approx(sum(counts) / len(counts))


def test_coco_is_no_longer_modelled_with_one_synonym():
    assert synonyms_for(80) == 17  # "person" lists 17 names in the shipped coco.json
    text = random_text(80, synonyms_for(80), 4, ragged=True)
    assert text.valid.shape == (80, 17) and text.valid.sum(1).float().mean() > 1.5  # file: 2.16


def test_sizes_between_the_shipped_ones_take_the_next_larger_shape():
    assert [shipped_vocabulary_for(n) for n in (1, 80, 81, 1203, 1204, 21843, 50000)] == [
        "coco", "coco", "lvis", "lvis", "imagenet21k", "imagenet21k", "imagenet21k"]
    with pytest.raises(ValueError, match="at least one class"):
        shipped_vocabulary_for(0)
