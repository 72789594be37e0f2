"""SAM prompt encoder + mask decoder with OVSAM's label token.

``prompt_encoder`` and ``mask_decoder`` are unmodified ``segment_anything``
modules, so Meta SAM checkpoints load into them with only their prefix
changed. :meth:`OVSAMDecoder.predict_masks` re-runs SAM's
``MaskDecoder.predict_masks`` math with a configurable output-token set:

* ``label_token`` (reference: prepended, output -> ``label_mlp`` -> CLIP dim);
* SAM's IoU token + all mask tokens (``output_tokens="sam"``) or only mask
  token 0 (``output_tokens="reference"``, the published OVSAM token set).

Why the label token changes masks: the two-way transformer's token
self-attention sees every output token, so adding one changes every other
token's output a little. With ``use_label_token=False`` and
``output_tokens="sam"`` the computation is exactly SAM's (tested against
``SamPredictor``). Token order does not matter (attention is permutation
equivariant and the tokens carry their own positional encoding).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.mask_decoder import MLP

from .config import DecoderConfig


class DecoderOutput(NamedTuple):
    masks: torch.Tensor  # [N, M, 4G, 4G] low-res mask logits
    iou_predictions: torch.Tensor  # [N, M] (NaN when the IoU token is not used)
    label_embeddings: Optional[torch.Tensor]  # [N, label_dim] or None without the label token


def build_sam_mask_decoder(cfg: DecoderConfig) -> MaskDecoder:
    """segment_anything's MaskDecoder with the sizes in ``cfg`` (shared by OVSAMDecoder and SAMIoUScorer)."""
    d = cfg.transformer_dim
    return MaskDecoder(
        transformer_dim=d,
        transformer=TwoWayTransformer(depth=cfg.depth, embedding_dim=d, mlp_dim=cfg.mlp_dim, num_heads=cfg.num_heads),
        num_multimask_outputs=cfg.num_multimask_outputs,
        iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
    )


class OVSAMDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, image_size: int, embedding_size: int, label_dim: int) -> None:
        super().__init__()
        d = cfg.transformer_dim
        self.prompt_encoder = PromptEncoder(
            embed_dim=d,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=cfg.mask_in_chans,
        )
        self.mask_decoder = build_sam_mask_decoder(cfg)
        # Names and shapes as in the reference OVSAMHead (label_mlp: SAM MLP, d -> d -> clip_dim).
        self.label_token = nn.Embedding(1, d)
        self.label_mlp = MLP(d, d, label_dim, cfg.label_mlp_depth)
        self.use_label_token = cfg.label_token
        # "auto" means SAM's token set until a published (one mask token) decoder is loaded.
        self.output_tokens = "sam" if cfg.output_tokens == "auto" else cfg.output_tokens

    @property
    def image_size(self) -> int:
        return int(self.prompt_encoder.input_image_size[0])

    @property
    def embedding_size(self) -> int:
        return int(self.prompt_encoder.image_embedding_size[0])

    @property
    def low_res_size(self) -> int:
        return 4 * self.embedding_size

    def encode_prompts(
        self,
        point_coords: Optional[torch.Tensor] = None,
        point_labels: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """SAM prompt encoding. Coordinates are input-image pixels (after resize, before pad).

        ``point_coords`` [N,P,2] xy with ``point_labels`` [N,P] (1 positive,
        0 negative, -1 padding), ``boxes`` [N,4] xyxy, ``mask_input``
        [N,1,4G,4G] low-res logits from a previous prediction.
        """
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        points = None
        if point_coords is not None:
            if point_coords.ndim != 3 or point_coords.shape[-1] != 2:
                raise ValueError(f"point_coords must be [N, P, 2], got {tuple(point_coords.shape)}")
            if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
                raise ValueError(
                    f"point_labels {tuple(point_labels.shape)} must match point_coords {tuple(point_coords.shape[:2])}"
                )
            points = (point_coords.float(), point_labels)
        if boxes is not None:
            if boxes.ndim == 3 and boxes.shape[1] == 1:
                boxes = boxes[:, 0]
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be [N, 4] xyxy, got {tuple(boxes.shape)}")
            boxes = boxes.float()
            if points is not None and boxes.shape[0] != points[0].shape[0]:
                raise ValueError(f"{points[0].shape[0]} point sets but {boxes.shape[0]} boxes")
        if mask_input is not None:
            expected = (1, self.low_res_size, self.low_res_size)
            if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != expected:
                raise ValueError(f"mask_input must be [N, {expected}], got {tuple(mask_input.shape)}")
            mask_input = mask_input.float()
        return self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        dense_embeddings: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """All-token mask prediction (no multimask selection).

        ``image_embeddings`` is [1, C, G, G] (shared by all prompts) or
        [N, C, G, G] (one per prompt, e.g. prompts from several images).
        Returns masks [N, T, 4G, 4G], iou [N, T] and label embeddings.
        """
        md = self.mask_decoder
        n = sparse_embeddings.shape[0]
        parts: List[torch.Tensor] = []
        if self.use_label_token:
            parts.append(self.label_token.weight)
        use_iou = self.output_tokens == "sam"
        if use_iou:
            parts += [md.iou_token.weight, md.mask_tokens.weight]
            num_masks = md.num_mask_tokens
        else:
            parts.append(md.mask_tokens.weight[:1])
            num_masks = 1
        output_tokens = torch.cat(parts, dim=0).unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat((output_tokens.to(sparse_embeddings.dtype), sparse_embeddings), dim=1)

        if image_embeddings.shape[0] not in (1, n):
            raise ValueError(f"image_embeddings batch {image_embeddings.shape[0]} is neither 1 nor {n} prompts")
        # Broadcasting (not repeat_interleave) shares one image embedding across the
        # prompts and keeps the prompt axis dynamic when traced for ONNX export.
        src = (image_embeddings + dense_embeddings).expand(n, -1, -1, -1)
        pos_src = self.prompt_encoder.get_dense_pe().expand(n, -1, -1, -1)
        b, c, h, w = src.shape

        hs, src = md.transformer(src, pos_src, tokens)
        i = 0
        label_out = None
        if self.use_label_token:
            label_out = hs[:, 0, :]
            i = 1
        iou_out = None
        if use_iou:
            iou_out = hs[:, i, :]
            i += 1
        mask_tokens_out = hs[:, i : i + num_masks, :]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = md.output_upscaling(src)
        hyper_in = torch.stack(
            [md.output_hypernetworks_mlps[k](mask_tokens_out[:, k, :]) for k in range(num_masks)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        if iou_out is not None:
            iou_pred = md.iou_prediction_head(iou_out)
        else:
            iou_pred = torch.full_like(masks[:, :, 0, 0], float("nan"))
        label_embeddings = self.label_mlp(label_out) if label_out is not None else None
        return masks, iou_pred, label_embeddings

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: Optional[torch.Tensor] = None,
        point_labels: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask_output: bool = True,
    ) -> DecoderOutput:
        """SAM semantics: ``multimask_output`` returns masks 1..K, else mask 0.

        With ``output_tokens="reference"`` there is only one mask whatever
        ``multimask_output`` says.
        """
        sparse, dense = self.encode_prompts(point_coords, point_labels, boxes, mask_input)
        masks, iou_pred, label_embeddings = self.predict_masks(image_embeddings, sparse, dense)
        sl: Union[slice, int] = slice(1, None) if (multimask_output and masks.shape[1] > 1) else slice(0, 1)
        return DecoderOutput(masks[:, sl], iou_pred[:, sl], label_embeddings)
