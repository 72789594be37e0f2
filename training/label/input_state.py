"""What each labelling input was when its run was planned, so a rerun on changed inputs is refused.

An image folder is recorded as its image files (relative name -> size, mtime), a bag as all its
files (a bag folder's ``metadata.yaml`` and storage files, or the one ``.mcap`` / ``.db3``).
Nothing is read but the file system's listing: a resumed run costs no bag pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from training.data.common import IMAGE_EXTENSIONS

from .sources import is_bag


def _stat(path: Path) -> List[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def describe_input(path: str) -> Dict[str, Any]:
    """``{"kind": "bag" | "folder", "files": {relative name: [size, mtime_ns]}}`` of one input."""
    p = Path(path)
    if p.is_file():
        return {"kind": "bag", "files": {p.name: _stat(p)}}
    bag = is_bag(p)
    files = {}
    for f in sorted(p.rglob("*")):
        if f.is_file() and (bag or f.suffix.lower() in IMAGE_EXTENSIONS):
            files[f.relative_to(p).as_posix()] = _stat(f)
    return {"kind": "bag" if bag else "folder", "files": files}


def describe_inputs(paths: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """:func:`describe_input` of every input, keyed by its (resolved) path."""
    return {str(p): describe_input(str(p)) for p in paths}


def input_changes(old: Dict[str, Any], new: Dict[str, Any]) -> Optional[str]:
    """"input X changed (N added, M removed, K modified: e.g. a.png)" for the first input whose files
    differ between ``old`` and ``new`` (:func:`describe_inputs`), or None when none did."""
    for path in list(old) + [p for p in new if p not in old]:
        before = (old.get(path) or {}).get("files", {})
        after = (new.get(path) or {}).get("files", {})
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        modified = sorted(n for n in set(before) & set(after) if list(before[n]) != list(after[n]))
        if added or removed or modified:
            example = (added or removed or modified)[0]
            return (f"input {path} changed ({len(added)} added, {len(removed)} removed, {len(modified)} modified "
                    f"file(s): e.g. {example})")
    return None


__all__ = ["describe_input", "describe_inputs", "input_changes"]
