"""Frozen open_clip CLIP model exposing OVSAM's four multi-scale image taps.

OVSAM runs ONE CNN CLIP image tower on the padded 1024x1024 image and reads
its four stages (strides 4/8/16/32). Two trunk families are supported:

* open_clip ``ModifiedResNet`` (``RN50x16``): ``stem -> layer1..layer4``.
* open_clip ``TimmModel`` around a timm ConvNeXt: ``trunk.stem -> trunk.stages[0..3]``.

Both trunks are fully convolutional, so they accept any input size. The
image-level heads (RN attention pool with its size-specific positional
embedding, ConvNeXt head + projection) are only used by :meth:`encode_image`
(crop baseline, native CLIP resolution) and :meth:`pool_regions` (frozen
CLIP region branch of the evaluation ensemble).

Inputs to :meth:`CLIPBackbone.forward` are normalised like SAM (ImageNet
mean/std in 0-255 space), as in the reference; :meth:`encode_image` expects
CLIP's own normalisation (see :meth:`CLIPBackbone.normalize_for_clip`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

import open_clip
from open_clip import factory as _open_clip_factory
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel

from .errors import CheckpointError
from .safe_load import load_state_dict_file
from .config import SHAPES_CLIP, TINY_CONVNEXT_CLIP, TINY_RN_CLIP, BackboneConfig

_TINY_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}

# Tiny CLIP architectures for tests/demos. Registered into open_clip's config
# table so ``open_clip.create_model`` / ``get_tokenizer`` treat them like
# built-in names (the text tower and tokenizer are the real CLIP ones).
TINY_CLIP_CONFIGS = {
    TINY_RN_CLIP: {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 256, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": dict(_TINY_TEXT_CFG),
    },
    TINY_CONVNEXT_CLIP: {
        "embed_dim": 64,
        "vision_cfg": {
            "timm_model_name": "convnext_atto",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "mlp",
            "timm_drop": 0.0,
            "timm_drop_path": 0.0,
            "image_size": 256,
        },
        "text_cfg": dict(_TINY_TEXT_CFG),
    },
    # The shapes-world CLIP (training/stage0.py pretrains it): a tiny ModifiedResNet whose
    # native crop size (64 px) is about the size objects have in 256 px scenes, and a short
    # text context (captions are a few words).
    SHAPES_CLIP: {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {**_TINY_TEXT_CFG, "context_length": 32},
    },
}


def register_tiny_clip_configs() -> None:
    """Make the tiny test architectures known to open_clip (idempotent)."""
    for name, cfg in TINY_CLIP_CONFIGS.items():
        if name not in _open_clip_factory._MODEL_CONFIGS:
            _open_clip_factory._MODEL_CONFIGS[name] = dict(cfg)


class CLIPBackbone(nn.Module):
    """Wraps a complete open_clip ``CLIP`` model (image + text towers), frozen."""

    def __init__(self, clip_model: nn.Module, model_name: str, frozen: bool = True) -> None:
        super().__init__()
        self.clip = clip_model
        self.model_name = model_name
        visual = clip_model.visual
        if isinstance(visual, ModifiedResNet):
            self.trunk_type = "resnet"
            self.channels: List[int] = [
                layer[-1].bn3.num_features for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4)
            ]
        elif isinstance(visual, TimmModel) and hasattr(visual.trunk, "stages") and hasattr(visual.trunk, "stem"):
            self.trunk_type = "timm"
            info = visual.trunk.feature_info
            if len(info) != 4 or [i["reduction"] for i in info] != [4, 8, 16, 32]:
                raise ValueError(f"{model_name}: expected 4 timm stages at strides 4/8/16/32, got {info}")
            self.channels = [int(i["num_chs"]) for i in info]
        else:
            raise ValueError(
                f"open_clip model {model_name!r} has a {type(visual).__name__} image tower; OVSAM needs a "
                "CNN with four stages (ModifiedResNet 'RN*' or a timm ConvNeXt 'convnext_*')"
            )
        self.strides: List[int] = [4, 8, 16, 32]
        pp = open_clip.get_model_preprocess_cfg(clip_model)
        size = pp.get("size", getattr(visual, "image_size", 224))
        self.clip_image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        # CLIP's own normalisation, in 0-255 space, for encode_image inputs.
        self.register_buffer(
            "clip_pixel_mean", torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1) * 255, False
        )
        self.register_buffer(
            "clip_pixel_std", torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1) * 255, False
        )
        self._tokenizer: Optional[Callable] = None
        self._embed_dim = _joint_dim(clip_model)
        self.frozen = frozen
        if frozen:
            for p in self.clip.parameters():
                p.requires_grad_(False)
        self.train(False)

    # -- nn.Module --------------------------------------------------------
    def train(self, mode: bool = True) -> "CLIPBackbone":
        # A frozen CLIP must keep BatchNorm statistics fixed, whatever the parent does.
        return super().train(mode and not self.frozen)

    # -- dense taps -------------------------------------------------------
    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        """``images`` [B,3,H,W] (SAM-normalised) -> 4 maps at strides 4/8/16/32."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            visual = self.clip.visual
            x = images.to(self.dtype)
            feats: List[torch.Tensor] = []
            if self.trunk_type == "resnet":
                x = visual.stem(x)
                for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
                    x = layer(x)
                    feats.append(x)
            else:
                trunk = visual.trunk
                x = trunk.stem(x)
                for stage in trunk.stages:
                    x = stage(x)
                    feats.append(x)
            return feats

    @property
    def dtype(self) -> torch.dtype:
        return next(self.clip.visual.parameters()).dtype

    @property
    def embed_dim(self) -> int:
        """Dimension of CLIP's joint image/text embedding space."""
        return self._embed_dim

    # -- text ---------------------------------------------------------------
    @property
    def tokenizer(self) -> Callable[..., torch.Tensor]:
        """open_clip tokenizer for this model (lazily built; offline BPE vocab)."""
        if self._tokenizer is None:
            register_tiny_clip_configs()
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._tokenizer

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids [N, L] -> text embeddings [N, embed_dim]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.clip.encode_text(tokens.to(self.clip_pixel_mean.device), normalize=normalize)

    # -- image-level CLIP (baselines / eval ensemble) -----------------------
    def normalize_for_clip(self, images: torch.Tensor) -> torch.Tensor:
        """RGB 0-255 crops [B,3,h,w] -> CLIP-normalised [B,3,S,S] at CLIP's native size.

        Squashes to the square native size (the attention pool of RN models
        only accepts that size).
        """
        s = self.clip_image_size
        x = F.interpolate(images.float(), size=(s, s), mode="bicubic", align_corners=False)
        return (x - self.clip_pixel_mean) / self.clip_pixel_std

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Whole-image CLIP embedding (crop baseline). ``images`` from :meth:`normalize_for_clip`."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.clip.encode_image(images.to(self.dtype), normalize=normalize)

    def pool_regions(
        self,
        c5: torch.Tensor,
        boxes: torch.Tensor,
        batch_indices: Optional[torch.Tensor] = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Frozen-CLIP region embeddings from the stride-32 map ``c5``.

        RoIAlign each box (input-image pixels, xyxy) to the grid CLIP's image
        head was trained on (``clip_image_size // 32``: 12x12 for RN50x16, as
        in the reference eval ensemble) and run that head (RN attention pool,
        or ConvNeXt head + projection). Returns [N, embed_dim].
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            grid = self.clip_image_size // 32
            rois = boxes_to_rois(boxes, batch_indices).to(c5.dtype)
            feats = roi_align(c5, rois, output_size=grid, spatial_scale=1.0 / 32, sampling_ratio=0, aligned=True)
            visual = self.clip.visual
            if self.trunk_type == "resnet":
                out = visual.attnpool(feats)
            else:
                out = visual.head(visual.trunk.forward_head(feats))
            return F.normalize(out, dim=-1) if normalize else out


def boxes_to_rois(boxes: torch.Tensor, batch_indices: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[N,4] xyxy boxes (+ optional [N] image indices, default 0) -> [N,5] RoIs."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, 4] xyxy, got {tuple(boxes.shape)}")
    if batch_indices is None:
        batch_indices = torch.zeros(boxes.shape[0], device=boxes.device)
    return torch.cat([batch_indices.to(boxes).view(-1, 1), boxes], dim=1)


def is_torchscript_archive(path: str) -> bool:
    """True for a TorchScript zip (OpenAI's original CLIP ``.pt`` files are such archives)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    # torch.save zips hold data.pkl; TorchScript archives also hold code/ and constants.pkl.
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def resolve_quick_gelu(cfg: BackboneConfig) -> bool:
    """Whether to build ``cfg.model_name`` with QuickGELU.

    An explicit ``cfg.quick_gelu`` wins. Otherwise: ``-quickgelu`` names
    already are; an OpenAI TorchScript archive is; and a name whose every
    open_clip pretrained tag was trained with QuickGELU (``RN50x16``: only
    ``openai``) is, because any real weights for it come from those runs.
    Names without known weights (tests' tiny models, ConvNeXt LAION) keep GELU.
    """
    if cfg.quick_gelu is not None:
        return bool(cfg.quick_gelu)
    if cfg.model_name.endswith("-quickgelu"):
        return True
    if cfg.pretrained is not None and is_torchscript_archive(os.path.expanduser(str(cfg.pretrained))):
        return True
    tags = open_clip.list_pretrained_tags_by_model(cfg.model_name)
    flags = {bool(open_clip.get_pretrained_cfg(cfg.model_name, t).get("quick_gelu", False)) for t in tags}
    return flags == {True}


def build_backbone(cfg: BackboneConfig, device: torch.device | str = "cpu") -> CLIPBackbone:
    """Create the open_clip model named in ``cfg`` with LOCAL weights (or random init).

    Raises ``FileNotFoundError`` naming the path when ``cfg.pretrained`` is
    not an existing file (download tags such as ``'openai'`` are refused on
    purpose: this package never downloads weights).
    """
    register_tiny_clip_configs()
    pretrained = cfg.pretrained
    if pretrained is not None:
        pretrained = os.path.expanduser(str(pretrained))
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"open_clip weights for {cfg.model_name!r} not found: {pretrained!r} "
                "(BackboneConfig.pretrained must be a local file; tags like 'openai' are not downloaded)"
            )
    if _open_clip_factory.get_model_config(cfg.model_name) is None:
        raise ValueError(f"unknown open_clip model {cfg.model_name!r}")
    quick_gelu = resolve_quick_gelu(cfg)
    if pretrained is not None and is_torchscript_archive(pretrained):
        # OpenAI's own files: open_clip only reads them with weights_only=False; a TorchScript
        # archive's weights come out of torch.jit.load without unpickling Python objects.
        with _quiet_random_init(True):  # the weights are loaded right below
            model = open_clip.create_model(cfg.model_name, pretrained=None, device=device, force_quick_gelu=quick_gelu)
        _load_torchscript_weights(model, pretrained, cfg.model_name)
        return CLIPBackbone(model, cfg.model_name)
    try:
        with _quiet_random_init(pretrained is None), _weights_only_copy(pretrained) as weights:
            model = open_clip.create_model(
                cfg.model_name, pretrained=weights, device=device, force_quick_gelu=quick_gelu
            )
    except RuntimeError as err:
        if pretrained is None:
            raise
        # open_clip raises a bare RuntimeError on key/shape mismatches.
        raise CheckpointError(
            f"{pretrained}: not a valid open_clip {cfg.model_name!r} weights file: {_shorten(str(err))}"
        ) from err
    return CLIPBackbone(model, cfg.model_name)


@contextlib.contextmanager
def _weights_only_copy(path: Optional[str]):
    """``path`` itself when torch's weights-only unpickler reads it as is (open_clip loads it
    that way); otherwise, e.g. an mmengine checkpoint whose pickle also holds ``message_hub``
    objects, its tensors read by :func:`~ovsam_ros.model.safe_load.safe_torch_load` (nothing in
    the file runs) in a temporary tensors-only file, so open_clip's own loading (key conversion,
    position-embedding resize) still does the rest."""
    if path is None or path.endswith((".safetensors", ".npz", ".npy")) or not _names_foreign_globals(path):
        yield path
        return
    state = load_state_dict_file(path)  # tensors under state_dict / model; refuses code payloads
    with tempfile.TemporaryDirectory(prefix="ovsam_clip_") as tmp:
        plain = os.path.join(tmp, os.path.basename(path))
        torch.save(state, plain)
        del state
        yield plain


def _names_foreign_globals(path: str) -> bool:
    try:
        return bool(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a torch zip (legacy format, junk): open_clip reports it
        return False


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init(active: bool):
    """open_clip logs "No pretrained weights loaded ... initialized randomly" whenever it builds
    a model without a weights file, even when a trained ovsam_ros checkpoint is loaded into it
    right after: misleading. The callers log what was actually loaded from where."""
    if not active:
        yield
        return
    notice = _DropRandomInitNotice()
    targets = [logging.getLogger(), *(h for h in logging.getLogger().handlers)]
    for target in targets:
        target.addFilter(notice)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(notice)


# Entries of OpenAI's TorchScript state dicts that are not open_clip parameters.
_OPENAI_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _load_torchscript_weights(model: nn.Module, path: str, model_name: str) -> None:
    try:
        archive = torch.jit.load(path, map_location="cpu")
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable TorchScript CLIP archive: {_shorten(str(err))}") from err
    sd = {k: v for k, v in archive.state_dict().items() if k not in _OPENAI_ARCHIVE_EXTRAS}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = sorted(k for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path}: not a valid open_clip {model_name!r} weights file: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}, shape mismatch {mismatched[:10]}"
        )
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})


def _joint_dim(clip_model: nn.Module) -> int:
    proj = getattr(clip_model, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    with torch.no_grad():  # custom text towers: probe once
        tokens = torch.zeros(1, 77, dtype=torch.long)
        return int(clip_model.encode_text(tokens).shape[-1])


def _shorten(text: str, limit: int = 1500) -> str:
    return text if len(text) <= limit else text[:limit] + " ...[truncated]"


__all__: Sequence[str] = [
    "CLIPBackbone",
    "TINY_CLIP_CONFIGS",
    "boxes_to_rois",
    "build_backbone",
    "is_torchscript_archive",
    "register_tiny_clip_configs",
    "resolve_quick_gelu",
]
