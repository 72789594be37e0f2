"""FLOP and parameter counts without weights.

Counts come from :class:`torch.utils.flop_counter.FlopCounterMode`, which
counts 2 FLOPs per multiply-add of every matmul / convolution / attention op
(element-wise ops, interpolation and RoIAlign are not counted; they are a
fraction of a percent here). The OVSAM paper's "GFLOPs" (1,180 for OVSAM,
3,001 for SAM-H) follow the fvcore / mmengine convention of one FLOP per
multiply-add, i.e. they are GMACs: compare the paper with ``gmacs`` =
``flops / 2``. (Our count of SAM ViT-H's image encoder at 1024 px gives
2,981 GMACs, matching the paper's 3,001 for SAM-H with its decoder.)

Image-side stages are counted on the ``meta`` device: no memory is allocated
and no arithmetic is done, so RN50x16 or SAM ViT-H cost milliseconds to count.
The prompt-side stages contain data-dependent indexing (mask -> box -> FPN
level), which the meta device cannot run, so they use real, randomly
initialised copies of the (small) decoder and CLIP2SAM head on the CPU.
"""

from __future__ import annotations

import math

import contextlib
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ovsam_ros.benchmark.vocab_shape import synonym_shape
from ovsam_ros.model.backbone import build_backbone
from ovsam_ros.model.clip2sam import CLIP2SAM
from ovsam_ros.model.config import OVSAMConfig
from ovsam_ros.model.decoder import OVSAMDecoder
from ovsam_ros.model.ovsam import OVSAM, ImageFeatures
from ovsam_ros.model.recognition import DEFAULT_LOGIT_SCALE, _class_logits
from ovsam_ros.model.vocabulary import TextEmbeddings

META = torch.device("meta")

