"""On-disk cache of teacher features for SAM2CLIP distillation (stage 1).

The frozen teacher (a SAM image encoder: ViT-H costs ~0.5 s per image on a
GPU) only has to run once per image: its [C, G, G] output is stored under a
key made of the image file's absolute path, size and mtime, the
preprocessing (input size, flip) and the teacher's identity (kind + weights
file identity, or a hash of the weights). Files are written atomically
(temp file + ``os.replace``), so concurrent ranks and killed runs never
leave a partial entry; an unreadable entry is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Optional

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
