"""ONNX export of OVSAM as two graphs (image side once per frame, prompt side per prompt batch).

``image_encoder.onnx``
    input  ``image`` [1, 3, S, S] float32: the SAM-normalised, zero-padded frame
           (:meth:`ImageTransform.apply_image`)
    output ``sam_embedding`` [1, 256, S/16, S/16], ``fpn0..fpn3`` (CLIP2SAM FPN,
           strides 4/8/16/32) and, unless exported without it, ``clip_c5``
           (raw CLIP stride-32 map, for the feature-crop baseline / ensemble branch)

``decoder.onnx`` (mask 0, SAM's single-mask output) and ``decoder_multimask.onnx``
(masks 1..3, SAM's multimask output; not written for the reference token layout,
which has one mask) take the image outputs plus, with ``N`` prompts:

    ``point_coords`` [N, P, 2]  float32, INPUT-image pixels (after resize, before pad)
    ``point_labels`` [N, P]     float32: 1 positive, 0 negative, -1 padding,
                                2 box top-left corner, 3 box bottom-right corner
    ``mask_input``   [Nm, 1, 4G, 4G] low-res logits of a previous prediction (Nm = 1 or N)
    ``has_mask_input`` [Nm]     1.0 where ``mask_input`` is used, else 0.0
    ``text_embeddings`` [C, S_syn, D] unit text embeddings (vocabulary; an INPUT, so the
                                vocabulary changes without re-export)
    ``text_valid``   [C, S_syn] 1.0 for real synonyms, 0.0 for padding

The prompt encoding is SAM's own ONNX convention (``segment_anything/utils/onnx.py``):
a box is two points labelled 2 and 3, and a prompt WITHOUT a box must end with one
padding point (label -1, any coordinates), exactly the token SAM's PyTorch prompt
encoder appends. All prompts of one call share the same P; pad shorter prompts with
label -1 points (a padding point is an extra "not a point" token, so results equal the
PyTorch model's only for prompts that SAM would pad the same way: group prompts by
structure as :class:`OVSAMPredictor` does). :class:`~ovsam_ros.export.backend.OnnxOVSAM`
builds these inputs from ordinary points/boxes.

Outputs (``M`` = 1 or 3 masks per prompt):
    ``masks_lowres`` [N, M, 4G, 4G] logits, ``iou`` [N, M], ``region_embeddings``
    [N, M, D] (not normalised), ``roi_boxes`` [N, M, 4] (input pixels),
    ``class_logits`` [N, M, C + 1] (x100 cosine, max over synonyms, background last = 0).

Export-friendly rewrites (numerically identical to :class:`OVSAM`): the per-level
RoIAlign selects levels with a 0/1 mask instead of ``nonzero`` indexing, the FPN level
rule ``floor(log2(scale / 56 + 1e-6))`` is written as threshold comparisons, mask
boxes use max-reductions instead of ``argmax``/``flip``, and the image embedding is
broadcast instead of ``repeat_interleave``-d. The legacy TorchScript exporter
(``dynamo=False``) is used: it needs no onnxscript and its RoiAlign-16 output runs
on ONNX Runtime and TensorRT.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from ovsam_ros.export import folder
# The folder's rules (written whole into a temporary sibling, owned, hashed): ovsam_ros.export.folder
from ovsam_ros.export.folder import FORMAT, FORMAT_VERSION, MANIFEST
from ovsam_ros.model.ovsam import OVSAM
from ovsam_ros.model.recognition import DEFAULT_LOGIT_SCALE

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # RoiAlign-16 (half_pixel = torchvision aligned=True), LayerNormalization-17
FPN_NAMES = ("fpn0", "fpn1", "fpn2", "fpn3")
IMAGE_OUTPUTS = ("sam_embedding", *FPN_NAMES)
DECODER_INPUTS = ("sam_embedding", *FPN_NAMES, "point_coords", "point_labels", "mask_input", "has_mask_input",
                  "text_embeddings", "text_valid")
DECODER_OUTPUTS = ("masks_lowres", "iou", "region_embeddings", "roi_boxes", "class_logits")

#: Documented agreement of ONNX Runtime (CPU, fp32) with PyTorch on the tiny model (see test/export).
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}


# ----------------------------------------------------------------------------------------- graphs
class ImageEncoderGraph(nn.Module):
    """CLIP backbone + SAM2CLIP + CLIP2SAM FPN (+ raw C5)."""

    def __init__(self, model: OVSAM, with_c5: bool = True) -> None:
        super().__init__()
        self.backbone, self.sam2clip, self.clip2sam = model.backbone, model.sam2clip, model.clip2sam
        self.with_c5 = with_c5

    def forward(self, image: torch.Tensor):
        feats = self.backbone(image)
        out = (self.sam2clip(feats), *self.clip2sam.fpn_features(feats))
        return (*out, feats[3]) if self.with_c5 else out


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder + CLIP2SAM RoI head + recognition, dynamic in N, P, C, S."""

    def __init__(self, model: OVSAM, multimask: bool) -> None:
        super().__init__()
        self.decoder, self.clip2sam = model.decoder, model.clip2sam
        self.image_size = int(model.image_size)
        self.multimask = bool(multimask)
        self.logit_scale = float(DEFAULT_LOGIT_SCALE)

    # -- SAM prompt encoder, SAM-ONNX style (labels 2/3 are box corners) ------------------------
    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.decoder.prompt_encoder
        coords = (coords + 0.5) / self.image_size  # SAM: shift to pixel centre, normalise by the input size
        emb = pe.pe_layer._pe_encoding(coords)
        labels = labels.unsqueeze(-1)
        emb = emb * (labels != -1).to(emb.dtype)
        emb = emb + pe.not_a_point_embed.weight * (labels == -1).to(emb.dtype)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (labels == i).to(emb.dtype)
        return emb

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.decoder.prompt_encoder
        has = has_mask_input.reshape(-1, 1, 1, 1).to(mask_input.dtype)
        return has * pe.mask_downscaling(mask_input) + (1 - has) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    # -- mask decoder: OVSAMDecoder.predict_masks is trace-friendly (dynamic prompt axis) ----------
    def predict_masks(self, image_embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
        return self.decoder.predict_masks(image_embedding, sparse, dense)

    # -- CLIP2SAM ------------------------------------------------------------------------------
    @staticmethod
    def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
        """``masks_to_boxes`` with max-reductions: [x0, y0, x1 + 1, y1 + 1] of logits > 0; zeros if empty."""
        fg = (masks > 0).to(masks.dtype)
        h, w = masks.shape[-2:]
        cols, rows = fg.amax(dim=-2), fg.amax(dim=-1)
        ar_w = torch.arange(w, dtype=masks.dtype, device=masks.device)
        ar_h = torch.arange(h, dtype=masks.dtype, device=masks.device)
        x0 = w - (cols * (w - ar_w)).amax(dim=-1)
        x1 = (cols * (ar_w + 1)).amax(dim=-1)
        y0 = h - (rows * (h - ar_h)).amax(dim=-1)
        y1 = (rows * (ar_h + 1)).amax(dim=-1)
        return torch.stack([x0, y0, x1, y1], dim=-1) * cols.amax(dim=-1).unsqueeze(-1)

    def regions(self, fpn: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        head = self.clip2sam
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
        if head.roi_level is None:
            wh = (boxes[:, 2:4] - boxes[:, 0:2]).clamp(min=0)
            x = torch.sqrt(wh[:, 0] * wh[:, 1]) / head.finest_scale + 1e-6
            # floor(log2(x)) clipped to 0..3, as threshold comparisons (exact, and TensorRT-friendly)
            level = sum(((x >= 2.0 ** k).to(boxes.dtype) for k in range(1, len(head.strides))), torch.zeros_like(x))
        else:
            level = torch.full_like(boxes[:, 0], float(head.roi_level))
        pooled = None
        for lvl, (feat, stride) in enumerate(zip(fpn, head.strides)):
            sel = (level == lvl).to(boxes.dtype).reshape(-1, 1, 1, 1)
            part = sel * roi_align(feat, rois, output_size=head.roi_size, spatial_scale=1.0 / stride,
                                   sampling_ratio=0, aligned=True)
            pooled = part if pooled is None else pooled + part
        return head.roi_conv(pooled).mean(dim=(-2, -1))

    def class_logits(self, regions: torch.Tensor, text: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        r = F.normalize(regions, dim=-1)
        sims = r @ text.reshape(-1, text.shape[-1]).t()
        sims = sims.reshape(sims.shape[0], text.shape[0], text.shape[1])
        sims = torch.where(valid.unsqueeze(0) > 0.5, sims, torch.full_like(sims, float("-inf")))
        logits = sims.amax(dim=-1) * self.logit_scale
        return torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1)

    def forward(self, sam_embedding, fpn0, fpn1, fpn2, fpn3, point_coords, point_labels, mask_input,
                has_mask_input, text_embeddings, text_valid):
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_masks(mask_input, has_mask_input)
        masks, iou, label_embeddings = self.predict_masks(sam_embedding, sparse, dense)
        if self.multimask and masks.shape[1] > 1:
            masks, iou = masks[:, 1:], iou[:, 1:]
        else:
            masks, iou = masks[:, :1], iou[:, :1]
        n, m = masks.shape[0], masks.shape[1]
        boxes = self.mask_boxes(masks) * (self.image_size / masks.shape[-1])
        regions = self.regions((fpn0, fpn1, fpn2, fpn3), boxes.reshape(-1, 4)).reshape(n, m, -1)
        regions = self.clip2sam.combine(regions, label_embeddings)
        logits = self.class_logits(regions.reshape(n * m, -1), text_embeddings, text_valid).reshape(n, m, -1)
        return masks, iou, regions, boxes, logits


# ----------------------------------------------------------------------------------------- export
def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes, opset: int) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / legacy-exporter deprecation chatter
        torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False)


