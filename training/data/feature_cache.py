"""On-disk cache of teacher features for SAM2CLIP distillation (stage 1).

The frozen teacher (a SAM image encoder: ViT-H costs ~0.5 s per image on a
GPU) only has to run once per image: its [C, G, G] output is stored under a
key made of the image file's absolute path, size and mtime, the
preprocessing (input size, flip) and the teacher's identity (kind + weights
file identity, or a hash of the weights). Files are written atomically
(temp file + ``os.replace``), so concurrent ranks and killed runs never
leave a partial entry; an unreadable entry is recomputed.

:class:`BackgroundCacheWriter` takes the serialisation and the disk write off
the training thread (a ViT-H feature map is 1-2 MB; a slow or network disk
would otherwise stall the GPU once per image).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any, Optional, Tuple

import torch

from ovsam_ros.files import atomic_write

log = logging.getLogger(__name__)


class TeacherFeatureCache:
    def __init__(self, root: str, teacher_id: str, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"cache dtype must be float32, float16 or bfloat16, got {dtype!r}")
        self.root = Path(os.path.expanduser(root))
        self.teacher_id = teacher_id
        self.dtype = getattr(torch, dtype)

    def key(self, file: str, image_size: int, flip: bool) -> str:
        st = os.stat(file)
        payload = "|".join([os.path.abspath(file), str(st.st_size), str(st.st_mtime_ns), str(image_size),
                            str(int(flip)), self.teacher_id, str(self.dtype)])
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def get(self, key: str) -> Optional[torch.Tensor]:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            feats = obj["features"]
            if obj.get("key") != key or not isinstance(feats, torch.Tensor):
                raise ValueError("key mismatch")
            return feats.float()
        except Exception as err:  # truncated by a crash of another tool, foreign file, ...
            log.warning("teacher cache entry %s unreadable (%s: %s); recomputing", path, type(err).__name__, err)
            return None

    def put(self, key: str, features: torch.Tensor) -> None:
        buf = io.BytesIO()
        torch.save({"key": key, "teacher": self.teacher_id,
                    "features": features.detach().to("cpu", self.dtype).contiguous()}, buf)
        atomic_write(self.path(key), lambda fh: fh.write(buf.getvalue()))


class BackgroundCacheWriter:
    """Writes teacher features into a :class:`TeacherFeatureCache` on a daemon thread.

    :meth:`put` casts to the cache dtype and starts the device-to-host copy
    (non-blocking into pinned memory on CUDA), then queues the entry; the
    thread waits for the copy and writes the file. The queue is bounded
    (``max_pending`` entries) so a slow disk slows training instead of filling
    host memory. A failed write is logged and counted, never raised: the entry
    is simply computed again next time. :meth:`close` (or leaving a ``with``
    block) waits for every queued write.
    """

    def __init__(self, cache: TeacherFeatureCache, max_pending: int = 64) -> None:
        self.cache = cache
        self.written = 0
        self.failed = 0
        self._queue: "queue.Queue[Optional[Tuple[str, torch.Tensor, Any]]]" = queue.Queue(maxsize=max(1, max_pending))
        self._thread = threading.Thread(target=self._loop, name="teacher-cache-writer", daemon=True)
        self._thread.start()
        self._closed = False

    def put(self, key: str, features: torch.Tensor) -> None:
        if self._closed:
            raise RuntimeError("BackgroundCacheWriter is closed")
        # A copy: the caller's tensor is often a view into a whole batch (torch.save would store all of it)
        # and may be reused once this returns.
        feats = features.detach().to(self.cache.dtype)
        event = None
        if feats.is_cuda:
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            feats = host
        else:
            feats = feats.clone()
        self._queue.put((key, feats, event))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                key, feats, event = item
                if event is not None:
                    event.synchronize()
                try:
                    self.cache.put(key, feats)
                    self.written += 1
                except Exception as err:  # disk full, permissions, ...: the entry is recomputed later
                    self.failed += 1
                    if self.failed <= 3:
                        log.warning("teacher cache: writing %s failed (%s: %s)", self.cache.path(key),
                                    type(err).__name__, err)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every queued entry is on disk (or has failed)."""
        self._queue.join()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        if self.failed:
            log.warning("teacher cache: %d of %d write(s) failed", self.failed, self.failed + self.written)

    def __enter__(self) -> "BackgroundCacheWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
