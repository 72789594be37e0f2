"""Key names of the reference OVSAM files (HarborYuan/ovsam) and ours: pure renaming rules.

Imported by :mod:`.checkpoints` (loading / exporting); no model code here, so anything in
the package can use it. The table is in :mod:`.checkpoints`'s docstring.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

# (reference regex, our key template) pairs for the clip2sam file.
_CLIP2SAM_RULES: List[Tuple[re.Pattern, str]] = [
    (re.compile(r"^fpn_neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)$"), r"clip2sam.fpn.inner_blocks.\1.0.\2"),
    (re.compile(r"^fpn_neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)$"), r"clip2sam.fpn.layer_blocks.\1.0.\2"),
    (re.compile(r"^mask_decoder\.roi_conv\.0\.conv\.weight$"), r"clip2sam.roi_conv.0.weight"),
    (re.compile(r"^mask_decoder\.label_token\.weight$"), r"decoder.label_token.weight"),
    (re.compile(r"^mask_decoder\.label_mlp\.(.+)$"), r"decoder.label_mlp.\1"),
    (re.compile(r"^mask_decoder\.mask_decoder\.(.+)$"), r"decoder.mask_decoder.\1"),
]
CLIP2SAM_PREFIXES = ("fpn_neck.", "mask_decoder.")
# Ours, not in the reference decoder (1 mask token, no IoU head): loaded if present, else kept.
OPTIONAL_DECODER = re.compile(
    r"^decoder\.mask_decoder\.(iou_token\..*|iou_prediction_head\..*|output_hypernetworks_mlps\.([1-9]\d*)\..*)$"
)


_CLIP2SAM_INVERSE: List[Tuple[re.Pattern, str]] = [
    (re.compile(r"^clip2sam\.fpn\.inner_blocks\.(\d+)\.0\.(weight|bias)$"), r"fpn_neck.lateral_convs.\1.conv.\2"),
    (re.compile(r"^clip2sam\.fpn\.layer_blocks\.(\d+)\.0\.(weight|bias)$"), r"fpn_neck.fpn_convs.\1.conv.\2"),
    (re.compile(r"^clip2sam\.roi_conv\.0\.weight$"), r"mask_decoder.roi_conv.0.conv.weight"),
    (re.compile(r"^decoder\.label_token\.weight$"), r"mask_decoder.label_token.weight"),
    (re.compile(r"^decoder\.label_mlp\.(.+)$"), r"mask_decoder.label_mlp.\1"),
    (re.compile(r"^decoder\.mask_decoder\.(.+)$"), r"mask_decoder.mask_decoder.\1"),
]


def ours_to_reference_key(key: str) -> Optional[str]:
    """Reference clip2sam-file name of one of our ``OVSAM`` keys (None if not in that file)."""
    for pattern, template in _CLIP2SAM_INVERSE:
        if pattern.match(key):
            return pattern.sub(template, key)
    return None


def clip2sam_required(own_keys: Iterable[str]) -> List[str]:
    """Which of our keys a reference clip2sam file must provide (the optional decoder parts excluded)."""
    req = []
    for k in own_keys:
        if k.startswith("clip2sam.") or k.startswith("decoder.label_"):
            req.append(k)
        elif k.startswith("decoder.mask_decoder.") and not OPTIONAL_DECODER.match(k):
            req.append(k)
    return req


def reference_clip2sam_to_ours(ref: Mapping[str, torch.Tensor]) -> Tuple[StateDict, List[str]]:
    """Rename the reference's ``fpn_neck.*`` / ``mask_decoder.*`` keys; returns (ours, unmapped)."""
    ours, unmapped = {}, []
    for k, v in ref.items():
        if not k.startswith(CLIP2SAM_PREFIXES):
            continue  # other prefixes in the file are not this loader's business (as in the reference)
        for pattern, template in _CLIP2SAM_RULES:
            if pattern.match(k):
                ours[pattern.sub(template, k)] = v
                break
        else:
            unmapped.append(k)
    return ours, unmapped


__all__ = [
    "CLIP2SAM_PREFIXES",
    "OPTIONAL_DECODER",
    "clip2sam_required",
    "ours_to_reference_key",
    "reference_clip2sam_to_ours",
]