#: SAM image encoder hyper-parameters (segment_anything.build_sam), for any input size.
SAM_ENCODERS: Dict[str, Dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of one call of ``fn``."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return int(counter.get_total_flops())


def num_params(module: Optional[nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def build_meta_ovsam(cfg: OVSAMConfig) -> OVSAM:
    """OVSAM with every tensor on the meta device (architecture only, no memory)."""
    with torch.device(META):
        backbone = build_backbone(_random_init(cfg).backbone, device=META)
        return OVSAM(cfg, backbone=backbone).eval()


def _random_init(cfg: OVSAMConfig) -> OVSAMConfig:
    out = OVSAMConfig.from_dict(cfg.to_dict())
    out.backbone.pretrained = None
    return out


def build_sam_encoder(kind: str, image_size: int, device: torch.device | str = "cpu") -> nn.Module:
    """Randomly initialised SAM-family image encoder for ``image_size`` inputs.

    ``vit_b``/``vit_l``/``vit_h`` at 1024 px are exactly ``build_sam_teacher(kind)``
    (segment_anything's registry); other sizes keep the architecture and change
    only the position-embedding grid. ``tiny`` is the test teacher.
    """
    from segment_anything.modeling import ImageEncoderViT

    from ovsam_ros.model.checkpoints import build_sam_teacher

    with torch.device(device):
        if kind == "tiny":
            return build_sam_teacher("tiny", img_size=image_size)
        if kind not in SAM_ENCODERS:
            raise ValueError(f"unknown SAM encoder {kind!r}; choose from {['tiny', *SAM_ENCODERS]}")
        if image_size == 1024:
            return build_sam_teacher(kind)
        kw = SAM_ENCODERS[kind]
        encoder = ImageEncoderViT(
            img_size=image_size, patch_size=16, in_chans=3, mlp_ratio=4.0, out_chans=256, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=14, **kw,
        )
        for p in encoder.parameters():
            p.requires_grad_(False)
        return encoder.eval()


def default_sam_family(cfg: OVSAMConfig) -> str:
    """The SAM encoder OVSAM's SAM2CLIP imitates: ViT-H for the full-size presets, the test teacher for tiny."""
    return "vit_h" if cfg.sam2clip.embed_dim == 1280 else "tiny"


def random_text(num_classes: int, num_synonyms: int, dim: int, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, seed: int = 0, ragged: bool = False) -> TextEmbeddings:
    """Random unit text embeddings [C, S, D] (timing/FLOPs only: the values do not matter).

    ``ragged``: valid synonyms per class drawn so their mean is that of the shipped vocabulary
    of this size (padding as in real vocabularies: what the packed text matrix drops).
    """
    from ovsam_ros.model.vocabulary import Vocabulary

    gen = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(num_classes, num_synonyms, dim, generator=gen), dim=-1)
    valid = torch.ones(num_classes, num_synonyms, dtype=torch.bool)
    mean = synonym_shape(num_classes)[1] if ragged and num_synonyms > 1 else 1.0
    if mean > 1.0:
        # geometric counts >= 1 with the target mean, capped at num_synonyms
        u = torch.rand(num_classes, generator=gen).clamp(min=1e-12)
        counts = (torch.log(u) / math.log(1.0 - 1.0 / mean)).floor().long() + 1
        counts = counts.clamp(max=num_synonyms)
        valid = torch.arange(num_synonyms) < counts.unsqueeze(1)
        emb = emb * valid.unsqueeze(-1)
    names = [f"class {i}" for i in range(num_classes)]
    vocab = Vocabulary(name=f"random{num_classes}", version="", classes=names, synonyms=[[n] for n in names])
    return TextEmbeddings(emb, valid, vocab).to(device, dtype)


def point_prompts(num: int, input_size: tuple[int, int], device: torch.device | str = "cpu",
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` single positive clicks (input-image pixels), deterministic."""
    gen = torch.Generator().manual_seed(seed)
    h, w = input_size
    coords = torch.rand(num, 1, 2, generator=gen) * torch.tensor([w - 1, h - 1], dtype=torch.float32)
    labels = torch.ones(num, 1, dtype=torch.int64)
    return coords.to(device), labels.to(device)


@dataclass
class FlopReport:
    """FLOPs per stage label and parameters per part for one config and input size."""

    flops: Dict[str, int] = field(default_factory=dict)
    params: Dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def _prompt_side(meta_model: OVSAM) -> Iterator[tuple[OVSAM, torch.device]]:
    """(model, device) for counting the prompt-side stages; see :func:`ovsam_flops`."""
    try:
        import torch.fx.experimental._config as fx_config

        patch = fx_config.patch(meta_nonzero_assume_all_nonzero=True)
    except (ImportError, AttributeError, KeyError):  # pragma: no cover - older PyTorch
        patch = None
    if patch is not None:
        with patch:
            yield meta_model, META
        return
    # Fallback: real, randomly initialised CPU copies of the (small) decoder and CLIP2SAM head.
    cfg = meta_model.cfg
    decoder, clip2sam = meta_model.decoder, meta_model.clip2sam
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        meta_model.decoder = OVSAMDecoder(cfg.decoder, cfg.image_size, cfg.embedding_size, meta_model.clip_dim).eval()
        meta_model.clip2sam = CLIP2SAM(cfg.clip2sam, meta_model.backbone.channels, meta_model.clip_dim).eval()
    try:
        yield meta_model, torch.device("cpu")
    finally:
        meta_model.decoder, meta_model.clip2sam = decoder, clip2sam


def ovsam_flops(cfg: OVSAMConfig, prompts: List[int], vocab_sizes: List[tuple[int, int]],
                baselines: List[str] = (), sam_family: Optional[str] = None) -> FlopReport:
    """FLOPs of every OVSAM stage (and of the two-backbone baselines) for ``cfg.image_size`` inputs.

    ``vocab_sizes``: (classes, synonyms) pairs. Stage labels match
    :mod:`ovsam_ros.benchmark.stages` so the numbers merge into the timing table.
    """
    report = FlopReport()
    model = build_meta_ovsam(cfg)
    s, g = cfg.image_size, cfg.embedding_size
    image = torch.empty(1, 3, s, s, device=META)
    clip = model.backbone.clip
    report.params.update({
        "clip_image_encoder": num_params(clip.visual),
        "clip_text_encoder": num_params(clip) - num_params(clip.visual),
        "sam2clip": num_params(model.sam2clip),
        "clip2sam": num_params(model.clip2sam),
        "prompt_encoder_and_decoder": num_params(model.decoder),
    })
    report.params["ovsam_image_path"] = sum(report.params[k] for k in (
        "clip_image_encoder", "sam2clip", "clip2sam", "prompt_encoder_and_decoder"))

    with torch.inference_mode():
        feats = model.backbone(image)
    report.flops["clip_encoder"] = count_flops(lambda: model.backbone(image))
    report.flops["sam2clip"] = count_flops(lambda: model.sam2clip(feats))
    report.flops["fpn"] = count_flops(lambda: model.clip2sam.fpn_features(feats))
    report.flops["encode_image"] = report.flops["clip_encoder"] + report.flops["sam2clip"] + report.flops["fpn"]

    # Prompt side: data-dependent indexing (mask -> box -> FPN level) runs on the meta device with
    # nonzero() assumed all-true (shapes only; FLOPs of these ops do not depend on the values).
    # Without that switch (older PyTorch) real random CPU copies of the small heads are used.
    with _prompt_side(model) as (m, dev), torch.inference_mode():
        fpn = [torch.zeros(1, cfg.clip2sam.fpn_channels, s // st, s // st, device=dev) for st in cfg.clip2sam.strides]
        c5 = torch.zeros(1, model.backbone.channels[3], s // 32, s // 32, device=dev)
        features = ImageFeatures(torch.zeros(1, cfg.decoder.transformer_dim, g, g, device=dev), [], fpn)
        sam_decoder = _sam_decoder(cfg, dev)
        for n in prompts:
            coords, labels = point_prompts(n, (s, s), dev)
            boxes = torch.zeros(n, 4, device=dev)
            report.flops[f"prompt_decoder[prompts={n}]"] = count_flops(
                lambda: m.decoder(features.sam_embedding, coords, labels, None, None, False))
            report.flops[f"roi_head[prompts={n}]"] = count_flops(lambda: m.clip2sam(features.fpn_features, boxes))
            report.flops[f"decode[prompts={n}]"] = count_flops(
                lambda: m.decode(features, coords, labels, multimask_output=False))
            # Optional frozen-CLIP region branch of the reference evaluation ensemble
            # (RoIAlign on C5 + CLIP attention pool / head), also the feature-crop baseline's recogniser.
            report.flops[f"clip_region_branch[prompts={n}]"] = count_flops(
                lambda: model.backbone.pool_regions(c5.to(META), boxes.to(META)))
            if baselines:
                report.flops[f"baseline.sam_decoder[prompts={n}]"] = count_flops(
                    lambda: sam_decoder(features.sam_embedding, coords, labels, None, None, False))

    dim = model.clip_dim
    for n in prompts:
        regions = torch.empty(n, dim, device=META)
        for c, syn in vocab_sizes:
            emb = torch.empty(c, syn, dim, device=META)
            valid = torch.ones(c, syn, dtype=torch.bool, device=META)
            report.flops[f"recognition[prompts={n},classes={c}]"] = count_flops(
                lambda: _class_logits(regions, emb, valid, DEFAULT_LOGIT_SCALE, True))

    if baselines:
        family = sam_family or default_sam_family(cfg)
        encoder = build_sam_encoder(family, s, device=META)
        report.params["baseline.sam_image_encoder"] = num_params(encoder)
        report.params["baseline.sam_prompt_encoder_and_decoder"] = num_params(sam_decoder)
        report.params["baseline.clip_image_encoder"] = report.params["clip_image_encoder"]
        report.params["baseline_image_path"] = (report.params["baseline.sam_image_encoder"]
                                                + report.params["baseline.sam_prompt_encoder_and_decoder"]
                                                + report.params["baseline.clip_image_encoder"])
        report.flops["baseline.sam_encoder"] = count_flops(lambda: encoder(image))
        bb = model.backbone
        if "feature-crop" in baselines:
            report.flops["baseline.clip_dense"] = report.flops["clip_encoder"]
            for n in prompts:
                report.flops[f"baseline.feature_crop[prompts={n}]"] = report.flops[f"clip_region_branch[prompts={n}]"]
        if "image-crop" in baselines:
            size = bb.clip_image_size
            for n in prompts:
                crops = torch.empty(n, 3, size, size, device=META)
                report.flops[f"baseline.image_crop[prompts={n}]"] = count_flops(lambda: bb.encode_image(crops))
    return report


def _sam_decoder(cfg: OVSAMConfig, device: torch.device | str = "cpu") -> OVSAMDecoder:
    """SAM's prompt encoder + mask decoder (no label token): the baseline's decoder."""
    dec_cfg = OVSAMConfig.from_dict(cfg.to_dict()).decoder
    dec_cfg.label_token = False
    dec_cfg.output_tokens = "sam"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        # label_dim only sizes the (unused) label MLP, removed below.
        decoder = OVSAMDecoder(dec_cfg, cfg.image_size, cfg.embedding_size, label_dim=8).eval()
    decoder.label_token = None  # type: ignore[assignment]
    decoder.label_mlp = None  # type: ignore[assignment]
    return decoder


__all__ = [
    "FlopReport",
    "SAM_ENCODERS",
    "build_meta_ovsam",
    "build_sam_encoder",
    "count_flops",
    "default_sam_family",
    "num_params",
    "ovsam_flops",
    "point_prompts",
    "random_text",
]
