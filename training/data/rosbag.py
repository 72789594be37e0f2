"""rosbag2 -> training data, with the pure-Python ``rosbags`` library (no ROS install).

``ovsam-extract-bag`` pulls ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage``
frames of chosen topics out of a rosbag2 (sqlite3 or MCAP storage), at most
``--rate`` frames per second per topic (by header stamp), into an image folder
that stage 1 trains on directly, plus a manifest::

    <out>/images/<topic>/<stamp_ns>.png
    <out>/manifest.json     {"frames": [{topic, stamp_ns, stamp, frame_id, file, width, height, encoding,
                                          channels, dtype, bag_time_ns}, ...], "counts": {...}}

With ``--labels-topic`` the ``ovsam_ros/msg/LabeledMaskArray`` messages a running
node recorded become COCO pseudo-labels (``<out>/pseudo_labels.json``) for the
extracted frames: each array is matched to its frame by (frame_id, stamp) (the
node copies the image header), masks are pasted back to full frames and
RLE-encoded, the label name becomes the category.

The output folder must be new or empty (``--overwrite`` replaces a previous extraction):
everything is written into a staging folder beside it and renamed into place at the end,
so a failure leaves no half-written output and the manifest lists exactly the files
there; stage 1 reads the manifest when one is present. Numeric options are checked
(finite, in range, ``--start`` before ``--end``) before the bag is opened. Raw Images and
CompressedImages follow one rule: 8-bit colour becomes BGR in ``--format``, 8-bit mono stays one
channel, 16-bit colour (``rgb16``, or a 16-bit PNG such as ``"rgb16; png compressed"``: a 12-bit
camera) is kept lossless as a 16-bit PNG whatever ``--format`` says, so stage 1 / 2 apply
``data.input_bits`` when they read it. A topic of depth / 16-bit mono / float frames (``16UC1``,
``mono16``, ``32FC1``, ``compressedDepth``; for a CompressedImage, what its format declares before
``;``, e.g. ``"16UC1; png compressed"``, or what it decodes to) is no training image: the command
refuses it at its first frame, naming the topic and encoding and the bag's other image topics
(``--depth keep`` / ``depth="keep"``, the library default, extracts it anyway); such frames are
kept lossless (16-bit PNG, 32-bit float TIFF), mono stays one channel; the manifest records each
frame's source ``encoding`` (``compressed:<format>`` for a CompressedImage), ``dtype`` and
``channels``, and stage 1 refuses a folder of such frames.

A bag cut short (recorder killed, power loss) is read up to the cut
(:mod:`training.data.bag_recovery`): every complete message is extracted, the loss is
reported (manifest ``bag_report``, a warning) and the exit status is 0; it is 2 only when
nothing is readable. A folder without ``metadata.yaml`` is read through its one bag file.

Bad input: a bag without a requested topic, or a topic of another type, is a
:class:`DataError` listing what the bag has; undecodable frames, arrays
without a matching frame, unlabeled or low-score instances are counted skips
(in the manifest's ``counts`` and the printed report).

    ovsam-extract-bag BAG --topic /camera/image_raw --rate 2 --out data/robot
    ovsam-train-stage1 --config stage1_tiny --set data.images=data/robot/images
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


from ..cli_parsers import extract_bag_parser
from .common import DataError, SkipReport, colour_topic_hint, depth_like, write_json
from .output_folder import check_out_not_input, check_replaceable

log = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
LABELS_TYPE = "ovsam_ros/msg/LabeledMaskArray"
OUR_MESSAGES = ("LabelScore", "LabeledMask", "LabeledMaskArray")
MANIFEST_FORMAT = "ovsam_ros.bag_extraction/1"
#: What an extraction writes into --out: --overwrite replaces a folder holding only these.
EXTRACTION_ENTRIES = ("images", "manifest.json", "pseudo_labels.json")


def _msg_dirs() -> List[Path]:
    """Where the ovsam_ros .msg files may live: the checkout, this install's share dir, the ament index."""
    from ovsam_ros.resources import share_dirs

    return [d / "msg" for d in share_dirs() if (d / "msg").is_dir()]


