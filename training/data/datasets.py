"""torch Datasets for the two training stages.

Items are requested with ``(epoch, index)`` keys (see :mod:`training.data.sampler`);
every random choice for a sample is drawn from ``sample_seed(seed, epoch, index)``,
so what a sample looks like does not depend on the worker, the rank or on
where a resumed run started.

* :class:`ImageFolderDataset` (stage 1): images only, any folder tree.
* :class:`DetectionDataset` (stage 2): COCO-format instances with prompts.
* :class:`ClassFolderDataset` (stage 2, optional): ImageNet-style
  ``root/<class>/*.jpg``; one whole-image box prompt per image, a label and
  no mask (the paper's vocabulary-expansion data, never released by the reference).
* :class:`ConcatDataset`: several of the stage-2 datasets behind one index space.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ovsam_ros.model.vocabulary import Vocabulary, clean_name, load_vocabulary

from .coco import CocoInstances
from .common import DataError, SkipReport, list_images, manifest_images, range_options, read_image, sample_seed
from .feature_cache import TeacherFeatureCache
from .transforms import (
    Augment,
    masks_to_boxes_np,
    pad_masks,
    random_points_in_masks,
    sample_prompt_kinds,
    to_model_input,
)

log = logging.getLogger(__name__)

Key = Union[int, Tuple[int, int]]


def _key(key: Key) -> Tuple[int, int]:
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return 0, int(key)


class _SizedLater:
    """Datasets whose files are listed (and checked) before the model exists: ``image_size=None``
    at construction, :meth:`set_image_size` once the model says it. A wrong data folder is
    then reported before minutes of model loading, not after."""

    image_size: Optional[int]
    augment: Augment

    def set_image_size(self, image_size: int) -> None:
        self.image_size = int(image_size)
        self.augment = dataclasses.replace(self.augment, image_size=int(image_size))

    def _size(self) -> int:
        if not self.image_size:
            raise RuntimeError(f"{type(self).__name__}: call set_image_size() before loading samples")
        return self.image_size


# ----------------------------------------------------------------------------- stage 1
class ImageFolderDataset(_SizedLater, Dataset):
    """All images under ``root`` (recursively), resized-longest + padded for the model.

    ``check_images=True`` decodes every file once at start-up and skips the
    unreadable ones (counted in :attr:`skipped`); without it an unreadable file
    raises :class:`DataError` naming it when it is loaded. ``input_bits`` / ``float_max``:
    the range rule for 16-bit / float files (:func:`~training.data.common.read_image`).
    """

    def __init__(self, root: Union[str, Sequence[str]], image_size: Optional[int], seed: int = 0, flip: bool = False,
                 check_images: bool = False, cache: Optional[TeacherFeatureCache] = None, input_bits: int = 16,
                 float_max: float = 1.0) -> None:
        self.input_bits, self.float_max = range_options(input_bits, float_max)
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        self.files: List[str] = []
        for r in roots:
            folder = os.path.expanduser(str(r))
            listed = manifest_images(folder)  # a bag extraction: its manifest, not a glob
            found = [str(p) for p in (list_images(folder) if listed is None else listed)]
            if not found:
                raise DataError(f"image folder {r} contains no images ({', '.join(('.jpg', '.png'))} ...)")
            self.files.extend(found)
        self.skipped = SkipReport(", ".join(str(r) for r in roots))
        if check_images:
            good = []
            for f in self.files:
                try:
                    read_image(f, self.input_bits, self.float_max)
                    good.append(f)
                except (DataError, FileNotFoundError):
                    self.skipped.add("corrupt_image", f)
            self.files = good
            if self.skipped:
                log.warning(self.skipped.summary())
        if not self.files:
            raise DataError(f"no readable images in {roots}")
        self.image_size = image_size
        self.seed = seed
        self.augment = Augment(image_size or 0, flip=flip)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: Key) -> Dict[str, Any]:
        epoch, index = _key(key)
        file = self.files[index]
        size = self._size()
        rng = sample_seed(self.seed, epoch, index)
        image = read_image(file, self.input_bits, self.float_max)
        img, _, params = self.augment(rng, image)
        item: Dict[str, Any] = {"image": to_model_input(img, size), "file": file,
                                "key": (epoch, index), "teacher": None, "cache_key": None}
        if self.cache is not None:
            item["cache_key"] = self.cache_key(file, params["flip"])
            item["teacher"] = self.cache.get(item["cache_key"])
        return item

    def cache_key(self, file: str, flip: bool) -> str:
        """The teacher cache's key for ``file``: another range rule makes other pixels, so other
        teacher features (the default rule keeps the keys of caches written before it existed)."""
        if self.cache is None:
            raise RuntimeError(f"{type(self).__name__}: no teacher cache set")
        key = self.cache.key(file, self._size(), flip)
        if (self.input_bits, self.float_max) == (16, 1.0):
            return key
        return hashlib.sha256(f"{key}|input_bits={self.input_bits}|float_max={self.float_max!r}".encode()).hexdigest()


def collate_images(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "images": torch.stack([it["image"] for it in items]),
        "teacher": [it["teacher"] for it in items],
        "cache_key": [it["cache_key"] for it in items],
        "file": [it["file"] for it in items],
        "key": [it["key"] for it in items],
    }


# ----------------------------------------------------------------------------- stage 2
FILL_MODES = ("off", "cycle", "random")

#: Skip reason of instances whose mask is below data.min_mask_area at every scale the augmentation draws.
BELOW_MIN_AREA = "below_min_mask_area"


def _fill_mode(value: Union[bool, str, None]) -> str:
    if value is None or value is False:
        return "off"
    if value is True:
        return "random"  # the meaning of `true` before the reference's cycling was added
    if value not in FILL_MODES:
        raise ValueError(f"data.fill_instances must be one of {FILL_MODES} (or true/false), got {value!r}")
    return str(value)


class DetectionDataset(Dataset):
    """COCO instances -> image + up to ``instances_per_image`` prompted instances.

    Per sample (reference recipe): scale jitter / flip / crop, drop masks under
    ``min_mask_area`` pixels (after the transform), sample instances without
    replacement, make ``box_fraction`` of them box prompts and the rest one
    random foreground point each. Labels index the training vocabulary (the
    classes kept by ``coco.keep_splits``) through ``label_map``.
    ``fill_instances``: images with fewer instances repeat them, each repeat
    with a fresh prompt kind / point, up to ``instances_per_image``.
    ``"cycle"`` is the reference's (its data preprocessor tiles the instance
    list and keeps the first N: 3 instances give 14/13/13 prompts); ``"random"``
    (or ``True``, ours) draws the repeats at random; ``False``/``"off"`` does not fill.
    ``box_count``: how many prompts are boxes (``transforms.BOX_COUNT_RULES``: ``"round"``,
    ours, or ``"reference"``, 21 of 40).
    """

    source = 0

    def __init__(self, coco: CocoInstances, image_size: int, seed: int = 0, instances_per_image: int = 40,
                 box_fraction: float = 0.5, scale_range: Tuple[float, float] = (1.0, 1.0), flip: bool = False,
                 min_mask_area: int = 32, label_map: Optional[Dict[int, int]] = None,
                 fill_instances: Union[bool, str] = False, box_count: str = "round") -> None:
        self.coco = coco
        self.fill_instances = _fill_mode(fill_instances)
        sample_prompt_kinds(np.random.default_rng(0), 0, box_fraction, box_count)  # a bad rule fails now
        self.box_count = box_count
        self.image_size = image_size
        self.seed = seed
        self.instances_per_image = int(instances_per_image)
        self.box_fraction = float(box_fraction)
        self.min_mask_area = int(min_mask_area)
        self.augment = Augment(image_size, scale_range, flip)
        self.label_map = label_map  # full-vocabulary index -> training-vocabulary index
        if self.instances_per_image < 1:
            raise ValueError(f"data.instances_per_image must be >= 1, got {instances_per_image!r}")
        # Masks that stay under min_mask_area at every scale never train: dropped here and counted
        # (the rest can still lose one in a sample drawn at a smaller scale). The coco object is not changed.
        self.skipped = SkipReport(str(getattr(coco, "annotation_file", "")))
        self.usable: List[List[bool]] = []
        self.indices: List[int] = []
        for i, record in enumerate(coco.images):
            flags = [not self.never_big_enough(record, inst) for inst in record.instances]
            for inst, ok in zip(record.instances, flags):
                if not ok:
                    self.skipped.add(BELOW_MIN_AREA, getattr(inst, "ann_id", None))
            self.usable.append(flags)
            if any(flags) or not flags:  # an image the file gives no instance stays, as before
                self.indices.append(i)
            else:
                self.skipped.add("image_without_usable_instances", record.file)
        usable = sum(sum(f) for f in self.usable)
        if usable == 0:
            notes = {BELOW_MIN_AREA: f"below data.min_mask_area {self.min_mask_area} px at every scale of "
                                     f"data.scale_range {list(self.augment.scale_range)} (input size {image_size})"}
            if hasattr(coco, "unusable_message"):
                raise DataError(coco.unusable_message(0, self.skipped, notes))
            raise DataError(f"no usable training instance: {self.skipped.summary()}")
        if self.skipped:
            log.warning("%s", self.skipped.summary())

    def never_big_enough(self, record: Any, inst: Any) -> bool:
        """Whether an instance's mask stays under ``min_mask_area`` pixels even at the largest scale jitter."""
        area = getattr(inst, "mask_area", None)
        if area is None or self.min_mask_area <= 1:
            return False
        scale = self.image_size / max(record.height, record.width) * self.augment.scale_range[1]
        # an upper bound: the scaled area plus a one-pixel band around it (the resize's rounding), as for a square
        return area * scale * scale + 4 * math.sqrt(area) * scale + 4 < self.min_mask_area

    def stats(self) -> Dict[str, Any]:
        """The annotation file's :meth:`CocoInstances.stats` with this dataset's own drops merged in."""
        stats = self.coco.stats()
        counts = stats["skipped"]["counts"]
        for reason, n in self.skipped.counts.items():
            counts[reason] = counts.get(reason, 0) + n
        stats["skipped"]["counts"] = dict(sorted(counts.items()))
        stats["skipped"]["examples"].update({k: list(v) for k, v in self.skipped.examples.items()})
        stats["images"] = len(self.indices)
        stats["instances"] = sum(sum(f) for f in self.usable)
        return stats

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: Key) -> Dict[str, Any]:
        epoch, index = _key(key)
        rng = sample_seed(self.seed, epoch, index)
        source = self.indices[index]
        record = self.coco.images[source]
        image, masks = self.coco.load(source)
        flags = self.usable[source]
        masks = [mask for mask, ok in zip(masks, flags) if ok]
        masks_np = np.stack(masks) if masks else np.zeros((0, record.height, record.width), bool)
        img, m, _ = self.augment(rng, image, masks_np)
        labels = np.array([inst.label for inst, ok in zip(record.instances, flags) if ok], np.int64)
        keep = m.reshape(m.shape[0], -1).sum(1) >= max(1, self.min_mask_area)
        m, labels = m[keep], labels[keep]
        if len(labels) > self.instances_per_image:
            pick = np.sort(rng.permutation(len(labels))[: self.instances_per_image])
            m, labels = m[pick], labels[pick]
        elif self.fill_instances != "off" and 0 < len(labels) < self.instances_per_image:
            # repeat instances (each repeat gets its own prompt kind / point) to always have N prompts
            if self.fill_instances == "cycle":
                pick = np.arange(self.instances_per_image) % len(labels)
            else:
                pick = np.concatenate([np.arange(len(labels)),
                                       rng.integers(0, len(labels), self.instances_per_image - len(labels))])
            m, labels = m[pick], labels[pick]
        is_box = sample_prompt_kinds(rng, len(labels), self.box_fraction, self.box_count)
        points = random_points_in_masks(rng, m)
        if self.label_map is not None:
            labels = np.array([self.label_map[int(l)] for l in labels], np.int64)
        return {
            "image": to_model_input(img, self.image_size),
            "masks": pad_masks(m, self.image_size),
            "boxes": torch.from_numpy(masks_to_boxes_np(m)),
            "points": torch.from_numpy(points),
            "is_box": torch.from_numpy(is_box),
            "labels": torch.from_numpy(labels),
            "has_mask": True,
            "source": self.source,
            "key": (epoch, index),
            "file": record.file,
        }


