"""The table of where each weight file is published (``ovsam_ros/data/weights/sources.yaml``),
turned into download sources: URLs (or mirror files) with the sha256 their publisher states.

Importing this module is cheap; open_clip (and so torch) is imported only when an ``open_clip``
source is expanded."""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ovsam_ros.resources import DATA_DIR

#: The package's table of sources.
DEFAULT_TABLE = DATA_DIR / "weights" / "sources.yaml"
#: Environment variable naming a mirror (folder or http(s) URL with the same file names).
MIRROR_ENV = "OVSAM_WEIGHTS_MIRROR"
#: Hugging Face's own variable for another Hub endpoint (huggingface_hub reads the same one).
HF_ENDPOINT_ENV = "HF_ENDPOINT"
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
#: Hugging Face sends the sha256 of a Git LFS file in this header (huggingface_hub reads it as the
#: file's etag; for LFS files that is the sha256 of the content).
HF_SHA256_HEADER = "X-Linked-Etag"

SOURCE_KINDS = ("open_clip", "hf", "url")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Source:
    """One place a file can be fetched from."""

    url: str  # http(s):// URL, or a local file (a mirror folder's copy)
    sha256: Optional[str] = None  # stated by the publisher for this copy (may be a prefix, as open_clip's)
    sha256_from: str = ""  # where that sum is stated, for messages
    sha256_header: Optional[str] = None  # response header in which the server states the sha256
    label: str = ""  # who publishes this copy, for messages

    @property
    def is_http(self) -> bool:
        return self.url.startswith(("http://", "https://"))


@dataclass(frozen=True)
class FileEntry:
    """A file of the table: what it is, its sources in order, and what its publisher states."""

    name: str
    what: str = ""
    raw_sources: tuple[dict[str, Any], ...] = ()
    sha256: Optional[str] = None
    sha256_from: str = ""
    size: Optional[int] = None
    table: str = ""  # the table file it came from, for messages
    _expanded: list = field(default_factory=list, compare=False, repr=False)

    def sources(self) -> list[Source]:
        """The sources in order (an ``open_clip`` entry expands to the registry's URL, then its HF copy)."""
        if not self._expanded:
            for raw in self.raw_sources:
                self._expanded.extend(_expand(raw, self))
        return list(self._expanded)

    def published_sums(self) -> list[tuple[str, str]]:
        """(sha256, where stated) known without the network: the entry's and every source's own."""
        sums = [(self.sha256, self.sha256_from)] if self.sha256 else []
        for source in self.sources():
            if source.sha256 and source.sha256 not in [s for s, _ in sums]:
                sums.append((source.sha256, source.sha256_from))
        return sums


class SourceTable:
    """The parsed table: ``table[name]`` is the :class:`FileEntry` of a file name, or None."""

    def __init__(self, entries: dict[str, FileEntry], path: str) -> None:
        self.entries = entries
        self.path = path

    def get(self, name: str) -> Optional[FileEntry]:
        return self.entries.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.entries


def load_table(path: Union[str, os.PathLike, None] = None) -> SourceTable:
    """Parse a sources table (default: the package's); ValueError naming the file and entry on a
    malformed one (a typo must not turn into a silently skipped source)."""
    path = Path(path) if path is not None else DEFAULT_TABLE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"weights sources table not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: invalid YAML: {error}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ValueError(f"{path}: expected a mapping 'files: {{<file name>: {{sources: [...]}}}}'")
    entries = {}
    for name, spec in files.items():
        entries[str(name)] = _entry(str(name), spec, path)
    return SourceTable(entries, str(path))


def table_names(path: Union[str, os.PathLike, None] = None) -> set[str]:
    """The file names a table lists; empty when it cannot be read (only used for advice)."""
    try:
        return set(load_table(path).entries)
    except (OSError, ValueError):
        return set()


