"""CLIP2SAM: region embeddings for recognition from the raw CLIP stages.

Reference behaviour (``OVSAMHead`` with ``gen_box=True``, mmdet ``FPN`` and
``SingleRoIExtractor``):

* an FPN (``fpn_channels``, 4 levels, no extra levels) over the four CLIP stages;
* each box (input-image pixels) is assigned to ONE FPN level by its scale
  ``sqrt(w*h)``: ``level = floor(log2(scale / 56 + 1e-6))`` clipped to 0..3,
  then RoIAligned (``aligned=True``, adaptive sampling) to ``roi_size``;
* ``roi_conv`` = 1x1 conv ``fpn_channels -> clip_dim`` without bias + ReLU,
  then a spatial mean gives the region embedding [N, clip_dim] that is
  compared (cosine) with CLIP text embeddings.

The reference also runs a label token through the SAM decoder and maps it
with ``label_mlp``, but multiplies that output by 0 before adding it to the
RoI embedding; :meth:`CLIP2SAM.combine` keeps that as ``label_weight``
(default 0.0), so the published checkpoints behave as published.

Checkpoint key mapping (reference -> ours), done by ``checkpoints.py``:
``fpn_neck.lateral_convs.{i}.conv.*`` -> ``fpn.inner_blocks.{i}.0.*``,
``fpn_neck.fpn_convs.{i}.conv.*`` -> ``fpn.layer_blocks.{i}.0.*``,
``mask_decoder.roi_conv.0.conv.weight`` -> ``roi_conv.0.weight``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork, roi_align

from .backbone import boxes_to_rois
from .config import CLIP2SAMConfig


class CLIP2SAM(nn.Module):
    def __init__(self, cfg: CLIP2SAMConfig, in_channels: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        self.strides = tuple(cfg.strides)
        self.roi_size = cfg.roi_size
        self.roi_level = cfg.roi_level
        self.finest_scale = cfg.finest_scale
        self.label_weight = cfg.label_weight
        # torchvision's FPN == mmdet's FPN here (1x1 laterals, nearest top-down, 3x3 outputs, biases).
        self.fpn = FeaturePyramidNetwork(list(in_channels), cfg.fpn_channels)
        self.roi_conv = nn.Sequential(
            nn.Conv2d(cfg.fpn_channels, embed_dim, kernel_size=1, bias=False), nn.ReLU(inplace=True)
        )

    @property
    def embed_dim(self) -> int:
        return self.roi_conv[0].out_channels

    def fpn_features(self, clip_features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Four CLIP maps -> four FPN maps (same strides), computed once per image."""
        dtype = self.roi_conv[0].weight.dtype
        inputs = OrderedDict((str(i), f.to(dtype)) for i, f in enumerate(clip_features))
        return list(self.fpn(inputs).values())

    def map_levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """FPN level index per box (mmdet's scale rule, or the fixed ``roi_level``)."""
        if self.roi_level is not None:
            return torch.full((boxes.shape[0],), int(self.roi_level), dtype=torch.long, device=boxes.device)
        wh = (boxes[:, 2:4] - boxes[:, 0:2]).clamp(min=0)
        scale = torch.sqrt(wh[:, 0] * wh[:, 1])
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=len(self.strides) - 1).long()

    def forward(
        self,
        fpn_features: Sequence[torch.Tensor],
        boxes: torch.Tensor,
        batch_indices: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Region embeddings [N, clip_dim] for ``boxes`` [N, 4] (xyxy, input-image pixels).

        ``batch_indices`` [N] selects the image of each box in a batched
        ``fpn_features`` (default: image 0).
        """
        rois = boxes_to_rois(boxes.to(fpn_features[0].dtype), batch_indices)
        levels = self.map_levels(rois[:, 1:])
        channels = fpn_features[0].shape[1]
        pooled = rois.new_zeros((rois.shape[0], channels, self.roi_size, self.roi_size))
        for level, (feat, stride) in enumerate(zip(fpn_features, self.strides)):
            idx = torch.nonzero(levels == level, as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            pooled[idx] = roi_align(
                feat, rois[idx], output_size=self.roi_size, spatial_scale=1.0 / stride, sampling_ratio=0, aligned=True
            )
        return self.roi_conv(pooled).mean(dim=(-2, -1))

    def combine(self, region_embeddings: torch.Tensor, label_embeddings: Optional[torch.Tensor]) -> torch.Tensor:
        """Add the decoder's label-token embedding, scaled by ``label_weight`` (reference: 0)."""
        if label_embeddings is None or self.label_weight == 0.0:
            return region_embeddings
        while label_embeddings.ndim < region_embeddings.ndim:
            label_embeddings = label_embeddings.unsqueeze(-2)  # broadcast over the M masks
        return region_embeddings + self.label_weight * label_embeddings
