"""The export folder: written whole or not at all, owned, and checked when loaded.

* **Atomic.** An export is written into a temporary sibling folder
  (``.<name>.export-<pid>-*`` next to ``--out``) and renamed into place only when every file,
  the manifest last, is on disk. A kill at any moment leaves the earlier export as it was
  (or no folder, for a first export) plus, at worst, that hidden partial folder, which the
  next export next to it removes.
* **Owned.** ``manifest.json`` lists every file the export wrote, with its sha256
  (``sha256``: name -> hex digest; ``model.yaml`` included). An existing ``--out`` is
  replaced only when it is empty or such an export (its manifest lists every entry in
  it); anything else is refused naming the files an export did not write, so a user's own
  ``model.yaml`` or notes are never overwritten.
* **Checked on load.** :func:`verify_files` hashes every graph and the text tower against
  the manifest before ONNX Runtime sees them: a folder that mixes files of two exports (an
  interrupted copy, a graph copied over by hand) is an error naming the file and both sums.
  ``model.yaml`` is listed but not checked on load: users edit it (execution providers).

Replacing an earlier export is two renames (the old folder aside, the new one in); only a
kill exactly between them leaves ``--out`` missing, with both complete folders beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from ovsam_ros.files import fsync_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "ovsam_ros-onnx"
#: 2: ``sha256`` of every file (exports of version 1 have none and load with a warning).
FORMAT_VERSION = 2
_PARTIAL = ".{name}.export-{pid}-"
_ASIDE = ".{name}.replaced-{pid}"


class ExportFolderError(ValueError):
    """``--out`` holds something an export did not write (nothing was changed)."""


class ExportIntegrityError(ValueError):
    """An export folder whose files do not match its manifest's sha256."""


class ExportCheckError(RuntimeError):
    """ONNX Runtime disagreed with PyTorch: the export was kept aside (``folder``), ``--out`` unchanged."""

    def __init__(self, message: str, manifest: Mapping[str, Any], folder: Path) -> None:
        super().__init__(message)
        self.manifest, self.folder = manifest, folder