def ovsam_types() -> Dict[str, Any]:
    """rosbags type definitions of the ovsam_ros label messages (from the .msg files)."""
    from rosbags.typesys import get_types_from_msg

    for folder in _msg_dirs():
        if all((folder / f"{n}.msg").is_file() for n in OUR_MESSAGES):
            types: Dict[str, Any] = {}
            for n in OUR_MESSAGES:
                types.update(get_types_from_msg((folder / f"{n}.msg").read_text(encoding="utf-8"), f"ovsam_ros/msg/{n}"))
            return types
    return {}


def make_typestore(connections: Sequence[Any] = ()):
    """Typestore with the standard ROS 2 types, the bag's own definitions and ours."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.LATEST)
    extra: Dict[str, Any] = {}
    for conn in connections:
        msgdef = getattr(conn, "msgdef", None)
        if conn.msgtype in store.types or msgdef is None or not getattr(msgdef, "data", ""):
            continue
        try:
            extra.update(get_types_from_msg(msgdef.data, conn.msgtype))
        except Exception as err:  # IDL or unparsable definitions: our own files may still cover it
            log.debug("cannot parse the bag's definition of %s: %s", conn.msgtype, err)
    for name, fields in ovsam_types().items():
        extra.setdefault(name, fields)
    if extra:
        store.register(extra)
    return store


def topic_slug(topic: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", topic.strip("/")) or "root"
    return slug


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def declared_encoding(msg: Any, msgtype: str) -> str:
    """The pixel encoding a message says it carries: ``Image.encoding``, or the part of a
    ``CompressedImage.format`` before ``;`` (image_transport writes ``"rgb16; png compressed bgr16"``,
    ``"mono16; png compressed"``, ``"16UC1; compressedDepth png"``); ``""`` when a format names none
    (``"png"``, ``"jpeg"``). ovsam-extract-bag and ovsam-label decide "depth, refused" by it."""
    if msgtype == IMAGE_TYPE:
        return str(msg.encoding)
    fmt = str(msg.format)
    return fmt.split(";", 1)[0].strip() if ";" in fmt else ""


def source_encoding(msg: Any, msgtype: str) -> str:
    """What the manifest records as a frame's ``encoding``: ``Image.encoding`` or ``compressed:<format>``."""
    return str(msg.encoding) if msgtype == IMAGE_TYPE else f"compressed:{msg.format}"


def frame_for_file(msg: Any, msgtype: str, image_format: str) -> Tuple[np.ndarray, str, str]:
    """(pixels as cv2 writes them, source encoding, file suffix) of one frame.

    One rule for raw Images and CompressedImages (decoded with their own bit depth and channels):
    8-bit colour becomes BGR in ``image_format``; 8-bit mono stays one channel. Depth and other
    16-bit / float data are kept lossless whatever ``image_format`` says: 16-bit (``16UC1``,
    ``mono16``, ``rgb16``, a 16-bit PNG CompressedImage ...) as a 16-bit PNG, 32-bit float
    (``32FC1``) as a 32-bit float TIFF. (Before, 16UC1 depth became 8-bit RGB: 3500 mm -> 14, and
    a 12-bit ``rgb16; png compressed`` frame an 8-bit picture 16x too dark.)
    """
    from ovsam_ros.image_input import to_uint8_rgb
    from ovsam_ros.ros.image_conversion import compressed_to_numpy, image_to_numpy

    encoding = source_encoding(msg, msgtype)
    if msgtype == COMPRESSED_TYPE:
        pixels, _ = compressed_to_numpy(msg)  # cv2.imdecode: BGR(A) or mono, the file's own dtype
        bgr = True
    else:
        pixels = image_to_numpy(msg)
        bgr = encoding.startswith("bgr")
    if pixels.dtype == np.uint8 and pixels.ndim == 3:
        order = ("BGR" if bgr else "RGB") + ("A" if pixels.shape[2] == 4 else "")
        return np.ascontiguousarray(to_uint8_rgb(pixels, order)[:, :, ::-1]), encoding, image_format
    if pixels.ndim == 3 and not bgr:  # 16-bit / float colour: cv2 wants BGR(A) order
        pixels = pixels[:, :, [2, 1, 0, 3][:pixels.shape[2]]]
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels), encoding, image_format
    if pixels.dtype == np.uint16:
        return np.ascontiguousarray(pixels), encoding, "png"
    return np.ascontiguousarray(pixels.astype(np.float32, copy=False)), encoding, "tiff"


