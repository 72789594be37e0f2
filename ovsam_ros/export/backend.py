"""Run exported OVSAM graphs with ONNX Runtime behind :class:`OVSAM`'s interface.

A model YAML selects it, so the CLI, :class:`~ovsam_ros.predictor.OVSAMPredictor`
and the ROS node need no code change::

    model:
      backend: onnx
      onnx_dir: ~/ovsam_onnx/rn50x16          # written by `ovsam export`
      onnx_providers: [CUDAExecutionProvider, CPUExecutionProvider]   # optional
      # clip_weights: ~/ovsam_weights/RN50x16-openai.pt   # only if exported --no-text-tower

Image encoder and prompt decoder run in ONNX Runtime (CPU, CUDA or TensorRT
execution providers); the CLIP text tower stays in PyTorch (vocabularies are
encoded once per vocabulary and cached on disk by the predictor, exactly as with
the PyTorch backend: the text weights, and so the cache keys, are the same).

Limits: batch size 1 (one image per ``encode_image``), prompts need at least one
point or a box, ``roi_boxes`` (training-time ground-truth boxes) is not supported,
and the paper baselines (``--baseline``) need the PyTorch CLIP image tower.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ovsam_ros.backends import Backend, register
from ovsam_ros.export.folder import verify_files
from ovsam_ros.export.onnx_export import DECODER_INPUTS, DECODER_OUTPUTS, FORMAT, MANIFEST
from ovsam_ros.model.config import OVSAMConfig
from ovsam_ros.model.ovsam import ImageFeatures, check_roi_box
from ovsam_ros.model.transforms import postprocess_masks

log = logging.getLogger(__name__)


class TextTower(nn.Module):
    """open_clip CLIP without its image tower: tokenizer + ``encode_text`` (``OVSAM.backbone`` stand-in)."""

    def __init__(self, clip_model: nn.Module, model_name: str) -> None:
        super().__init__()
        clip_model.visual = nn.Identity()  # frees the image tower; it runs in ONNX Runtime
        self.clip = clip_model
        self.model_name = model_name
        self._tokenizer = None
        for p in self.clip.parameters():
            p.requires_grad_(False)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            import open_clip

            from ovsam_ros.model.backbone import register_tiny_clip_configs

            register_tiny_clip_configs()
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._tokenizer

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        return self.clip.encode_text(tokens.to(device), normalize=normalize)


class _DecoderInfo:
    """What callers read from ``OVSAM.decoder`` (sizes only)."""

    def __init__(self, image_size: int, embedding_size: int, low_res_size: int) -> None:
        self.image_size, self.embedding_size, self.low_res_size = image_size, embedding_size, low_res_size


class OnnxOVSAM(nn.Module):
    """ONNX Runtime sessions for the image encoder and the decoders + a PyTorch text tower."""

    def __init__(self, onnx_dir: Union[str, Path], text_tower: TextTower, providers: Optional[Sequence[Any]] = None,
                 manifest: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.onnx_dir = Path(onnx_dir)
        if manifest is None:
            manifest = read_manifest_file(self.onnx_dir)
            verify_files(self.onnx_dir, manifest)  # (load_onnx_model checked the files before the text tower)
        self.manifest = manifest
        self.cfg = OVSAMConfig.from_dict(self.manifest["config"])
        self.backbone = text_tower
        self.trained = bool(self.manifest.get("trained", False))
        self.decoder = _DecoderInfo(self.cfg.image_size, self.cfg.embedding_size, int(self.manifest["low_res_size"]))
        self.providers = resolve_providers(providers)
        files = self.manifest["files"]
        self._image = _session(self.onnx_dir / files["image_encoder"], self.providers)
        self._decoders = {name: _session(self.onnx_dir / files[name], self.providers)
                          for name in ("decoder", "decoder_multimask") if name in files}
        self._image_outputs: List[str] = list(self.manifest["image_outputs"])
        dim = int(self.manifest["clip_dim"])
        # The predictor does recognition in PyTorch; the graphs' class_logits get a 1-class dummy vocabulary.
        self._dummy_text = np.zeros((1, 1, dim), np.float32)
        self._dummy_valid = np.ones((1, 1), np.float32)

    # -- what OVSAMPredictor / the node read ---------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def clip_dim(self) -> int:
        return int(self.manifest["clip_dim"])

    @property
    def device(self) -> torch.device:
        return next(self.backbone.clip.parameters()).device

    @property
    def tokenizer(self):
        return self.backbone.tokenizer

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.backbone.encode_text(tokens, normalize=normalize)

    def current_config(self) -> OVSAMConfig:
        return OVSAMConfig.from_dict(self.cfg.to_dict())

    def postprocess_masks(self, masks: torch.Tensor, input_size, original_size) -> torch.Tensor:
        return postprocess_masks(masks, self.image_size, input_size, original_size)

    # -- inference -------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape) != (1, 3, s, s):
            raise ValueError(f"the ONNX image encoder takes [1, 3, {s}, {s}] images, got {tuple(images.shape)}")
        outs = self._image.run(None, {"image": _numpy(images)})
        named = dict(zip(self._image_outputs, (self._tensor(o) for o in outs)))
        fpn = [named[f"fpn{i}"] for i in range(4)]
        if "clip_c5" in named:  # only C5 is exported; the other stages are empty placeholders
            empty = named["clip_c5"].new_zeros(1, 0, 0, 0)
            clip = [empty, empty, empty, named["clip_c5"]]
        else:
            clip = []
        return ImageFeatures(sam_embedding=named["sam_embedding"], clip_features=clip, fpn_features=fpn)

    def decode(self, features: ImageFeatures, point_coords: Optional[torch.Tensor] = None,
               point_labels: Optional[torch.Tensor] = None, boxes: Optional[torch.Tensor] = None,
               mask_input: Optional[torch.Tensor] = None, multimask_output: bool = True,
               image_index: Union[int, torch.Tensor] = 0, roi_boxes: Optional[torch.Tensor] = None,
               roi_box: str = "mask") -> Dict[str, Optional[torch.Tensor]]:
        """Same contract as :meth:`OVSAM.decode` (input-image pixels; SAM prompt semantics)."""
        if roi_boxes is not None:
            raise ValueError("the ONNX backend does not support roi_boxes (training-time ground-truth boxes)")
        if check_roi_box(roi_box) != "mask":
            raise ValueError(f"the ONNX backend pools the box of the whole mask (roi_box 'mask'), not {roi_box!r}")
        if not (isinstance(image_index, int) and image_index == 0 and features.batch_size == 1):
            raise ValueError("the ONNX backend decodes prompts for one image at a time (image_index 0)")
        coords, labels = sam_point_inputs(point_coords, point_labels, boxes)
        n = coords.shape[0]
        low = self.decoder.low_res_size
        if mask_input is None:
            masks_np, has = np.zeros((1, 1, low, low), np.float32), np.zeros(1, np.float32)
        else:
            if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != (1, low, low) or mask_input.shape[0] != n:
                raise ValueError(f"mask_input must be [{n}, 1, {low}, {low}], got {tuple(mask_input.shape)}")
            masks_np, has = _numpy(mask_input), np.ones(n, np.float32)
        name = "decoder_multimask" if (multimask_output and "decoder_multimask" in self._decoders) else "decoder"
        feeds = {
            "sam_embedding": _numpy(features.sam_embedding), **{f"fpn{i}": _numpy(f) for i, f in enumerate(features.fpn_features)},
            "point_coords": _numpy(coords), "point_labels": _numpy(labels), "mask_input": masks_np,
            "has_mask_input": has, "text_embeddings": self._dummy_text, "text_valid": self._dummy_valid,
        }
        assert set(feeds) == set(DECODER_INPUTS)
        out = dict(zip(DECODER_OUTPUTS, self._decoders[name].run(None, feeds)))
        return {
            "masks_lowres": self._tensor(out["masks_lowres"]),
            "iou": self._tensor(out["iou"]),
            "region_embeddings": self._tensor(out["region_embeddings"]),
            "roi_boxes": self._tensor(out["roi_boxes"]),
            "label_embeddings": None,
        }

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def extra_repr(self) -> str:
        return f"onnx_dir={str(self.onnx_dir)!r}, providers={self.providers}"


def sam_point_inputs(point_coords: Optional[torch.Tensor], point_labels: Optional[torch.Tensor],
                     boxes: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM prompts -> the graphs' (coords [N, P, 2], float labels [N, P]) with SAM's padding/box tokens."""
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    parts_c, parts_l = [], []
    if point_coords is not None:
        if point_coords.ndim != 3 or point_coords.shape[-1] != 2:
            raise ValueError(f"point_coords must be [N, P, 2], got {tuple(point_coords.shape)}")
        parts_c.append(point_coords.float().cpu())
        parts_l.append(point_labels.float().cpu())
    if boxes is not None:
        if boxes.ndim == 3 and boxes.shape[1] == 1:
            boxes = boxes[:, 0]
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be [N, 4] xyxy, got {tuple(boxes.shape)}")
        n = boxes.shape[0]
        parts_c.append(boxes.float().cpu().reshape(n, 2, 2))
        parts_l.append(torch.tensor([[2.0, 3.0]]).expand(n, 2))
    elif point_coords is not None:  # SAM appends one padding point when there is no box
        n = point_coords.shape[0]
        parts_c.append(torch.zeros(n, 1, 2))
        parts_l.append(-torch.ones(n, 1))
    if not parts_c:
        raise ValueError("the ONNX backend needs at least one point or a box per prompt")
    if len({c.shape[0] for c in parts_c}) != 1:
        raise ValueError(f"{parts_c[0].shape[0]} point sets but {parts_c[-1].shape[0]} boxes")
    return torch.cat(parts_c, dim=1), torch.cat(parts_l, dim=1)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


