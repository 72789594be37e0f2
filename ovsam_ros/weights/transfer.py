"""Fetch one file into ``<dest>.part``: HTTP(S) with resume (Range / If-Range) or a mirror folder's
copy, a progress bar, and one exception per kind of failure whose text is one line for the user.

The partial file stays where the destination is (same filesystem: the final rename is atomic) with
a small ``<dest>.part.json`` naming where its bytes came from; a later run resumes it only from the
same source, and only while the server says the file is unchanged (If-Range)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Optional

from ovsam_ros.files import fsync_path
from ovsam_ros.weights.checksums import file_sha256

CHUNK = 1 << 20
USER_AGENT = "ovsam_ros-weights/1 (+https://github.com/HarborYuan/ovsam)"
# A response body larger than this for a small side file (SHA256SUMS of an http mirror) is refused.
SMALL_FILE_LIMIT = 1 << 20


class WeightsError(Exception):
    """A failure to get one file; ``str()`` is the one line shown to the user."""

    retryable = False


class NotFound(WeightsError):
    pass


class AccessDenied(WeightsError):
    pass


class Unreachable(WeightsError):
    retryable = True


class ServerError(WeightsError):
    retryable = True


class Interrupted(WeightsError):
    retryable = True


class DiskFull(WeightsError):
    pass


class Busy(WeightsError):
    pass


class ChecksumMismatch(WeightsError):
    pass


@dataclass
class Fetched:
    """A complete ``.part`` file: its sha256 and size, the sums the server stated in headers."""

    part: Path
    sha256: str
    size: int
    resumed_from: int = 0
    header_sums: dict[str, str] = field(default_factory=dict)


def part_paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def size_text(size: float) -> str:
    """``"2.6 GB"`` / ``"310 MB"`` / ``"12 kB"`` / ``"80 B"`` (as the model loader prints sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{int(size)} B"


def fetch(url: str, dest: Path, *, timeout: float = 30.0, progress: bool = True,
          sha256_header: Optional[str] = None) -> Fetched:
    """Fetch ``url`` (http(s) or a local file) into ``dest``'s ``.part`` file, resuming a partial
    one from the same source. Raises a :class:`WeightsError`; the partial file is kept whenever a
    later run can continue it (interrupted transfer, full disk)."""
    part, meta = part_paths(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+b", buffering=0) as out:
        try:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Busy(f"another download is writing {part}; wait for it or stop it") from None
        try:
            return _fetch_into(out, url, dest, timeout, progress, sha256_header)
        except BaseException:
            if os.fstat(out.fileno()).st_size == 0:  # nothing a later run could continue
                discard(dest)
            raise


def _fetch_into(out, url: str, dest: Path, timeout: float, progress: bool, sha256_header: Optional[str]) -> Fetched:
    part, meta = part_paths(dest)
    have = os.fstat(out.fileno()).st_size
    previous = _read_meta(meta)
    offset = have if have and previous.get("url") == url else 0
    validator = previous.get("validator") if offset else None
    if not offset and have:
        out.truncate(0)
    if url.startswith(("http://", "https://")):
        reader = _HttpReader(url, offset, validator, timeout, sha256_header)
    else:
        reader = _FileReader(url, offset, validator)
    with reader:
        if reader.offset != offset:  # the source cannot continue this partial file: start over
            out.truncate(0)
            offset = reader.offset
        _check_space(dest, part, reader.total, offset)
        _write_meta(meta, {"url": url, "validator": reader.validator, "total": reader.total})
        hasher = hashlib.sha256()
        if offset:
            file_sha256(part, hasher, limit=offset)
        out.seek(offset)
        done = _copy(reader, out, hasher, dest, offset, progress)
    if reader.total is not None and done != reader.total:
        raise Interrupted(f"transfer ended after {size_text(done)} of {size_text(reader.total)} "
                          f"({done} of {reader.total} bytes) from {host(url)}")
    os.fsync(out.fileno())
    return Fetched(part, hasher.hexdigest(), done, resumed_from=offset, header_sums=reader.header_sums)


def discard(dest: Path) -> None:
    """Remove ``dest``'s partial file and its note."""
    for path in part_paths(dest):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def finish(fetched: Fetched, dest: Path) -> None:
    """Move a verified ``.part`` file to ``dest`` in one rename (never a half-written file at ``dest``)."""
    os.replace(fetched.part, dest)
    with contextlib.suppress(FileNotFoundError):
        part_paths(dest)[1].unlink()
    fsync_path(dest.parent, directory=True)  # make the rename durable


def read_small(url: str, timeout: float = 30.0) -> Optional[str]:
    """A small text file over http(s) (a mirror's SHA256SUMS); None when the server has none."""
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as response:
            body = response.read(SMALL_FILE_LIMIT + 1)
    except urllib.error.HTTPError as error:
        if error.code in (404, 410):
            return None
        raise _http_error(error, url) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _network_error(error, url) from None
    if len(body) > SMALL_FILE_LIMIT:
        raise WeightsError(f"{url} is larger than {size_text(SMALL_FILE_LIMIT)}; not a SHA256SUMS file")
    return body.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- sources
class _HttpReader:
    """One GET of ``url`` from ``offset`` (Range, If-Range): ``offset`` becomes 0 when the server
    sends the whole file instead (it changed, or it ignores ranges)."""

    def __init__(self, url: str, offset: int, validator: Optional[str], timeout: float,
                 sha256_header: Optional[str]) -> None:
        self.url = url
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if validator:
                headers["If-Range"] = validator
        recorder = _RedirectRecorder([sha256_header] if sha256_header else [])
        opener = urllib.request.build_opener(recorder)
        try:
            self.response = opener.open(_request(url, headers), timeout=timeout)
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset:  # the range is past the end: the file changed; start over
                error.close()
                self.__init__(url, 0, None, timeout, sha256_header)
                return
            raise _http_error(error, url) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise _network_error(error, url) from None
        response = self.response
        self.header_sums = dict(recorder.seen)
        if sha256_header and response.headers.get(sha256_header):
            self.header_sums[sha256_header] = response.headers[sha256_header]
        status = response.status
        length = _int(response.headers.get("Content-Length"))
        if status == 206 and offset:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                response.close()
                raise ServerError(f"{host(url)} answered bytes from {start} to a request from {offset}")
            self.offset, self.total = offset, total
        elif status == 200:
            self.offset, self.total = 0, length
        else:
            response.close()
            raise ServerError(f"unexpected HTTP {status} from {host(url)}")
        etag = response.headers.get("ETag")
        # If-Range takes a strong ETag or a date; a weak ETag ("W/...") cannot validate a range.
        self.validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")

    def read(self, size: int) -> bytes:
        try:
            return self.response.read(size)
        except http.client.IncompleteRead as error:
            return error.partial  # the loop sees the short total and reports it
        except (OSError, http.client.HTTPException) as error:
            raise Interrupted(f"transfer from {host(self.url)} broke off ({_reason(error)})") from None

    def __enter__(self) -> "_HttpReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.response.close()


class _FileReader:
    """A mirror folder's copy, read from ``offset`` (restarted when the copy changed: size/mtime)."""

    def __init__(self, path: str, offset: int, validator: Optional[str]) -> None:
        self.url = path
        try:
            self.file: BinaryIO = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"not in the mirror: {path}") from None
        except OSError as error:
            raise NotFound(f"cannot read {path}: {error.strerror or error}") from None
        stat = os.fstat(self.file.fileno())
        self.total = stat.st_size
        self.validator = f"{stat.st_size}:{stat.st_mtime_ns}"
        self.offset = offset if offset and validator == self.validator and offset <= self.total else 0
        self.file.seek(self.offset)
        self.header_sums = {}

    def read(self, size: int) -> bytes:
        return self.file.read(size)

    def __enter__(self) -> "_FileReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


class _RedirectRecorder(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, keeping the named headers of each redirect response
    (Hugging Face states a file's sha256 on the redirect, not on the CDN's answer)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.seen: dict[str, str] = {}

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        for name in self.names:
            if headers.get(name):
                self.seen[name] = headers[name]
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# ----------------------------------------------------------------------------- copying
def _copy(reader, out, hasher, dest: Path, offset: int, progress: bool) -> int:
    from tqdm import tqdm

    done = offset
    total = reader.total
    with tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
              file=sys.stderr, disable=None if progress else True, leave=False, dynamic_ncols=True) as bar:
        while True:
            chunk = reader.read(CHUNK)
            if not chunk:
                return done
            _write_all(out, chunk, dest, done)
            hasher.update(chunk)
            done += len(chunk)
            bar.update(len(chunk))


def _write_all(out, data: bytes, dest: Path, done: int) -> None:
    view = memoryview(data)
    while view:
        try:
            written = out.write(view)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                free = _free_space(dest.parent)
                raise DiskFull(f"disk full writing {dest}.part after {size_text(done)} ({free} free there); "
                               "free some space and run again to resume") from None
            raise
        view = view[written or 0:]


def _check_space(dest: Path, part: Path, total: Optional[int], offset: int) -> None:
    if total is None:
        return
    need = total - offset
    try:
        free = shutil.disk_usage(part.parent).free
    except OSError:
        return
    if need > free:
        raise DiskFull(f"not enough disk space for {dest}: {size_text(need)} to fetch, "
                       f"{size_text(free)} free in {dest.parent}")


def _free_space(folder: Path) -> str:
    try:
        return size_text(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------- helpers
def _request(url: str, headers: Optional[dict[str, str]] = None) -> urllib.request.Request:
    # identity: the byte counts (Range, Content-Length) must be those of the file itself
    return urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                                                **(headers or {})})