def _entry(name: str, spec: Any, path: Path) -> FileEntry:
    where = f"{path}: files.{name}"
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"{where}: a file name, not a path")
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a mapping with 'sources'")
    unknown = sorted(set(spec) - {"what", "sources", "sha256", "sha256_from", "size"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: what, sources, sha256, sha256_from, size")
    sources = spec.get("sources")
    if not isinstance(sources, list) or not sources:
        raise ValueError(f"{where}: 'sources' must be a non-empty list")
    for i, raw in enumerate(sources):
        kinds = [k for k in SOURCE_KINDS if isinstance(raw, dict) and k in raw]
        if len(kinds) != 1 or set(raw) - set(SOURCE_KINDS):
            raise ValueError(f"{where}.sources[{i}]: expected exactly one of {', '.join(SOURCE_KINDS)}; got {raw!r}")
    size = spec.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise ValueError(f"{where}.size: expected a positive number of bytes, got {size!r}")
    return FileEntry(name=name, what=str(spec.get("what") or ""), raw_sources=tuple(sources),
                     sha256=check_sha256(spec.get("sha256"), f"{where}.sha256"),
                     sha256_from=str(spec.get("sha256_from") or "the sources table"), size=size, table=str(path))


def check_sha256(value: Any, where: str, full: bool = True) -> Optional[str]:
    """A sha256 as lowercase hex (64 digits; a prefix of at least 8 where ``full`` is False); None stays None."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not _HEX.match(text) or (len(text) != 64 if full else not 8 <= len(text) <= 64):
        raise ValueError(f"{where}: not a sha256 (64 hex digits): {value!r}")
    return text


def _expand(raw: dict[str, Any], entry: FileEntry) -> list[Source]:
    where = f"{entry.table}: files.{entry.name}"
    if "url" in raw:
        url = str(raw["url"])
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{where}: url must be http(s): {url!r}")
        return [Source(url, label=urllib.parse.urlsplit(url).hostname or url)]
    if "hf" in raw:
        spec = raw["hf"]
        if not isinstance(spec, dict) or not spec.get("repo") or not spec.get("file"):
            raise ValueError(f"{where}: hf needs {{repo: <owner/name>, file: <name>}}; got {spec!r}")
        return [hf_source(str(spec["repo"]), str(spec["file"]), str(spec.get("revision") or "main"))]
    spec = raw["open_clip"]
    if not isinstance(spec, dict) or not spec.get("model") or not spec.get("tag"):
        raise ValueError(f"{where}: open_clip needs {{model: <name>, tag: <pretrained tag>}}; got {spec!r}")
    return open_clip_sources(str(spec["model"]), str(spec["tag"]), where)


def hf_url(repo: str, file: str, revision: str = "main") -> str:
    """Hugging Face's download URL of a repository file ($HF_ENDPOINT replaces the host)."""
    endpoint = (os.environ.get(HF_ENDPOINT_ENV) or HF_DEFAULT_ENDPOINT).rstrip("/")
    return f"{endpoint}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(file)}"


def hf_source(repo: str, file: str, revision: str = "main") -> Source:
    return Source(hf_url(repo, file, revision), sha256_header=HF_SHA256_HEADER,
                  sha256_from=f"the {HF_SHA256_HEADER} header Hugging Face sends with it", label=f"Hugging Face {repo}")


def open_clip_url_sha256(url: str) -> Optional[str]:
    """The sha256 (or its prefix) an open_clip registry URL carries, by open_clip's own rule
    (``open_clip.pretrained.download_pretrained_from_url``): OpenAI's URLs hold the full sum as the
    folder before the file name; mlfoundations release files end in ``-<prefix>.pt``."""
    filename = os.path.basename(urllib.parse.urlsplit(url).path)
    if "openaipublic" in url:
        candidate = url.split("/")[-2]
    elif "mlfoundations" in url:
        candidate = os.path.splitext(filename)[0].split("-")[-1]
    else:
        return None
    try:
        return check_sha256(candidate, url, full=False)
    except ValueError:
        return None


def open_clip_sources(model: str, tag: str, where: str = "") -> list[Source]:
    """open_clip's pretrained registry entry for (model, tag) as sources: its URL (sha256 from the
    URL), then its Hugging Face copy (sha256 from Hugging Face's header), as open_clip knows them."""
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        raise ValueError(f"{where}: open_clip has no pretrained weights {model!r} / {tag!r} "
                         f"(its tags for {model!r}: {list_pretrained_tags_by_model(model)})")
    sources = []
    if cfg.get("url"):
        sha = open_clip_url_sha256(cfg["url"])
        sources.append(Source(cfg["url"], sha256=sha, sha256_from=f"open_clip's registry ({model} / {tag} URL)" if sha else "",
                              label=f"{urllib.parse.urlsplit(cfg['url']).hostname} (open_clip registry)"))
    if cfg.get("hf_hub"):
        # open_clip's convention: 'org/repo/' names the repo's default weights file, 'org/repo/file' a file.
        repo, file = os.path.split(cfg["hf_hub"])
        source = hf_source(repo, file or HF_WEIGHTS_NAME)
        sources.append(Source(source.url, sha256_header=source.sha256_header, sha256_from=source.sha256_from,
                              label=f"{source.label} (open_clip registry)"))
    if not sources:
        raise ValueError(f"{where}: open_clip's registry entry {model!r} / {tag!r} names no download")
    return sources


def mirror_source(mirror: str, name: str) -> Source:
    """``name`` in a mirror: a folder, a ``file://`` URL or an http(s) base URL with the same file names."""
    if mirror.startswith(("http://", "https://")):
        return Source(mirror.rstrip("/") + "/" + urllib.parse.quote(name), label=f"mirror {mirror}")
    folder = mirror_folder(mirror)
    return Source(str(folder / name), label=f"mirror folder {folder}")


def mirror_folder(mirror: str) -> Path:
    """The folder of a local mirror (a path or ``file://`` URL); FileNotFoundError when it is not one."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(mirror).path) if mirror.startswith("file://") else mirror
    folder = Path(os.path.expanduser(path))
    if not folder.is_dir():
        raise FileNotFoundError(f"mirror folder not found: {folder} (--mirror / ${MIRROR_ENV} names a folder "
                                "or an http(s) URL holding the weight files under their own names)")
    return folder
