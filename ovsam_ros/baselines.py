"""The two recognition baselines the OVSAM paper compares against, on our masks.

* ``image-crop``: cut each mask's box out of the image (background outside the
  mask greyed to CLIP's mean colour), run CLIP's image encoder on the crop.
  One extra CLIP forward pass per instance: the costly two-model pipeline.
* ``feature-crop``: RoIAlign each mask's box on the frozen CLIP C5 feature map
  (already computed for the frame) and run CLIP's own image head (attention
  pool for RN, head + projection for ConvNeXt). This is also the frozen-CLIP
  branch of the reference evaluation ensemble.

Both replace ``labels`` (and ``embedding``) of the given results and score
them against the predictor's active vocabulary, so every mode is compared on
the same masks and the same text embeddings.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ovsam_ros.results import InstanceResult

METHODS = ("image-crop", "feature-crop")


@torch.inference_mode()
def relabel(predictor, results: Sequence[InstanceResult], method: str) -> list[InstanceResult]:
    """Re-recognise ``results`` (from ``predictor``'s current image) with a baseline method."""
    if method not in METHODS:
        raise ValueError(f"baseline must be one of {METHODS}, got {method!r}")
    if not results:
        return []
    if method == "image-crop":
        embeddings = _image_crop_embeddings(predictor, results)
    else:
        embeddings = _feature_crop_embeddings(predictor, results)
    labels = predictor.label_embeddings(embeddings)
    out = []
    for result, emb, lab in zip(results, embeddings.cpu().numpy(), labels):
        out.append(
            InstanceResult(
                mask=result.mask,
                predicted_iou=result.predicted_iou,
                stability_score=result.stability_score,
                box=result.box,
                labels=lab,
                prompt_index=result.prompt_index,
                low_res_logits=result.low_res_logits,
                embedding=emb,
            )
        )
    return out


def _image_crop_embeddings(predictor, results: Sequence[InstanceResult]) -> torch.Tensor:
    image = predictor.image_rgb
    if image is None:
        raise RuntimeError("no image set: call set_image() first")
    backbone = predictor.model.backbone
    mean = backbone.clip_pixel_mean.view(3).cpu().numpy()
    crops = []
    for result in results:
        x0, y0, x1, y1 = result.box
        if x1 <= x0 or y1 <= y0:  # empty mask: use the whole frame rather than fail
            x0, y0, x1, y1 = 0, 0, image.shape[1], image.shape[0]
        crop = image[y0:y1, x0:x1].astype(np.float32)
        inside = result.mask[y0:y1, x0:x1]
        if inside.any():
            crop = np.where(inside[:, :, None], crop, mean)
        crop_t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
        crops.append(backbone.normalize_for_clip(crop_t.to(predictor.device)))
    features = backbone.encode_image(torch.cat(crops))
    return F.normalize(features.float(), dim=-1)


def _feature_crop_embeddings(predictor, results: Sequence[InstanceResult]) -> torch.Tensor:
    features = predictor._require_image()
    boxes = np.array([r.box if r.area else (0, 0, *predictor.original_size[::-1]) for r in results], dtype=np.float32)
    input_boxes = predictor.transform.apply_boxes(boxes, predictor.original_size).to(predictor.device)
    pooled = predictor.model.backbone.pool_regions(features.clip_features[3], input_boxes)
    return F.normalize(pooled.float(), dim=-1)