def check_numbers(rate: Optional[float], start: Optional[float], end: Optional[float],
                  min_score: Optional[float] = None) -> None:
    """The frame-selection options of ovsam-extract-bag and ovsam-label, checked before any bag is read."""
    import math

    for name, value in (("--rate", rate), ("--start", start), ("--end", end), ("--min-score", min_score)):
        if value is not None and not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if rate is not None and rate <= 0:
        raise ValueError(f"--rate must be > 0 frames per second, got {rate}")
    for name, value in (("--start", start), ("--end", end)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0 seconds after the bag start, got {value}")
    if start is not None and end is not None and start >= end:
        raise ValueError(f"--start {start} must be before --end {end} (both are seconds after the bag start)")


def prepare_output(out_dir: Path, overwrite: bool) -> Path:
    """Check ``out_dir`` and return an empty staging folder next to it.

    A non-empty ``out_dir`` is refused unless ``overwrite``: frames of an earlier extraction
    would otherwise stay next to a manifest that does not list them.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} exists and is not a folder")
    if overwrite:  # only an earlier extraction (or an empty folder) is replaced; checked again at the end
        check_replaceable(out_dir, "ovsam-extract-bag", "manifest.json", is_extraction, EXTRACTION_ENTRIES)
    elif out_dir.is_dir():
        entries = sorted(p.name for p in out_dir.iterdir())
        if entries:
            shown = ", ".join(entries[:5]) + (f" ... ({len(entries)} entries)" if len(entries) > 5 else "")
            raise DataError(f"--out {out_dir} is not empty ({shown}); pass --overwrite to replace it "
                            "(atomically, when the new extraction has finished), or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def is_extraction(folder: Path) -> bool:
    """Whether ``folder`` holds an ovsam-extract-bag output (its manifest says so)."""
    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT


def publish_output(staging: Path, out_dir: Path) -> None:
    """Put the finished ``staging`` folder in place of ``out_dir`` (renames, same file system). ``out_dir``
    is checked again (the extraction took a while): only an earlier extraction or an empty folder is replaced."""
    check_replaceable(out_dir, "ovsam-extract-bag", "manifest.json", is_extraction, EXTRACTION_ENTRIES)
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except OSError:
        if old is not None:
            os.replace(old, out_dir)  # put the previous extraction back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def extract_bag(
    bag: str,
    topics: Sequence[str],
    out: str,
    rate: Optional[float] = None,
    image_format: str = "png",
    start: Optional[float] = None,
    end: Optional[float] = None,
    labels_topic: Optional[str] = None,
    vocabulary: Any = None,
    min_score: float = 0.0,
    progress: bool = False,
    overwrite: bool = False,
    depth: str = "keep",
) -> Dict[str, Any]:
    """Extract frames (and optional pseudo-labels); returns the manifest dict (also written to disk).

    Everything is written into a staging folder next to ``out`` that replaces ``out`` only
    when the extraction has finished: a failure leaves no half-written output, and the
    manifest always lists exactly the frames in the folder. A non-empty ``out`` needs
    ``overwrite=True``. ``depth``: what a topic of depth / 16-bit mono / float frames does:
    ``"error"`` (:class:`DataError` at its first frame, naming the topic, its encoding and the
    bag's image topics: what ``ovsam-extract-bag`` does) or ``"keep"`` (extract it losslessly).
    """
    if not topics:
        raise ValueError("give at least one image topic")
    if depth not in ("error", "keep"):
        raise ValueError(f"depth must be 'error' or 'keep', got {depth!r}")
    check_numbers(rate, start, end, min_score)
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image format must be png or jpg, got {image_format!r}")
    bag_path = Path(os.path.expanduser(bag))
    if not bag_path.exists():
        raise FileNotFoundError(f"bag not found: {bag_path}")
    if vocabulary is not None:  # checked now, not after the whole bag was read
        from ovsam_ros.model.vocabulary import load_vocabulary

        load_vocabulary(vocabulary)
    final_dir = Path(os.path.expanduser(out))
    check_out_not_input(final_dir, [bag_path])
    staging = prepare_output(final_dir, overwrite)
    try:
        manifest = _extract(bag_path, topics, staging, final_dir, rate, image_format, start, end, labels_topic,
                            vocabulary, min_score, progress, depth)
        publish_output(staging, final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _cut(text: Any, limit: int = 80) -> str:
    """A string from the bag for a message, cut to ``limit`` characters (anyone can write any format string)."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _depth_refusal(bag_path: Path, topic: str, encoding: str, stored: Optional[str],
                   available: Dict[str, str]) -> DataError:
    others = [t for t, ty in available.items() if ty in (IMAGE_TYPE, COMPRESSED_TYPE) and t != topic]
    return DataError(
        f"{bag_path}: topic {topic} carries {encoding} frames{f' ({stored})' if stored else ''}: depth / 16-bit "
        "mono / float data, not camera pictures, so no training images for stage 1. For training images "
        + colour_topic_hint(others) + ". To extract this topic anyway (lossless 16-bit PNG / float TIFF), "
        "pass --depth keep")


def _extract(bag_path: Path, topics: Sequence[str], out_dir: Path, final_dir: Path, rate: Optional[float],
             image_format: str, start: Optional[float], end: Optional[float], labels_topic: Optional[str],
             vocabulary: Any, min_score: float, progress: bool, depth: str = "keep") -> Dict[str, Any]:
    import cv2

    from .bag_recovery import open_bag

    images_dir = out_dir / "images"
    skipped = SkipReport(str(bag_path))
    counts: Dict[str, Counter] = defaultdict(Counter)
    frames: List[Dict[str, Any]] = []
    label_msgs: Dict[Tuple[str, int], Any] = {}
    period = None if rate is None else 1e9 / float(rate)
    reader_cm, bag_report = open_bag(bag_path)
    if bag_report.recovered:
        log.warning("%s", bag_report.summary())
    try:
        reader = reader_cm
        available = {c.topic: c.msgtype for c in reader.connections}
        wanted = list(dict.fromkeys(topics))
        problems = []
        for t in wanted:
            if t not in available:
                problems.append(f"no topic {t!r}")
            elif available[t] not in (IMAGE_TYPE, COMPRESSED_TYPE):
                problems.append(f"topic {t!r} has type {available[t]}, not {IMAGE_TYPE} or {COMPRESSED_TYPE}")
        if labels_topic is not None:
            if labels_topic not in available:
                problems.append(f"no labels topic {labels_topic!r}")
            elif available[labels_topic] != LABELS_TYPE:
                problems.append(f"labels topic {labels_topic!r} has type {available[labels_topic]}, not {LABELS_TYPE}")
        if problems:
            have = "\n  ".join(f"{t} [{ty}]" for t, ty in sorted(available.items())) or "(no topics)"
            raise DataError(f"{bag_path}: " + "; ".join(problems) + f".\nThe bag has:\n  {have}")
        store = make_typestore(reader.connections)
        if labels_topic is not None and LABELS_TYPE not in store.types:
            raise DataError(f"{bag_path}: no message definition for {LABELS_TYPE} (not in the bag, and the "
                            "ovsam_ros msg/ folder was not found)")
        conns = [c for c in reader.connections if c.topic in wanted or c.topic == labels_topic]
        t0 = reader.start_time
        start_ns = None if start is None else t0 + int(start * 1e9)
        stop_ns = None if end is None else t0 + int(end * 1e9)
        last_kept: Dict[str, int] = {}
        used_names: Counter = Counter()
        total = sum(c.msgcount for c in conns)
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, desc="messages", unit="msg")
            except ImportError:
                bar = None
        for conn, bag_time, raw in reader.messages(connections=conns, start=start_ns, stop=stop_ns):
            if bar is not None:
                bar.update(1)
            topic = conn.topic
            try:
                msg = store.deserialize_cdr(raw, conn.msgtype)
            except Exception as err:
                skipped.add("undeserializable_message", f"{topic}@{bag_time}: {type(err).__name__}")
                counts[topic]["bad"] += 1
                continue
            if topic == labels_topic:
                label_msgs[(str(msg.header.frame_id), _stamp_ns(msg.header))] = msg
                counts[topic]["messages"] += 1
                continue
            counts[topic]["messages"] += 1
            stamp = _stamp_ns(msg.header)
            if stamp == 0:
                skipped.add("zero_header_stamp_used_bag_time", f"{topic}@{bag_time}")
                stamp = int(bag_time)
            last = last_kept.get(topic)
            if period is not None and last is not None and 0 <= stamp - last < period:
                counts[topic]["rate_limited"] += 1
                continue
            if depth == "error":  # by the declared encoding first: a compressedDepth frame may not even decode
                declared, source = declared_encoding(msg, conn.msgtype), source_encoding(msg, conn.msgtype)
                if depth_like(declared) or depth_like(source):
                    detail = None if conn.msgtype == IMAGE_TYPE else f"CompressedImage format {_cut(msg.format)!r}"
                    raise _depth_refusal(bag_path, topic, declared if depth_like(declared) else _cut(source), detail,
                                         available)
            try:
                pixels, encoding, suffix = frame_for_file(msg, conn.msgtype, image_format)
            except ValueError as err:
                skipped.add("undecodable_frame", f"{topic}@{stamp}: {err}")
                counts[topic]["bad"] += 1
                continue
            channels = 1 if pixels.ndim == 2 else int(pixels.shape[2])
            if depth == "error" and depth_like(encoding, pixels.dtype, channels):
                raise _depth_refusal(bag_path, topic, _cut(encoding), f"{pixels.dtype}, {channels} channel(s)", available)
            last_kept[topic] = stamp
            folder = images_dir / topic_slug(topic)
            folder.mkdir(parents=True, exist_ok=True)
            base = f"{stamp:019d}"
            n = used_names[(topic, base)]
            used_names[(topic, base)] += 1
            name = f"{base}{'_' + str(n) if n else ''}.{suffix}"
            path = folder / name
            params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix == "jpg" else []
            if not cv2.imwrite(str(path), pixels, params):
                raise DataError(f"cannot write {path}")
            frames.append({
                "topic": topic, "stamp_ns": stamp, "stamp": stamp / 1e9, "frame_id": str(msg.header.frame_id),
                "file": str(path.relative_to(out_dir)), "width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
                "encoding": encoding, "channels": 1 if pixels.ndim == 2 else int(pixels.shape[2]),
                "dtype": str(pixels.dtype), "bag_time_ns": int(bag_time),
            })
            counts[topic]["kept"] += 1
        if bar is not None:
            bar.close()
    finally:
        reader_cm.close()

    for t in wanted:
        if counts[t]["kept"] == 0:
            log.warning("%s: topic %s gave no frames in the selected time range", bag_path, t)
    manifest: Dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "bag": str(bag_path), "topics": wanted, "rate": rate, "image_root": "images",
        "frames": frames, "counts": {t: dict(c) for t, c in counts.items()}, "skipped": skipped.to_dict(),
        "bag_report": bag_report.to_dict(),
    }
    if labels_topic is not None:
        written = write_pseudo_labels(out_dir, frames, label_msgs, vocabulary, min_score, skipped)
        manifest["pseudo_labels"] = str(final_dir / Path(written).name)
        manifest["skipped"] = skipped.to_dict()
    write_json(out_dir / "manifest.json", manifest, indent=1)
    return manifest


