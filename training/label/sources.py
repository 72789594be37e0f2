"""Inputs -> frames: which messages of which bags (and which image files) get labelled.

The selection follows ``ovsam-extract-bag``: image topics (``sensor_msgs/Image`` or
``CompressedImage``), at most ``rate`` frames per second per topic by header stamp (a zero
stamp falls back to the bag time), ``start`` / ``end`` in seconds after the bag start; cut
bags are read up to the cut (:func:`training.data.bag_recovery.open_bag`). Planning reads each
bag once and decodes no pixels, so the plan (and so every shard) is the same whoever runs it.

Pixels become 8-bit RGB by the package's one range rule (:mod:`ovsam_ros.image_input`, the
node's decode path): 16-bit data holds ``input_bits`` bits, floats are 0..``float_max``.
Topics of depth / float data (16UC1, 32FC1, compressedDepth ...) are refused, and so are mono16
topics (raw, or a ``"mono16; png compressed"`` CompressedImage) unless ``mono16`` is set: 16-bit
mono is a 12-bit machine-vision camera's picture as often as an IR / range image, so it is
labelled once the user says how many bits hold the picture (``--input-bits``).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from training.data.common import IMAGE_EXTENSIONS, DataError, colour_topic_hint, depth_like
from training.data.rosbag import (COMPRESSED_TYPE, IMAGE_TYPE, check_numbers, declared_encoding, make_typestore,
                                  topic_slug)

#: Frame key inside a bag: (topic, bag time ns, n-th message of that topic at that bag time).
BagKey = Tuple[str, int, int]


@dataclass
class Frame:
    """One planned frame: a bag message or an image file, and the file name it gets in the output."""

    source: int  # index into the plan's sources
    file: str  # output path relative to <out>/images
    topic: str = ""
    bag_time_ns: int = 0
    occurrence: int = 0  # n-th message of this topic at this bag time
    stamp_ns: int = 0
    frame_id: str = ""
    path: str = ""  # image-folder frames: the input file

    def key(self) -> BagKey:
        return (self.topic, self.bag_time_ns, self.occurrence)


@dataclass
class SourcePlan:
    kind: str  # "bag" | "folder"
    path: str  # absolute
    slug: str  # folder name in the output
    frames: List[Frame] = field(default_factory=list)
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)  # per topic: messages, rate_limited, ...
    bag_report: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "slug": self.slug, "counts": self.counts,
                "bag_report": self.bag_report, "frames": [asdict(f) for f in self.frames]}

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "SourcePlan":
        return SourcePlan(d["kind"], d["path"], d["slug"], [Frame(**f) for f in d["frames"]], d["counts"],
                          d.get("bag_report"))


def is_bag(path: Path) -> bool:
    """A rosbag2 (folder with metadata.yaml, or a .mcap / .db3 file, or a folder holding one)."""
    if path.is_file():
        return path.suffix in (".mcap", ".db3")
    if (path / "metadata.yaml").is_file():
        return True
    return path.is_dir() and any(p.suffix in (".mcap", ".db3") for p in path.iterdir())


def _slugs(paths: Sequence[Path]) -> List[str]:
    """Output folder per input: its name, made unique in input order (two bags both named 'run1')."""
    used: Counter = Counter()
    out = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.stem if p.is_file() else p.name) or "input"
        used[base] += 1
        out.append(base if used[base] == 1 else f"{base}_{used[base]}")
    return out


def plan_sources(inputs: Sequence[str], topics: Sequence[str], rate: Optional[float] = None,
                 start: Optional[float] = None, end: Optional[float] = None,
                 mono16: bool = False) -> List[SourcePlan]:
    """Every input's frames, in input order (bags: in bag order; folders: sorted file names).

    ``mono16``: label mono16 topics (refused otherwise, naming ``--input-bits``)."""
    check_numbers(rate, start, end)
    paths = [Path(os.path.expanduser(p)) for p in inputs]
    if not paths:
        raise ValueError("give at least one bag or image folder")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
    bags = [is_bag(p) for p in paths]
    if any(bags) and not topics:
        raise ValueError("bags need --topic (the camera image topic(s) to label)")
    plans = []
    for p, slug, bag in zip(paths, _slugs(paths), bags):
        if bag:
            plans.append(_plan_bag(p, slug, topics, rate, start, end, mono16))
        elif p.is_dir():
            plans.append(_plan_folder(p, slug))
        else:
            raise DataError(f"{p}: neither a rosbag2 (.mcap / .db3 / folder with metadata.yaml) nor an image folder")
    return plans


def _plan_folder(path: Path, slug: str) -> SourcePlan:
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    frames = [Frame(source=-1, file=f"{slug}/{f.relative_to(path).with_suffix('.png').as_posix()}", path=str(f))
              for f in files]
    return SourcePlan("folder", str(path.resolve()), slug, frames, {"": {"messages": len(files)}})


def _refusal(path: Path, topic: str, declared: str, encoding: str, available: Dict[str, str],
             mono16: bool) -> Optional[str]:
    """Why ``topic``'s frames are no pictures to label, or None (``mono16``: mono16 is labelled)."""
    is_mono16 = encoding.strip().lower() == "mono16"
    if (is_mono16 and mono16) or not (is_mono16 or depth_like(encoding) or depth_like(declared)):
        return None
    others = [t for t, ty in available.items() if ty in (IMAGE_TYPE, COMPRESSED_TYPE) and t != topic]
    if is_mono16:
        return (f"{path}: topic {topic} carries {declared} frames: 16-bit mono is an IR / range / depth image as "
                "often as a camera's picture. If it is a camera (a 12-bit or 10-bit machine-vision camera), say how "
                "many of the 16 bits hold the picture with --input-bits (12, 10, or 16 for full-range data); "
                "otherwise label " + colour_topic_hint(others))
    return (f"{path}: topic {topic} carries {declared} frames: depth / 16-bit mono / float data, not camera "
            "pictures, so nothing to label. Label " + colour_topic_hint(others))


