"""SAM's own mask decoder, kept only for its IoU prediction.

The published OVSAM decoder has one mask token and no IoU head, so its
masks come without a quality estimate. SAM's "everything" mode filters
candidates by predicted IoU; :class:`SAMIoUScorer` supplies one by running
Meta SAM's original decoder (from the SAM checkpoint, before fine-tuning)
on the same image embedding and prompts and reading the IoU of its
single-mask output (token 0, SAM's ``multimask_output=False``).

The OVSAM mask itself is not touched: the score estimates how good SAM's
own single mask for that prompt would be, which is a proxy for the
fine-tuned mask that grew out of the same token.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DecoderConfig
from .decoder import build_sam_mask_decoder


class SAMIoUScorer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.mask_decoder = build_sam_mask_decoder(cfg)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        dense_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """[N] predicted IoU of SAM's single-mask output for each prompt.

        ``image_embeddings`` [1, C, G, G]; ``image_pe`` from the prompt
        encoder's ``get_dense_pe()``; sparse/dense from the same prompt
        encoder that fed the OVSAM decoder.
        """
        _, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings.to(sparse_embeddings.dtype),
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_embeddings,
            dense_prompt_embeddings=dense_embeddings,
        )
        return iou[:, 0]


__all__ = ["SAMIoUScorer"]
