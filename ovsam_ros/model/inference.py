"""Inference-optimised model path: the same math as the plain model, fewer and fused kernels.

:func:`prepare_for_inference` rewrites an :class:`~ovsam_ros.model.ovsam.OVSAM` IN PLACE
for serving (the predictor, node and benchmark all go through it):

* every BatchNorm of the frozen CLIP CNN is folded into the convolution before it
  (``W' = W * g / sqrt(var + eps)``, ``b' = b' + beta - mean * g / sqrt(var + eps)``), so
  a frame runs no ``batch_norm`` kernels (127 of them for RN50x16);
* the image path (CLIP image tower, SAM2CLIP, CLIP2SAM) is converted ONCE to the inference
  dtype: with the weights already in fp16/bf16 the encoder runs without autocast, which
  otherwise re-casts every fp32 weight on every call;
* SAM2CLIP's attention runs as fused ``scaled_dot_product_attention`` over blocks of queries, each
  with its slice of the decomposed relative-position bias as additive mask (the full
  [heads, HW, HW] bias never exists), or as FlexAttention adding the bias in-kernel
  (``attention="flex"``, compiled on CUDA); the relative-position tables (which
  ``segment_anything`` rebuilds from CPU index tensors on every call) are gathered once on
  the device and refreshed only when the ``rel_pos`` parameters change;
* the CLIP attention pool (frozen-CLIP region branch, crop baselines) only computes the
  query of the one token it returns and uses fused SDPA.

The rewritten modules keep their parameter names, so ``state_dict`` keys stay those of the
plain model except the folded ``bn*`` entries (gone). Use this for inference only: folding
assumes frozen BatchNorm statistics, and the model is no longer meant to be trained.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d, Bottleneck, ModifiedResNet
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "REL_POS_ATTENTIONS",
    "FusedAttentionPool2d",
    "FusedRelPosAttention",
    "fold_batchnorm",
    "inference_dtype",
    "prepare_for_inference",
]


# ------------------------------------------------------------------------------------------- BN folding
def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    conv, bn = parent._modules.get(conv_name), parent._modules.get(bn_name)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return False
    if bn.training or conv.training:
        raise RuntimeError(f"cannot fold {bn_name} into {conv_name}: the module is in training mode (call .eval())")
    if not bn.track_running_stats or bn.running_mean is None:
        raise RuntimeError(f"cannot fold {bn_name}: it uses batch statistics (no running stats)")
    fused = fuse_conv_bn_eval(conv, bn)
    for p in fused.parameters():
        p.requires_grad_(False)
    parent._modules[conv_name] = fused
    parent._modules[bn_name] = nn.Identity()
    return True


def fold_batchnorm(module: nn.Module) -> int:
    """Fold the BatchNorms of open_clip ``ModifiedResNet`` trunks (and conv->BN ``Sequential``s) in place.

    Only pairs whose forward is known to be ``bn(conv(x))`` are folded: the ResNet stem and
    Bottleneck ``conv{i}``/``bn{i}`` and consecutive Conv2d->BatchNorm2d in a Sequential
    (the Bottleneck downsample). Returns the number of folded BatchNorms.
    """
    folded = 0
    for parent in list(module.modules()):
        if isinstance(parent, (ModifiedResNet, Bottleneck)):
            for i in (1, 2, 3):
                folded += _fold_pair(parent, f"conv{i}", f"bn{i}")
        elif isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for a, b in zip(names, names[1:]):
                folded += _fold_pair(parent, a, b)
    return folded


# ------------------------------------------------------------------------------------------- attention
#: How SAM2CLIP's attention adds its decomposed relative-position bias (``prepare_for_inference(attention=)``).
#: ``chunked``: SDPA over blocks of queries, each with its slice of the bias (never the whole
#: [heads, HW, HW] bias; any device, no compiler). ``flex``: ``torch.nn.attention.flex_attention``
#: adding the bias inside the kernel (``score_mod``); compiled on CUDA, where it never materialises
#: a score or bias matrix. Without a GPU it runs eagerly, which DOES materialise the scores
#: (a correctness path for CPU tests, not a CPU speed path). ``full``: one SDPA with the whole bias
#: as its mask (the previous path: for A/B measurements).
REL_POS_ATTENTIONS = ("chunked", "flex", "full")
#: Per-chunk budget of the chunked bias: ``batch * heads * query_block * HW`` elements of the inference
#: dtype fit in this many bytes (RN50x16's global block, 16 heads x 4096 tokens: 1024 queries in fp16).
BIAS_CHUNK_BYTES = 64 * 2**20

_compiled_flex = None


def _flex_attention(device: torch.device):
    """flex_attention, compiled once per process for CUDA (eager elsewhere)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