# ----------------------------------------------------------------------------------------- loading
def resolve_providers(providers: Optional[Sequence[Any]] = None) -> List[Any]:
    """Requested execution providers that this onnxruntime build has (CPU always last as a fallback).

    Entries are provider names or ``[name, {options}]`` pairs (e.g. TensorRT options).
    Default: CUDA when available, then CPU.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = list(providers) if providers else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    out: List[Any] = []
    for p in wanted:
        name = p[0] if isinstance(p, (list, tuple)) else p
        if name in available:
            if isinstance(p, (list, tuple)):
                options = {k: (os.path.expandvars(os.path.expanduser(v)) if isinstance(v, str) and ("~" in v or "$" in v)
                               else v) for k, v in dict(p[1] if len(p) > 1 else {}).items()}
                out.append((name, options))
            else:
                out.append(p)
        elif providers:
            log.warning("ONNX Runtime execution provider %s is not available here (have %s); skipped",
                        name, sorted(available))
    if "CPUExecutionProvider" not in [p[0] if isinstance(p, tuple) else p for p in out]:
        out.append("CPUExecutionProvider")
    return out


def _session(path: Path, providers: Sequence[Any]):
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    threads = os.environ.get("OVSAM_ORT_THREADS")
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=list(providers))


def read_manifest_file(onnx_dir: Union[str, Path]) -> Dict[str, Any]:
    path = Path(os.path.expandvars(os.path.expanduser(str(onnx_dir)))) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: onnx_dir must be a folder written by `ovsam export`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not an {FORMAT} manifest (format {manifest.get('format')!r})")
    return manifest


def read_manifest(spec) -> Dict[str, Any]:
    """The manifest of a ``backend: onnx`` :class:`~ovsam_ros.loading.ModelSpec`."""
    if not getattr(spec, "onnx_dir", None):
        raise ValueError("model.backend is 'onnx' but model.onnx_dir is not set")
    return read_manifest_file(spec.onnx_dir)


def load_onnx_model(spec) -> OnnxOVSAM:
    """Build :class:`OnnxOVSAM` from a ``backend: onnx`` model spec (see module docstring)."""
    import open_clip

    from ovsam_ros.model.backbone import register_tiny_clip_configs

    onnx_dir = Path(os.path.expandvars(os.path.expanduser(spec.onnx_dir)))
    manifest = read_manifest(spec)
    verify_files(onnx_dir, manifest)  # every graph and the text tower are the ones this export wrote
    cfg = OVSAMConfig.from_dict(manifest["config"])
    register_tiny_clip_configs()
    clip_weights = os.path.expandvars(os.path.expanduser(spec.clip_weights)) if spec.clip_weights else None
    if clip_weights and not os.path.isfile(clip_weights):
        raise FileNotFoundError(f"clip_weights not found: {clip_weights}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(getattr(spec, "seed", 0))
        clip = open_clip.create_model(cfg.backbone.model_name, pretrained=clip_weights)
    text_file = manifest.get("files", {}).get("text_tower")
    if text_file and not clip_weights:
        state = torch.load(onnx_dir / text_file, map_location="cpu", weights_only=True)
        missing, unexpected = clip.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("visual.")]
        if missing or unexpected:
            raise ValueError(f"{onnx_dir / text_file}: text tower keys do not match {cfg.backbone.model_name}: "
                             f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
    elif not text_file and not clip_weights:
        log.warning("%s has no text_tower.pt and no clip_weights are configured: the text tower is random", onnx_dir)
    tower = TextTower(clip.eval(), cfg.backbone.model_name)
    return OnnxOVSAM(onnx_dir, tower, providers=getattr(spec, "onnx_providers", None), manifest=manifest).eval()


__all__ = ["OnnxOVSAM", "TextTower", "load_onnx_model", "read_manifest", "resolve_providers", "sam_point_inputs"]


register(Backend("onnx", load=load_onnx_model, trained=lambda spec: bool(read_manifest(spec).get("trained", False))))