class ClassFolderDataset(_SizedLater, Dataset):
    """ImageNet-style ``root/<class name or WordNet id>/*.jpg`` for vocabulary expansion.

    Each image gives ONE instance: a whole-image box prompt, the folder's class
    label, and no mask (no mask loss), as the paper describes for its
    ImageNet-21K joint training. Folder names are looked up in ``vocabulary``
    by id (e.g. ``n01440764`` for ``imagenet21k``) or by name; a folder that is
    not in the vocabulary raises :class:`DataError` (``unknown_class="skip"``:
    counted skip). ``input_bits`` / ``float_max``: the range rule for 16-bit / float files.
    """

    source = 1

    def __init__(self, root: str, vocabulary: Any, image_size: Optional[int], seed: int = 0,
                 scale_range: Tuple[float, float] = (1.0, 1.0), flip: bool = False,
                 unknown_class: str = "error", check_images: bool = False, input_bits: int = 16,
                 float_max: float = 1.0) -> None:
        self.input_bits, self.float_max = range_options(input_bits, float_max)
        root_path = Path(os.path.expanduser(root))
        if not root_path.is_dir():
            raise FileNotFoundError(f"class folder root not found: {root_path}")
        folders = sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.vocab: Vocabulary = load_vocabulary(vocabulary) if vocabulary is not None else \
            Vocabulary.from_names([clean_name(p.name) for p in folders], name=root_path.name)
        self.skipped = SkipReport(str(root_path))
        ids = [str(i) for i in self.vocab.ids] if self.vocab.ids is not None else []
        self.items: List[Tuple[str, int]] = []
        for folder in folders:
            label = ids.index(folder.name) if folder.name in ids else self.vocab.find(folder.name)
            if label is None:
                if unknown_class == "error":
                    raise DataError(f"class folder {folder} is not in vocabulary '{self.vocab.name}' "
                                    "(rename it, extend the vocabulary, or set unknown_class='skip')")
                self.skipped.add("folder_not_in_vocabulary", str(folder))
                continue
            files = list_images(folder)
            if not files:
                self.skipped.add("empty_class_folder", str(folder))
            for f in files:
                if check_images:
                    try:
                        read_image(f, self.input_bits, self.float_max)
                    except (DataError, FileNotFoundError):
                        self.skipped.add("corrupt_image", str(f))
                        continue
                self.items.append((str(f), int(label)))
        if not self.items:
            raise DataError(f"class folder root {root_path} holds no usable images")
        if self.skipped:
            log.warning(self.skipped.summary())
        self.image_size = image_size
        self.seed = seed
        self.augment = Augment(image_size or 0, scale_range, flip)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: Key) -> Dict[str, Any]:
        epoch, index = _key(key)
        rng = sample_seed(self.seed, epoch, index, 1)
        file, label = self.items[index]
        size = self._size()
        img, _, _ = self.augment(rng, read_image(file, self.input_bits, self.float_max))
        h, w = img.shape[:2]
        return {
            "image": to_model_input(img, size),
            "masks": None,
            "boxes": torch.tensor([[0.0, 0.0, float(w), float(h)]]),
            "points": torch.tensor([[w / 2.0, h / 2.0]]),
            "is_box": torch.tensor([True]),
            "labels": torch.tensor([label]),
            "has_mask": False,
            "source": self.source,
            "key": (epoch, index),
            "file": file,
        }


class ConcatDataset(Dataset):
    """Datasets behind one index space; an index is forwarded with its (epoch, local index) key."""

    def __init__(self, parts: Sequence[Dataset], repeats: Optional[Sequence[int]] = None) -> None:
        self.parts = list(parts)
        self.repeats = list(repeats or [1] * len(self.parts))
        self.offsets = np.cumsum([0] + [len(p) * r for p, r in zip(self.parts, self.repeats)]).tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: Key) -> Dict[str, Any]:
        epoch, index = _key(key)
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        local = index - self.offsets[part]
        n = len(self.parts[part])
        # the r-th repeat of an item gets its own randomness (distinct augmentation)
        return self.parts[part][(epoch * max(self.repeats) + local // n, local % n)]


def collate_instances(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "images": torch.stack([it["image"] for it in items]),
        "items": [{k: v for k, v in it.items() if k != "image"} for it in items],
    }