class FusedRelPosAttention(Attention):
    """``segment_anything`` ViT attention with the decomposed rel-pos bias added per query block or in-kernel.

    Same parameters (``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``) as the module it
    replaces; the bias is ``q . R_h[h, kh] + q . R_w[w, kw]`` (unscaled ``q``, as in
    ``add_decomposed_rel_pos``), added after scaling ``q k^T`` by ``head_dim**-0.5``.
    ``segment_anything`` materialises the full [B*heads, HW, HW] attention matrix; one SDPA with
    the whole bias as its mask still materialises the bias (RN50x16's global block: 16 x 4096 x
    4096 = 512 MB in fp16). Here (``attention``): ``chunked`` runs one SDPA per block of queries with
    that block's bias slice (peak O(block x HW)); ``flex`` adds the bias inside FlexAttention.
    """

    _tables: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]]
    _tables_key: tuple
    attention: str = "chunked"
    bias_chunk_bytes: int = BIAS_CHUNK_BYTES

    @classmethod
    def convert(cls, attn: Attention, attention: str = "chunked") -> "FusedRelPosAttention":
        if not isinstance(attn, Attention):
            raise TypeError(f"expected a segment_anything Attention, got {type(attn).__name__}")
        if attention not in REL_POS_ATTENTIONS:
            raise ValueError(f"attention must be one of {list(REL_POS_ATTENTIONS)}, got {attention!r}")
        attn.__class__ = cls
        attn._tables, attn._tables_key = {}, ()
        attn.attention = attention
        return attn  # type: ignore[return-value]

    def _key(self) -> tuple:
        h, w = self.rel_pos_h, self.rel_pos_w
        return (h.data_ptr(), h._version, h.dtype, w.data_ptr(), w._version, w.dtype)

    def rel_tables(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(R_h [H, H, C], R_w [W, W, C])`` on the parameters' device; rebuilt when they change."""
        if not torch.compiler.is_compiling():
            key = self._key()
            if key != self._tables_key:
                self._tables, self._tables_key = {}, key
        tables = self._tables.get((height, width))
        if tables is None:
            with torch.no_grad():
                tables = (get_rel_pos(height, height, self.rel_pos_h).detach(),
                          get_rel_pos(width, width, self.rel_pos_w).detach())
            self._tables[(height, width)] = tables
        return tables

    def query_block(self, batch: int, tokens: int, itemsize: int) -> int:
        """Queries per SDPA call so that one block's bias fits :attr:`bias_chunk_bytes` (>= 1)."""
        per_query = batch * self.num_heads * tokens * itemsize
        return max(1, min(tokens, self.bias_chunk_bytes // max(1, per_query)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        heads, n = self.num_heads, h * w
        qkv = self.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)  # 3, B, nH, HW, C
        q, k, v = qkv.unbind(0)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))
        table_h, table_w = self.rel_tables(h, w)
        r_q = q.reshape(b, heads, h, w, -1)
        # The two bias factors are small: [B, nH, HW, H] and [B, nH, HW, W].
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, table_h).reshape(b, heads, n, h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, table_w).reshape(b, heads, n, w)
        if self.attention == "flex":
            def score_mod(score, bi, hi, qi, ki):  # key index ki = kh * W + kw
                return score + rel_h[bi, hi, qi, ki // w] + rel_w[bi, hi, qi, ki % w]

            out = _flex_attention(x.device)(q.contiguous(), k.contiguous(), v.contiguous(), score_mod=score_mod)
        else:
            block = n if self.attention == "full" else self.query_block(b, n, q.element_size())
            if block >= n:
                bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, heads, n, n)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            else:
                out = q.new_empty(q.shape)
                for start in range(0, n, block):
                    end = min(n, start + block)
                    bias = (rel_h[:, :, start:end].unsqueeze(-1) + rel_w[:, :, start:end].unsqueeze(-2))
                    out[:, :, start:end] = F.scaled_dot_product_attention(
                        q[:, :, start:end], k, v, attn_mask=bias.reshape(b, heads, end - start, n))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class FusedAttentionPool2d(AttentionPool2d):
    """CLIP ResNet attention pool computing only the query it returns (the mean token), with SDPA.

    open_clip runs full self-attention over all ``HW + 1`` tokens and keeps token 0; the
    other queries are wasted work. Same parameters and result.
    """

    @classmethod
    def convert(cls, pool: AttentionPool2d) -> "FusedAttentionPool2d":
        if not isinstance(pool, AttentionPool2d):
            raise TypeError(f"expected an open_clip AttentionPool2d, got {type(pool).__name__}")
        pool.__class__ = cls
        return pool  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1).transpose(1, 2)  # N, HW, C
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], heads, -1).transpose(1, 2)  # N, nH, L, C/nH

        q = split(self.q_proj(x[:, :1]))
        out = F.scaled_dot_product_attention(q, split(self.k_proj(x)), split(self.v_proj(x)))
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


