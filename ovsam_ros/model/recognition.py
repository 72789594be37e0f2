"""Open-vocabulary classification of region embeddings (pure PyTorch, no ROS).

The OVSAM classifier (reference ``OVSAMHead.forward_logit``): the region embedding
from CLIP2SAM is L2-normalised, compared by cosine similarity with every synonym
embedding of every class, the maximum over a class's synonyms is taken and
multiplied by a fixed logit scale of 100 (``exp(4.6052)``). A background class
with an all-zero text vector is appended, so its logit is always 0: a region is
called background when no class reaches a positive cosine similarity.

The whole vocabulary is scored with ONE matrix product against the flattened
``[C*S, D]`` text matrix, so 21K-class vocabularies cost one GEMM.

:func:`ensemble` is the reference's evaluation-time combination with a frozen
CLIP branch (geometric mean of the two class distributions, weight ``alpha`` for
base classes and ``beta`` for novel ones).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .vocabulary import BACKGROUND_NAME, TextEmbeddings, Vocabulary

__all__ = ["DEFAULT_LOGIT_SCALE", "RecognitionHead", "class_logits", "ensemble", "topk_labels"]

#: Fixed logit scale of the reference classifier: it keeps ``4.6052`` in a float32 buffer and
#: multiplies the cosine similarity by its ``exp()``, which is 100.00296 in float32 (not 100).
DEFAULT_LOGIT_SCALE = 100.00296020507812

Label = Tuple[int, str, float]


def class_logits(
    region_embeddings: torch.Tensor,
    text: TextEmbeddings,
    logit_scale: float = DEFAULT_LOGIT_SCALE,
    with_background: bool = True,
) -> torch.Tensor:
    """Cosine-similarity logits of regions against a vocabulary.

    Args:
        region_embeddings: ``[N, D]`` (any norm; they are L2-normalised here).
        text: :class:`TextEmbeddings` with ``embeddings [C, S, D]`` and ``valid [C, S]``.
        logit_scale: multiplier of the cosine similarity (``exp(4.6052)`` = 100.003 in the reference).
        with_background: append a background column whose logit is always 0.

    Returns:
        ``[N, C]`` or ``[N, C + 1]`` float32 logits (background last).

    Non-finite input: a row containing NaN or inf is treated as carrying no evidence: all its
    class logits are ``-inf`` and its background logit 0, so softmax puts all mass on the
    background (and :func:`topk_labels` returns no class for it). An all-zero row gets
    logit 0 for every class.
    """
    return _class_logits(region_embeddings, text.embeddings, text.valid, logit_scale, with_background)


def _class_logits(region_embeddings: torch.Tensor, embeddings: torch.Tensor, valid: torch.Tensor,
                  logit_scale: float, with_background: bool) -> torch.Tensor:
    if region_embeddings.dim() != 2:
        raise ValueError(f"region_embeddings must be [N, D], got {tuple(region_embeddings.shape)}")
    num_classes, num_syn, dim = embeddings.shape
    if region_embeddings.shape[1] != dim:
        raise ValueError(f"region embeddings have dim {region_embeddings.shape[1]}, text embeddings {dim}")
    device = region_embeddings.device
    dtype = torch.promote_types(region_embeddings.dtype, embeddings.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32

    finite = torch.isfinite(region_embeddings).all(dim=1)
    zero = torch.zeros((), dtype=region_embeddings.dtype, device=device)
    regions = torch.where(finite.unsqueeze(1), region_embeddings, zero)
    regions = F.normalize(regions.to(dtype), dim=-1)

    weight = embeddings.to(device=device, dtype=dtype).reshape(num_classes * num_syn, dim)
    mask = valid.to(device=device).reshape(1, num_classes, num_syn)
    sims = regions @ weight.t()  # the single [N, C*S] product
    sims = sims.view(-1, num_classes, num_syn).masked_fill(~mask, float("-inf"))
    logits = sims.amax(dim=-1).float() * float(logit_scale)
    logits = logits.masked_fill(~finite.unsqueeze(1), float("-inf"))
    if with_background:
        logits = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1)
    return logits


def _background_column(logits: torch.Tensor, vocab_size: int) -> bool:
    width = logits.shape[-1]
    if width == vocab_size + 1:
        return True
    if width == vocab_size:
        return False
    raise ValueError(f"logits have {width} columns; expected {vocab_size} classes (+1 background)")


def topk_labels(
    logits: torch.Tensor,
    vocab: Vocabulary,
    k: int = 5,
    exclude_background: bool = True,
) -> List[List[Label]]:
    """Top-k ``(class_index, name, score)`` per row, scores = softmax over all columns.

    The softmax includes the background column when the logits have one, so with
    ``exclude_background=True`` the reported class scores sum to at most 1 (the rest is
    the background probability); otherwise the background may appear as
    ``(len(vocab), "background", p)``. Classes whose logit is ``-inf`` are never reported,
    and a row without any finite logit yields an empty list.
    """
    if logits.dim() == 1:
        logits = logits.unsqueeze(0)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, W], got {tuple(logits.shape)}")
    if k < 1:
        raise ValueError("k must be >= 1")
    has_bg = _background_column(logits, len(vocab))
    logits = logits.detach().float()
    finite_row = torch.isfinite(logits).any(dim=1)
    safe = torch.where(finite_row.unsqueeze(1), logits, torch.zeros_like(logits))
    probs = safe.softmax(dim=-1)
    candidates = probs[:, :len(vocab)] if (exclude_background or not has_bg) else probs
    cand_logits = logits[:, :candidates.shape[1]]
    scores, index = candidates.topk(min(k, candidates.shape[1]), dim=-1)
    picked = torch.gather(cand_logits, 1, index)
    scores, index, picked = scores.cpu().tolist(), index.cpu().tolist(), picked.cpu()
    out: List[List[Label]] = []
    for row in range(len(scores)):
        labels: List[Label] = []
        if bool(finite_row[row]):
            for j, (i, p) in enumerate(zip(index[row], scores[row])):
                if picked[row, j] == float("-inf"):
                    continue
                name = BACKGROUND_NAME if i == len(vocab) else vocab.classes[i]
                labels.append((int(i), name, float(p)))
        out.append(labels)
    return out


def ensemble(
    learned_logits: torch.Tensor,
    clip_logits: torch.Tensor,
    base_mask: Union[torch.Tensor, Sequence[bool]],
    alpha: float = 0.1,
    beta: float = 0.9,
    valid: Optional[torch.Tensor] = None,
    ignore_mask: Optional[Union[torch.Tensor, Sequence[bool]]] = None,
) -> torch.Tensor:
    """Reference evaluation ensemble of the learned classifier and a frozen-CLIP classifier.

    With ``q = softmax(learned_logits)`` and ``p = softmax(clip_logits)`` the score of a base
    class (and of the background column) is ``log(q**(1-alpha) * p**alpha)`` and that of any
    other class ``log(q**(1-beta) * p**beta)`` (computed in log space, so nothing underflows).

    Args:
        learned_logits, clip_logits: ``[N, C]`` or ``[N, C + 1]`` (same shape; background last).
        base_mask: ``[C]`` bool, True for base (seen-in-training) classes.
        alpha, beta: CLIP weight for base and for novel classes (reference: 0.1 and 0.9).
        valid: optional ``[N]`` bool; rows that are False use the learned scores only
            (the reference does this when the predicted mask is empty at CLIP resolution).
        ignore_mask: optional ``[C]`` bool of classes to exclude (score ``-inf``), e.g. the
            ``unused`` classes of the open-vocabulary COCO split.

    Returns:
        ``[N, W]`` log-scores; feed them to :func:`topk_labels` (which renormalises).
    """
    if learned_logits.shape != clip_logits.shape or learned_logits.dim() != 2:
        raise ValueError(f"logit shapes differ or are not 2-D: {tuple(learned_logits.shape)} vs "
                         f"{tuple(clip_logits.shape)}")
    device = learned_logits.device
    base = torch.as_tensor(base_mask, dtype=torch.bool, device=device).flatten()
    num_classes = base.numel()
    width = learned_logits.shape[1]
    if width not in (num_classes, num_classes + 1):
        raise ValueError(f"logits have {width} columns but base_mask has {num_classes} classes")
    seen = torch.ones(width, dtype=torch.bool, device=device)  # background counts as seen
    seen[:num_classes] = base
    weight = torch.where(seen, torch.tensor(float(alpha), device=device), torch.tensor(float(beta), device=device))
    weight = weight.unsqueeze(0).expand(learned_logits.shape[0], -1)
    if valid is not None:
        weight = weight * torch.as_tensor(valid, device=device).reshape(-1, 1).to(weight.dtype)

    log_q = learned_logits.float().log_softmax(dim=-1)
    log_p = clip_logits.float().log_softmax(dim=-1)
    out = _weighted(1.0 - weight, log_q) + _weighted(weight, log_p)
    if ignore_mask is not None:
        ignore = torch.as_tensor(ignore_mask, dtype=torch.bool, device=device).flatten()
        if ignore.numel() != num_classes:
            raise ValueError(f"ignore_mask has {ignore.numel()} entries, expected {num_classes}")
        out[:, :num_classes] = out[:, :num_classes].masked_fill(ignore.unsqueeze(0), float("-inf"))
    return out


def _weighted(weight: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    """``weight * log_prob`` with ``0 * -inf = 0`` (a zero weight ignores that distribution)."""
    return torch.where(weight == 0, torch.zeros_like(log_prob), weight * log_prob)


class RecognitionHead(nn.Module):
    """:func:`class_logits` as a module; the text embeddings are non-persistent buffers so they
    follow ``.to(device)`` but never enter checkpoints, and can be swapped at run time."""

    def __init__(self, text: Optional[TextEmbeddings] = None, logit_scale: float = DEFAULT_LOGIT_SCALE,
                 with_background: bool = True):
        super().__init__()
        self.logit_scale = float(logit_scale)
        self.with_background = bool(with_background)
        self.vocab: Optional[Vocabulary] = None
        self.register_buffer("text_embeddings", torch.zeros(0, 0, 0), persistent=False)
        self.register_buffer("text_valid", torch.zeros(0, 0, dtype=torch.bool), persistent=False)
        if text is not None:
            self.set_text(text)

    def set_text(self, text: TextEmbeddings) -> None:
        """Use another vocabulary (the buffers move to this module's current device)."""
        device = self.text_embeddings.device
        self.text_embeddings = text.embeddings.to(device)
        self.text_valid = text.valid.to(device)
        self.vocab = text.vocab

    def forward(self, region_embeddings: torch.Tensor) -> torch.Tensor:
        if self.vocab is None:
            raise RuntimeError("RecognitionHead has no vocabulary: call set_text() first")
        return _class_logits(region_embeddings, self.text_embeddings, self.text_valid, self.logit_scale,
                             self.with_background)

    def topk(self, region_embeddings: torch.Tensor, k: int = 5) -> List[List[Label]]:
        assert self.vocab is not None
        return topk_labels(self.forward(region_embeddings), self.vocab, k=k)
