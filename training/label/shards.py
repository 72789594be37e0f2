"""The plan cut into shards, and one atomic result file per shard.

A shard is (source, a run of consecutive planned frames): its id, content and output file
depend only on the plan, never on the number of processes, so a merged dataset is the same
for 1 or N ranks. Shard ``i`` goes to rank ``i % world_size``. A shard is finished when its
result file exists (written last, atomically, after its frames): a rank killed at any moment
leaves finished shards intact and the rest redone on the next run, never half of one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from training.data.common import write_json

from .sources import Frame, SourcePlan

STATE_DIR = ".label"  # plan and shard files, inside the output folder
SHARD_FORMAT = "ovsam_ros.label_shard/1"


@dataclass(frozen=True)
class Shard:
    id: str
    source: int
    start: int  # frame range [start, stop) in the source's planned frames
    stop: int


def make_shards(sources: Sequence[SourcePlan], shard_size: int) -> List[Shard]:
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1 frame, got {shard_size}")
    shards = []
    for s, plan in enumerate(sources):
        for k, start in enumerate(range(0, len(plan.frames), shard_size)):
            shards.append(Shard(f"{s:04d}-{plan.slug}-{k:05d}", s, start, min(start + shard_size, len(plan.frames))))
    return shards


def shards_of_rank(shards: Sequence[Shard], rank: int, world_size: int) -> List[Shard]:
    return [sh for i, sh in enumerate(shards) if i % world_size == rank]


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


class ShardStore:
    """``<out>/.label/``: ``plan.json`` and ``shards/<id>.json``."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.root = self.out / STATE_DIR
        self.plan_file = self.root / "plan.json"

    def shard_file(self, shard: Shard) -> Path:
        return self.root / "shards" / f"{shard.id}.json"

    def read_plan(self) -> Optional[Dict[str, Any]]:
        if not self.plan_file.is_file():
            return None
        return json.loads(self.plan_file.read_text(encoding="utf-8"))

    def write_plan(self, plan: Dict[str, Any]) -> None:
        write_json(self.plan_file, plan)

    def finished(self, shard: Shard, key: str) -> bool:
        """Whether ``shard`` has a result for the run fingerprint ``key``."""
        data = self.read_shard(shard)
        return data is not None and data.get("fingerprint") == key

    def read_shard(self, shard: Shard) -> Optional[Dict[str, Any]]:
        path = self.shard_file(shard)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # cannot happen with atomic writes; redo the shard rather than trust it
        return data if isinstance(data, dict) and data.get("format") == SHARD_FORMAT else None

    def write_shard(self, shard: Shard, key: str, frames: List[Dict[str, Any]], stats: Dict[str, Any]) -> None:
        write_json(self.shard_file(shard), {"format": SHARD_FORMAT, "shard": shard.id, "fingerprint": key,
                                            "frames": frames, "stats": stats})


def frames_of(sources: Sequence[SourcePlan], shard: Shard) -> List[Frame]:
    return sources[shard.source].frames[shard.start:shard.stop]