def _plan_bag(path: Path, slug: str, topics: Sequence[str], rate: Optional[float], start: Optional[float],
              end: Optional[float], mono16: bool = False) -> SourcePlan:
    from training.data.bag_recovery import open_bag

    reader, report = open_bag(path)
    plan = SourcePlan("bag", str(path.resolve()), slug, bag_report=report.to_dict())
    try:
        available = {c.topic: c.msgtype for c in reader.connections}
        wanted = list(dict.fromkeys(topics))
        problems = [f"no topic {t!r}" if t not in available else
                    f"topic {t!r} has type {available[t]}, not {IMAGE_TYPE} or {COMPRESSED_TYPE}"
                    for t in wanted if available.get(t) not in (IMAGE_TYPE, COMPRESSED_TYPE)]
        if problems:
            have = "\n  ".join(f"{t} [{ty}]" for t, ty in sorted(available.items())) or "(no topics)"
            raise DataError(f"{path}: " + "; ".join(problems) + f".\nThe bag has:\n  {have}")
        store = make_typestore(reader.connections)
        conns = [c for c in reader.connections if c.topic in wanted]
        t0 = reader.start_time
        start_ns = None if start is None else t0 + int(start * 1e9)
        stop_ns = None if end is None else t0 + int(end * 1e9)
        period = None if rate is None else 1e9 / float(rate)
        counts: Dict[str, Counter] = {t: Counter() for t in wanted}
        last_kept: Dict[str, int] = {}
        seen: Counter = Counter()
        names: Counter = Counter()
        for conn, bag_time, raw in reader.messages(connections=conns, start=start_ns, stop=stop_ns):
            topic = conn.topic
            occurrence = seen[(topic, bag_time)]
            seen[(topic, bag_time)] += 1
            counts[topic]["messages"] += 1
            try:
                msg = store.deserialize_cdr(raw, conn.msgtype)
            except Exception:  # counted; the labelling pass never sees it
                counts[topic]["undeserializable"] += 1
                continue
            declared = str(msg.encoding) if conn.msgtype == IMAGE_TYPE else f"compressed:{msg.format}"
            why = _refusal(path, topic, declared, declared_encoding(msg, conn.msgtype), available, mono16)
            if why:
                raise DataError(why)
            stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
            if stamp == 0:
                counts[topic]["zero_header_stamp_used_bag_time"] += 1
                stamp = int(bag_time)
            last = last_kept.get(topic)
            if period is not None and last is not None and 0 <= stamp - last < period:
                counts[topic]["rate_limited"] += 1
                continue
            last_kept[topic] = stamp
            base = f"{slug}/{topic_slug(topic)}/{stamp:019d}"
            n = names[base]
            names[base] += 1
            plan.frames.append(Frame(source=-1, file=f"{base}{'_' + str(n) if n else ''}.png", topic=topic,
                                     bag_time_ns=int(bag_time), occurrence=occurrence, stamp_ns=stamp,
                                     frame_id=str(msg.header.frame_id)))
            counts[topic]["selected"] += 1
        plan.bag_report = report.to_dict()  # again: damage found while reading (lost pages) is only known now
        plan.counts = {t: dict(c) for t, c in counts.items()}
    finally:
        reader.close()
    return plan


def read_frames(plan: SourcePlan, frames: Sequence[Frame], input_bits: int = 16,
                float_max: float = 1.0) -> Iterator[Tuple[Frame, Optional[np.ndarray], str]]:
    """(frame, RGB uint8 pixels or None, why not) for ``frames`` of one source, in order.

    16-bit pixels hold ``input_bits`` bits, float pixels are 0..``float_max`` (the node's rule;
    a frame that looks mis-scaled is converted and warned about, rate-limited per topic / folder)."""
    if plan.kind == "folder":
        from training.data.common import read_image

        for f in frames:
            try:
                yield f, read_image(f.path, input_bits, float_max), ""
            except (DataError, FileNotFoundError) as err:
                yield f, None, f"undecodable_image: {err}"
        return
    from ovsam_ros.ros.frames import decode_frame
    from training.data.bag_recovery import open_bag

    wanted = {f.key(): f for f in frames}
    if not wanted:
        return
    reader, _ = open_bag(Path(plan.path))
    try:
        topics = {f.topic for f in frames}
        conns = [c for c in reader.connections if c.topic in topics]
        store = make_typestore(reader.connections)
        lo = min(f.bag_time_ns for f in frames)
        hi = max(f.bag_time_ns for f in frames) + 1
        seen: Counter = Counter()
        found: Dict[BagKey, Tuple[Optional[np.ndarray], str]] = {}
        for conn, bag_time, raw in reader.messages(connections=conns, start=lo, stop=hi):
            key = (conn.topic, int(bag_time), seen[(conn.topic, bag_time)])
            seen[(conn.topic, bag_time)] += 1
            if key not in wanted:
                continue
            try:
                rgb = decode_frame(store.deserialize_cdr(raw, conn.msgtype), conn.msgtype == COMPRESSED_TYPE,
                                   input_bits=input_bits, float_max=float_max, source=f"{plan.path} {conn.topic}")
                found[key] = (rgb, "")
            except Exception as err:  # a corrupt frame is a counted skip, never the end of the run
                found[key] = (None, f"undecodable_frame: {type(err).__name__}: {err}")
    finally:
        reader.close()
    for f in frames:
        rgb, why = found.get(f.key(), (None, "frame_not_found_on_reread"))
        yield f, rgb, why
