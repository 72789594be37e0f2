"""The API robots and the node use: one image encoding, many prompt queries.

    predictor = OVSAMPredictor(model, vocabulary="lvis")
    predictor.set_image(rgb)                       # the expensive part, once per frame
    predictor.predict([Prompt(points=[[x, y]])])   # cheap, as often as needed
    predictor.everything()                         # every object in the frame, labeled
    predictor.query("red cup")                     # the objects that best match a phrase

Everything here works in ORIGINAL image pixels; :class:`ImageTransform`
holds the resize/pad bookkeeping. Like ``segment_anything.SamPredictor``, one
predictor holds one image at a time and is not thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import build_point_grid, calculate_stability_score
from torchvision.ops import batched_nms

from ovsam_ros.image_input import to_uint8_rgb
from ovsam_ros.model.fingerprint import text_model_id, text_weights_fingerprint
from ovsam_ros.model.compile import check_compile_mode, compile_model
from ovsam_ros.model.inference import REL_POS_ATTENTIONS, prepare_for_inference
from ovsam_ros.model.ovsam import OVSAM, ImageFeatures, check_roi_box, masks_to_boxes
from ovsam_ros.model.packed_text import PackedText, packed_class_logits
from ovsam_ros.model.recognition import class_logits, ensemble, topk_labels
from ovsam_ros.model.transforms import ImageTransform
from ovsam_ros.model.vocabulary import (
    VILD_TEMPLATES,
    OpenCLIPTextEncoder,
    TextEmbeddingCache,
    TextEmbeddings,
    Vocabulary,
    VocabularySpec,
    check_synonym_options,
    clean_name,
    encode_vocabulary,
    load_vocabulary,
)
from ovsam_ros.prompts import CheckedPrompt, Prompt, check_prompt
from ovsam_ros.results import InstanceResult, LabelScore
from ovsam_ros.runtime import PRECISIONS, autocast, check_precision, resolve_device

log = logging.getLogger(__name__)


@dataclass
class EverythingOptions:
    """Knobs of :meth:`OVSAMPredictor.everything` (names and defaults follow SAM's generator)."""

    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.9
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_area: int = 0
    max_instances: int = 100


@dataclass
class EverythingReport:
    """What each filter of :meth:`OVSAMPredictor.everything` removed, in order, for one image.

    The CLI, the node and labelling tools say with it why a run kept nothing (a weakly trained
    model's masks fail SAM's default thresholds) instead of printing 0 instances.
    """

    options: EverythingOptions
    candidates: int = 0  # point-grid masks decoded
    below_pred_iou: int = 0  # predicted IoU <= pred_iou_thresh
    below_stability: int = 0  # stability < stability_score_thresh
    empty: int = 0  # no pixel at all: never an object, whatever min_mask_area says
    too_small: int = 0  # 0 < area <= min_mask_area
    duplicates: int = 0  # removed by box NMS (box_nms_thresh)
    over_max_instances: int = 0
    kept: int = 0

    def explain(self, names: Optional[Mapping[str, str]] = None) -> str:
        """One line: how many candidates each filter removed, naming the setting of each filter
        (``names``: option name per :class:`EverythingOptions` field, e.g. the CLI's flags; default
        the field names, which are also the node's parameter names)."""
        o, n = self.options, (lambda field: (names or {}).get(field, field))
        parts = [f"{count} {what}" for count, what in (
            (self.below_pred_iou, f"at or below {n('pred_iou_thresh')} {o.pred_iou_thresh:g}"),
            (self.below_stability, f"below {n('stability_score_thresh')} {o.stability_score_thresh:g}"),
            (self.empty, "empty (no pixel)"),
            (self.too_small, f"of {o.min_mask_area} pixel(s) or fewer ({n('min_mask_area')})"),
            (self.duplicates, f"overlapping a better mask ({n('box_nms_thresh')} {o.box_nms_thresh:g})"),
            (self.over_max_instances, f"beyond {n('max_instances')} {o.max_instances}")) if count]
        text = f"everything mode kept {self.kept} of {self.candidates} candidate mask(s)"
        return text + (": " + ", ".join(parts) + " removed" if parts else "")

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "options"}


