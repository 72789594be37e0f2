"""Tiny random-init models for the predictor tests (a uniquely named module: several
test folders have a conftest.py, so `import conftest` would be ambiguous)."""

import torch

from ovsam_ros.model import OVSAM, OVSAMConfig


def tiny_model(seed: int = 0, **decoder) -> OVSAM:
    cfg = OVSAMConfig.tiny()
    for key, value in decoder.items():
        setattr(cfg.decoder, key, value)
    torch.manual_seed(seed)
    return OVSAM(cfg).eval()
