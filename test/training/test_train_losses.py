"""Stage-2 losses: point sampling, mask BCE/Dice, classification with a background column."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovsam_ros.model.recognition import class_logits
from ovsam_ros.model.vocabulary import TextEmbeddings, Vocabulary
from training.losses import classification_loss, lowres_iou, mask_losses, point_sample, sample_points


def test_point_sample_reads_pixel_centres():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    ij = torch.tensor([[0, 0], [1, 2], [3, 3]])
    coords = torch.stack([(ij[:, 1] + 0.5) / 4, (ij[:, 0] + 0.5) / 4], -1)[None]
    assert torch.allclose(point_sample(x, coords)[0, 0], x[0, 0, ij[:, 0], ij[:, 1]])


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_uncertainty_sampling_prefers_uncertain_points_and_is_batch_independent():
    logits = torch.full((3, 1, 32, 32), 8.0)
    logits[:, :, :, 12:20] = 0.0  # the uncertain band: a quarter of the area
    coords = sample_points(logits, 400, _gens(1, 2), [2, 1], oversample_ratio=6.0, importance_sample_ratio=0.75)
    assert coords.shape == (3, 400, 2) and coords.min() >= 0 and coords.max() <= 1
    in_band = ((coords[..., 0] * 32 >= 11.5) & (coords[..., 0] * 32 <= 20.5)).float().mean()
    assert in_band > 0.7  # 75% importance-sampled from the band, the rest uniform (a quarter of those too)
    # the points of an image do not depend on the other images in the batch
    alone = sample_points(logits[2:], 400, _gens(2), [1], 6.0, 0.75)
    assert torch.equal(alone, coords[2:])
    rand = sample_points(logits, 100, _gens(1, 2), [2, 1], mode="random")
    assert rand.shape == (3, 100, 2)


def test_mask_losses_small_for_right_masks_large_for_wrong():
    gt = torch.zeros(2, 1, 64, 64)
    gt[0, :, 10:30, 10:40] = 1
    gt[1, :, 40:60, 5:20] = 1
    good = F.interpolate(gt, size=16, mode="area").gt(0.5).float() * 20 - 10
    coords = sample_points(good, 512, _gens(0), [2], mode="random")
    bce_good, dice_good = mask_losses(good, gt, coords)
    bce_bad, dice_bad = mask_losses(-good, gt, coords)
    assert bce_good < 0.5 and dice_good < 0.3
    assert bce_bad > 5 * bce_good and dice_bad > 1.5
    assert lowres_iou(good, gt).min() > 0.8 and lowres_iou(-good, gt).max() < 0.1


def _text(dim=8, classes=3):
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(classes, 1, dim), dim=-1)
    vocab = Vocabulary("t", "", [f"c{i}" for i in range(classes)], [[f"c{i}"] for i in range(classes)])
    return TextEmbeddings(emb, torch.ones(classes, 1, dtype=torch.bool), vocab)


def test_classification_loss_is_ce_over_classes_plus_background():
    text = _text()
    regions = torch.randn(5, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1])  # 3 = background column
    loss = classification_loss(regions, labels, text, background_weight=0.1)
    logits = class_logits(regions, text)
    assert logits.shape == (5, 4)
    ce = F.cross_entropy(logits, labels, reduction="none")
    expected = ce[[0, 1, 2, 4]].sum() + 0.1 * ce[3]
    assert torch.allclose(loss, expected)
    loss.backward()
    assert regions.grad is not None and torch.isfinite(regions.grad).all()
    # the text embedding of the right class as region -> near-zero loss
    aligned = classification_loss(text.embeddings[:, 0] * 3, torch.arange(3), text)
    assert aligned < 0.01
