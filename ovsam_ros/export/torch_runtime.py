"""PyTorch-side speed switches for GPUs (no export needed).

    model = optimize_for_inference(model, channels_last=True, compile=True)

* ``channels_last``: NHWC weights for the CLIP CNN, the SAM2CLIP patch
  embeddings and the FPN. cuDNN's fp16/bf16 convolution kernels are faster in
  NHWC on tensor-core GPUs (Volta and newer, Jetson Orin included); on CPUs it
  rarely helps. Inputs are converted by the benchmark (``x.contiguous(
  memory_format=torch.channels_last)``); the model also accepts NCHW inputs.
* ``compile``: ``torch.compile`` of the image path (backbone, SAM2CLIP, FPN;
  static shapes) and of the decoder with ``dynamic=True`` (the number of
  prompts changes between calls). The first calls are slow (compilation);
  benchmark with ``--warmup`` >= 2.

Mixed precision is the predictor's ``precision`` (``fp16``/``bf16`` autocast,
see :mod:`ovsam_ros.runtime`); it needs no change to the model.
"""

from __future__ import annotations

import torch
from torch import nn


def optimize_for_inference(model: nn.Module, channels_last: bool = False, compile: bool = False,
                           compile_mode: str = "max-autotune-no-cudagraphs") -> nn.Module:
    """Apply the switches in place to an :class:`~ovsam_ros.model.OVSAM` and return it."""
    if channels_last:
        for part in (model.backbone.clip.visual, model.sam2clip.patch_embeds, model.clip2sam.fpn):
            part.to(memory_format=torch.channels_last)
    if compile:
        model.backbone.forward = torch.compile(model.backbone.forward, mode=compile_mode)
        model.sam2clip.forward = torch.compile(model.sam2clip.forward, mode=compile_mode)
        model.clip2sam.fpn.forward = torch.compile(model.clip2sam.fpn.forward, mode=compile_mode)
        model.decoder.forward = torch.compile(model.decoder.forward, mode=compile_mode, dynamic=True)
    return model