def _http_error(error: urllib.error.HTTPError, url: str) -> WeightsError:
    code = error.code
    error.close()
    if code in (404, 410):
        return NotFound(f"not found (HTTP {code}) at {url}")
    if code in (401, 403):
        return AccessDenied(f"access denied (HTTP {code}) at {url}")
    if code >= 500 or code in (408, 429):
        return ServerError(f"server error (HTTP {code}) at {url}")
    return WeightsError(f"HTTP {code} {error.reason} at {url}")


def _network_error(error: BaseException, url: str) -> WeightsError:
    return Unreachable(f"cannot reach {host(url)} ({_reason(error)}); check the network or proxy, or use "
                       "--mirror / $OVSAM_WEIGHTS_MIRROR")


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"host name not resolved: {reason.strerror or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def host(url: str) -> str:
    """The host (and port) of a URL, for messages; a local path as it is."""
    parts = urllib.parse.urlsplit(url)
    return parts.netloc or url


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _content_range(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(first byte, total) of ``Content-Range: bytes a-b/total`` (total None when ``*``)."""
    try:
        unit, _, rest = (text or "").partition(" ")
        span, _, total = rest.partition("/")
        if unit.strip().lower() != "bytes":
            return None, None
        return int(span.split("-")[0]), (None if total.strip() == "*" else int(total))
    except ValueError:
        return None, None


def _read_meta(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_meta(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
