"""Assembling an :class:`~ovsam_ros.model.ovsam.OVSAM` from files: the published pieces
(:func:`build_ovsam`) or an ``ovsam_ros`` checkpoint (:func:`load_ovsam`).

The top of the model package: it uses the model classes and the loaders of
:mod:`.checkpoints`, neither of which imports this module.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Optional, Union

import torch

from . import checkpoints
from .backbone import build_backbone
from .config import OVSAMConfig
from .ovsam import OVSAM

PathLike = checkpoints.PathLike


def build_ovsam(
    cfg: OVSAMConfig,
    sam_checkpoint: Optional[str] = None,
    sam2clip_checkpoint: Optional[str] = None,
    clip2sam_checkpoint: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    progress: Optional[checkpoints.LoadProgress] = None,
) -> OVSAM:
    """Build OVSAM from the published pieces (all LOCAL files, all optional).

    * CLIP weights: ``cfg.backbone.pretrained`` (open_clip file);
    * ``sam_checkpoint``: Meta ``sam_vit_*.pth`` -> prompt encoder + decoder;
    * ``sam2clip_checkpoint``: reference ``sam2clip_vith_rn50x16.pth``;
    * ``clip2sam_checkpoint``: reference ``clip2sam_{coco,lvis}_rn50x16.pth``,
      loaded after SAM so its fine-tuned decoder weights win.

    ``progress``: where each stage and weight file is logged as it starts
    (:class:`~.checkpoints.LoadProgress`; default: DEBUG lines).
    For an ``ovsam_ros`` checkpoint use :func:`load_ovsam` instead.
    """
    progress = progress if progress is not None else checkpoints.LoadProgress()
    cfg.validate()
    # The backbone first, as OVSAM(cfg) would build it (same random-number order), as its own stage.
    clip_file = cfg.backbone.pretrained
    with progress.stage(f"CLIP {cfg.backbone.model_name} image + text towers", clip_file,
                        "" if clip_file else "random init (no clip_weights)", short="CLIP"):
        backbone = build_backbone(cfg.backbone)
    with progress.stage("SAM2CLIP, CLIP2SAM, prompt encoder/decoder", detail="building (random init, then their files)",
                        short="build"):
        model = OVSAM(cfg, backbone=backbone)
    if sam_checkpoint is not None:
        with progress.stage("SAM prompt encoder/decoder", sam_checkpoint, short="SAM decoder"):
            checkpoints.load_sam_decoder(model.decoder, sam_checkpoint)
    if sam2clip_checkpoint is not None:
        with progress.stage("SAM2CLIP", sam2clip_checkpoint):
            checkpoints.load_reference_sam2clip(model, sam2clip_checkpoint)
    if clip2sam_checkpoint is not None:
        with progress.stage("CLIP2SAM", clip2sam_checkpoint):
            checkpoints.load_reference_clip2sam(model, clip2sam_checkpoint)
    return model.to(device).eval()


def load_ovsam(
    path: PathLike,
    device: Union[str, torch.device] = "cpu",
    clip_pretrained: Optional[PathLike] = None,
    progress: Optional[checkpoints.LoadProgress] = None,
) -> OVSAM:
    """Rebuild an :class:`OVSAM` from an ``ovsam_ros`` checkpoint (strict); ``progress`` as in
    :func:`build_ovsam`."""
    progress = progress if progress is not None else checkpoints.LoadProgress()
    with progress.stage("OVSAM checkpoint", path, short="checkpoint"):
        cfg, state, payload = checkpoints.read_ovsam_checkpoint(path)
    has_backbone = any(k.startswith("backbone.") for k in state)
    if has_backbone:
        backbone_cfg = replace(cfg.backbone, pretrained=None)  # weights come from this file
    else:
        pretrained = clip_pretrained if clip_pretrained is not None else cfg.backbone.pretrained
        if pretrained is None:
            raise checkpoints.CheckpointError(
                f"{path}: saved without CLIP backbone weights and no open_clip weights file given "
                "(set clip_pretrained= or config backbone.pretrained)"
            )
        backbone_cfg = replace(cfg.backbone, pretrained=os.fspath(pretrained))
    with progress.stage(f"CLIP {cfg.backbone.model_name} image + text towers", backbone_cfg.pretrained,
                        "building (weights from the checkpoint)" if has_backbone else "", short="CLIP"):
        backbone = build_backbone(backbone_cfg)
    with progress.stage("SAM2CLIP, CLIP2SAM, prompt encoder/decoder", detail="building, then the checkpoint's weights",
                        short="build"):
        model = OVSAM(cfg, backbone=backbone)
        required = [k for k in model.state_dict() if has_backbone or not k.startswith("backbone.")]
        checkpoints.apply_state_dict(model, path, f"{checkpoints.FORMAT_NAME} model", state, required)
    logging.getLogger(__name__).info(
        "loaded OVSAM (%s) from %s; CLIP backbone weights from %s", cfg.backbone.model_name, path,
        "the same file" if has_backbone else backbone_cfg.pretrained)
    # What training stored next to the weights (stage, step, config, stage 2's vocabulary): plain data.
    model.checkpoint_extra = dict(payload.get("extra") or {})
    return model.to(device).eval()


__all__ = ["build_ovsam", "load_ovsam"]
