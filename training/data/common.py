"""Shared pieces of the data layer: errors, image reading, skip bookkeeping.

Policy for bad input (one place, so every loader behaves the same):

* something that would make a result wrong (an image that cannot be decoded,
  an annotation naming a class the vocabulary does not have, a mask whose
  size disagrees with its image) raises :class:`DataError` naming the file and
  the record;
* something that can be dropped without changing the meaning of the rest (an
  empty polygon, a zero-area box, a crowd region, an instance smaller than the
  minimum mask area) is skipped and COUNTED in a :class:`SkipReport`, which the
  loaders log and the training scripts write next to their outputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import numpy as np

from ovsam_ros.files import atomic_write

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DataError(ValueError):
    """Unusable training / evaluation input; the message names the file and the record."""


#: One-channel encodings that hold measurements, not a camera's picture: depth (16UC1 mm, 32FC1 m),
#: 16-bit mono (IR / range images), other integer or float single-channel data.
DEPTH_ENCODINGS = frozenset({"16uc1", "16sc1", "32sc1", "32fc1", "64fc1", "mono16", "16uc", "32fc"})


def depth_like(encoding: Any, dtype: Any = None, channels: Any = None) -> bool:
    """Whether a frame is depth / 16-bit mono / float data rather than a colour (or 8-bit grey)
    picture: by its ROS encoding (``16UC1``, ``mono16``, ``32FC1``, a ``compressedDepth``
    format), or by what was stored (one channel, not uint8)."""
    enc = str(encoding or "").lower()
    if enc in DEPTH_ENCODINGS or "compresseddepth" in enc:
        return True
    if channels is not None and dtype is not None:
        return int(channels) == 1 and str(dtype) != "uint8"
    return False


def colour_topic_hint(topics: Iterable[str] = ()) -> str:
    """How to choose the colour topic (``topics``: the bag's image topics, if known)."""
    shown = ", ".join(sorted(topics)[:8])
    return ("extract the colour camera's topic (an rgb8 / bgr8 / CompressedImage topic such as "
            "/camera/color/image_raw or /camera/image_raw; `ros2 bag info BAG` lists the topics"
            + (f"; this bag's image topics: {shown}" if shown else "") + ")")


class SkipReport:
    """Counts of skipped records by reason, plus a few examples of each (for the log)."""

    def __init__(self, source: str = "") -> None:
        self.source = source
        self.counts: Counter = Counter()
        self.examples: Dict[str, list] = {}

    def add(self, reason: str, example: Any = None, count: int = 1) -> None:
        self.counts[reason] += count
        if example is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < 5:
                ex.append(example)

    def __bool__(self) -> bool:
        return bool(sum(self.counts.values()))

    def total(self) -> int:
        return int(sum(self.counts.values()))

    def to_dict(self) -> Dict[str, Any]:
        return {"source": self.source, "counts": dict(sorted(self.counts.items())),
                "examples": {k: list(v) for k, v in sorted(self.examples.items())}}

    def summary(self) -> str:
        if not self:
            return f"{self.source}: nothing skipped"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        return f"{self.source}: skipped {parts}"


def range_options(input_bits: Any = 16, float_max: Any = 1.0) -> Tuple[int, float]:
    """``(input_bits, float_max)`` checked by the package's range rule (``ovsam_ros.image_input``):
    an int 8..16 and a finite float > 0, else ValueError naming the option. Datasets check them
    once when built, so a bad value is not reported as an unusable image at the first sample."""
    from ovsam_ros.image_input import check_float_max, check_input_bits

    return check_input_bits(input_bits), check_float_max(float_max)


def read_image(path: PathLike, input_bits: int = 16, float_max: float = 1.0) -> np.ndarray:
    """Decode an image file into a contiguous (H, W, 3) uint8 RGB array.

    The file's EXIF orientation is applied (as the reference's mmcv loader does: a phone JPEG
    with Orientation=6 is read upright). Grey, 16-bit, float and RGBA files are converted by the
    package's one range rule (``ovsam_ros.image_input``: ``input_bits`` for 16-bit data, 12 or 10
    for machine-vision cameras; floats are 0..``float_max``); a folder of images that use a tiny
    part of their range is warned about (rate-limited, once per folder).
    A missing file raises ``FileNotFoundError``, an undecodable one :class:`DataError`;
    both name the path.
    """
    from ovsam_ros.image_input import DEFAULT_RANGE_WARNINGS, decode_image_file, to_uint8_rgb

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    image = decode_image_file(path)
    if image is None:
        raise DataError(f"{path}: cannot decode image (corrupt, truncated or not an image)")
    try:
        # The warning names the file; its rate limit is per folder (a dataset of 12-bit frames warns once).
        folder = os.path.dirname(os.path.abspath(path))
        return to_uint8_rgb(image, "RGB", input_bits=input_bits, float_max=float_max, source=path,
                            warn=lambda _, message: DEFAULT_RANGE_WARNINGS(folder, message))
    except ValueError as err:
        raise DataError(f"{path}: unusable image: {err}") from err


def list_images(root: PathLike, recursive: bool = True) -> list:
    """Sorted image files under ``root`` (relative order is stable across machines)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    pattern = "**/*" if recursive else "*"
    files = [p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def manifest_images(root: PathLike) -> Optional[list]:
    """The image files an ``ovsam-extract-bag`` manifest lists under ``root``; None without one.

    The manifest sits in ``root``, in its parent (``root`` = ``<out>/images``) or, for one topic's
    folder (``root`` = ``<out>/images/<topic>``), in its grandparent. When it is
    there it is the truth: files it does not list (say, from an earlier extraction into the
    same folder) are ignored with a warning, and listed files that are missing are an error.
    """
    root = Path(root)
    for folder in (root, root.parent, root.parent.parent):
        path = folder / "manifest.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: unreadable extraction manifest ({type(err).__name__}: {err})") from err
        if not (isinstance(data, dict) and isinstance(data.get("frames"), list) and "image_root" in data):
            continue  # someone else's manifest.json
        base = folder.resolve()
        top = root.resolve()
        if folder == root.parent.parent and not (top.parent == (base / str(data["image_root"])).resolve()):
            continue  # <out>/images/<topic>/ only: a manifest further up is someone else's
        files = []
        for frame in data["frames"]:
            file = base / str(frame.get("file", ""))
            if file == top or top in file.parents:
                files.append(file)
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{path} lists {len(missing)} image(s) that are missing, e.g. {missing[0]}; "
                            "re-extract the bag (ovsam-extract-bag --overwrite)")
        depth: Counter = Counter()
        for frame in data["frames"]:
            file = base / str(frame.get("file", ""))
            if (file == top or top in file.parents) and depth_like(frame.get("encoding"), frame.get("dtype"),
                                                                   frame.get("channels")):
                depth[(str(frame.get("topic", "?")), str(frame.get("encoding", "?")))] += 1
        if depth:
            what = "; ".join(f"topic {t} ({enc}, {n} frame(s))" for (t, enc), n in sorted(depth.items()))
            colour = sorted({str(f.get("topic")) for f in data["frames"]
                             if not depth_like(f.get("encoding"), f.get("dtype"), f.get("channels"))})
            hint = (f"point data.images at a colour topic's folder under {base / str(data['image_root'])} "
                    f"(topics: {', '.join(colour)})" if colour else
                    "re-extract the bag: " + colour_topic_hint())
            raise DataError(f"{root}: holds depth / 16-bit mono / float frames, not camera pictures: {what} "
                            f"(per {path}). Training on them teaches the model nothing it will see; {hint}")
        listed = set(files)
        extra = [p for p in list_images(root) if p.resolve() not in listed]
        if extra:
            logging.getLogger(__name__).warning(
                "%s: %d image file(s) under %s are not in the manifest (left from an earlier extraction?) and "
                "are ignored, e.g. %s", path, len(extra), root, extra[0])
        return sorted(files, key=lambda p: p.relative_to(base).as_posix())
    return None


def write_json(path: PathLike, data: Any, indent: Optional[int] = None) -> None:
    """Atomic JSON write (UTF-8, NaN refused)."""
    text = json.dumps(data, indent=indent, allow_nan=False, ensure_ascii=False)
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def sample_seed(*parts: int) -> np.random.Generator:
    """A numpy Generator that depends only on ``parts`` (seed, epoch, index ...).

    Every random choice of the data pipeline is drawn from such a generator, so
    a sample looks the same whichever worker, rank or resumed run loads it.
    """
    return np.random.default_rng([int(p) & 0xFFFFFFFF for p in parts])


def chunks(items: Iterable[Any], size: int):
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf
