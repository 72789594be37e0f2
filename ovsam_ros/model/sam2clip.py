"""SAM2CLIP: map the four CLIP stages onto SAM's image embedding.

Architecture (paper Sec. 3.2, reference ``MultiLayerTransformerNeck``):

1. every CLIP stage is patch-embedded to ``embed_dim`` at stride 16
   (kernel = stride = 4, 2, 1 for strides 4/8/16; a stride-2 transposed conv
   upsamples the stride-32 stage) and gets a learned per-level embedding;
   the levels are summed;
2. SAM ViT-H's absolute position embedding is added (a frozen buffer,
   [1, G, G, embed_dim], filled from the checkpoint);
3. ``depth`` SAM ViT blocks (relative position, windowed except the
   ``global_attn_indexes``) and SAM's neck (1x1 conv, LN, 3x3 conv, LN)
   give the [B, out_chans, G, G] embedding the SAM decoder expects.

Submodule names equal the reference's, so a reference checkpoint loads after
stripping its ``neck_student.`` prefix, key for key:

=====================================  =====================================
reference (after ``neck_student.``)    ours (``OVSAM.sam2clip.``)
=====================================  =====================================
``patch_embeds.{i}.projection.*``      ``patch_embeds.{i}.projection.*``
``level_encoding.weight``              ``level_encoding.weight``
``pos_embed``                          ``pos_embed`` (buffer)
``blocks.{j}.*``                       ``blocks.{j}.*`` (segment_anything Block)
``neck.{0,1,2,3}.*``                   ``neck.{0,1,2,3}.*``
=====================================  =====================================
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import nn

from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Block

from .config import EMBEDDING_STRIDE, SAM2CLIPConfig


class LevelEmbed(nn.Module):
    """Conv patch-embed of one CLIP stage to the stride-16 grid, channels-last output.

    The conv sits in ``projection`` like mmdet's ``PatchEmbed`` so the
    reference keys match without renaming.
    """

    def __init__(self, in_chans: int, embed_dim: int, stride: int, target_stride: int = EMBEDDING_STRIDE) -> None:
        super().__init__()
        if stride > target_stride:
            factor = stride // target_stride
            self.projection: nn.Module = nn.ConvTranspose2d(in_chans, embed_dim, kernel_size=factor, stride=factor)
        else:
            factor = target_stride // stride
            self.projection = nn.Conv2d(in_chans, embed_dim, kernel_size=factor, stride=factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x).permute(0, 2, 3, 1)  # B,H,W,C like SAM's ViT blocks


class SAM2CLIP(nn.Module):
    def __init__(self, cfg: SAM2CLIPConfig, in_channels: Sequence[int], image_size: int) -> None:
        super().__init__()
        if len(in_channels) != len(cfg.strides):
            raise ValueError(f"need one input channel count per stride {cfg.strides}, got {list(in_channels)}")
        self.grid = image_size // EMBEDDING_STRIDE
        self.patch_embeds = nn.ModuleList(
            LevelEmbed(c, cfg.embed_dim, s) for c, s in zip(in_channels, cfg.strides)
        )
        self.level_encoding = nn.Embedding(len(in_channels), cfg.embed_dim)  # N(0,1) init, as the reference
        # SAM's absolute position embedding: copied from the checkpoint, never trained.
        self.register_buffer("pos_embed", torch.zeros(1, self.grid, self.grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=cfg.embed_dim,
                num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                act_layer=nn.GELU,
                use_rel_pos=True,
                rel_pos_zero_init=True,
                window_size=0 if i in cfg.global_attn_indexes else cfg.window_size,
                input_size=(self.grid, self.grid),
            )
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    @property
    def out_chans(self) -> int:
        return self.neck[0].out_channels

    def forward(self, clip_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Four CLIP maps (strides 4/8/16/32) -> SAM embedding [B, out_chans, G, G]."""
        if len(clip_features) != len(self.patch_embeds):
            raise ValueError(f"expected {len(self.patch_embeds)} CLIP feature maps, got {len(clip_features)}")
        x = None
        for level, (embed, feat) in enumerate(zip(self.patch_embeds, clip_features)):
            y = embed(feat.to(self.level_encoding.weight.dtype)) + self.level_encoding.weight[level]
            x = y if x is None else x + y
        if tuple(x.shape[1:3]) != tuple(self.pos_embed.shape[1:3]):
            raise ValueError(
                f"SAM2CLIP grid {tuple(x.shape[1:3])} does not match its position embedding "
                f"{tuple(self.pos_embed.shape[1:3])}: feed padded {self.grid * EMBEDDING_STRIDE}px images"
            )
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))

