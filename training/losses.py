"""Stage-2 losses (reference: mmdet Mask2Former-style point losses + softmax CE).

* mask: sigmoid BCE and Dice on points of the low-resolution logits, sampled
  with Mask2Former / PointRend *uncertainty sampling*: draw
  ``num_points * oversample_ratio`` uniform points, keep the
  ``importance_sample_ratio`` share with the most uncertain logits (|logit|
  smallest), fill up with fresh uniform points. ``point_sample`` is
  ``torch.nn.functional.grid_sample`` on [0, 1] coordinates, so logits
  (4G x 4G) and ground-truth masks (S x S) are read at the same places.
  ``point_sampling="random"`` skips the uncertainty step (cheaper, tiny runs).
* classification: softmax cross-entropy of :func:`class_logits` (cosine x 100
  against the training vocabulary's text embeddings, background column last)
  with class weight ``background_weight`` on the background column.

All losses return SUMS over instances; the trainer divides by the global
number of instances (all ranks, all accumulation micro-batches), so one
process with batch 8 and two with 4 give the same gradient.
"""

from __future__ import annotations

from typing import Callable, List

import torch
import torch.nn.functional as F

from ovsam_ros.model.recognition import class_logits
from ovsam_ros.model.vocabulary import TextEmbeddings


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``inputs`` [N, C, H, W] at ``coords`` [N, P, 2] (x, y in [0, 1]) -> [N, C, P]."""
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # [N, P, 1, 2]
    return F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", align_corners=False).squeeze(3)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    return -logits.abs()


def sample_points(
    logits: torch.Tensor,
    num_points: int,
    generators: List[torch.Generator],
    counts: List[int],
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    mode: str = "uncertainty",
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor] = uncertainty,
) -> torch.Tensor:
    """Point coordinates [N, num_points, 2] in [0, 1] for the N masks ``logits`` [N, 1, h, w].

    Randomness: masks ``counts[i]`` consecutive rows belong to image ``i`` and
    use ``generators[i]`` (seeded per sample), so the points do not depend on
    how images are grouped into batches or ranks.
    """
    n, device = logits.shape[0], logits.device

    def rand(k: int) -> torch.Tensor:
        parts = [torch.rand(c, k, 2, generator=g) for g, c in zip(generators, counts) if c]
        return (torch.cat(parts) if parts else torch.zeros(0, k, 2)).to(device)

    if mode == "random":
        return rand(num_points)
    if mode != "uncertainty":
        raise ValueError(f"point sampling must be 'uncertainty' or 'random', got {mode!r}")
    num_sampled = int(num_points * oversample_ratio)
    coords = rand(num_sampled)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    with torch.no_grad():
        point_logits = point_sample(logits.float(), coords)  # [N, 1, P']
        idx = torch.topk(uncertainty_fn(point_logits[:, 0, :]), k=num_uncertain, dim=1)[1]
    picked = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        picked = torch.cat([picked, rand(num_random)], dim=1)
    assert picked.shape[0] == n
    return picked


def mask_losses(logits: torch.Tensor, targets: torch.Tensor, coords: torch.Tensor):
    """(BCE sum, Dice sum) over N instances; ``logits`` [N, 1, h, w], ``targets`` [N, 1, H, W] float."""
    pl = point_sample(logits.float(), coords)[:, 0]  # [N, P]
    with torch.no_grad():
        pt = point_sample(targets.float(), coords)[:, 0]
    bce = F.binary_cross_entropy_with_logits(pl, pt, reduction="none").mean(dim=1)
    prob = pl.sigmoid()
    dice = 1.0 - (2.0 * (prob * pt).sum(1) + 1.0) / (prob.sum(1) + pt.sum(1) + 1.0)
    return bce.sum(), dice.sum()


def classification_loss(regions: torch.Tensor, labels: torch.Tensor, text: TextEmbeddings,
                        background_weight: float = 0.1) -> torch.Tensor:
    """Sum over regions of the softmax CE with a background column of weight ``background_weight``."""
    logits = class_logits(regions.float(), text, with_background=True)
    ce = F.cross_entropy(logits, labels, reduction="none")
    weight = torch.where(labels == logits.shape[1] - 1, ce.new_tensor(background_weight), ce.new_tensor(1.0))
    return (ce * weight).sum()


def lowres_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with the target masks resized to the logits' grid ([N])."""
    t = F.interpolate(targets.float(), size=logits.shape[-2:], mode="area") > 0.5
    p = logits > 0
    inter = (p & t).flatten(1).sum(1).float()
    union = (p | t).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


__all__ = ["classification_loss", "lowres_iou", "mask_losses", "point_sample", "sample_points", "uncertainty"]
