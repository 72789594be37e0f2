"""The assembled Open-Vocabulary SAM: one CLIP backbone, two light heads.

``encode_image`` runs once per frame (the expensive part); ``decode`` runs
per prompt batch and returns masks, SAM IoU scores and CLIP-space region
embeddings that the recognition code compares with text embeddings.

Coordinates everywhere in this module are INPUT-image pixels: the original
image resized so its long side is ``image_size`` (before bottom/right
padding). :class:`~ovsam_ros.model.transforms.ImageTransform` maps to and
from original-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .backbone import CLIPBackbone, build_backbone
from .clip2sam import CLIP2SAM
from .config import OVSAMConfig
from .decoder import OVSAMDecoder
from .sam2clip import SAM2CLIP
from .transforms import postprocess_masks


@dataclass
class ImageFeatures:
    """Per-image results of :meth:`OVSAM.encode_image` (batch dimension B first)."""

    sam_embedding: torch.Tensor  # [B, C, G, G] SAM2CLIP output (decoder input)
    clip_features: List[torch.Tensor]  # 4 raw CLIP stages, strides 4/8/16/32
    fpn_features: List[torch.Tensor]  # 4 CLIP2SAM FPN maps, same strides

    @property
    def batch_size(self) -> int:
        return int(self.sam_embedding.shape[0])

    def select(self, index: int) -> "ImageFeatures":
        """Features of one image, batch dimension kept (size 1)."""
        sl = slice(index, index + 1)
        return ImageFeatures(
            self.sam_embedding[sl], [f[sl] for f in self.clip_features], [f[sl] for f in self.fpn_features]
        )

    def to(self, device: Union[str, torch.device]) -> "ImageFeatures":
        return ImageFeatures(
            self.sam_embedding.to(device),
            [f.to(device) for f in self.clip_features],
            [f.to(device) for f in self.fpn_features],
        )


def masks_to_boxes(masks: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Tight xyxy boxes of ``masks > threshold`` ([..., H, W] -> [..., 4]).

    Same convention as mmdet's ``mask2bbox`` used by the reference: the box
    is ``[x0, y0, x1 + 1, y1 + 1]`` in mask pixels; empty masks give zeros.
    """
    fg = masks > threshold
    h, w = fg.shape[-2:]
    cols, rows = fg.any(dim=-2), fg.any(dim=-1)  # [..., W], [..., H]
    nonempty = cols.any(dim=-1)
    x0 = cols.float().argmax(dim=-1)
    x1 = w - cols.flip(-1).float().argmax(dim=-1)
    y0 = rows.float().argmax(dim=-1)
    y1 = h - rows.flip(-1).float().argmax(dim=-1)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).to(masks.dtype if masks.is_floating_point() else torch.float32)
    return boxes * nonempty.unsqueeze(-1)


#: Which box of a predicted mask CLIP2SAM pools (``OVSAM.decode(roi_box=...)``): "mask" = the box of
#: the whole mask (the reference's test-time rule); "largest_component" = the box of its largest
#: 8-connected piece (ours), so that stray fragments of a mask do not inflate the pooled region.
ROI_BOXES = ("mask", "largest_component")


def check_roi_box(roi_box: str) -> str:
    """``roi_box`` if it is one of :data:`ROI_BOXES`, else a ValueError naming them."""
    if roi_box not in ROI_BOXES:
        raise ValueError(f"roi_box must be one of {', '.join(ROI_BOXES)}; got {roi_box!r}")
    return roi_box


