"""Timed stages of OVSAM and of the two-backbone baselines, on real (random-init) models.

Every stage is a zero-argument callable built here and measured by
:mod:`ovsam_ros.benchmark.harness`. Stage labels equal those of
:mod:`ovsam_ros.benchmark.flops`, so FLOPs and timings share a table row.

OVSAM, once per frame (group ``image``):
  ``preprocess``  uint8 frame -> resized, normalised, padded tensor on the device
  ``clip_encoder``  the CLIP CNN's four stages
  ``sam2clip``  SAM2CLIP neck -> SAM image embedding
  ``fpn``  CLIP2SAM FPN
  ``encode_image``  the three above in one call (what ``set_image`` runs)
Per batch of N prompts (group ``prompt``; features cached):
  ``prompt_decoder``  SAM prompt encoder + mask decoder (+ label token)
  ``roi_head``  CLIP2SAM RoIAlign + 1x1 conv on the masks' boxes
  ``decode``  ``OVSAM.decode``: the two above plus mask -> box
  ``clip_region_branch``  optional frozen-CLIP ensemble branch (RoIAlign C5 + attention pool)
  ``postprocess``  low-res logits -> original-size masks on the host, stability, boxes
  ``predict``  ``OVSAMPredictor.predict`` end to end (decode + recognition + postprocess)
Per vocabulary size (group ``vocabulary``): ``recognition`` = cosine logits + top-k labels.
Once (group ``vocabulary``): ``text_encoder`` = one ``encode_vocabulary`` batch through the CLIP
text tower, what ``set_vocabulary`` repeats per batch; its note and ``text_encode_estimate_s``
scale it to each vocabulary size.
Everything mode (group ``everything``): ``OVSAMPredictor.everything`` with a point grid.

Baselines (prefix ``baseline.``): ``sam_encoder`` (SAM ViT image encoder),
``clip_dense`` (CLIP on the full image, feature-crop), ``sam_decoder`` (SAM's
own decoder), ``feature_crop`` (RoIAlign C5 + CLIP head per mask) and
``image_crop`` (CLIP image encoder on every mask's crop), each through the
same code as :mod:`ovsam_ros.baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import calculate_stability_score

from ovsam_ros.benchmark.flops import build_sam_encoder, point_prompts, random_text
from ovsam_ros.benchmark.harness import StageResult, measure_memory, time_call
from ovsam_ros.image_input import to_uint8_rgb
from ovsam_ros.model.inference import inference_dtype
from ovsam_ros.model.ovsam import OVSAM, ImageFeatures, masks_to_boxes
from ovsam_ros.model.packed_text import PackedText, packed_class_logits
from ovsam_ros.model.recognition import class_logits, topk_labels
from ovsam_ros.runtime import PRECISIONS
from ovsam_ros.model.transforms import ImageTransform
from ovsam_ros.results import InstanceResult
from ovsam_ros.runtime import autocast


@dataclass
class TimingOptions:
    device: torch.device
    precision: str = "fp32"
    repeats: int = 5
    warmup: int = 1
    memory: bool = True
    channels_last: bool = False
    top_k: int = 5


def random_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    frame[height // 4 : height // 2, width // 4 : width // 2] = (200, 40, 40)  # one flat object
    return frame


class StageRunner:
    """Collects :class:`StageResult` rows for the callables it is given."""

    def __init__(self, opts: TimingOptions, log: Optional[Callable[[str], None]] = None) -> None:
        self.opts = opts
        self.rows: List[StageResult] = []
        self.log = log or (lambda _msg: None)

    def run(self, name: str, group: str, fn: Callable[[], Any], params: Optional[dict] = None,
            note: str = "", repeats: Optional[int] = None, use_autocast: bool = True) -> StageResult:
        row = StageResult(name=name, group=group, params=dict(params or {}), note=note)
        opts = self.opts
        precision = opts.precision if use_autocast else "fp32"  # fp32 = no autocast

        def call() -> Any:
            with torch.inference_mode(), autocast(opts.device, precision):
                return fn()

        row.timing = time_call(call, opts.device, repeats or opts.repeats, opts.warmup)
        if opts.memory:
            row.memory = measure_memory(call, opts.device)
        self.rows.append(row)
        self.log(f"  {row.label:<48} median {row.timing.median_ms:10.2f} ms  p90 {row.timing.p90_ms:10.2f} ms")
        return row


def _features(model, x: torch.Tensor, opts: TimingOptions) -> ImageFeatures:
    with torch.inference_mode(), autocast(opts.device, opts.precision if inference_dtype(model) is None else "fp32"):
        return model.encode_image(x)


def time_ovsam(model, predictor, frame: np.ndarray, prompts: Sequence[int], vocab_sizes: Sequence[tuple[int, int]],
               grids: Sequence[int], runner: StageRunner, region_branch: bool = True,
               everything_filters: bool = True) -> dict[str, Any]:
    """Time every OVSAM stage; ``model`` is an :class:`OVSAM` or an ONNX backend (fewer image stages)."""
    opts = runner.opts
    device = opts.device
    transform = ImageTransform(model.image_size)
    original = frame.shape[:2]
    input_size = transform.get_input_size(original)

    def preprocess() -> torch.Tensor:
        if getattr(predictor, "device_preprocess", False):  # what set_image does on a GPU
            x = transform.apply_image_device(to_uint8_rgb(frame), device)
        else:
            x = transform.apply_image(to_uint8_rgb(frame)).to(device)
        return x.contiguous(memory_format=torch.channels_last) if opts.channels_last else x

    runner.run("preprocess", "image", preprocess, note=f"{original[1]}x{original[0]} uint8 -> {model.image_size}px")
    x = preprocess()
    # The inference path holds its image-path weights in the inference dtype and runs them
    # without autocast (as set_image does); the plain path runs under autocast.
    plain = inference_dtype(model) is None
    if isinstance(model, OVSAM):
        with torch.inference_mode(), autocast(device, opts.precision if plain else "fp32"):
            clip_feats = model.backbone(x)
        runner.run("clip_encoder", "image", lambda: model.backbone(x), use_autocast=plain)
        runner.run("sam2clip", "image", lambda: model.sam2clip(clip_feats), use_autocast=plain)
        runner.run("fpn", "image", lambda: model.clip2sam.fpn_features(clip_feats), use_autocast=plain)
        del clip_feats
    runner.run("encode_image", "image", lambda: model.encode_image(x), note="what set_image() runs",
               use_autocast=plain)
    features = _features(model, x, opts)

    # The predictor shares these features (as set_image would have computed them).
    predictor.features = features
    predictor.original_size = (int(original[0]), int(original[1]))
    predictor.input_size = input_size
    predictor._image_rgb = frame

    from ovsam_ros.prompts import Prompt

    for n in prompts:
        coords, labels = point_prompts(n, input_size, device)
        params = {"prompts": n}
        if isinstance(model, OVSAM):
            with torch.inference_mode(), autocast(device, opts.precision):
                dec = model.decoder(features.sam_embedding, coords, labels, None, None, False)
                boxes = (masks_to_boxes(dec.masks) * (model.image_size / dec.masks.shape[-1])).reshape(-1, 4)
            runner.run("prompt_decoder", "prompt",
                       lambda: model.decoder(features.sam_embedding, coords, labels, None, None, False), params)
            runner.run("roi_head", "prompt", lambda: model.clip2sam(features.fpn_features, boxes), params)
            if region_branch:
                runner.run("clip_region_branch", "prompt",
                           lambda: model.backbone.pool_regions(features.clip_features[3], boxes), params,
                           note="optional eval-ensemble branch")
        runner.run("decode", "prompt", lambda: model.decode(features, coords, labels, multimask_output=False), params)
        with torch.inference_mode(), autocast(device, opts.precision):
            low_res = model.decode(features, coords, labels, multimask_output=False)["masks_lowres"].float()

        def postprocess() -> tuple:
            # As the predictor does: upsample + threshold on the device, masks cropped to their
            # boxes there, one host copy for all crops.
            logits = transform.postprocess_masks(low_res, original)
            stability = calculate_stability_score(logits, 0.0, 1.0)
            boxes, crops = predictor._host_crops(logits.flatten(0, 1))
            return boxes, crops, stability.cpu().numpy()

        runner.run("postprocess", "prompt", postprocess, params,
                   note=f"to {original[1]}x{original[0]}, host masks cropped to their boxes")
        h, w = original
        pts = point_prompts(n, (h, w), seed=1)[0].cpu().numpy()
        clicks = [Prompt(points=pts[i].tolist(), point_labels=[1]) for i in range(n)]
        runner.run("predict", "prompt", lambda: predictor.predict(clicks), params,
                   note=f"OVSAMPredictor.predict, {len(predictor.vocabulary)} classes")

    dim = predictor.text.dim
    # What the predictor runs: on the inference path the packed [total synonyms, D] matrix in the
    # inference dtype (ragged synonym counts like the shipped vocabularies), else the padded one.
    packed_dtype = PRECISIONS[predictor.precision] if getattr(predictor, "optimized", False) else None
    for c, syn in vocab_sizes:
        text = random_text(c, syn, dim, device=device, ragged=packed_dtype is not None)
        packed = PackedText.from_text(text, device, packed_dtype) if packed_dtype is not None else None
        for n in prompts:
            regions = F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(n)), dim=-1).to(device)

            def recognise() -> list:
                logits = class_logits(regions, text) if packed is None else packed_class_logits(regions, packed)
                return topk_labels(logits, text.vocab, k=opts.top_k)

            note = (f"text matrix [{c}x{syn}, {dim}]" if packed is None else
                    f"packed text [{packed.matrix.shape[0]}, {dim}] {str(packed_dtype).replace('torch.', '')}")
            runner.run("recognition", "vocabulary", recognise, {"prompts": n, "classes": c}, note=note)
        text = packed = None  # free the (up to 1 GB) matrix before the next one

    extra: dict[str, Any] = {}
    if isinstance(model, OVSAM):
        extra["text_encode_estimate_s"] = time_text_encoder(predictor, vocab_sizes, runner)

    from ovsam_ros.predictor import EverythingOptions

    kept: dict[str, int] = {}
    for g in grids:
        options = EverythingOptions(points_per_side=g)
        if not everything_filters:  # worst case: every candidate is upsampled, kept and NMS-ed
            options = EverythingOptions(points_per_side=g, pred_iou_thresh=-float("inf"), stability_score_thresh=0.0,
                                        max_instances=g * g * 3)

        def everything() -> None:
            kept[f"{g}x{g}"] = len(predictor.everything(options))

        row = runner.run("everything", "everything", everything, {"grid": f"{g}x{g}"})
        what = "default thresholds" if everything_filters else "no IoU/stability filter"
        row.note = f"{g * g} points, {what}, {kept[f'{g}x{g}']} masks kept (random weights)"
    return {"everything_kept": kept, **extra}


def time_text_encoder(predictor, vocab_sizes: Sequence[tuple[int, int]], runner: StageRunner) -> dict[str, float]:
    """Time one full ``encode_vocabulary`` batch (``ENCODE_BATCH_SIZE`` prompts: real LVIS class names x the
    predictor's templates, short contexts as the predictor runs them) and scale it to every
    vocabulary size by its batch count, with the shipped vocabularies' mean synonyms per class.
    Returns ``{classes: estimated seconds}`` for a cold ``set_vocabulary`` (no text cache)."""
    import math

    from ovsam_ros.benchmark.vocab_shape import synonym_shape
    from ovsam_ros.model.vocabulary import ENCODE_BATCH_SIZE, load_vocabulary

    templates = predictor.templates
    per_batch = max(1, ENCODE_BATCH_SIZE // len(templates))  # names per batch, as encode_vocabulary packs them
    vocab = load_vocabulary("lvis", names_only=True).subset(range(per_batch))

    def encode() -> Any:  # set_vocabulary's own path (the benchmark's predictor has no text cache)
        return predictor.encode_vocabulary(vocab, progress=False)

    row = runner.run("text_encoder", "vocabulary", encode, {"texts": per_batch * len(templates)}, use_autocast=False)
    batch_s = row.timing.median_ms / 1000
    estimate: dict[str, float] = {}
    for c, _ in vocab_sizes:
        batches = math.ceil(c * synonym_shape(c)[1] / per_batch)
        estimate[str(c)] = round(batches * batch_s, 3)
    row.note = (f"one batch: {per_batch} names x {len(templates)} templates; cold set_vocabulary ~ "
                + ", ".join(f"{c} classes {v:.3g} s" for c, v in estimate.items()))
    return estimate


def time_baselines(model: OVSAM, predictor, frame: np.ndarray, prompts: Sequence[int], baselines: Sequence[str],
                   sam_family: str, runner: StageRunner) -> None:
    """Time the two-backbone pipelines with the same harness (random-init SAM encoder)."""
    opts = runner.opts
    device = opts.device
    from ovsam_ros.baselines import _feature_crop_embeddings, _image_crop_embeddings
    from ovsam_ros.benchmark.flops import _sam_decoder

    s = model.image_size
    encoder = build_sam_encoder(sam_family, s).to(device)
    if opts.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    decoder = _sam_decoder(model.cfg).to(device)
    transform = ImageTransform(s)
    x = transform.apply_image(frame).to(device)
    runner.run("baseline.sam_encoder", "image", lambda: encoder(x), note=f"SAM {sam_family} image encoder")
    with torch.inference_mode(), autocast(device, opts.precision):
        embedding = encoder(x)
    encoder = None  # free the SAM encoder (2.5 GB for ViT-H) before the prompt stages
    clip_features = None
    if "feature-crop" in baselines:
        runner.run("baseline.clip_dense", "image", lambda: model.backbone(x), note="CLIP on the full image")
        with torch.inference_mode(), autocast(device, opts.precision):
            clip_features = model.backbone(x)

    original = frame.shape[:2]
    input_size = transform.get_input_size(original)
    for n in prompts:
        coords, labels = point_prompts(n, input_size, device)
        params = {"prompts": n}
        runner.run("baseline.sam_decoder", "prompt", lambda: decoder(embedding, coords, labels, None, None, False),
                   params)
        results = _fake_results(n, original)
        if "feature-crop" in baselines:
            fake = _PredictorView(predictor, ImageFeatures(embedding, clip_features, []))
            runner.run("baseline.feature_crop", "prompt", lambda: _feature_crop_embeddings(fake, results), params,
                       note="RoIAlign C5 + CLIP head")
        if "image-crop" in baselines:
            runner.run("baseline.image_crop", "prompt", lambda: _image_crop_embeddings(predictor, results), params,
                       note=f"{n} crops through CLIP at {model.backbone.clip_image_size}px")


class _PredictorView:
    """A predictor whose cached features are the baseline's (SAM embedding + separate CLIP maps)."""

    def __init__(self, predictor, features: ImageFeatures) -> None:
        self._predictor = predictor
        self._features = features

    def _require_image(self) -> ImageFeatures:
        return self._features

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)


def _fake_results(n: int, original: tuple[int, int], seed: int = 2) -> list[InstanceResult]:
    """``n`` instances with random boxes (and box-shaped masks) in the original frame."""
    rng = np.random.default_rng(seed)
    h, w = original
    out = []
    for _ in range(n):
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        x1, y1 = max(x1, x0 + 8), max(y1, y0 + 8)
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = True
        out.append(InstanceResult(mask=mask, predicted_iou=1.0, stability_score=1.0,
                                  box=(int(x0), int(y0), int(min(x1, w)), int(min(y1, h)))))
    return out