def example_decoder_inputs(model: OVSAM, image_outputs: Sequence[torch.Tensor], num_prompts: int = 3,
                           num_points: int = 2, num_classes: int = 5, num_synonyms: int = 2, seed: int = 0,
                           with_box: bool = False) -> Dict[str, torch.Tensor]:
    """Decoder graph inputs: ``num_points`` clicks (+ a padding point, or a box) per prompt and a random vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    s, low = model.image_size, model.decoder.low_res_size
    coords = torch.rand(num_prompts, num_points, 2, generator=gen) * (s - 1)
    labels = (torch.rand(num_prompts, num_points, generator=gen) > 0.3).float()
    if with_box:
        xy = torch.rand(num_prompts, 2, 2, generator=gen).sort(dim=1).values * (s - 1)
        coords = torch.cat([coords, xy], dim=1)
        labels = torch.cat([labels, torch.tensor([[2.0, 3.0]]).expand(num_prompts, 2)], dim=1)
    else:
        coords = torch.cat([coords, torch.zeros(num_prompts, 1, 2)], dim=1)
        labels = torch.cat([labels, -torch.ones(num_prompts, 1)], dim=1)
    text = F.normalize(torch.randn(num_classes, num_synonyms, model.clip_dim, generator=gen), dim=-1)
    valid = torch.ones(num_classes, num_synonyms)
    valid[1:, 1:] = 0.0
    inputs = dict(zip(IMAGE_OUTPUTS, image_outputs))
    inputs.update(point_coords=coords, point_labels=labels, mask_input=torch.zeros(1, 1, low, low),
                  has_mask_input=torch.zeros(1), text_embeddings=text, text_valid=valid)
    return inputs


def export_onnx(model: OVSAM, out_dir: Path | str, opset: int = DEFAULT_OPSET, multimask: bool = True,
                with_c5: bool = True, text_tower: bool = True, trained: bool = False, check: bool = True,
                source: Optional[Dict[str, Any]] = None, log_fn=None,
                extra_files: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Write the graphs, the text tower, ``extra_files`` (name -> text, e.g. ``model.yaml``) and
    ``manifest.json`` to ``out_dir``; returns the manifest.

    All of it is written into a temporary sibling folder and renamed into place when complete
    (:mod:`ovsam_ros.export.folder`): an interrupted export leaves an earlier one intact. An
    existing ``out_dir`` must be empty or an earlier export (its manifest lists every file in
    it), else :class:`~ovsam_ros.export.folder.ExportFolderError` before anything is written.

    ``check``: run ONNX Runtime (CPU) on new inputs (other N and P than the export
    example) and record the largest differences from PyTorch in the manifest. An export that
    fails it never replaces ``out_dir``: it is installed at ``<out_dir>.check-failed`` for a look
    and :class:`~ovsam_ros.export.folder.ExportCheckError` is raised (a robot pointed at
    ``out_dir`` keeps the export it had).
    """
    say = log_fn or (lambda _m: None)
    out = Path(out_dir).expanduser().resolve()
    previous = folder.check_target(out)  # refuse a foreign folder before minutes of work
    for stale in folder.remove_stale_partials(out):
        say(f"removed {stale.name} (a partial export left by a killed run)")
    partial = folder.new_partial(out)
    try:
        manifest = _write_export(model, partial, opset, multimask, with_c5, text_tower, trained, check, source,
                                 say, dict(extra_files or {}))
        check = manifest.get("check")
        if check is not None and not check["ok"]:
            aside = folder.check_failed_folder(out)
            folder.install(partial, aside)
            raise folder.ExportCheckError(
                f"ONNX Runtime disagrees with PyTorch ({check['summary']}; failed: {', '.join(check['failures'])}). "
                f"{out} is unchanged" + (" (the earlier export is still there)" if previous is not None else "")
                + f"; the new export is in {aside} for a look (its manifest.json has every difference). "
                "Exporting again with another --opset, or on the device that will run it, usually helps; "
                "--no-check installs without comparing.", manifest, aside)
        if previous is not None:
            edited = folder.edited_files(out, previous)
            say(f"replacing the earlier export in {out}"
                + (f" (edited since: {', '.join(edited)}; those edits are not kept)" if edited else ""))
        folder.install(partial, out)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return manifest


