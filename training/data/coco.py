"""COCO-format instance annotations: parsing, validation, mask decoding.

:class:`CocoInstances` reads a COCO ``instances_*.json`` (polygon masks and
RLE, compressed or not, via pycocotools), maps its categories onto a
:class:`~ovsam_ros.model.vocabulary.Vocabulary` (so the base / novel split
comes from the vocabulary; one without a split, e.g. a plain COCO file's own
categories, makes every class base = seen in training, for training and
evaluation alike) and checks every record once, up front:

=====================================================  ==========================================
problem                                                what happens
=====================================================  ==========================================
file is not JSON / lacks images, annotations,          ``DataError`` naming the file
categories
image file missing                                     ``DataError`` listing the files
                                                       (``missing_images="skip"``: counted skip)
image cannot be decoded (``check_images=True``)        ``DataError`` (or counted skip with
                                                       ``corrupt_images="skip"``); without the
                                                       check, the loader's ``DataError`` names
                                                       the file when it is first read
annotation -> unknown image id / category id           ``DataError`` naming the annotation id
category not in the vocabulary                         ``DataError`` naming the category and
                                                       the file's own classes as the fix
                                                       (``data.vocabulary=null``;
                                                       ``unknown_category="skip"``: counted)
empty or degenerate polygon (< 3 points, odd length,   polygon dropped (counted); the instance is
non-finite coordinates)                                dropped (counted) if no polygon is left
self-intersecting polygon                              instance dropped (counted) by default;
                                                       ``self_intersecting="keep"`` keeps it
                                                       (still counted), ``"error"`` raises
RLE whose size differs from the image's                ``DataError`` naming the annotation
polygon whose coordinates all lie in 0..1 on an image  instance dropped (counted as
larger than 16 px (normalised, not pixels)             ``polygon_coordinates_look_normalised``)
mask that decodes to no pixel (all-zero RLE, polygon   instance dropped (counted as
outside the image)                                     ``mask_empty_after_decoding``)
zero-area or non-finite bbox                           instance dropped (counted)
crowd regions (``iscrowd=1``)                          dropped (counted), as in the reference
instance of a class outside ``keep_splits``            dropped (counted), e.g. novel classes
                                                       in stage-2 training
image left without instances (``require_instances``)   dropped (counted)
=====================================================  ==========================================

Every drop lands in :attr:`CocoInstances.skipped` (a
:class:`~training.data.common.SkipReport`); nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ovsam_ros.model.vocabulary import Vocabulary, classes_seen_in_training, clean_name, load_vocabulary

from .common import DataError, PathLike, SkipReport, range_options, read_image

log = logging.getLogger(__name__)

POLICIES = ("error", "skip")


#: A polygon whose coordinates all lie in 0..1 on an image with a side above this many pixels was
#: written in normalised coordinates (YOLO / some exporters), not COCO's pixels.
NORMALISED_MIN_SIDE = 16

#: Skip reasons of masks that hold no usable pixel (the refusal of a dataset left without instances names them).
EMPTY_MASK_REASONS = ("polygon_coordinates_look_normalised", "mask_empty_after_decoding")


@dataclass
class Instance:
    ann_id: Any
    label: int  # index into CocoInstances.vocab
    segmentation: Any  # validated COCO segmentation (polygons or RLE dict)
    bbox: Optional[Tuple[float, float, float, float]]  # x, y, w, h (original pixels) or None
    area: float = 0.0
    mask_area: Optional[int] = None  # pixels of the decoded mask (original size); None: not measured

    def box_xyxy(self) -> Tuple[float, float, float, float]:
        assert self.bbox is not None
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)


@dataclass
class ImageRecord:
    image_id: Any
    file: str  # absolute path
    height: int
    width: int
    instances: List[Instance] = field(default_factory=list)


def polygon_self_intersects(coords: Sequence[float]) -> bool:
    """True when two non-adjacent edges of the closed polygon cross properly.

    Touching at a vertex and collinear overlaps (the back-and-forth spikes that
    contour tracers produce for one-pixel-wide parts) do not count.
    """
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    if n < 4:
        return False
    a, b = pts, np.roll(pts, -1, axis=0)  # edge i: a[i] -> b[i]
    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))  # first and last edge share a vertex
    i, j = i[keep], j[keep]
    if i.size == 0:
        return False

    def orient(p, q, r):
        return (q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0])

    scale = max(1.0, float(np.abs(pts).max()))
    eps = 1e-9 * scale * scale
    o1 = orient(a[i], b[i], a[j])
    o2 = orient(a[i], b[i], b[j])
    o3 = orient(a[j], b[j], a[i])
    o4 = orient(a[j], b[j], b[i])
    crossing = (((o1 > eps) & (o2 < -eps)) | ((o1 < -eps) & (o2 > eps))) & (
        ((o3 > eps) & (o4 < -eps)) | ((o3 < -eps) & (o4 > eps)))
    return bool(crossing.any())


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A validated COCO segmentation -> (height, width) bool mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def segmentation_area(segmentation: Any, height: int, width: int) -> int:
    """Pixels of a validated COCO segmentation's mask at the image's size (pycocotools, from the RLE;
    the mask itself is not decoded)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return int(mask_utils.area(rle))


