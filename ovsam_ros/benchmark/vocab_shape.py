"""The synonym shape of the shipped vocabularies, which the benchmark's random text imitates.

Read from the vocabularies themselves (``ovsam_ros/data/vocabularies/*.json``, timm's ImageNet-21K
lemmas), not written down here: editing a shipped file (COCO went from 1 to up to 17 synonyms a
class) changes the text matrix the benchmark times.
"""

from __future__ import annotations

import functools
from typing import Tuple

from ovsam_ros.benchmark import VOCAB_ALIASES
from ovsam_ros.model.vocabulary import load_vocabulary

#: The shipped vocabularies by size: a benchmark vocabulary of N classes takes the shape of the
#: smallest one with at least N classes (ImageNet-21K beyond it).
SHIPPED = tuple((name, VOCAB_ALIASES[name]) for name in ("coco", "lvis", "imagenet21k"))


def shipped_vocabulary_for(classes: int) -> str:
    """Name of the shipped vocabulary whose synonym shape stands in for ``classes`` classes."""
    if classes < 1:
        raise ValueError(f"a vocabulary needs at least one class, got {classes}")
    return next((name for name, size in SHIPPED if classes <= size), SHIPPED[-1][0])


@functools.lru_cache(maxsize=None)
def _shape(name: str) -> Tuple[int, float]:
    counts = [len(synonyms) for synonyms in load_vocabulary(name).synonyms]
    return max(counts), sum(counts) / len(counts)


def synonym_shape(classes: int) -> Tuple[int, float]:
    """(padded synonym width = longest synonym list, mean synonyms per class) for ``classes`` classes."""
    return _shape(shipped_vocabulary_for(classes))