def _write_export(model: OVSAM, out: Path, opset: int, multimask: bool, with_c5: bool, text_tower: bool,
                  trained: bool, check: bool, source: Optional[Dict[str, Any]], say,
                  extra_files: Dict[str, str]) -> Dict[str, Any]:
    """Every file of an export into the (new, empty) folder ``out``; the manifest last."""
    model = model.to("cpu").float().eval()
    s = model.image_size
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, s, s, generator=gen)
    files: Dict[str, str] = {}

    encoder = ImageEncoderGraph(model, with_c5=with_c5).eval()
    image_outputs = IMAGE_OUTPUTS + (("clip_c5",) if with_c5 else ())
    t0 = time.perf_counter()
    with torch.no_grad():
        _export(encoder, (image,), out / "image_encoder.onnx", ["image"], image_outputs, None, opset)
        feats = encoder(image)
    files["image_encoder"] = "image_encoder.onnx"
    say(f"image_encoder.onnx written in {time.perf_counter() - t0:.1f} s")

    dyn = {
        "point_coords": {0: "num_prompts", 1: "num_points"}, "point_labels": {0: "num_prompts", 1: "num_points"},
        "mask_input": {0: "num_masks"}, "has_mask_input": {0: "num_masks"},
        "text_embeddings": {0: "num_classes", 1: "num_synonyms"}, "text_valid": {0: "num_classes", 1: "num_synonyms"},
        "masks_lowres": {0: "num_prompts"}, "iou": {0: "num_prompts"}, "region_embeddings": {0: "num_prompts"},
        "roi_boxes": {0: "num_prompts"}, "class_logits": {0: "num_prompts", 2: "num_classes_plus_background"},
    }
    variants = {"decoder": False}
    if model.decoder.output_tokens == "sam":
        if multimask:
            variants["decoder_multimask"] = True
    for name, mm in variants.items():
        graph = DecoderGraph(model, multimask=mm).eval()
        inputs = example_decoder_inputs(model, feats[:5])
        t0 = time.perf_counter()
        with torch.no_grad():
            _export(graph, tuple(inputs[k] for k in DECODER_INPUTS), out / f"{name}.onnx", DECODER_INPUTS,
                    DECODER_OUTPUTS, dyn, opset)
        files[name] = f"{name}.onnx"
        say(f"{name}.onnx written in {time.perf_counter() - t0:.1f} s")

    if text_tower:
        state = {k: v for k, v in model.backbone.clip.state_dict().items() if not k.startswith("visual.")}
        torch.save(state, out / "text_tower.pt")
        files["text_tower"] = "text_tower.pt"

    cfg = model.current_config()
    cfg.backbone.pretrained = None
    manifest: Dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict(), "image_size": s,
        "embedding_size": cfg.embedding_size, "low_res_size": model.decoder.low_res_size, "clip_dim": model.clip_dim,
        "num_mask_tokens": model.decoder.mask_decoder.num_mask_tokens if model.decoder.output_tokens == "sam" else 1,
        "opset": opset, "files": files, "image_outputs": list(image_outputs), "decoder_inputs": list(DECODER_INPUTS),
        "decoder_outputs": list(DECODER_OUTPUTS), "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in dyn.items()},
        "trained": bool(trained), "source": source or {}, "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "point_labels": {"-1": "padding (required last point when there is no box)", "0": "negative", "1": "positive",
                         "2": "box top-left", "3": "box bottom-right"},
        "tolerance": TOLERANCE,
    }
    for name, text in extra_files.items():
        if name == MANIFEST or "/" in name or name in files.values():
            raise ValueError(f"extra export file {name!r} clashes with the export's own files")
        (out / name).write_text(text, encoding="utf-8")
    manifest["sha256"] = folder.hash_folder(out)  # every file: what the export owns, checked on load
    folder.write_manifest(out, manifest)
    if check:
        t0 = time.perf_counter()
        manifest["check"] = verify_export(model, out)
        folder.write_manifest(out, manifest)
        say(f"ONNX Runtime vs PyTorch: {manifest['check']['summary']} ({time.perf_counter() - t0:.1f} s)")
    return manifest