def looks_normalised(polygons: Sequence[Sequence[float]], height: int, width: int) -> bool:
    """Whether every coordinate lies in 0..1 on an image too big for that to be pixels."""
    return max(height, width) > NORMALISED_MIN_SIDE and all(0.0 <= v <= 1.0 for p in polygons for v in p)


def _finite_numbers(values: Sequence[Any]) -> bool:
    try:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    except TypeError:
        return False


def image_file_name(entry: Any) -> Optional[str]:
    """An image entry's path relative to the image root.

    COCO entries carry ``file_name``. LVIS v1 entries carry only ``coco_url``
    (``http://images.cocodataset.org/val2017/000000397133.jpg``); LVIS tools read
    them as ``<split folder>/<file>`` under the COCO image root, and so do we.
    """
    if not isinstance(entry, dict):
        return None
    if entry.get("file_name"):
        return str(entry["file_name"])
    url = entry.get("coco_url")
    if isinstance(url, str) and url.count("/") >= 2:
        folder, name = url.rstrip("/").split("/")[-2:]
        if folder and name:
            return f"{folder}/{name}"
    return None


class CocoInstances:
    """Validated COCO instance annotations mapped onto a vocabulary.

    Args:
        annotation_file: COCO-format JSON.
        image_root: folder the ``file_name`` entries are relative to (default:
            the JSON's folder, then its parent's ``images/``).
        vocabulary: anything :func:`load_vocabulary` accepts; default: the
            file's own ``categories`` (a ``split`` key per category gives the
            base/novel split; without one every class is base).
        keep_splits: keep only instances whose class split is one of these
            (e.g. ``("base",)`` for stage 2); None keeps all.
        require_instances: drop images left without instances (training).
        check_masks: measure every mask's pixel area once (pycocotools, no decode); masks without a
            pixel and polygons in normalised 0..1 coordinates are dropped (counted), and
            :attr:`Instance.mask_area` is set.
        input_bits, float_max: how 16-bit and float image files become 8-bit RGB, the package's one
            range rule (:mod:`ovsam_ros.image_input`; ``input_bits=12`` for a 12-bit camera's PNGs),
            the same as the node's parameters and the CLI's ``--input-bits`` / ``--float-max``.
    """

    def __init__(
        self,
        annotation_file: PathLike,
        image_root: Optional[PathLike] = None,
        vocabulary: Union[None, str, Vocabulary, Sequence[str]] = None,
        *,
        keep_splits: Optional[Sequence[str]] = None,
        require_instances: bool = False,
        unknown_category: str = "error",
        missing_images: str = "error",
        corrupt_images: str = "error",
        self_intersecting: str = "skip",
        check_images: bool = False,
        check_polygons: bool = True,
        input_bits: int = 16,
        float_max: float = 1.0,
        check_masks: bool = True,
    ) -> None:
        self.input_bits, self.float_max = range_options(input_bits, float_max)
        for name, value, allowed in (("unknown_category", unknown_category, POLICIES),
                                     ("missing_images", missing_images, POLICIES),
                                     ("corrupt_images", corrupt_images, POLICIES),
                                     ("self_intersecting", self_intersecting, POLICIES + ("keep",))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.annotation_file = str(annotation_file)
        path = Path(os.path.expanduser(self.annotation_file))
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise DataError(f"{path}: not a COCO instance file (needs 'images', 'annotations' and 'categories' lists)")
        self.image_root = self._image_root(path, image_root, data)
        self.skipped = SkipReport(str(path))
        self.vocab = self._vocabulary(path, vocabulary)
        self.keep_splits = tuple(keep_splits) if keep_splits else None
        self.category_to_label = self._map_categories(path, data["categories"], unknown_category)

        records: Dict[Any, ImageRecord] = {}
        missing: List[str] = []
        for entry in data["images"]:
            name = image_file_name(entry)
            if name is None or "id" not in entry:
                raise DataError(f"{path}: image entry without 'id'/'file_name' (or an LVIS 'coco_url'): {str(entry)[:200]}")
            entry = {**entry, "file_name": name}
            file = str(Path(self.image_root) / name)
            try:
                h, w = int(entry["height"]), int(entry["width"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: image id {entry['id']} ({entry['file_name']}) lacks a valid height/width") from None
            if h <= 0 or w <= 0:
                raise DataError(f"{path}: image id {entry['id']} ({entry['file_name']}) has size {w}x{h}")
            if entry["id"] in records:
                raise DataError(f"{path}: duplicate image id {entry['id']}")
            if not os.path.isfile(file):
                missing.append(file)
                self.skipped.add("missing_image_file", file)
                continue
            records[entry["id"]] = ImageRecord(entry["id"], file, h, w)
        if missing and missing_images == "error":
            shown = "\n  ".join(missing[:5])
            more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"{path}: {len(missing)} image file(s) referenced by the annotations do not exist "
                            f"(image root {self.image_root}):\n  {shown}{more}\n"
                            "(set missing_images='skip' to train on the rest)")
        missing_ids = {e["id"] for e in data["images"] if isinstance(e, dict)} - set(records)

        self.check_masks = bool(check_masks)
        self.num_annotations = len(data["annotations"])
        for ann in data["annotations"]:
            self._add_annotation(path, ann, records, missing_ids, self_intersecting, check_polygons)

        if check_images:
            self._check_images(records, corrupt_images)
        images = list(records.values())
        if require_instances:
            empty = [r for r in images if not r.instances]
            for r in empty:
                self.skipped.add("image_without_instances", r.file)
            images = [r for r in images if r.instances]
        self.images: List[ImageRecord] = images
        if self.skipped:
            log.warning(self.skipped.summary())

    # ------------------------------------------------------------------ setup helpers
    @staticmethod
    def _image_root(path: Path, image_root: Optional[PathLike], data: Dict[str, Any]) -> str:
        if image_root is not None:
            root = Path(os.path.expanduser(os.fspath(image_root)))
            if not root.is_dir():
                raise FileNotFoundError(f"image root folder not found: {root}")
            return str(root.resolve())
        for candidate in (path.parent, path.parent.parent / "images"):
            images = data.get("images") or []
            first = image_file_name(images[0]) if images else None
            if first and (candidate / first).is_file():
                return str(candidate.resolve())
        return str(path.parent.resolve())

    def _vocabulary(self, path: Path, vocabulary: Any) -> Vocabulary:
        try:
            vocab = load_vocabulary(str(path) if vocabulary is None else vocabulary)
        except (ValueError, FileNotFoundError) as err:
            raise DataError(f"{path}: cannot build the vocabulary: {err}") from err
        # One rule for training and evaluation: classes without a split are base (seen in training).
        return classes_seen_in_training(vocab, str(path), log)

    def _map_categories(self, path: Path, categories: List[Any], policy: str) -> Dict[Any, Optional[int]]:
        mapping: Dict[Any, Optional[int]] = {}
        ids = list(self.vocab.ids) if self.vocab.ids is not None else None
        for cat in categories:
            if not isinstance(cat, dict) or "id" not in cat:
                raise DataError(f"{path}: category entry without 'id': {str(cat)[:200]}")
            name = clean_name(cat.get("name", ""))
            index = None
            if ids is not None and cat["id"] in ids:
                candidate = ids.index(cat["id"])
                names = {self.vocab.classes[candidate], *self.vocab.synonyms[candidate]}
                if not name or name in names or cat.get("synonyms"):
                    index = candidate
            if index is None and name:
                index = self.vocab.find(name)
            if index is None:
                if policy == "error":
                    raise DataError(
                        f"{path}: category id {cat['id']} ({cat.get('name')!r}) is not in vocabulary "
                        f"'{self.vocab.name}' ({len(self.vocab)} classes). To train on this file's own classes, "
                        "use its categories as the vocabulary: --set data.vocabulary=null (ovsam-evaluate: leave "
                        f"out --vocabulary). Or add the class to '{self.vocab.name}', or set "
                        "unknown_category='skip' (drops every instance of a class the vocabulary lacks)")
            mapping[cat["id"]] = index
        return mapping

    def _add_annotation(self, path: Path, ann: Any, records: Dict[Any, ImageRecord], missing_ids: set,
                        self_intersecting: str, check_polygons: bool) -> None:
        if not isinstance(ann, dict) or "id" not in ann:
            raise DataError(f"{path}: annotation without 'id': {str(ann)[:200]}")
        where = f"{path}: annotation id {ann['id']}"
        image_id = ann.get("image_id")
        if image_id in missing_ids:
            self.skipped.add("annotation_of_missing_image", ann["id"])
            return
        record = records.get(image_id)
        if record is None:
            raise DataError(f"{where}: image_id {image_id!r} is not in the file's images")
        if ann.get("iscrowd", 0):
            self.skipped.add("crowd", ann["id"])
            return
        cat = ann.get("category_id")
        if cat not in self.category_to_label:
            raise DataError(f"{where} (image {record.file}): category_id {cat!r} is not in the file's categories")
        label = self.category_to_label[cat]
        if label is None:
            self.skipped.add("category_not_in_vocabulary", ann["id"])
            return
        if self.keep_splits and self.vocab.split is not None and self.vocab.split[label] not in self.keep_splits:
            self.skipped.add(f"class_split_{self.vocab.split[label]}", ann["id"])
            return
        bbox = ann.get("bbox")
        if bbox is not None:
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not _finite_numbers(bbox):
                self.skipped.add("invalid_bbox", ann["id"])
                return
            if bbox[2] <= 0 or bbox[3] <= 0:
                self.skipped.add("zero_area_bbox", ann["id"])
                return
            bbox = tuple(float(v) for v in bbox)
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            polys = []
            for poly in seg:
                if (not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2
                        or not _finite_numbers(poly)):
                    self.skipped.add("empty_or_degenerate_polygon", ann["id"])
                    continue
                xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                if np.ptp(xy[:, 0]) <= 0 or np.ptp(xy[:, 1]) <= 0:
                    self.skipped.add("empty_or_degenerate_polygon", ann["id"])
                    continue
                polys.append([float(v) for v in poly])
            if not polys:
                self.skipped.add("instance_without_usable_polygon", ann["id"])
                return
            if check_polygons and any(polygon_self_intersects(p) for p in polys):
                if self_intersecting == "error":
                    raise DataError(f"{where} (image {record.file}): self-intersecting polygon")
                self.skipped.add("self_intersecting_polygon" + ("_kept" if self_intersecting == "keep" else ""),
                                 ann["id"])
                if self_intersecting == "skip":
                    return
            if self.check_masks and looks_normalised(polys, record.height, record.width):
                self.skipped.add("polygon_coordinates_look_normalised", ann["id"])
                return
            seg = polys
        elif isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if not isinstance(size, (list, tuple)) or len(size) != 2 or counts is None:
                raise DataError(f"{where} (image {record.file}): RLE needs 'size' [h, w] and 'counts'")
            if [int(size[0]), int(size[1])] != [record.height, record.width]:
                raise DataError(f"{where} (image {record.file}): RLE size {list(size)} differs from the image size "
                                f"[{record.height}, {record.width}]")
            if isinstance(counts, list) and sum(int(c) for c in counts) != record.height * record.width:
                raise DataError(f"{where} (image {record.file}): uncompressed RLE counts sum to "
                                f"{sum(counts)}, not {record.height * record.width}")
            if isinstance(counts, str) and not counts:
                self.skipped.add("empty_rle", ann["id"])
                return
        else:
            self.skipped.add("no_segmentation", ann["id"])
            return
        mask_area = None
        if self.check_masks:
            try:
                mask_area = segmentation_area(seg, record.height, record.width)
            except Exception as err:  # pycocotools' own errors (e.g. an undecodable compressed RLE string)
                raise DataError(f"{where} (image {record.file}): segmentation cannot be decoded: "
                                f"{type(err).__name__}: {err}") from None
            if mask_area == 0:
                self.skipped.add("mask_empty_after_decoding", ann["id"])
                return
        record.instances.append(Instance(ann["id"], int(label), seg, bbox, float(ann.get("area", 0.0) or 0.0),
                                         mask_area))

    def _check_images(self, records: Dict[Any, ImageRecord], policy: str) -> None:
        bad = []
        for key, record in list(records.items()):
            try:
                image = read_image(record.file, self.input_bits, self.float_max)
            except (DataError, FileNotFoundError) as err:
                bad.append(str(err))
                self.skipped.add("corrupt_image", record.file)
                del records[key]
                continue
            if image.shape[:2] != (record.height, record.width):
                raise DataError(f"{record.file}: decoded size {image.shape[1]}x{image.shape[0]} differs from the "
                                f"annotation's {record.width}x{record.height}")
        if bad and policy == "error":
            raise DataError(f"{self.annotation_file}: {len(bad)} unreadable image(s):\n  " + "\n  ".join(bad[:5])
                            + ("\n(set corrupt_images='skip' to drop them)"))

    def unusable_message(self, usable: Optional[int] = None, more: Optional[SkipReport] = None,
                         notes: Optional[Dict[str, str]] = None) -> str:
        """One line for a file left without a usable training instance: how many of its annotations are
        usable (``usable``, default: :attr:`num_instances`), each skip reason with its count (``more``:
        a user's own further skips; ``notes``: how to show a reason), and the likely cause."""
        notes = notes or {}
        merged = dict(self.skipped.counts)
        for reason, n in (more.counts.items() if more is not None else ()):
            merged[reason] = merged.get(reason, 0) + n
        counts = {r: n for r, n in sorted(merged.items()) if not r.startswith("image_without")}
        if not self.num_annotations:
            return (f"{self.annotation_file}: no annotation to train on (its 'annotations' list is empty"
                    f"{'' if self.images or not self.skipped else ', or ' + self.skipped.summary()})")
        reasons = ", ".join(f"{n} {notes.get(r, r)}" for r, n in counts.items()) or "none skipped"
        usable = self.num_instances if usable is None else usable
        text = f"{self.annotation_file}: {usable} of {self.num_annotations} instances usable for training: {reasons}"
        if counts.get("polygon_coordinates_look_normalised"):
            text += ("; the polygons' coordinates all lie in 0..1, so the file likely holds normalised "
                     "coordinates: COCO polygons are in pixels (x times the image width, y times its height)")
        if counts.get("mask_empty_after_decoding"):
            text += ("; masks that decode to no pixel are all-zero RLEs or polygons outside their image "
                     "(check the images' width/height)")
        return text

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_instances(self) -> int:
        return sum(len(r.instances) for r in self.images)

    def split_of(self, label: int) -> str:
        """``base`` / ``novel`` / ``unused``; a file without splits is all ``base``
        (:func:`~ovsam_ros.model.vocabulary.classes_seen_in_training`, applied at load)."""
        return self.vocab.split[label] if self.vocab.split is not None else "base"

    def load(self, index: int) -> Tuple[np.ndarray, List[np.ndarray]]:
        """(RGB image, one bool mask per instance) of image ``index``, checked against the record."""
        record = self.images[index]
        image = read_image(record.file, self.input_bits, self.float_max)
        if image.shape[:2] != (record.height, record.width):
            raise DataError(f"{record.file}: decoded size {image.shape[1]}x{image.shape[0]} differs from the "
                            f"annotation's {record.width}x{record.height} ({self.annotation_file})")
        masks = [decode_segmentation(inst.segmentation, record.height, record.width) for inst in record.instances]
        return image, masks

    def stats(self) -> Dict[str, Any]:
        per_class = np.bincount([i.label for r in self.images for i in r.instances], minlength=len(self.vocab))
        return {
            "annotation_file": self.annotation_file,
            "images": len(self.images),
            "instances": self.num_instances,
            "vocabulary": self.vocab.name,
            "classes": len(self.vocab),
            "instances_per_class": {self.vocab.classes[i]: int(n) for i, n in enumerate(per_class) if n},
            "skipped": self.skipped.to_dict(),
        }
