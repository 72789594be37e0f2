"""Open a rosbag2 for reading, recovering what a cut recording still holds.

A recorder killed by a power loss or ``kill -9`` (the common case on robots) leaves a bag
that ``rosbags`` refuses: an MCAP file without its summary and footer ("File end magic is
invalid"), an SQLite file whose last pages are missing ("database disk image is
malformed"), and usually no ``metadata.yaml`` (rosbag2 writes it when the recording ends).

:func:`open_bag` tries the normal reader first. When that fails it recovers every complete
message before the cut:

* MCAP: ``rosbags``' own sequential scanner (``McapReader.meta_scan`` / ``messages_scan``,
  the code path for files without a summary) runs up to the end of the last complete
  record; the bytes after it are reported as lost.
* SQLite3: Python's ``sqlite3`` reads the ``messages`` rows in id order; rows on pages that
  are gone are skipped one by one (rosbag2 numbers rows 1..N, so the gap is the loss).

An SQLite bag whose schema, topic table and B-tree survive but whose rows' pages were lost in
the middle (power loss with rosbag2's ``synchronous=OFF`` writes pages back in any order)
opens normally and fails only while its messages are read (``apsw.CorruptError``). The
reader :func:`open_bag` returns for SQLite catches that: what was already yielded stands, the
rest comes from the same row-by-row recovery, and the report counts the unreadable rows
("N message(s) unreadable (database corrupt: ...)").

A folder without ``metadata.yaml`` but with exactly one ``.mcap`` / ``.db3`` inside is read
through that file. The :class:`BagReport` says what was recovered and lost.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, Iterator, List, Optional, Tuple

from .common import DataError

log = logging.getLogger(__name__)

__all__ = ["BagReport", "open_bag"]

#: The report's ``problem`` for a bag that opened but whose rows turned out unreadable.
CORRUPT = "database corrupt"


@dataclass
class BagReport:
    """How a bag was read: ``recovered`` is False for an intact bag."""

    path: str
    storage: str = ""
    recovered: bool = False
    problem: str = ""
    lost_messages: Optional[int] = None  # None: unknown (MCAP cut inside a chunk)
    lost_bytes: int = 0
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.recovered:
            return f"{self.path}: intact ({self.storage})"
        if self.problem.startswith(CORRUPT):  # opened normally, rows lost in the middle: no cut
            return (f"{self.path}: damaged {self.storage} bag; recovered every complete message; "
                    f"{self.lost_messages} message(s) unreadable ({self.problem})"
                    + "".join(f"; {n}" for n in self.notes))
        lost = []
        if self.lost_messages is not None:
            lost.append(f"{self.lost_messages} message(s) unreadable")
        if self.lost_bytes:
            lost.append(f"{self.lost_bytes} byte(s) after the last complete record lost")
        if self.lost_messages is None and not self.lost_bytes:
            lost.append("the number of lost messages is unknown (no metadata.yaml)")
        return (f"{self.path}: damaged {self.storage} bag ({self.problem}); recovered every complete message "
                f"before the cut; {', '.join(lost)}" + "".join(f"; {n}" for n in self.notes))

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "storage": self.storage, "recovered": self.recovered, "problem": self.problem,
                "lost_messages": self.lost_messages, "lost_bytes": self.lost_bytes, "notes": list(self.notes)}


def _storage_file(path: Path) -> Path:
    """The bag itself: a file, a folder with metadata.yaml, or a folder holding one bag file."""
    if path.is_file() or (path / "metadata.yaml").is_file():
        return path
    files = sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3")) if path.is_dir() else []
    if len(files) == 1:
        log.warning("%s has no metadata.yaml (the recorder did not finish?); reading %s", path, files[0].name)
        return files[0]
    if not files:
        raise DataError(f"{path}: no metadata.yaml and no .mcap / .db3 file inside: not a rosbag2")
    raise DataError(f"{path}: no metadata.yaml and several bag files ({', '.join(p.name for p in files)}); "
                    "pass one of them")


def _inner_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))


def open_bag(path: Path) -> Tuple[Any, BagReport]:
    """An opened reader (``.connections``, ``.start_time``, ``.messages(connections, start, stop)``,
    ``.close()``) and a report. Raises :class:`DataError` when nothing is readable."""
    from rosbags.rosbag2 import Reader

    target = _storage_file(path)
    report = BagReport(str(path))
    try:
        reader = Reader(target)
        reader.open()
        report.storage = "mcap" if any(p.suffix == ".mcap" for p in _inner_files(target)) else "sqlite3"
        files = _inner_files(target)
        if report.storage == "sqlite3" and len(files) == 1:
            return _CheckedSqlite(reader, files[0], report), report
        return reader, report
    except Exception as err:  # a cut bag; anything else fails in recovery too, with both reasons
        first = f"{type(err).__name__}: {err}"
    files = [p for p in _inner_files(target) if p.suffix in (".mcap", ".db3")]
    if len(files) != 1:
        raise DataError(f"{path}: cannot open as a rosbag2 (sqlite3 or MCAP): {first}")
    file = files[0]
    report.recovered, report.problem = True, first
    try:
        if file.suffix == ".mcap":
            report.storage = "mcap"
            reader = _RecoveredMcap(file, report)
        else:
            report.storage = "sqlite3"
            reader = _RecoveredSqlite(file, report)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: cannot open as a rosbag2 ({first}), and recovery failed: "
                        f"{type(err).__name__}: {err}") from err
    if not reader.connections or reader.message_count == 0:
        reader.close()
        raise DataError(f"{path}: damaged bag ({first}) with no readable message")
    expected = _expected_count(path)
    if expected is not None:  # metadata.yaml survived: the loss is exact
        report.lost_messages = max(0, expected - reader.message_count)
    return reader, report


def _expected_count(path: Path) -> Optional[int]:
    meta = path / "metadata.yaml" if path.is_dir() else path.parent / "metadata.yaml"
    if not meta.is_file():
        return None
    try:
        import yaml

        info = yaml.safe_load(meta.read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
        return int(info["message_count"])
    except Exception:  # an unreadable metadata.yaml: the loss stays unknown
        return None


class _RecoveredMcap:
    """An MCAP file without a valid summary/footer, read up to its last complete record."""

    def __init__(self, file: Path, report: BagReport) -> None:
        from rosbags.rosbag2.storage_mcap import McapReader

        size = file.stat().st_size
        reader = McapReader(file)
        reader.bio = file.open("rb")
        bio = reader.bio
        if bio.read(8) != b"\x89MCAP0\r\n":
            bio.close()
            raise DataError(f"{file}: not an MCAP file (bad magic)")
        end = 8
        while end + 9 <= size:  # records: opcode (1 byte), length (8 bytes), body
            bio.seek(end)
            op = bio.read(1)[0]
            length = int.from_bytes(bio.read(8), "little")
            if op in (0x0E, 0x02) or end + 9 + length > size:  # data end / footer, or a cut record
                break
            end += 9 + length
        bio.seek(8)
        op = bio.read(1)[0]
        if op != 0x01:
            raise DataError(f"{file}: MCAP header record missing")
        header_len = int.from_bytes(bio.read(8), "little")
        reader.data_start = 8 + 9 + header_len
        reader.data_end = end
        reader.meta_scan()  # the library's scan for files without a summary
        report.lost_bytes = size - end
        self._reader = reader
        stats = reader.statistics
        self.connections = [c._replace(msgcount=stats.channel_message_counts.get(c.id, 0)) for c in reader.connections]
        self.message_count = stats.message_count
        self.start_time = stats.start_time if stats.message_count else 0

    def messages(self, connections: Collection[Any] = (), start: Optional[int] = None,
                 stop: Optional[int] = None) -> Iterator[Tuple[Any, int, bytes]]:
        by_id = {c.id: c for c in self.connections}
        wanted = [by_id[c.id] for c in connections] if connections else list(self.connections)
        for conn, stamp, data in self._reader.messages_scan(wanted, start, stop):
            yield by_id[conn.id], stamp, data

    def close(self) -> None:
        if self._reader.bio is not None:
            self._reader.bio.close()


class _RecoveredSqlite:
    """A rosbag2 SQLite file whose later pages are damaged or missing: every readable row."""

    def __init__(self, file: Path, report: BagReport) -> None:
        from rosbags.interfaces import Connection, ConnectionExtRosbag2, MessageDefinition, MessageDefinitionFormat

        self._db = sqlite3.connect(f"file:{file}?mode=ro&immutable=1", uri=True)
        # SQLite refuses a file shorter than its header's page count unless the schema is
        # "writable"; on a read-only connection this only lets it read what is there.
        self._db.execute("PRAGMA writable_schema=ON")
        try:
            topics = self._db.execute("SELECT id, name, type, serialization_format FROM topics").fetchall()
        except sqlite3.DatabaseError as err:
            raise DataError(f"{file}: the topic table is unreadable ({err}): nothing can be recovered") from err
        # (topic id, stamp, row id): the data is read again when yielded, so memory stays small
        self._rows: List[Tuple[int, int, int]] = []
        last, misses, max_id = 0, 0, None
        try:
            max_id = self._db.execute("SELECT max(id) FROM messages").fetchone()[0]
        except sqlite3.DatabaseError:
            pass
        try:  # the fast path: an in-order scan until the first bad page
            for row_id, topic_id, stamp, _data in self._db.execute(  # data read: its overflow pages checked
                    "SELECT id, topic_id, timestamp, data FROM messages ORDER BY id"):
                self._rows.append((int(topic_id), int(stamp), int(row_id)))
                last = row_id
        except sqlite3.DatabaseError:
            probe = last + 1  # then row by row: pages after the damage may still be readable
            limit = max_id if max_id is not None else None
            while (limit is None and misses < 2000) or (limit is not None and probe <= limit):
                try:
                    row = self._db.execute("SELECT topic_id, timestamp, data FROM messages WHERE id = ?",
                                           (probe,)).fetchone()
                except sqlite3.DatabaseError:
                    row = None
                if row is None:
                    misses += 1
                else:
                    misses = 0
                    self._rows.append((int(row[0]), int(row[1]), probe))
                    last = probe
                probe += 1
        if max_id is not None:
            report.lost_messages = max(0, int(max_id) - len(self._rows))
        else:
            below = max(0, last - len(self._rows))
            report.notes.append(f"the last page of the message table is gone: at least {below} message(s) "
                                "below the last readable one are lost, an unknown number after it")
        self._rows.sort(key=lambda r: (r[1], r[2]))
        counts: Dict[int, int] = {}
        for topic_id, _, _ in self._rows:
            counts[topic_id] = counts.get(topic_id, 0) + 1
        empty = MessageDefinition(MessageDefinitionFormat.NONE, "")
        self.connections = [
            Connection(int(tid), name, msgtype, empty, "", counts.get(int(tid), 0),
                       ConnectionExtRosbag2(fmt, []), None)
            for tid, name, msgtype, fmt in topics]
        self.message_count = len(self._rows)
        self.start_time = self._rows[0][1] if self._rows else 0

    def messages(self, connections: Collection[Any] = (), start: Optional[int] = None,
                 stop: Optional[int] = None) -> Iterator[Tuple[Any, int, bytes]]:
        by_id = {c.id: c for c in self.connections}
        wanted = {c.id for c in connections} if connections else set(by_id)
        for topic_id, stamp, row_id in self._rows:
            if topic_id in wanted and (start is None or stamp >= start) and (stop is None or stamp < stop):
                # read once already (immutable file): only a file changed underneath fails here
                (data,) = self._db.execute("SELECT data FROM messages WHERE id = ?", (row_id,)).fetchone()
                yield by_id[topic_id], stamp, bytes(data)

    def close(self) -> None:
        self._db.close()


class _CheckedSqlite:
    """``rosbags``' reader of an SQLite bag that opened normally; a row found unreadable while
    reading (pages lost in the middle) switches to :class:`_RecoveredSqlite` for the rest and
    counts the unreadable rows in the report."""

    def __init__(self, reader: Any, file: Path, report: BagReport) -> None:
        self._reader, self._file, self._report = reader, file, report
        self._recovered: Optional[_RecoveredSqlite] = None
        self.connections = reader.connections
        self.message_count = reader.message_count
        self.start_time = reader.start_time

    def _recover(self, err: Exception) -> _RecoveredSqlite:
        if self._recovered is None:
            report = self._report
            report.recovered, report.problem = True, f"{CORRUPT}: {type(err).__name__}: {err}"
            # the B-tree opened intact, so the highest row id is readable and the loss exact
            recovered = _RecoveredSqlite(self._file, report)
            self._recovered = recovered
            log.warning("%s", report.summary())
            if recovered.message_count == 0:
                raise DataError(f"{report.path}: damaged bag ({report.problem}) with no readable message")
        return self._recovered

    def messages(self, connections: Collection[Any] = (), start: Optional[int] = None,
                 stop: Optional[int] = None) -> Iterator[Tuple[Any, int, bytes]]:
        import apsw

        if self._recovered is not None:  # known damaged: no second trip into the bad pages
            yield from self._from_recovered(self._recovered, connections, start, stop)
            return
        last: Optional[int] = None
        at_last: Dict[Tuple[str, bytes], int] = {}  # what was yielded at the last stamp
        try:
            for conn, stamp, data in self._reader.messages(connections=connections, start=start, stop=stop):
                if stamp != last:
                    last, at_last = stamp, {}
                at_last[(conn.topic, data)] = at_last.get((conn.topic, data), 0) + 1
                yield conn, stamp, data
            return
        except apsw.CorruptError as err:
            recovered = self._recover(err)
        # rosbags yields in stamp order, so every row before ``last`` was yielded: go on after it
        for conn, stamp, data in self._from_recovered(recovered, connections, start, stop):
            if last is not None and stamp < last:
                continue
            if stamp == last and at_last.get((conn.topic, data), 0):
                at_last[(conn.topic, data)] -= 1
                continue
            yield conn, stamp, data

    def _from_recovered(self, recovered: _RecoveredSqlite, connections: Collection[Any], start: Optional[int],
                        stop: Optional[int]) -> Iterator[Tuple[Any, int, bytes]]:
        """The recovered rows as rosbags' reader gives them: its connections (the ids of a folder's
        reader are not the file's topic ids, so matched by topic and type), data decompressed."""
        ours = {(c.topic, c.msgtype): c for c in (connections or self.connections)}
        wanted = [c for c in recovered.connections if (c.topic, c.msgtype) in ours]
        if not wanted:
            return
        decompress = None
        if getattr(self._reader, "compression_mode", None) == "message":  # as rosbags' reader does
            try:
                from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
            except ImportError:
                from backports import zstd  # type: ignore[no-redef]
            decompress = zstd.decompress
        for conn, stamp, data in recovered.messages(wanted, start, stop):
            yield ours[(conn.topic, conn.msgtype)], stamp, decompress(data) if decompress else data

    def close(self) -> None:
        if self._recovered is not None:
            self._recovered.close()
        self._reader.close()