# ----------------------------------------------------------------------------------------- check
def _session(path: Path, providers: Optional[Sequence[Any]] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    d = np.where(both_nan, 0.0, np.abs(a - b))
    return float(np.nanmax(np.where(np.isnan(d), np.inf, d))) if d.size else 0.0


def verify_export(model: OVSAM, out_dir: Path | str, seed: int = 1) -> Dict[str, Any]:
    """Compare ONNX Runtime (CPU) with PyTorch on inputs unlike the export example.

    Image graph: a new random image. Decoder graphs: 4 prompts with 1 click (+ padding)
    and 2 prompts with 2 clicks + a box, a 7-class vocabulary with 3 synonym slots, and one
    call with a per-prompt ``mask_input``. PyTorch reference: :class:`DecoderGraph` for the
    recognition logits and ``OVSAM.decode`` (the model's own code path) for masks, IoU,
    boxes and region embeddings. A RoI box that differs from PyTorch's is accepted only where
    a mask logit within the tolerance of 0 explains it (:func:`box_within_logit_noise`);
    any other box difference fails the check.
    """
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    model = model.to("cpu").float().eval()
    s = model.image_size
    image = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(seed))
    enc = _session(out / manifest["files"]["image_encoder"])
    onnx_feats = enc.run(None, {"image": image.numpy()})
    with torch.no_grad():
        ref = ImageEncoderGraph(model, with_c5="clip_c5" in manifest["image_outputs"])(image)
    diffs: Dict[str, float] = {}
    for name, a, b in zip(manifest["image_outputs"], onnx_feats, ref):
        diffs[f"image_encoder.{name}"] = _max_diff(a, b.numpy())
    scale = {f"image_encoder.{n}": float(np.abs(b.numpy()).max()) for n, b in zip(manifest["image_outputs"], ref)}

    # Decoder: feed the SAME (PyTorch) image features to both sides so the decoder is checked alone.
    from ovsam_ros.model.ovsam import ImageFeatures

    features = ImageFeatures(ref[0], [], list(ref[1:5]))
    tol = manifest.get("tolerance", TOLERANCE)
    box_mismatch = box_unexplained = 0
    for name in [k for k in manifest["files"] if k.startswith("decoder")]:
        sess = _session(out / manifest["files"][name])
        mm = name.endswith("multimask")
        cases = [dict(num_prompts=4, num_points=1, with_box=False, seed=seed + 1),
                 dict(num_prompts=2, num_points=2, with_box=True, seed=seed + 2)]
        for case in cases:
            inputs = example_decoder_inputs(model, ref[:5], num_classes=7, num_synonyms=3, **case)
            got = dict(zip(DECODER_OUTPUTS, sess.run(None, {k: v.numpy() for k, v in inputs.items()})))
            n = case["num_prompts"]
            k = case["num_points"]
            coords, labels = inputs["point_coords"][:, :k], inputs["point_labels"][:, :k].long()
            boxes = inputs["point_coords"][:, k:].reshape(n, 4) if case["with_box"] else None
            with torch.no_grad():
                want = model.decode(features, coords, labels, boxes, multimask_output=mm)
                logits = DecoderGraph(model, mm).class_logits(
                    want["region_embeddings"].reshape(-1, model.clip_dim), inputs["text_embeddings"],
                    inputs["text_valid"]).reshape(n, -1, 8)
            tag = f"{name}[{n}x{k}{'+box' if case['with_box'] else ''}]"
            diffs[f"{tag}.masks_lowres"] = _max_diff(got["masks_lowres"], want["masks_lowres"].numpy())
            diffs[f"{tag}.iou"] = _max_diff(got["iou"], want["iou"].numpy())
            same_box = np.all(got["roi_boxes"] == want["roi_boxes"].numpy(), axis=-1)  # [N, M]
            box_mismatch += int((~same_box).sum())
            noise = tol["atol"] + tol["rtol"] * float(np.abs(want["masks_lowres"].numpy()).max())
            explained = box_within_logit_noise(got["roi_boxes"], want["masks_lowres"], noise, s)
            box_unexplained += int((~same_box & ~explained).sum())
            if same_box.any():
                diffs[f"{tag}.region_embeddings"] = _max_diff(got["region_embeddings"][same_box],
                                                              want["region_embeddings"].numpy()[same_box])
                diffs[f"{tag}.class_logits"] = _max_diff(got["class_logits"][same_box], logits.numpy()[same_box])
            scale[f"{tag}.masks_lowres"] = float(np.abs(want["masks_lowres"].numpy()).max())
        # per-prompt mask input
        inputs = example_decoder_inputs(model, ref[:5], num_prompts=3, num_points=1, seed=seed + 3)
        low = model.decoder.low_res_size
        mask_in = torch.randn(3, 1, low, low, generator=torch.Generator().manual_seed(seed + 4))
        inputs.update(mask_input=mask_in, has_mask_input=torch.ones(3))
        got = dict(zip(DECODER_OUTPUTS, sess.run(None, {k: v.numpy() for k, v in inputs.items()})))
        with torch.no_grad():
            want = model.decode(features, inputs["point_coords"][:, :1], inputs["point_labels"][:, :1].long(),
                                None, mask_in, multimask_output=mm)
        diffs[f"{name}[mask_input].masks_lowres"] = _max_diff(got["masks_lowres"], want["masks_lowres"].numpy())
    failures = [k for k, v in diffs.items() if v > tol["atol"] + tol["rtol"] * scale.get(k, 1.0)]
    if box_unexplained:
        failures.append("roi_boxes")
    worst = max(diffs, key=diffs.get)
    explained = box_mismatch - box_unexplained
    return {
        "max_abs_diff": diffs, "failures": failures, "roi_box_mismatches": box_mismatch,
        "roi_box_mismatches_unexplained": box_unexplained, "ok": not failures,
        "summary": (f"{'OK' if not failures else 'FAILED'}: worst |ORT - PyTorch| = {diffs[worst]:.2e} ({worst}); "
                    f"tolerance atol {tol['atol']} + rtol {tol['rtol']} x max|value|"
                    + (f"; {explained} mask box(es) differed where a mask logit is within tolerance of 0"
                       if explained else "")
                    + (f"; {box_unexplained} mask box(es) differed BEYOND that (wrong RoI boxes)"
                       if box_unexplained else "")),
    }


