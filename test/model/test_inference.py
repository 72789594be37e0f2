"""The inference path (BN folding, dtype conversion, fused attention, packed text) computes the plain math.

References are independent of our rewrite: segment_anything's own ``Attention``, open_clip's
own ``AttentionPool2d`` and the unmodified model with (randomised) BatchNorm statistics.
"""

import copy

import pytest
import torch
from open_clip.modified_resnet import AttentionPool2d
from segment_anything.modeling.image_encoder import Attention

from ovsam_ros.benchmark.opcount import profile_ops
from ovsam_ros.model.inference import (
    FusedAttentionPool2d, FusedRelPosAttention, fold_batchnorm, inference_dtype, prepare_for_inference,
)
from ovsam_ros.model.packed_text import PackedText, packed_class_logits
from ovsam_ros.model.recognition import class_logits
from ovsam_ros.model.vocabulary import TextEmbeddings, Vocabulary


@pytest.fixture
def plain_and_optimized(tiny_model_factory, randomize_batchnorm):
    plain = randomize_batchnorm(tiny_model_factory("rn", seed=4), seed=5)
    fast = prepare_for_inference(copy.deepcopy(plain))
    return plain, fast


def test_fold_removes_every_batchnorm_and_keeps_the_features(plain_and_optimized):
    plain, fast = plain_and_optimized
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.backbone.modules()) > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert inference_dtype(fast) == torch.float32 and inference_dtype(plain) is None
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = plain.encode_image(x), fast.encode_image(x)
    for fa, fb in zip(a.clip_features + a.fpn_features + [a.sam_embedding], b.clip_features + b.fpn_features + [b.sam_embedding]):
        torch.testing.assert_close(fb, fa, atol=1e-4, rtol=1e-4)


def test_fold_refuses_training_mode_batchnorm(tiny_model_factory):
    model = tiny_model_factory("rn")
    model.backbone.clip.visual.train()  # bypasses CLIPBackbone.train's frozen guard
    with pytest.raises(RuntimeError, match="training mode"):
        fold_batchnorm(model.backbone.clip.visual)


# chunk_bytes: None = default budget (one block at these sizes); small budgets force several query
# blocks, the last one shorter (16x12 = 192 tokens, 4 heads x 3 images x 4 bytes per query: 31 and 7).
@pytest.mark.parametrize("attention,chunk_bytes", [("chunked", None), ("chunked", 31 * 4 * 3 * 4 * 192),
                                                   ("chunked", 7 * 4 * 3 * 4 * 196), ("flex", None)])
@pytest.mark.parametrize("size,window", [((14, 14), 14), ((16, 12), 0)])
def test_fused_attention_equals_segment_anything(size, window, attention, chunk_bytes):
    torch.manual_seed(0)
    ref = Attention(32, num_heads=4, qkv_bias=True, use_rel_pos=True, input_size=size).eval()
    with torch.no_grad():
        ref.rel_pos_h.normal_(0, 0.5)
        ref.rel_pos_w.normal_(0, 0.5)
    fused = FusedRelPosAttention.convert(copy.deepcopy(ref), attention)
    if chunk_bytes is not None:
        fused.bias_chunk_bytes = chunk_bytes
        assert fused.query_block(3, size[0] * size[1], 4) < size[0] * size[1]  # really several blocks
    assert fused.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, *size, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), ref(x), atol=1e-5, rtol=1e-5)
    # Cached tables follow new weights (e.g. a checkpoint loaded after preparing).
    with torch.no_grad():
        ref.rel_pos_h.normal_(0, 0.5)
    fused.load_state_dict(ref.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), ref(x), atol=1e-5, rtol=1e-5)