def check_failed_folder(out: Path) -> Path:
    """Where an export whose ORT-vs-PyTorch check failed is kept for a look (never ``out`` itself)."""
    return out.parent / f"{out.name}.check-failed"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest_json(folder: Path) -> Optional[Dict[str, Any]]:
    """The folder's manifest if it is a readable ovsam_ros export manifest, else None."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def listed_files(manifest: Mapping[str, Any]) -> Optional[set]:
    """Every file name the manifest says its export wrote (None for a version-1 manifest, which
    does not list them all)."""
    hashes = manifest.get("sha256")
    if not isinstance(hashes, dict):
        return None
    return {n for n in hashes if _plain_name(n)} | {MANIFEST}


def check_target(out: Path) -> Optional[Dict[str, Any]]:
    """Whether an export may be written to ``out``: None when it does not exist or is an empty
    folder, the earlier export's manifest when it is one (to be replaced); ExportFolderError
    otherwise, naming what an export did not write. Nothing is changed."""
    if not os.path.lexists(out):
        return None
    if not out.is_dir():
        raise ExportFolderError(f"--out {out} exists and is not a folder; choose a new or empty folder")
    entries = sorted(os.listdir(out))
    if not entries:
        return None
    manifest = read_manifest_json(out)
    if manifest is None:
        raise ExportFolderError(
            f"refusing to export into {out}: it holds files an export did not write ({_names(entries)}) and no "
            f"{FORMAT} {MANIFEST}. Nothing was changed; choose a new or empty folder for --out")
    listed = listed_files(manifest)
    if listed is None:
        raise ExportFolderError(
            f"refusing to export into {out}: it holds an export by an older ovsam_ros whose {MANIFEST} does not "
            f"list every file it wrote, so {_names(entries)} cannot be told apart from your own files. Nothing was "
            "changed; delete that folder yourself (or choose another --out) and export again")
    foreign = [e for e in entries if e not in listed]
    if foreign:
        raise ExportFolderError(
            f"refusing to export into {out}: it holds {_names(foreign)}, which the export there did not write "
            f"(its {MANIFEST} lists {_names(sorted(listed))}). Nothing was changed; move those files, or choose "
            "another --out")
    return manifest


def _names(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def edited_files(folder: Path, manifest: Mapping[str, Any]) -> list:
    """Files of an earlier export whose content differs from its manifest (e.g. an edited model.yaml)."""
    out = []
    for name, want in (manifest.get("sha256") or {}).items():
        path = folder / name
        with contextlib.suppress(OSError):
            if _plain_name(name) and path.is_file() and sha256_file(path) != want:
                out.append(name)
    return sorted(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_partials(out: Path) -> list:
    """Partial exports next to ``out`` left by killed exports (their process is gone)."""
    removed = []
    prefix = f".{out.name}.export-"
    with contextlib.suppress(OSError):
        for entry in out.parent.iterdir():
            if not entry.name.startswith(prefix) or not entry.is_dir() or entry.is_symlink():
                continue
            pid = entry.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def new_partial(out: Path) -> Path:
    """An empty temporary folder next to ``out`` (same file system: the final rename is atomic),
    with the permissions a plain mkdir gives (umask), not mkdtemp's owner-only 0700: it becomes ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = _PARTIAL.format(name=out.name, pid=os.getpid())
    while True:
        path = out.parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def hash_folder(folder: Path) -> Dict[str, str]:
    """sha256 of every file in ``folder`` except the manifest, each fsynced (they are final)."""
    hashes = {}
    for entry in sorted(folder.iterdir()):
        if entry.name == MANIFEST:
            continue
        if not entry.is_file() or entry.is_symlink():
            raise RuntimeError(f"export folder {folder} holds {entry.name}, which is not a plain file")
        fsync_path(entry)
        hashes[entry.name] = sha256_file(entry)
    return hashes


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def install(partial: Path, out: Path) -> None:
    """Rename the finished ``partial`` folder to ``out``, replacing an earlier export there (checked
    again now: the export took minutes). The earlier one is removed only once the new one is in."""
    fsync_path(partial, directory=True)
    check_target(out)
    if os.path.lexists(out) and not os.listdir(out):
        out.rmdir()
    if not os.path.lexists(out):
        os.rename(partial, out)
    else:
        aside = out.parent / _ASIDE.format(name=out.name, pid=os.getpid())
        if os.path.lexists(aside):
            shutil.rmtree(aside)
        os.rename(out, aside)
        try:
            os.rename(partial, out)
        except BaseException:
            os.rename(aside, out)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    fsync_path(out.parent, directory=True)


def verify_files(onnx_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Every file the backend loads (``manifest['files']``) against its sha256 in the manifest.

    ExportIntegrityError naming the file and both sums on a mismatch, FileNotFoundError for a
    missing file; a version-1 manifest (no sums) logs one warning and is not checked."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(_plain_name(n) for n in files.values()):
        raise ExportIntegrityError(f"{onnx_dir / MANIFEST}: 'files' must map parts to file names in the folder")
    hashes = manifest.get("sha256")
    if not isinstance(hashes, dict):
        log.warning("%s was written by an older ovsam_ros (no file hashes in %s): its files cannot be checked "
                    "against each other; export again to have them checked", onnx_dir, MANIFEST)
        return
    for name in files.values():
        path = onnx_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {onnx_dir / MANIFEST} but missing; export again")
        want = hashes.get(name)
        got = sha256_file(path)
        if got != want:
            raise ExportIntegrityError(
                f"{path}: sha256 {got} differs from {want} in {onnx_dir / MANIFEST}: this file is not the one "
                "that export wrote (an interrupted or mixed copy?). Export again (ovsam export) or copy the whole "
                "folder")


__all__ = ["ExportFolderError", "ExportIntegrityError", "FORMAT", "FORMAT_VERSION", "MANIFEST", "check_target",
           "edited_files", "hash_folder", "install", "ExportCheckError", "check_failed_folder", "new_partial", "read_manifest_json", "remove_stale_partials",
           "sha256_file", "verify_files", "write_manifest"]