class OVSAMPredictor:
    """Prompted segmentation + open-vocabulary recognition on one image at a time."""

    def __init__(
        self,
        model: OVSAM,
        vocabulary: Union[str, Vocabulary, TextEmbeddings, None] = "coco",
        *,
        device: str = "cpu",
        precision: str = "fp32",
        top_k: int = 5,
        templates: Sequence[str] = VILD_TEMPLATES,
        text_cache: Optional[TextEmbeddingCache] = None,
        mask_threshold: float = 0.0,
        max_prompts_per_batch: int = 64,
        trained: bool = False,
        optimize: bool = True,
        compile: str = "off",
        compile_cache_dir: Optional[str] = None,
        attention: str = "chunked",
        iou_scorer: Optional[torch.nn.Module] = None,
        clip_ensemble: bool = False,
        ensemble_alpha: float = 0.1,
        ensemble_beta: float = 0.9,
        exclude_unused: bool = False,
        names_only: bool = False,
        max_synonyms: Optional[int] = None,
        resize: str = "pil",
        everything_multimask: bool = True,
        roi_box: str = "mask",
    ) -> None:
        self.device = resolve_device(device)
        self.precision = check_precision(precision)
        self.model = model.to(self.device).eval()
        # optimize: the inference path (ovsam_ros.model.inference), which rewrites the model IN
        # PLACE (BatchNorm folded, image path in the inference dtype, fused attention; ``attention``:
        # how SAM2CLIP adds its rel-pos bias, ovsam_ros.model.inference.REL_POS_ATTENTIONS) and packs
        # the vocabulary. False: the plain modules under autocast (reference / A-B comparisons).
        if attention not in REL_POS_ATTENTIONS:  # checked even when unused: a YAML typo is an error
            raise ValueError(f"attention must be one of {list(REL_POS_ATTENTIONS)}, got {attention!r}")
        self.optimized = bool(optimize) and isinstance(model, OVSAM)
        if self.optimized:
            prepare_for_inference(self.model, PRECISIONS[self.precision], attention=attention)
        # compile: torch.compile mode ("reduce-overhead": CUDA graphs, CUDA only, ignored and logged
        # elsewhere; "default": inductor, CPU too); the compiled artefacts are saved to
        # compile_cache_dir ("default": the user's cache) after the first frame, so a restart with a
        # warm cache skips compilation.
        self._compile_cache = None
        self.compiled = False
        if check_compile_mode(compile) != "off" and isinstance(model, OVSAM):
            self._compile_cache = compile_model(self.model, compile, compile_cache_dir, self.device)
            self.compiled = getattr(self.model, "_compile_mode", None) is not None
        self._compile_saved: set[str] = set()
        self._packed_text: Optional[PackedText] = None
        # Resize/normalise/pad where the model runs: on a GPU that is ~0.2 ms instead of ~10 ms
        # of host work plus a float upload; on CPUs PIL's resize is the faster of the two.
        self.device_preprocess = self.device.type == "cuda"
        # resize: "pil" (segment_anything's ResizeLongestSide) or "cv2" (bilinear, no antialiasing:
        # the reference's mmcv resize, which the published weights were trained and evaluated with).
        self.transform = ImageTransform(model.image_size, resize=resize)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.last_everything_report: Optional[EverythingReport] = None  # of the last everything() call
        self.templates = tuple(templates)
        self.text_cache = text_cache
        self.mask_threshold = mask_threshold
        self.max_prompts_per_batch = max_prompts_per_batch
        self.trained = trained  # False: random-init parts, labels are meaningless (callers warn)
        # Seconds spent naming regions (learned + ensemble logits, top-k), summed over every call:
        # callers time their own stage by the difference (the node's "recognition" diagnostics).
        self.recognition_seconds = 0.0
        # SAM's own decoder (model.sam_iou.SAMIoUScorer): predicted IoU for everything() when the
        # OVSAM decoder has no IoU token (the published "reference" token set).
        self.iou_scorer = iou_scorer.to(self.device).eval() if iou_scorer is not None else None
        # Reference evaluation ensemble: learned scores geometric-mean-combined with a frozen-CLIP
        # branch (RoIAlign on C5 + CLIP's own attention pool), alpha for base classes and background,
        # beta for the others (base/novel from the vocabulary's split). What makes novel classes work.
        if clip_ensemble and not hasattr(getattr(model, "backbone", None), "pool_regions"):
            raise ValueError("clip_ensemble needs the PyTorch model (its CLIP image head); this backend has none")
        self.clip_ensemble = bool(clip_ensemble)
        self.ensemble_alpha = float(ensemble_alpha)
        self.ensemble_beta = float(ensemble_beta)
        # Open-vocabulary COCO evaluation: classes split "unused" (outside 48/17) are never predicted.
        # Off for robots: all 80 COCO classes stay nameable (the ensemble treats them as novel).
        self.exclude_unused = bool(exclude_unused)
        # Which texts name a class (applied to every vocabulary this predictor loads): names_only
        # = the class name alone (the reference's LVIS text), max_synonyms = at most N synonyms.
        check_synonym_options(max_synonyms, names_only)
        self.names_only = names_only
        self.max_synonyms = max_synonyms
        # everything(): SAM's 3 multimask tokens per grid point (SAM's generator). False: the single
        # mask token, for "sam"-token decoders whose stage 2 trained only that token (as the
        # reference does): tokens 1-3 then keep their random init and their masks are noise.
        self.everything_multimask = bool(everything_multimask)
        # Which box of each predicted mask CLIP2SAM pools (ovsam_ros.model.ovsam.ROI_BOXES): "mask"
        # (the reference) or "largest_component" (stray mask fragments do not widen the region; the
        # ONNX graph pools the whole mask's box, so only the PyTorch model offers it).
        if check_roi_box(roi_box) != "mask" and not isinstance(model, OVSAM):
            raise ValueError(f"roi_box {roi_box!r} needs the PyTorch model: the exported ONNX decoder pools "
                             "the box of the whole mask (roi_box: mask)")
        self.roi_box = roi_box
        self.text: Optional[TextEmbeddings] = None
        self._text_encoder_instance: Optional[OpenCLIPTextEncoder] = None
        self._text_weights_id: Optional[str] = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)
        self.reset_image()

    # ------------------------------------------------------------------ vocabulary
    def vocabulary_for(self, spec: Union[VocabularySpec, Vocabulary]) -> Vocabulary:
        """``spec`` (anything :func:`load_vocabulary` accepts) with this predictor's synonym
        policy (``names_only``, ``max_synonyms``) applied: the classes it would encode."""
        return load_vocabulary(spec, max_synonyms=self.max_synonyms, names_only=self.names_only)

    def set_vocabulary(self, vocabulary: Union[VocabularySpec, Vocabulary, TextEmbeddings]) -> TextEmbeddings:
        """Switch the class list; text is encoded once (and cached on disk when a cache is set).

        TextEmbeddings are used as given; anything else goes through :meth:`vocabulary_for`."""
        if isinstance(vocabulary, TextEmbeddings):
            text = vocabulary
        else:
            text = self.encode_vocabulary(vocabulary)
        # Kept on the device: recognition is then one matmul with no host transfer.
        self.text = text.to(self.device)
        self._packed_text = (
            PackedText.from_text(self.text, self.device, PRECISIONS[self.precision]) if self.optimized else None
        )
        return self.text

    def encode_vocabulary(self, vocab: Union[VocabularySpec, Vocabulary], progress: bool = True) -> TextEmbeddings:
        """Text embeddings of ``vocab`` WITHOUT switching to it (uses the on-disk cache).

        Lets a caller encode a large vocabulary while this predictor keeps
        serving frames, then swap it in with :meth:`set_vocabulary`. The synonym policy
        (:meth:`vocabulary_for`) is applied first.
        """
        return self._encode(self.vocabulary_for(vocab), progress)

    def _encode(self, vocab: Vocabulary, progress: bool = True) -> TextEmbeddings:
        """Text embeddings of exactly ``vocab`` (no synonym policy), through the cache."""
        def compute() -> TextEmbeddings:
            with torch.inference_mode():
                return encode_vocabulary(
                    self._text_encoder, self.model.tokenizer, vocab, self.templates,
                    device=self.device, progress=progress, model_id=self.text_model_id,
                )

        if self.text_cache is None:
            return compute()
        return self.text_cache.get_or_compute(
            compute, model_id=self.text_model_id, weights_id=self.text_weights_id,
            vocab=vocab, templates=self.templates,
        )

    @property
    def _text_encoder(self) -> OpenCLIPTextEncoder:
        # Runs the text tower on short contexts (same embeddings, several times faster).
        if self._text_encoder_instance is None:
            self._text_encoder_instance = OpenCLIPTextEncoder(self.model.backbone.clip)
        return self._text_encoder_instance

    @property
    def text_model_id(self) -> str:
        """Text-tower architecture id for the embedding cache (the activation is not in the weights)."""
        clip = getattr(getattr(self.model, "backbone", None), "clip", None)
        return text_model_id(self.model.cfg.backbone.model_name, clip)

    @property
    def text_weights_id(self) -> str:
        """Fingerprint of the text tower's weights: cached embeddings are only valid for these."""
        if self._text_weights_id is None:
            self._text_weights_id = text_weights_fingerprint(self.model.backbone.clip)
        return self._text_weights_id

    @property
    def vocabulary(self) -> Optional[Vocabulary]:
        return self.text.vocab if self.text is not None else None

    # ------------------------------------------------------------------ image
    def reset_image(self) -> None:
        self.features: Optional[ImageFeatures] = None
        self.original_size: Optional[tuple[int, int]] = None
        self.input_size: Optional[tuple[int, int]] = None
        self._image_rgb: Optional[np.ndarray] = None

    @torch.inference_mode()
    def set_image(self, image: np.ndarray, image_format: str = "RGB", *, input_bits: int = 16,
                  float_max: float = 1.0) -> None:
        """Encode ``image`` (any size; 1-4 channels; uint8, uint16 or float) for later queries.

        Range rule (``ovsam_ros.image_input``): uint16 holds ``input_bits`` bits (12 for a 12-bit
        camera), floats are 0..``float_max`` (1.0; 255.0 for 0..255 float data)."""
        rgb = to_uint8_rgb(image, image_format, input_bits=input_bits, float_max=float_max)
        if min(self.transform.get_input_size(rgb.shape[:2])) < 1:
            raise ValueError(
                f"image of {rgb.shape[1]}x{rgb.shape[0]} is too elongated for a {self.model.image_size}px model "
                "input (its short side would round to 0 pixels)"
            )
        if self.device_preprocess:
            dtype = PRECISIONS[self.precision] if self.optimized else torch.float32
            batch = self.transform.apply_image_device(rgb, self.device, dtype)
        else:
            batch = self.transform.apply_image(rgb).to(self.device)
        # The optimised model's image path already holds inference-dtype weights: autocast
        # would only re-cast (LayerNorm/softmax run in fp32 under autocast).
        with contextlib.nullcontext() if self.optimized else autocast(self.device, self.precision):
            features = self.model.encode_image(batch)
        self.features = features
        self._save_compile_cache("encode")
        self.original_size = (rgb.shape[0], rgb.shape[1])
        self.input_size = self.transform.get_input_size(self.original_size)
        self._image_rgb = rgb

    def image_state(self) -> tuple:
        """The encoded current image (references, no copy): hand it to :meth:`restore_image_state`
        to run prompts on this image again without encoding it again."""
        self._require_image()
        return (self.features, self.original_size, self.input_size, self._image_rgb)

    def restore_image_state(self, state: tuple) -> None:
        self.features, self.original_size, self.input_size, self._image_rgb = state

    def _save_compile_cache(self, stage: str) -> None:
        """After the first encode / decode, persist what was compiled (once per stage)."""
        if self._compile_cache is None or stage in self._compile_saved:
            return
        self._compile_saved.add(stage)
        try:
            path = self._compile_cache.save()
            log.info("compile cache written after the first %s: %s", stage, path)
        except Exception as error:  # never lose a frame over the cache
            log.warning("could not write the compile cache: %s", error)

    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    @property
    def image_rgb(self) -> Optional[np.ndarray]:
        """The uint8 RGB image last passed to :meth:`set_image` (for overlays and baselines)."""
        return self._image_rgb

    def _require_image(self) -> ImageFeatures:
        if self.features is None:
            raise RuntimeError("no image set: call set_image() before predicting")
        return self.features

    # ------------------------------------------------------------------ prompts
    def check_prompts(self, prompts: Sequence[Prompt]) -> list[CheckedPrompt]:
        """Validate prompts against the current image (raises PromptError naming the prompt)."""
        self._require_image()
        return [check_prompt(p, self.original_size, i) for i, p in enumerate(prompts)]

    @torch.inference_mode()
    def predict(
        self, prompts: Sequence[Prompt], multimask_output: bool = False, keep: str = "best",
        clip_boxes: Optional[np.ndarray] = None,
    ) -> list[InstanceResult]:
        """Segment and name one object per prompt.

        ``multimask_output``: let the decoder propose 3 masks per prompt (good for
        a single ambiguous click); ``keep="best"`` returns the one with the highest
        predicted IoU, ``keep="all"`` returns every candidate (same prompt_index).
        Results come back in prompt order. An empty prompt list gives [].
        A prompt whose mask has no pixel (a blank frame, a 1x1 image) still gets its result, so
        results stay aligned with the prompts, but ``result.empty`` is True and it is NOT an
        object: outputs leave it out (``ovsam_ros.results.split_empty``).
        ``clip_boxes`` [N, 4] (original pixels, xyxy): the boxes the frozen-CLIP ensemble pools
        instead of each predicted mask's box (the reference evaluation pools ground-truth boxes).
        """
        if keep not in ("best", "all"):
            raise ValueError(f"keep must be 'best' or 'all', got {keep!r}")
        checked = self.check_prompts(prompts)
        if clip_boxes is not None and np.shape(clip_boxes) != (len(checked), 4):
            raise ValueError(f"clip_boxes must be [{len(checked)}, 4] (one xyxy box per prompt), got {np.shape(clip_boxes)}")
        results: list[Optional[list[InstanceResult]]] = [None] * len(checked)
        # SAM needs the same prompt structure within one decoder call; group by it
        # (no padding tokens, so each prompt gets exactly SAM's answer).
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(checked):
            key = (0 if p.points is None else len(p.points), p.box is not None, p.mask_input is not None)
            groups[key].append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_prompts_per_batch):
                chunk = indices[start : start + self.max_prompts_per_batch]
                decoded = self._decode([checked[i] for i in chunk], multimask_output)
                if clip_boxes is not None:
                    given = self.transform.apply_boxes(np.asarray(clip_boxes, np.float32)[chunk], self.original_size)
                    decoded["roi_boxes"] = given.to(self.device).unsqueeze(1).expand_as(decoded["roi_boxes"])
                if keep == "best":
                    decoded = _select_best(decoded)
                decoded = self._upsample(decoded)
                for prompt_index, candidates in zip(chunk, self._to_results(decoded, chunk)):
                    results[prompt_index] = candidates
        if checked:
            self._save_compile_cache("decode")
        return [r for rs in results if rs for r in rs]

    def _decode(self, prompts: Sequence[CheckedPrompt], multimask_output: bool) -> dict[str, torch.Tensor]:
        """Run the decoder on structurally identical prompts; tensors on the device."""
        size, first = self.original_size, prompts[0]
        coords = labels = boxes = mask_input = None
        if first.points is not None:
            coords = self.transform.apply_coords(np.stack([p.points for p in prompts]), size).to(self.device)
            labels = torch.as_tensor(np.stack([p.point_labels for p in prompts]), device=self.device)
        if first.box is not None:
            boxes = self.transform.apply_boxes(np.stack([p.box for p in prompts]), size).to(self.device)
        if first.mask_input is not None:
            mask_input = torch.as_tensor(np.stack([self._check_mask_input(p.mask_input) for p in prompts]))
            mask_input = mask_input.to(self.device, torch.float32).unsqueeze(1)
        return self._run_decoder(coords, labels, boxes, mask_input, multimask_output)

    def _run_decoder(self, coords, labels, boxes, mask_input, multimask_output: bool) -> dict[str, torch.Tensor]:
        """Low-res masks, IoU and normalised region embeddings; callers upsample what they keep."""
        features = self._require_image()
        with autocast(self.device, self.precision):
            out = self.model.decode(features, coords, labels, boxes, mask_input, multimask_output=multimask_output,
                                    roi_box=self.roi_box)
        return {
            "low_res": out["masks_lowres"].float(),
            "iou": out["iou"].float(),
            "embeddings": F.normalize(out["region_embeddings"].float(), dim=-1),
            # input pixels: the frozen-CLIP branch pools the box CLIP2SAM pooled
            "roi_boxes": (out["roi_boxes"] if out.get("roi_boxes") is not None else
                          masks_to_boxes(out["masks_lowres"]) * (self.model.image_size / out["masks_lowres"].shape[-1])
                          ).float(),
        }

    def _upsample(self, decoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add ``logits`` [N, M, H, W] at the original size (the costly step: done only for masks still needed)."""
        return {**decoded, "logits": self.transform.postprocess_masks(decoded["low_res"], self.original_size)}

    def _check_mask_input(self, mask_input: np.ndarray) -> np.ndarray:
        expected = (self.model.decoder.low_res_size,) * 2
        array = np.asarray(mask_input, dtype=np.float32).reshape(-1, *np.shape(mask_input)[-2:])[0]
        if array.shape != expected:
            raise ValueError(f"mask_input must be {expected} low-res logits (InstanceResult.low_res_logits), got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("mask_input contains NaN or inf")
        return array

    def _to_results(self, decoded: dict[str, torch.Tensor], prompt_indices: Sequence[int]) -> list[list[InstanceResult]]:
        """One list of candidates per decoded row. Everything the rows need is computed for the
        whole chunk on the device and copied to the host once per tensor (no per-prompt syncs)."""
        logits = decoded["logits"]  # [n, M, H, W]
        n, m = logits.shape[:2]
        stability = calculate_stability_score(logits, self.mask_threshold, 1.0)
        labels = self._labels(decoded["embeddings"].flatten(0, 1), decoded["low_res"].flatten(0, 1),
                              decoded["roi_boxes"].flatten(0, 1))  # n*M rows, one matmul
        boxes, crops = self._host_crops(logits.flatten(0, 1))
        scores = torch.stack([decoded["iou"].flatten(), stability.flatten()]).cpu().numpy()
        low_res = decoded["low_res"].cpu().numpy()
        embeddings = decoded["embeddings"].cpu().numpy()
        out = []
        for row, prompt_index in zip(range(n), prompt_indices):
            candidates = []
            for k in range(m):
                j = row * m + k
                candidates.append(
                    InstanceResult(
                        mask=None,
                        predicted_iou=float(scores[0, j]),
                        stability_score=float(scores[1, j]),
                        box=tuple(int(v) for v in boxes[j]),
                        labels=labels[j],
                        prompt_index=prompt_index,
                        low_res_logits=low_res[row, k].copy(),
                        embedding=embeddings[row, k].copy(),
                        crop=crops[j],
                        image_size=self.original_size,
                    )
                )
            out.append(candidates)
        return out

    def _host_crops(self, logits: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
        """Mask logits [K, H, W] on the device -> tight boxes [K, 4] (int, host) and each mask
        thresholded and cropped to its box ON THE DEVICE; the crops reach the host in one copy
        (full-size masks never do)."""
        fg = logits > self.mask_threshold
        boxes = masks_to_boxes(fg).long().cpu().numpy()  # [x0, y0, x1 + 1, y1 + 1]; zeros when empty
        heights, widths = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
        pieces = [fg[i, y0:y1, x0:x1].reshape(-1) for i, (x0, y0, x1, y1) in enumerate(boxes) if x1 > x0]
        flat = torch.cat(pieces).cpu().numpy() if pieces else np.zeros(0, dtype=bool)
        crops, offset = [], 0
        for h, w in zip(heights.tolist(), widths.tolist()):
            crops.append(flat[offset : offset + h * w].reshape(h, w))
            offset += h * w
        return boxes, crops

    def label_embeddings(self, embeddings: torch.Tensor) -> list[list[LabelScore]]:
        """Top-k labels for normalised region embeddings [K, D] (empty lists without a vocabulary).

        Learned classifier only: the frozen-CLIP ensemble needs the masks and boxes too."""
        if self.text is None:
            return [[] for _ in range(embeddings.shape[0])]
        with self._recognition_timer():
            return self._topk(self._learned_logits(embeddings))

    @contextlib.contextmanager
    def _recognition_timer(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.recognition_seconds += time.perf_counter() - t0

    def _learned_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self._packed_text is not None:
            return packed_class_logits(embeddings, self._packed_text)
        return class_logits(embeddings, self.text)

    def _labels(self, embeddings: torch.Tensor, low_res: torch.Tensor, roi_boxes: torch.Tensor) -> list[list[LabelScore]]:
        """Top-k labels of K regions: embeddings [K, D], low-res mask logits [K, h, w], input-pixel boxes [K, 4]."""
        if self.text is None:
            return [[] for _ in range(embeddings.shape[0])]
        with self._recognition_timer():
            logits = self._learned_logits(embeddings)
            if self.clip_ensemble and embeddings.shape[0]:
                logits = self.ensemble_logits(logits, low_res, roi_boxes)
            elif self.exclude_unused and self.text.vocab.split:
                unused = torch.tensor([s == "unused" for s in self.text.vocab.split], device=logits.device)
                logits[:, : unused.numel()] = logits[:, : unused.numel()].masked_fill(unused, float("-inf"))
            return self._topk(logits)

    def ensemble_logits(self, learned: torch.Tensor, low_res: torch.Tensor, roi_boxes: torch.Tensor) -> torch.Tensor:
        """Reference ``open_voc_inference``: combine learned logits [K, C+1] with frozen CLIP's.

        CLIP's attention pool reads each box RoIAligned from the stride-32 map to its native grid
        (12x12 for RN50x16); rows whose mask is empty at that map's resolution keep the learned
        score; with ``exclude_unused`` classes split ``unused`` are excluded (the reference's -1000).
        """
        features = self._require_image()
        c5 = features.clip_features[-1][:1]
        with autocast(self.device, self.precision):
            clip_embeddings = self.model.backbone.pool_regions(c5, roi_boxes.to(c5.device))
        clip_logits = class_logits(clip_embeddings.float(), self.text)
        at_c5 = F.interpolate(low_res.unsqueeze(1).float(), size=c5.shape[-2:], mode="bilinear", align_corners=False)
        valid = (at_c5 > 0).flatten(1).any(dim=1)
        split = self.text.vocab.split or [None] * len(self.text.vocab)
        base = [s == "base" for s in split]
        ignore = [s == "unused" for s in split] if self.exclude_unused else []
        return ensemble(learned, clip_logits, base, self.ensemble_alpha, self.ensemble_beta, valid=valid,
                        ignore_mask=ignore if any(ignore) else None)

    def _topk(self, logits: torch.Tensor) -> list[list[LabelScore]]:
        return [
            [LabelScore(class_index=int(i), name=name, score=float(s)) for i, name, s in row]
            for row in topk_labels(logits, self.text.vocab, k=self.top_k)
        ]

    # ------------------------------------------------------------------ everything
    @torch.inference_mode()
    def everything(self, options: Optional[EverythingOptions] = None) -> list[InstanceResult]:
        """Segment and label every object: a point grid, filtered by IoU and stability, NMS-deduplicated.

        Follows ``segment_anything``'s automatic mask generator (single crop).
        What is filtered depends on the decoder's token set:

        * ``"sam"`` tokens: 3 masks per point (1, the single-mask token, when
          ``everything_multimask`` is False), filtered by the decoder's own
          predicted IoU and by stability score, NMS ranked by predicted IoU;
        * ``"reference"`` tokens (published OVSAM decoder, no IoU head): 1 mask
          per point, filtered by stability score; with an ``iou_scorer`` (SAM's
          original decoder run on the same embedding and prompts) also by its
          predicted IoU, which then ranks NMS; without one ``predicted_iou`` is
          NaN and NMS ranks by stability score.

        Results are sorted by that ranking score, best first.
        """
        opts = options or EverythingOptions()
        self._require_image()
        report = self.last_everything_report = EverythingReport(opts)
        height, width = self.original_size
        grid = build_point_grid(opts.points_per_side) * np.array([[width, height]])  # original pixels
        # Candidates stay on the device and only their low-res logits are kept: full-resolution
        # logits of every candidate would take GBs for a 32x32 grid at 720p. The survivors of
        # NMS are upsampled again at the end (same function, same input: the same masks).
        kept: dict[str, list[torch.Tensor]] = defaultdict(list)
        for start in range(0, len(grid), opts.points_per_batch):
            points = grid[start : start + opts.points_per_batch]
            coords = self.transform.apply_coords(points[:, None, :], self.original_size).to(self.device)
            labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=self.device)
            decoded = self._run_decoder(coords, labels, None, None, multimask_output=self.everything_multimask)
            if decoded["iou"].shape[1] == 1 and self.iou_scorer is not None and bool(decoded["iou"].isnan().all()):
                decoded["iou"] = self._sam_iou(coords, labels).unsqueeze(1)
            decoded = {key: value.flatten(0, 1) for key, value in decoded.items()}
            report.candidates += int(decoded["iou"].shape[0])
            # The IoU filter needs no full-resolution mask: upsample only the masks that pass it.
            # NaN IoU (no IoU head, no scorer): that filter does not apply.
            passes = decoded["iou"].isnan() | (decoded["iou"] > opts.pred_iou_thresh)
            report.below_pred_iou += int((~passes).sum())
            decoded = {key: value[passes] for key, value in decoded.items()}
            logits = self._upsample(decoded)["logits"]
            # A mask without a pixel is no object (its stability is 0 or NaN): counted as empty, not
            # blamed on the stability threshold.
            areas = (logits > self.mask_threshold).flatten(1).sum(1)
            has_pixels = areas > 0
            empty = int((~has_pixels).sum())
            if empty:  # (no copy of the full-resolution logits in the usual case)
                report.empty += empty
                decoded = {key: value[has_pixels] for key, value in decoded.items()}
                logits, areas = logits[has_pixels], areas[has_pixels]
            stability = calculate_stability_score(logits, self.mask_threshold, opts.stability_score_offset)
            keep = stability >= opts.stability_score_thresh
            report.below_stability += int((~keep).sum())
            logits = logits[keep]
            kept["iou"].append(decoded["iou"][keep])
            kept["stability"].append(stability[keep])
            kept["area"].append(areas[keep])
            kept["box"].append(masks_to_boxes(logits, self.mask_threshold))
            kept["embedding"].append(decoded["embeddings"][keep])
            kept["low_res"].append(decoded["low_res"][keep])
            kept["roi_boxes"].append(decoded["roi_boxes"][keep])
        if not kept:
            return []
        iou, stability, areas = torch.cat(kept["iou"]), torch.cat(kept["stability"]), torch.cat(kept["area"])
        boxes, embeddings, low_res = torch.cat(kept["box"]), torch.cat(kept["embedding"]), torch.cat(kept["low_res"])
        valid = areas > max(0, opts.min_mask_area)
        report.too_small = int((~valid).sum())
        if not bool(valid.any()):
            return []
        rank = torch.where(iou.isnan(), stability, iou)
        order = batched_nms(boxes[valid], rank[valid], torch.zeros_like(rank[valid]), opts.box_nms_thresh)
        report.duplicates = int(valid.sum()) - len(order)
        report.over_max_instances = max(0, len(order) - opts.max_instances)
        index = torch.nonzero(valid).flatten()[order][: opts.max_instances]
        report.kept = len(index)
        labels = self._labels(embeddings[index], low_res[index], torch.cat(kept["roi_boxes"])[index])
        boxes, crops = self._host_crops(self.transform.postprocess_masks(low_res[index], self.original_size))
        scores = torch.stack([iou[index], stability[index]]).cpu().numpy()
        low_res, embeddings = low_res[index].cpu().numpy(), embeddings[index].cpu().numpy()
        results = []
        for j in range(len(crops)):
            results.append(
                InstanceResult(
                    mask=None,
                    predicted_iou=float(scores[0, j]),
                    stability_score=float(scores[1, j]),
                    box=tuple(int(v) for v in boxes[j]),
                    labels=labels[j],
                    low_res_logits=low_res[j],
                    embedding=embeddings[j],
                    crop=crops[j],
                    image_size=self.original_size,
                )
            )
        return results

    def _sam_iou(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[N] IoU predicted by SAM's original decoder for the same prompts and image embedding."""
        features = self._require_image()
        decoder = self.model.decoder
        with autocast(self.device, self.precision):
            sparse, dense = decoder.encode_prompts(coords, labels)
            iou = self.iou_scorer(features.sam_embedding[:1], decoder.prompt_encoder.get_dense_pe(), sparse, dense)
        return iou.float()

    # ------------------------------------------------------------------ text query
    @torch.inference_mode()
    def query(
        self,
        text: str,
        candidates: Optional[Sequence[InstanceResult]] = None,
        max_instances: int = 5,
        min_score: float = 0.0,
        options: Optional[EverythingOptions] = None,
    ) -> list[InstanceResult]:
        """The masks that best match a free-text phrase ("red cup"), best first.

        The phrase competes with the active vocabulary: each candidate mask's
        ``query_score`` is the softmax probability of the phrase among
        [vocabulary classes, phrase, background], so a mask that is better
        explained by another class scores low. Classes the phrase names (one of
        their texts equals it after :func:`clean_name`) leave the competition: the
        phrase stands for them, rather than tying with them at 0.5 at best.
        ``candidates`` default to :meth:`everything`.
        """
        phrase = text.strip()
        if not phrase:
            raise ValueError("text query is empty")
        if candidates is None:
            candidates = self.everything(options)
        # An empty mask is not an object: never a match (everything() returns none; given ones may be).
        candidates = [c for c in candidates if c.embedding is not None and not c.empty]
        if not candidates:
            return []
        # The phrase as typed ("sofa/couch" keeps both): the synonym policy is for vocabularies.
        query_text = self._encode(Vocabulary.from_names([phrase], name="query"), progress=False)
        embeddings = torch.as_tensor(np.stack([c.embedding for c in candidates]), device=self.device)
        query_logit = class_logits(embeddings, query_text.to(self.device), with_background=False)  # [N, 1]
        if self.text is not None:
            # [vocabulary classes..., phrase, background]: the phrase competes with every class.
            vocab_logits = class_logits(embeddings, self.text)
            named = self._classes_named_by(phrase)
            if named:
                vocab_logits = vocab_logits.clone()
                vocab_logits[:, named] = -torch.inf
            logits = torch.cat([vocab_logits[:, :-1], query_logit, vocab_logits[:, -1:]], dim=1)
            query_column = logits.shape[1] - 2
        else:
            logits = torch.cat([query_logit, torch.zeros_like(query_logit)], dim=1)
            query_column = 0
        scores = logits.softmax(dim=-1)[:, query_column].cpu().numpy()
        order = np.argsort(-scores)
        out = []
        for i in order[:max_instances]:
            if scores[i] < min_score:
                break
            result = candidates[i]
            result.query_score = float(scores[i])
            out.append(result)
        return out

    def _classes_named_by(self, phrase: str) -> list[int]:
        """Indices of the active vocabulary's classes one of whose texts (or display name) is ``phrase``."""
        key = clean_name(phrase)
        vocab = self.text.vocab
        return [i for i, (name, synonyms) in enumerate(zip(vocab.classes, vocab.synonyms))
                if key == clean_name(name) or any(key == clean_name(t) for t in synonyms)]


def _select_best(decoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep each row's candidate with the highest predicted IoU (NaN lowest, first on ties), on the device."""
    if decoded["iou"].shape[1] == 1:
        return decoded
    iou = decoded["iou"]
    best = torch.where(torch.isnan(iou), torch.full_like(iou, -torch.inf), iou).argmax(dim=1)  # first maximum
    rows = torch.arange(best.shape[0], device=best.device)
    return {key: value[rows, best].unsqueeze(1) for key, value in decoded.items()}

