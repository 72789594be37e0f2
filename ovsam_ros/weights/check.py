"""``ovsam weights check``: each weight file a model needs, present or missing, its size and its
sha256 against the published one (or the folder's ``SHA256SUMS``, written when it was downloaded).

A file is a problem when it is missing, or when its size or sha256 differs from what its publisher
states (and from what SHA256SUMS recorded); a file with no stated sum is reported, not failed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ovsam_ros.weights.checksums import file_sha256, read_sums, sum_matches
from ovsam_ros.weights.sources import SourceTable
from ovsam_ros.weights.transfer import size_text

PROBLEMS = ("missing", "differs")


@dataclass
class Row:
    key: str
    path: Path
    state: str  # missing | ok | differs | unchecked
    size: Optional[int] = None
    sha256: Optional[str] = None
    note: str = ""

    @property
    def problem(self) -> bool:
        return self.state in PROBLEMS


def check_files(files: list[tuple[str, Path]], table: SourceTable, hash_files: bool = True) -> list[Row]:
    rows = []
    for key, path in files:
        entry = table.get(path.name)
        if not path.is_file():
            note = "" if entry else f"no published source in {table.path}" + (
                " (a training output: README 'Training')" if key == "ovsam_checkpoint" else "")
            rows.append(Row(key, path, "missing", note=note))
            continue
        size = path.stat().st_size
        if entry is not None and entry.size is not None and size != entry.size:
            rows.append(Row(key, path, "differs", size, note=f"size {size} bytes, published {entry.size} "
                                                             f"({entry.sha256_from})"))
            continue
        if not hash_files:
            rows.append(Row(key, path, "unchecked", size, note="sha256 not computed (--no-hash)"))
            continue
        rows.append(_compare(key, path, size, file_sha256(path), entry.published_sums() if entry else [],
                             read_sums(path.parent).get(path.name)))
    return rows


def _compare(key: str, path: Path, size: int, actual: str, published: list[tuple[str, str]],
             recorded: Optional[str]) -> Row:
    for sha, where in published:
        if sum_matches(actual, sha):
            return Row(key, path, "ok", size, actual, f"matches {where}")
    if recorded and sum_matches(actual, recorded):
        # Recorded by a download that verified it against what its server stated (or, where nothing
        # was stated, the bytes it received): unchanged since.
        return Row(key, path, "ok", size, actual, "matches SHA256SUMS (recorded when it was downloaded)")
    if published:
        stated = " or ".join(f"{sha} ({where})" for sha, where in published)
        return Row(key, path, "differs", size, actual, f"published: {stated}")
    if recorded:
        return Row(key, path, "differs", size, actual, f"SHA256SUMS recorded {recorded} when it was downloaded")
    return Row(key, path, "unchecked", size, actual, "no published sha256 to compare")


def report(rows: list[Row], say: Callable[[str], None]) -> None:
    width = max((len(f"model.{r.key}") for r in rows), default=0)
    for row in rows:
        size = size_text(row.size) if row.size is not None else "-"
        say(f"  {('model.' + row.key).ljust(width)}  {row.state.upper() if row.problem else row.state:<9}  "
            f"{size:>8}  {row.path}")
        if row.sha256:
            say(f"  {'':{width}}  sha256 {row.sha256}  {row.note}")
        elif row.note:
            say(f"  {'':{width}}  {row.note}")