# ------------------------------------------------------------------------------------------- the model
def inference_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """The dtype :func:`prepare_for_inference` converted ``model`` to, or None for a plain model."""
    return getattr(model, "_inference_dtype", None)


def prepare_for_inference(model: nn.Module, dtype: torch.dtype = torch.float32,
                          channels_last: bool = False, attention: str = "chunked") -> nn.Module:
    """Rewrite an ``OVSAM`` in place into its inference form (see the module docstring); returns it.

    ``dtype``: the image path's weights are converted to it once (``torch.float32`` keeps
    fp32). The text tower and the prompt decoder keep their dtype (the decoder runs under
    autocast: its prompt-coordinate math needs fp32). Calling it again with another dtype
    just converts again. ``channels_last``: NHWC conv weights (only where measured faster).
    ``attention``: how SAM2CLIP's attention adds its rel-pos bias (:data:`REL_POS_ATTENTIONS`).
    """
    if attention not in REL_POS_ATTENTIONS:
        raise ValueError(f"attention must be one of {list(REL_POS_ATTENTIONS)}, got {attention!r}")
    model.eval()
    if inference_dtype(model) is None:
        backbone = model.backbone
        if not getattr(backbone, "frozen", True):
            raise RuntimeError("prepare_for_inference folds BatchNorm statistics: the CLIP backbone must be frozen")
        visual = backbone.clip.visual
        fold_batchnorm(visual)
        for module in list(visual.modules()):
            if isinstance(module, AttentionPool2d) and not isinstance(module, FusedAttentionPool2d):
                FusedAttentionPool2d.convert(module)
    for module in list(model.sam2clip.modules()):
        if isinstance(module, FusedRelPosAttention):
            module.attention = attention
        elif isinstance(module, Attention):
            FusedRelPosAttention.convert(module, attention)
    for part in (model.backbone.clip.visual, model.sam2clip, model.clip2sam):
        part.to(dtype=dtype)
    if channels_last:
        for part in (model.backbone.clip.visual, model.sam2clip.patch_embeds, model.clip2sam.fpn):
            part.to(memory_format=torch.channels_last)
    model._inference_dtype = dtype
    return model