def box_within_logit_noise(boxes: np.ndarray, masks: torch.Tensor, noise: float, image_size: int) -> np.ndarray:
    """[N, M] True where ``boxes`` (input pixels) is the box of SOME mask that agrees with the PyTorch logits
    ``masks`` [N, M, h, w] up to ``noise``: between the boxes of ``masks > noise`` (every pixel surely in)
    and ``masks > -noise`` (every pixel possibly in). A different box anywhere else is a real error."""
    from ovsam_ros.model.ovsam import masks_to_boxes

    scale = image_size / masks.shape[-1]
    inner = (masks_to_boxes(masks, noise) * scale).numpy()
    outer = (masks_to_boxes(masks, -noise) * scale).numpy()
    inner_empty = ~np.any(inner != 0, axis=-1)
    b = np.asarray(boxes)
    inside_outer = (b[..., 0] >= outer[..., 0]) & (b[..., 1] >= outer[..., 1]) & \
        (b[..., 2] <= outer[..., 2]) & (b[..., 3] <= outer[..., 3])
    covers_inner = (b[..., 0] <= inner[..., 0]) & (b[..., 1] <= inner[..., 1]) & \
        (b[..., 2] >= inner[..., 2]) & (b[..., 3] >= inner[..., 3])
    empty = ~np.any(b != 0, axis=-1)
    return (inside_outer & (covers_inner | inner_empty)) | (empty & inner_empty)


__all__ = ["DecoderGraph", "ImageEncoderGraph", "MANIFEST", "TOLERANCE", "box_within_logit_noise", "export_onnx",
           "verify_export"]
