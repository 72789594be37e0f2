"""``ovsam weights download``: every weight file a model needs, from its published sources (or a
mirror), verified against the sha256 its publisher states, renamed into place only when complete.

Rules, in the order they apply to each file:

* present at its path: kept (never overwritten); its sha256 is compared with the published one (or
  the folder's ``SHA256SUMS``) and a difference is a failure that names both sums;
* no entry in the sources table: a failure naming the file and the table;
* otherwise the sources in order (or only the mirror): each try resumes a partial file from the
  same source; interrupted transfers, timeouts and server errors are retried; a wrong checksum
  deletes the download and moves on to the next source.

The expected sha256 of a download: the one the server states in the source's header (Hugging
Face), else the one stated for the source (OpenAI's URL) or the file (the table); from a mirror,
any published one or the mirror's own ``SHA256SUMS`` line. No stated sum: the file is kept
unverified, and the report says so."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ovsam_ros.weights import transfer
from ovsam_ros.weights.checksums import file_sha256, parse_sums, read_sums, record_sums, sum_matches
from ovsam_ros.weights.sources import FileEntry, Source, SourceTable, check_sha256, mirror_folder, mirror_source
from ovsam_ros.weights.transfer import ChecksumMismatch, Interrupted, WeightsError, size_text

Say = Callable[[str], None]


@dataclass
class Outcome:
    """What happened to one file: ``present`` | ``downloaded`` | ``failed``."""

    key: str
    dest: Path
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("present", "downloaded")


@dataclass
class Options:
    mirror: Optional[str] = None
    retries: int = 3
    timeout: float = 30.0
    progress: bool = True
    retry_delay: float = 1.0  # seconds before the first retry; doubled each time, at most 10 s


def download_files(files: list[tuple[str, Path]], table: SourceTable, options: Options, say: Say, fail: Say) -> list[Outcome]:
    """Fetch each (YAML key, destination) that is not there yet; ``say`` gets progress lines,
    ``fail`` one line per failure."""
    mirror_sums = _mirror_sums(options.mirror, options.timeout, fail) if options.mirror else {}
    outcomes = []
    for key, dest in files:
        entry = table.get(dest.name)
        if dest.is_file():
            outcomes.append(_present(key, dest, entry, say, fail))
        elif entry is None:
            trained = " (a training output: README 'Training')" if key == "ovsam_checkpoint" else ""
            fail(f"{dest.name} (model.{key}): no published source in {table.path}; put the file at {dest} "
                 f"yourself{trained}")
            outcomes.append(Outcome(key, dest, "failed", "no source"))
        else:
            outcomes.append(_fetch_entry(key, dest, entry, options, mirror_sums, say, fail))
    return outcomes


def _present(key: str, dest: Path, entry: Optional[FileEntry], say: Say, fail: Say) -> Outcome:
    """A file already at its path: checked, never replaced."""
    published = entry.published_sums() if entry else []
    recorded = read_sums(dest.parent).get(dest.name)
    if not published and not recorded:
        say(f"{dest.name}: present ({size_text(dest.stat().st_size)}); no published sha256 to compare")
        return Outcome(key, dest, "present")
    actual = file_sha256(dest)
    for sha, where in published + ([(recorded, f"{dest.parent}/SHA256SUMS")] if recorded else []):
        if sum_matches(actual, sha):
            say(f"{dest.name}: present ({size_text(dest.stat().st_size)}), sha256 matches {where}")
            return Outcome(key, dest, "present")
    expected = " or ".join(f"{sha} ({where})" for sha, where in published) or f"{recorded} ({dest.parent}/SHA256SUMS)"
    fail(f"{dest.name}: present at {dest} but its sha256 {actual} differs from {expected}; "
         "move it away and run again to fetch the published file")
    return Outcome(key, dest, "failed", "differs")


def _fetch_entry(key: str, dest: Path, entry: FileEntry, options: Options, mirror_sums: dict[str, str],
                 say: Say, fail: Say) -> Outcome:
    sources = [mirror_source(options.mirror, entry.name)] if options.mirror else entry.sources()
    if entry.what:
        say(f"{entry.name}: {entry.what}")
    for source in sources:
        say(f"{entry.name}: fetching from {source.url}")
        for attempt in range(1, options.retries + 2):
            try:
                fetched = transfer.fetch(source.url, dest, timeout=options.timeout, progress=options.progress,
                                         sha256_header=source.sha256_header)
                how = _verify(fetched, entry, source, mirror_sums if options.mirror else None)
                transfer.finish(fetched, dest)
                record_sums(dest.parent, [(dest.name, fetched.sha256)])
                resumed = f", resumed at {size_text(fetched.resumed_from)}" if fetched.resumed_from else ""
                say(f"{entry.name}: done, {size_text(fetched.size)}{resumed}; {how}")
                return Outcome(key, dest, "downloaded", how)
            except ChecksumMismatch as error:
                transfer.discard(dest)
                fail(f"{entry.name}: {error}")
                break  # the same source would send the same bytes: next source
            except WeightsError as error:
                if error.retryable and attempt <= options.retries:
                    delay = min(options.retry_delay * 2 ** (attempt - 1), 10.0)
                    fail(f"{entry.name}: {error}; retry {attempt} of {options.retries} in {delay:.0f} s")
                    time.sleep(delay)
                    continue
                kept = transfer.part_paths(dest)[0]
                resume = "; the partial file is kept: run the same command again to resume" if (
                    isinstance(error, Interrupted) and kept.exists()) else ""
                fail(f"{entry.name}: {error}{resume}")
                break
    return Outcome(key, dest, "failed")


def _verify(fetched: transfer.Fetched, entry: FileEntry, source: Source,
            mirror_sums: Optional[dict[str, str]]) -> str:
    """Raise ChecksumMismatch (naming both sums) unless the download matches what is stated for it;
    returns how it was verified, for the report."""
    expected = _expected(fetched, entry, source, mirror_sums)
    if not expected:
        return f"sha256 {fetched.sha256} (no published sum to compare; recorded in SHA256SUMS)"
    for sha, where in expected:
        if sum_matches(fetched.sha256, sha):
            return f"sha256 verified against {where}"
    stated = " or ".join(f"{sha} ({where})" for sha, where in expected)
    raise ChecksumMismatch(f"checksum mismatch: expected sha256 {stated}, got {fetched.sha256} from {source.url}; "
                           f"the download was deleted")


def _expected(fetched: transfer.Fetched, entry: FileEntry, source: Source,
              mirror_sums: Optional[dict[str, str]]) -> list[tuple[str, str]]:
    if mirror_sums is not None:  # a mirror's copy: any published sum, or the mirror's own record of it
        sums = entry.published_sums()
        recorded = mirror_sums.get(entry.name)
        if recorded and recorded not in [s for s, _ in sums]:
            sums.append((recorded, "the mirror's SHA256SUMS"))
        return sums
    if source.sha256_header:
        stated = _header_sha256(fetched.header_sums.get(source.sha256_header))
        if stated:
            return [(stated, f"the {source.sha256_header} header of {transfer.host(source.url)}")]
    if source.sha256:
        return [(source.sha256, source.sha256_from)]
    return [(entry.sha256, entry.sha256_from)] if entry.sha256 else []


def _header_sha256(value: Optional[str]) -> Optional[str]:
    """A sha256 from an ETag-style header (``"<hex>"``, ``W/"<hex>"``); None when it is not one
    (a git blob id, say)."""
    if not value:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    try:
        return check_sha256(text.strip().strip('"'), "header")
    except ValueError:
        return None


def _mirror_sums(mirror: str, timeout: float, fail: Say) -> dict[str, str]:
    """The mirror's SHA256SUMS (a copied weights folder carries the one downloads wrote)."""
    if mirror.startswith(("http://", "https://")):
        try:
            text = transfer.read_small(mirror.rstrip("/") + "/SHA256SUMS", timeout)
        except WeightsError as error:
            fail(f"SHA256SUMS of the mirror: {error}")
            return {}
        return parse_sums(text or "")
    return read_sums(mirror_folder(mirror))