def _largest_tensor_made(fn) -> int:
    """Elements of the largest tensor any aten op returns while ``fn`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    with Largest():
        fn()
    return Largest.numel


def test_chunked_attention_never_builds_the_whole_bias():
    """segment_anything's global attention holds [B*heads, HW, HW]; the chunked path at most one
    query block's bias [B, heads, block, HW] (the memory the issue's 4096x4096-per-head matrix costs)."""
    torch.manual_seed(0)
    size, heads, batch = (16, 16), 4, 2
    n = size[0] * size[1]
    ref = Attention(32, num_heads=heads, qkv_bias=True, use_rel_pos=True, input_size=size).eval()
    fused = FusedRelPosAttention.convert(copy.deepcopy(ref))
    fused.bias_chunk_bytes = 64 * batch * heads * n * 4  # 64 queries per block
    x = torch.randn(batch, *size, 32)
    with torch.inference_mode():
        full = _largest_tensor_made(lambda: ref(x))
        chunked = _largest_tensor_made(lambda: fused(x))
        torch.testing.assert_close(fused(x), ref(x), atol=1e-5, rtol=1e-5)
    assert full >= batch * heads * n * n
    assert chunked <= batch * heads * 64 * n, (chunked, batch * heads * 64 * n)


def test_rel_pos_attention_choice_is_checked(tiny_model_factory):
    model = prepare_for_inference(tiny_model_factory("rn"), attention="flex")
    attns = [m for m in model.sam2clip.modules() if isinstance(m, FusedRelPosAttention)]
    assert attns and all(m.attention == "flex" for m in attns)
    prepare_for_inference(model)  # preparing again switches back
    assert all(m.attention == "chunked" for m in attns)
    with pytest.raises(ValueError, match="attention must be one of"):
        prepare_for_inference(model, attention="flash")


def test_fused_attention_pool_equals_open_clip():
    torch.manual_seed(0)
    ref = AttentionPool2d(spacial_dim=4, embed_dim=32, num_heads=4, output_dim=16).eval()
    fused = FusedAttentionPool2d.convert(copy.deepcopy(ref))
    x = torch.randn(5, 32, 4, 4)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), ref(x), atol=1e-5, rtol=1e-5)


def test_region_branch_and_convnext_keep_their_outputs(plain_and_optimized, tiny_model_factory):
    plain, fast = plain_and_optimized
    boxes = torch.tensor([[10.0, 20.0, 200.0, 150.0], [0.0, 0.0, 255.0, 255.0]])
    c5 = torch.randn(1, plain.backbone.channels[3], 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(fast.backbone.pool_regions(c5, boxes), plain.backbone.pool_regions(c5, boxes),
                                   atol=1e-4, rtol=1e-4)
    convnext = tiny_model_factory("convnext")
    fast_cn = prepare_for_inference(copy.deepcopy(convnext))
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        torch.testing.assert_close(fast_cn.encode_image(x).sam_embedding, convnext.encode_image(x).sam_embedding,
                                   atol=1e-4, rtol=1e-4)


def _text(classes: int = 7, synonyms: int = 3, dim: int = 16, seed: int = 0) -> TextEmbeddings:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(classes, synonyms, dim, generator=gen), dim=-1)
    valid = torch.rand(classes, synonyms, generator=gen) > 0.5
    valid[:, 0] = True
    emb = emb * valid.unsqueeze(-1)  # zero padding, as the vocabulary encoder stores it
    return TextEmbeddings(emb, valid, Vocabulary.from_names([f"c{i}" for i in range(classes)]))


def test_packed_text_scores_like_class_logits():
    text = _text()
    packed = PackedText.from_text(text)
    assert packed.matrix.shape == (int(text.valid.sum()), 16)
    regions = torch.randn(5, 16)
    regions[1] = float("nan")
    regions[2] = 0.0
    for background in (True, False):
        expected = class_logits(regions, text, with_background=background)
        got = packed_class_logits(regions, packed, with_background=background)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # In a reduced dtype the GEMM runs in that dtype; the logits stay float32 and close.
    half = packed_class_logits(regions, PackedText.from_text(text, dtype=torch.bfloat16))
    assert half.dtype == torch.float32
    full = class_logits(regions, text)
    finite = torch.isfinite(full)
    assert torch.equal(torch.isfinite(half), finite)
    assert (half[finite] - full[finite]).abs().max() < 2.0  # bf16: 8 mantissa bits, logits x 100


def test_steady_state_encode_has_no_weight_casts_and_no_batchnorm():
    """CPU proxy for GPU overhead: the plain path under autocast re-casts weights every call and
    runs BatchNorm kernels; the inference path in the inference dtype does neither."""
    from ovsam_ros.model import OVSAM, OVSAMConfig

    dtype = torch.float16
    cfg = OVSAMConfig.tiny("rn")
    cfg.image_size = 128  # reduced-precision kernels are slow on CPUs without AVX-512: keep it small
    torch.manual_seed(0)
    model = OVSAM(cfg).eval()
    x = torch.randn(1, 3, 128, 128)
    weights = lambda m: list(m.parameters()) + list(m.buffers())  # noqa: E731
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=dtype):
            model.encode_image(x)  # warm-up
            plain = profile_ops(lambda: model.encode_image(x))
        plain_casts = plain.weight_casts(weights(model))
        prepare_for_inference(model, dtype)
        assert all(p.dtype == dtype for p in model.sam2clip.parameters())
        xd = x.to(dtype)
        model.encode_image(xd)  # warm-up (fills the rel-pos tables)
        fast = profile_ops(lambda: model.encode_image(xd))
    assert len(plain_casts) > 20 and plain.batch_norm > 0  # the proxies see the overhead
    assert fast.weight_casts(weights(model)) == [] and fast.batch_norm == 0
    assert fast.total < 0.6 * plain.total
