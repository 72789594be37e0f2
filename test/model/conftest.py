"""Tiny, randomly initialised models shared by the model tests (CPU, no downloads)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import pytest
import torch
from torch import nn

from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ovsam_ros.model import OVSAM, OVSAMConfig
from ovsam_ros.model.checkpoints import TINY_TEACHER_KWARGS
from ovsam_ros.model.config import DecoderConfig


def randomize_zero_init_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give zero-initialised tensors (SAM2CLIP pos_embed, rel-pos tables) random values.

    Otherwise a loader that silently skipped them would still "reproduce" outputs.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if ("pos_embed" in name or "rel_pos" in name) and t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.05)
    return model


def make_tiny_model(backbone: str = "rn", seed: int = 0, **decoder_overrides) -> OVSAM:
    cfg = OVSAMConfig.tiny(backbone)
    for k, v in decoder_overrides.items():
        setattr(cfg.decoder, k, v)
    torch.manual_seed(seed)
    return randomize_zero_init_(OVSAM(cfg), seed + 1).eval()


def make_tiny_sam(decoder_cfg: DecoderConfig, image_size: int = 256, seed: int = 0) -> Sam:
    """A segment_anything ``Sam`` with the tiny preset's geometry (for equivalence tests)."""
    torch.manual_seed(seed)
    grid = image_size // 16
    d = decoder_cfg.transformer_dim
    sam = Sam(
        image_encoder=ImageEncoderViT(
            norm_layer=partial(nn.LayerNorm, eps=1e-6), **{**TINY_TEACHER_KWARGS, "img_size": image_size, "out_chans": d}
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=d,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=decoder_cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=decoder_cfg.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=decoder_cfg.depth, embedding_dim=d, mlp_dim=decoder_cfg.mlp_dim, num_heads=decoder_cfg.num_heads
            ),
            transformer_dim=d,
            iou_head_depth=decoder_cfg.iou_head_depth,
            iou_head_hidden_dim=decoder_cfg.iou_head_hidden_dim,
        ),
    )
    return randomize_zero_init_(sam, seed + 1).eval()


@pytest.fixture(scope="session")
def tiny_model() -> OVSAM:
    """Shared tiny RN model. Tests must not modify it (build their own with make_tiny_model)."""
    return make_tiny_model("rn")


@pytest.fixture(scope="session")
def tiny_images() -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randn(2, 3, 256, 256)


@pytest.fixture(scope="session")
def tiny_features(tiny_model: OVSAM, tiny_images: torch.Tensor):
    with torch.no_grad():
        return tiny_model.encode_image(tiny_images)


@pytest.fixture
def tiny_model_factory() -> Callable[..., OVSAM]:
    return make_tiny_model


@pytest.fixture
def tiny_sam_factory() -> Callable[..., Sam]:
    return make_tiny_sam