def write_pseudo_labels(out_dir: Path, frames: List[Dict[str, Any]], label_msgs: Dict[Tuple[str, int], Any],
                        vocabulary: Any, min_score: float, skipped: SkipReport) -> str:
    """COCO JSON of the node's LabeledMaskArray outputs for the extracted frames."""
    from ovsam_ros.model.vocabulary import clean_name, load_vocabulary
    from ovsam_ros.results import encode_rle
    from ovsam_ros.ros.messages import mask_from_msg

    vocab = load_vocabulary(vocabulary) if vocabulary is not None else None
    matched = set()
    names: Dict[str, int] = {}
    if vocab is not None:
        names = {name: i + 1 for i, name in enumerate(vocab.classes)}
    images, annotations = [], []
    ann_id = 1
    for image_id, frame in enumerate(frames, start=1):
        key = (frame["frame_id"], frame["stamp_ns"])
        msg = label_msgs.get(key)
        if msg is None:
            continue
        matched.add(key)
        h, w = frame["height"], frame["width"]
        if (int(msg.image_height), int(msg.image_width)) != (h, w):
            skipped.add("labels_for_other_image_size", f"{frame['file']}: {msg.image_width}x{msg.image_height}")
            continue
        images.append({"id": image_id, "file_name": os.path.relpath(frame["file"], "images"), "height": h, "width": w,
                       "stamp_ns": frame["stamp_ns"], "frame_id": frame["frame_id"], "topic": frame["topic"]})
        for inst in msg.instances:
            label = clean_name(inst.label)
            if int(inst.class_index) < 0 or not label:
                skipped.add("unlabeled_instance", f"{frame['file']}#{inst.instance_id}")
                continue
            if float(inst.score) < min_score:
                skipped.add("low_score_instance", f"{frame['file']}#{inst.instance_id}")
                continue
            if vocab is not None:
                index = vocab.find(label)
                if index is None:
                    skipped.add("label_not_in_vocabulary", f"{frame['file']}#{inst.instance_id}: {label!r}")
                    continue
                label = vocab.classes[index]
            elif label not in names:
                names[label] = len(names) + 1
            try:
                mask = mask_from_msg(inst, h, w)
            except ValueError as err:
                skipped.add("bad_mask", f"{frame['file']}#{inst.instance_id}: {err}")
                continue
            if not mask.any():
                skipped.add("empty_mask", f"{frame['file']}#{inst.instance_id}")
                continue
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": names[label],
                                "segmentation": encode_rle(mask), "area": int(mask.sum()),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0, "score": float(inst.score),
                                "instance_id": int(inst.instance_id)})
            ann_id += 1
    for key in label_msgs:
        if key not in matched:
            skipped.add("labels_without_extracted_frame", f"{key[0]}@{key[1]}")
    categories = [{"id": i, "name": n, "split": "base"} for n, i in sorted(names.items(), key=lambda kv: kv[1])]
    path = out_dir / "pseudo_labels.json"
    write_json(path, {"info": {"description": "ovsam_ros pseudo-labels from LabeledMaskArray"},
                      "images": images, "annotations": annotations, "categories": categories})
    return str(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = extract_bag_parser()
    args = parser.parse_args(argv)
    if args.start is not None and args.end is not None and args.start >= args.end:
        parser.error(f"--start {args.start} must be before --end {args.end}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = extract_bag(args.bag, args.topic, args.out, args.rate, args.format, args.start, args.end,
                               args.labels_topic, args.vocabulary, args.min_score, args.progress, args.overwrite,
                               depth=args.depth)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"ovsam-extract-bag: error: {err}", file=sys.stderr)
        return 2
    for topic, c in manifest["counts"].items():
        print(f"{topic}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    print(f"{len(manifest['frames'])} frame(s) -> {os.path.join(args.out, 'images')}")
    print(f"manifest -> {os.path.join(args.out, 'manifest.json')}")
    if "pseudo_labels" in manifest:
        print(f"pseudo-labels -> {manifest['pseudo_labels']}")
    if manifest["bag_report"]["recovered"]:
        from .bag_recovery import BagReport

        print("WARNING: " + BagReport(**manifest["bag_report"]).summary(), file=sys.stderr)
    sk = manifest["skipped"]["counts"]
    if sk:
        print("skipped: " + ", ".join(f"{n} {k}" for k, n in sorted(sk.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
