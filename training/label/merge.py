"""Finished shard files -> ``labels.json`` (COCO), ``data_report.json``; the same for any number of processes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from training.data.common import DataError, write_json

from .coco_writer import build_coco
from .shards import Shard, ShardStore
from .sources import SourcePlan

LABELS_FILE = "labels.json"
REPORT_FILE = "data_report.json"


def merge(out: Path, sources: Sequence[SourcePlan], shards: Sequence[Shard], class_names: Sequence[str],
          key: str, info: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Read every shard (all must be finished), write labels.json and data_report.json; return both."""
    store = ShardStore(out)
    records: List[Dict[str, Any]] = []
    per_source: Dict[int, Dict[str, Counter]] = {i: {"frames": Counter(), "skipped": Counter(),
                                                     "instances": Counter()} for i in range(len(sources))}
    for sh in shards:
        data = store.read_shard(sh)
        if data is None or data.get("fingerprint") != key:
            raise DataError(f"shard {sh.id} is not finished ({store.shard_file(sh)}); run ovsam-label again "
                            "with the same arguments to finish it")
        if list(data["stats"].get("classes", [])) != list(class_names):
            raise DataError(f"shard {sh.id} was labelled with other classes ({data['stats'].get('classes')}) than "
                            f"{list(class_names)}")
        tally = per_source[sh.source]
        for f in data["frames"]:
            tally["frames"]["planned"] += 1
            if f.get("skipped"):
                tally["skipped"][f["skipped"].split(":")[0]] += 1
                continue
            tally["frames"]["labelled"] += 1
            for name, n in f["drops"].items():
                tally["instances"][name] += n
            if not (out / "images" / f["file"]).is_file():
                raise DataError(f"shard {sh.id}: frame file {f['file']} is missing from {out / 'images'}")
            records.append({**f, "source": sources[sh.source].path})
    coco = build_coco(records, class_names, info)
    report_sources = []
    totals: Dict[str, Counter] = {"frames": Counter(), "skipped": Counter(), "instances": Counter()}
    for i, plan in enumerate(sources):
        tally = per_source[i]
        read = Counter()
        for c in plan.counts.values():
            read.update(c)
        entry = {"path": plan.path, "kind": plan.kind, "slug": plan.slug, "read": dict(sorted(read.items())),
                 "per_topic": plan.counts, "frames": dict(tally["frames"]),
                 "skipped_frames": dict(sorted(tally["skipped"].items())),
                 "instances": dict(sorted(tally["instances"].items())), "bag_report": plan.bag_report}
        report_sources.append(entry)
        for k in totals:
            totals[k].update(tally[k])
        for reason in ("rate_limited", "undeserializable"):
            if read.get(reason):
                totals["skipped"][reason] += read[reason]
    instances = dict(sorted(totals["instances"].items()))
    report = {
        "frames_read": sum(sum(c.get("messages", 0) for c in p.counts.values()) for p in sources),
        "frames_labelled": totals["frames"]["labelled"],
        "frames_skipped": dict(sorted(totals["skipped"].items())),
        "instances_kept": instances.get("labelled_instances", 0),
        "instances_dropped": {k: v for k, v in instances.items()
                              if k not in ("labelled_instances", "candidates", "kept")},
        "instances": instances,
        "sources": report_sources,
        "notes": ["frames_skipped.rate_limited / undeserializable come from the frame selection; a frame with a "
                  "zero header stamp is labelled under its bag time (sources[].read.zero_header_stamp_used_bag_time); "
                  "instances_dropped counts each candidate mask at the first filter that removed it"],
    }
    write_json(out / LABELS_FILE, coco)
    write_json(out / REPORT_FILE, report, indent=1)
    return coco, report