def largest_component_boxes(masks: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """:func:`masks_to_boxes` of each mask's largest 8-connected piece of ``masks > threshold``
    ([..., H, W] -> [..., 4], same convention; equal to it for one-piece masks, zeros if empty).

    Connected components are OpenCV's, on the host (one copy of the low-res masks per call)."""
    import cv2
    import numpy as np

    fg = (masks.detach() > threshold).to("cpu", torch.uint8).numpy()
    flat = fg.reshape(-1, *fg.shape[-2:])
    boxes = np.zeros((flat.shape[0], 4), np.float32)
    for i, mask in enumerate(flat):
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if count > 1:  # label 0 is the background
            k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            x, y, w, h = (int(v) for v in stats[k, :4])
            boxes[i] = (x, y, x + w, y + h)
    dtype = masks.dtype if masks.is_floating_point() else torch.float32
    return torch.from_numpy(boxes).reshape(*masks.shape[:-2], 4).to(masks.device, dtype)


class OVSAM(nn.Module):
    def __init__(self, cfg: OVSAMConfig, backbone: Optional[CLIPBackbone] = None) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else build_backbone(cfg.backbone)
        channels = list(cfg.sam2clip.in_channels or self.backbone.channels)
        if channels != list(self.backbone.channels):
            raise ValueError(f"sam2clip.in_channels {channels} != backbone channels {self.backbone.channels}")
        clip_dim = cfg.clip2sam.embed_dim or self.backbone.embed_dim
        if clip_dim != self.backbone.embed_dim:
            raise ValueError(f"clip2sam.embed_dim {clip_dim} != CLIP embed dim {self.backbone.embed_dim}")
        self.sam2clip = SAM2CLIP(cfg.sam2clip, channels, cfg.image_size)
        self.clip2sam = CLIP2SAM(cfg.clip2sam, channels, clip_dim)
        self.decoder = OVSAMDecoder(cfg.decoder, cfg.image_size, cfg.embedding_size, clip_dim)

    # -- sizes / convenience ---------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def clip_dim(self) -> int:
        return self.clip2sam.embed_dim

    @property
    def device(self) -> torch.device:
        return self.decoder.label_token.weight.device

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.backbone.encode_text(tokens, normalize=normalize)

    def current_config(self) -> OVSAMConfig:
        """``cfg`` with the runtime switches (label token, token layout, label weight) as they are now."""
        cfg = OVSAMConfig.from_dict(self.cfg.to_dict())
        cfg.decoder.label_token = bool(self.decoder.use_label_token)
        cfg.decoder.output_tokens = self.decoder.output_tokens
        cfg.clip2sam.label_weight = float(self.clip2sam.label_weight)
        cfg.clip2sam.roi_level = self.clip2sam.roi_level
        cfg.validate()
        return cfg

    # -- image -----------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Padded, SAM-normalised images [B, 3, S, S] -> :class:`ImageFeatures`."""
        s = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (s, s):
            raise ValueError(f"images must be [B, 3, {s}, {s}] (see ImageTransform), got {tuple(images.shape)}")
        clip_features = self.backbone(images)
        return ImageFeatures(
            sam_embedding=self.sam2clip(clip_features),
            clip_features=clip_features,
            fpn_features=self.clip2sam.fpn_features(clip_features),
        )

    # -- prompts -----------------------------------------------------------------
    def decode(
        self,
        features: ImageFeatures,
        point_coords: Optional[torch.Tensor] = None,
        point_labels: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask_output: bool = True,
        image_index: Union[int, torch.Tensor] = 0,
        roi_boxes: Optional[torch.Tensor] = None,
        roi_box: str = "mask",
    ) -> Dict[str, Optional[torch.Tensor]]:
        """Masks + IoU + region embeddings for N prompts.

        Prompts follow SAM (input-image pixels): ``point_coords`` [N,P,2],
        ``point_labels`` [N,P] (1 pos / 0 neg / -1 pad), ``boxes`` [N,4],
        ``mask_input`` [N,1,4G,4G]. ``image_index`` picks the image in a
        batched ``features`` (an int for all prompts or a [N] tensor).

        Region embeddings are RoI features of the box of each predicted
        mask (reference test-time behaviour; ``roi_box="largest_component"``: of
        its largest connected piece, see :data:`ROI_BOXES`), or of ``roi_boxes``
        [N,4] when given (reference training used ground-truth boxes).

        Returns a dict:
          ``masks_lowres`` [N,M,4G,4G] logits, ``iou`` [N,M],
          ``region_embeddings`` [N,M,clip_dim] (not normalised),
          ``roi_boxes`` [N,M,4] input-pixel boxes that were pooled,
          ``label_embeddings`` [N,clip_dim] or None (label-token output).
        """
        if isinstance(image_index, int):
            if not 0 <= image_index < features.batch_size:
                raise IndexError(f"image_index {image_index} out of range for {features.batch_size} image(s)")
            image_embeddings = features.sam_embedding[image_index : image_index + 1]
        else:
            image_index = image_index.to(features.sam_embedding.device).long()
            image_embeddings = features.sam_embedding[image_index]
        check_roi_box(roi_box)
        out = self.decoder(image_embeddings, point_coords, point_labels, boxes, mask_input, multimask_output)
        n, m = out.masks.shape[:2]

        if roi_boxes is not None:
            if tuple(roi_boxes.shape) != (n, 4):
                raise ValueError(f"roi_boxes must be [{n}, 4], got {tuple(roi_boxes.shape)}")
            pooled_boxes = roi_boxes.to(out.masks).unsqueeze(1).expand(n, m, 4)
        else:
            scale = self.image_size / out.masks.shape[-1]
            to_boxes = masks_to_boxes if roi_box == "mask" else largest_component_boxes
            pooled_boxes = to_boxes(out.masks) * scale
        if isinstance(image_index, int):
            batch = torch.full((n * m,), image_index, device=out.masks.device)
        else:
            batch = image_index.to(out.masks.device).repeat_interleave(m)
        regions = self.clip2sam(features.fpn_features, pooled_boxes.reshape(-1, 4), batch).view(n, m, -1)
        regions = self.clip2sam.combine(regions, out.label_embeddings)
        return {
            "masks_lowres": out.masks,
            "iou": out.iou_predictions,
            "region_embeddings": regions,
            "roi_boxes": pooled_boxes,
            "label_embeddings": out.label_embeddings,
        }

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int]
    ) -> torch.Tensor:
        """Low-res logits [..., 4G, 4G] -> logits at the ORIGINAL image size (SAM's math)."""
        return postprocess_masks(masks, self.image_size, input_size, original_size)


__all__ = ["ImageFeatures", "OVSAM", "ROI_BOXES", "check_roi_box", "largest_component_boxes", "masks_to_boxes"]
