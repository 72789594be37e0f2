"""Loading and saving weights, from LOCAL files only.

Four sources:

(a) reference OVSAM files (``HarborYuan/ovsam``): ``sam2clip_vith_rn50x16.pth``
    (prefix ``neck_student.``) and ``clip2sam_{coco,lvis}_rn50x16.pth``
    (prefixes ``fpn_neck.`` and ``mask_decoder.``). As in the reference
    loader: take ``state_dict`` if present, keep the prefixed keys, strip the
    prefix, load strictly (after renaming, table below);
(b) Meta SAM ``sam_vit_{b,l,h}_*.pth``: ``prompt_encoder.*`` / ``mask_decoder.*``
    into :class:`OVSAMDecoder` (label token params untouched), ``image_encoder.*``
    into a ``segment_anything`` ``ImageEncoderViT`` teacher;
(c) ``ovsam_ros`` checkpoints: ``{'format': 'ovsam_ros', 'version': 1,
    'config': cfg.to_dict(), 'model': state_dict}``, written atomically;
(d) open_clip weights: :func:`ovsam_ros.model.backbone.build_backbone`
    (``open_clip.create_model(name, pretrained=<local path>)``).

Every failure is a :class:`CheckpointError` (a ``ValueError``) whose message
names the file and lists missing / unexpected / shape-mismatched keys; a
missing file is a :class:`CheckpointNotFoundError` (also a ``FileNotFoundError``).

Reference clip2sam key mapping (reference -> ours, ours relative to ``OVSAM``):

=============================================  ==============================================
``fpn_neck.lateral_convs.{i}.conv.{w,b}``      ``clip2sam.fpn.inner_blocks.{i}.0.{w,b}``
``fpn_neck.fpn_convs.{i}.conv.{w,b}``          ``clip2sam.fpn.layer_blocks.{i}.0.{w,b}``
``mask_decoder.roi_conv.0.conv.weight``        ``clip2sam.roi_conv.0.weight``
``mask_decoder.label_token.weight``            ``decoder.label_token.weight``
``mask_decoder.label_mlp.*``                   ``decoder.label_mlp.*``
``mask_decoder.mask_decoder.*``                ``decoder.mask_decoder.*``
``neck_student.*`` (sam2clip file)             ``sam2clip.*``
=============================================  ==============================================

The reference decoder has ONE mask token and no IoU head: its
``mask_tokens.weight`` [1, D] fills row 0 of ours and its hypernetwork MLP 0
ours; our IoU token/head and mask tokens/MLPs 1..K keep their current values
(from a Meta SAM checkpoint if one was loaded first, see ``build_ovsam``).
The prompt encoder is not in the reference files (frozen SAM ViT-H one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ovsam_ros.disk_space import disk_full_error, find_disk_full
from ovsam_ros.files import atomic_write

from .config import OVSAMConfig
from .errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError
from .keymaps import (
    OPTIONAL_DECODER,
    clip2sam_required,
    ours_to_reference_key,
    reference_clip2sam_to_ours,
)
from .safe_load import extract_state_dict, load_state_dict_file, read_checkpoint
from .sam_iou import SAMIoUScorer

if TYPE_CHECKING:  # annotations only: the loaders take any module with these attributes
    from .config import DecoderConfig
    from .decoder import OVSAMDecoder
    from .ovsam import OVSAM

FORMAT_NAME = "ovsam_ros"
FORMAT_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]
StateDict = Dict[str, torch.Tensor]


# ---------------------------------------------------------------------------
# load progress
# ---------------------------------------------------------------------------
#: The logger of model-load progress lines (what is loading, each weight file with its size, each
#: stage's time): a large model takes tens of seconds to minutes to load on a CPU.
LOAD_LOGGER = "ovsam_ros.load"


def size_text(size: int) -> str:
    """``"2.6 GB"`` / ``"310 MB"`` / ``"12 kB"`` / ``"80 B"``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{size} B"


def file_size_text(path: PathLike) -> str:
    """:func:`size_text` of a file; ``"missing"`` when ``path`` is not a file."""
    try:
        return size_text(os.path.getsize(os.path.expanduser(os.fspath(path))))
    except OSError:
        return "missing"


class LoadProgress:
    """Progress lines of one model load: one line as each stage starts (so a slow load is visibly
    alive) and a summary with every stage's time. ``level``: INFO for large models, DEBUG (the
    default: quiet) for small ones, which load in well under a second."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        self.level = level
        self.log = logging.getLogger(LOAD_LOGGER)
        self.times: list = []
        self._start = time.perf_counter()

    def say(self, message: str, *args: Any) -> None:
        self.log.log(self.level, message, *args)

    @contextlib.contextmanager
    def stage(self, name: str, path: Optional[PathLike] = None, detail: str = "", short: str = ""):
        """Log ``name: loading path (size) detail`` now; time the block (``short``: its name in the
        summary, default ``name``). ``path`` is a weight file."""
        words = []
        if path is not None:
            size = file_size_text(path)
            words.append(f"loading {path}" + ("" if size == "missing" else f" ({size})"))
        if detail:
            words.append(detail)
        self.say("%s: %s", name, " ".join(words) or "building")
        start = time.perf_counter()
        yield
        self.times.append((short or name, time.perf_counter() - start))

    def summary(self, what: str) -> None:
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.times)
        self.say("%s ready in %.1f s (%s)", what, time.perf_counter() - self._start, parts)


# ---------------------------------------------------------------------------
# reading / reporting helpers
# ---------------------------------------------------------------------------
def _fmt_keys(keys: Iterable[str], limit: int = 10) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _report(
    path: PathLike,
    what: str,
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
    mismatched: Iterable[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = (),
) -> str:
    missing, unexpected, mismatched = list(missing), list(unexpected), list(mismatched)
    lines = [f"{path}: cannot load {what}"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): {_fmt_keys(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): {_fmt_keys(unexpected)}")
    if mismatched:
        shown = [f"{k} (file {tuple(a)} vs model {tuple(b)})" for k, a, b in sorted(mismatched)[:10]]
        more = f", ... (+{len(mismatched) - 10} more)" if len(mismatched) > 10 else ""
        lines.append(f"  {len(mismatched)} shape mismatch(es): {', '.join(shown)}{more}")
    return "\n".join(lines)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Keys starting with ``prefix`` (a trailing dot is implied), prefix removed."""
    prefix = prefix if prefix.endswith(".") else prefix + "."
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def apply_state_dict(
    module: nn.Module,
    path: PathLike,
    what: str,
    provided: Mapping[str, torch.Tensor],
    required: Iterable[str],
    unexpected: Iterable[str] = (),
    partial_rows: Iterable[str] = (),
    display: Callable[[str], str] = lambda k: k,
) -> None:
    """Validate everything first, then copy: a failed load leaves ``module`` untouched.

    ``partial_rows``: keys whose file tensor may have FEWER rows (dim 0) than
    ours; those rows are copied and the rest kept. ``display`` turns our key
    names into the file's names for error messages.
    """
    own = module.state_dict()
    extra = [display(k) for k in provided if k not in own]
    missing = set(required) - set(provided)
    mismatched = []
    partial_rows = set(partial_rows)
    for k, v in provided.items():
        if k not in own:
            continue
        target = own[k]
        ok = tuple(v.shape) == tuple(target.shape) or (
            k in partial_rows and v.ndim == target.ndim and v.shape[1:] == target.shape[1:] and 0 < v.shape[0] <= target.shape[0]
        )
        if not ok:
            mismatched.append((k, tuple(v.shape), tuple(target.shape)))
    unexpected = sorted(set(unexpected) | set(extra))
    if missing or unexpected or mismatched:
        raise CheckpointError(
            _report(path, what, [display(k) for k in missing], unexpected, [(display(k), a, b) for k, a, b in mismatched])
        )
    new = {}
    for k, v in provided.items():
        target = own[k]
        if v.shape != target.shape:
            merged = target.clone()
            merged[: v.shape[0]] = v.to(target.dtype)
            v = merged
        new[k] = v.to(dtype=target.dtype)
    with torch.no_grad():
        module.load_state_dict(new, strict=False)


# ---------------------------------------------------------------------------
# (a) reference OVSAM checkpoints
# ---------------------------------------------------------------------------
def load_reference_sam2clip(model: "OVSAM", path: PathLike) -> None:
    """Load a reference SAM2CLIP neck file (``neck_student.*``) into ``model.sam2clip``."""
    sd = strip_prefix(load_state_dict_file(path), "neck_student")
    if not sd:
        raise CheckpointError(f"{path}: no 'neck_student.*' keys: not a reference SAM2CLIP checkpoint")
    apply_state_dict(
        model.sam2clip,
        path,
        "reference SAM2CLIP (neck_student.*)",
        sd,
        model.sam2clip.state_dict().keys(),
        display=lambda k: f"neck_student.{k}",
    )


def load_reference_clip2sam(model: "OVSAM", path: PathLike) -> int:
    """Load a reference CLIP2SAM file (``fpn_neck.*`` + ``mask_decoder.*``) into ``model``.

    Returns the number of mask tokens the file's decoder was trained with
    (1 for the published files). When the model's ``decoder.output_tokens``
    is ``"auto"`` and the file has one mask token, the decoder switches to
    the ``"reference"`` token set: the fine-tuned transformer only gives the
    published masks with the tokens it was trained with.
    """
    ref = load_state_dict_file(path)
    ours, unmapped = reference_clip2sam_to_ours(ref)
    if not ours and not unmapped:
        raise CheckpointError(f"{path}: no 'fpn_neck.*' / 'mask_decoder.*' keys: not a reference CLIP2SAM checkpoint")
    # Validate against the parts of OVSAM this file covers (backbone, sam2clip, prompt encoder excluded).
    covered = {k for k in model.state_dict() if k.startswith(("clip2sam.", "decoder.label_", "decoder.mask_decoder."))}
    apply_state_dict(
        model,
        path,
        "reference CLIP2SAM (fpn_neck.*, mask_decoder.*)",
        ours,
        clip2sam_required(covered),
        unexpected=[f"{k} (no counterpart)" for k in unmapped]
        + [ours_to_reference_key(k) or k for k in ours if k not in covered],
        partial_rows=["decoder.mask_decoder.mask_tokens.weight"],
        display=lambda k: ours_to_reference_key(k) or k,
    )
    tokens = ours.get("decoder.mask_decoder.mask_tokens.weight")
    num_tokens = int(tokens.shape[0]) if tokens is not None else 0
    if num_tokens == 1 and model.cfg.decoder.output_tokens == "auto":
        model.decoder.output_tokens = "reference"
    return num_tokens


def export_reference_checkpoints(model: "OVSAM") -> Tuple[StateDict, StateDict]:
    """Our weights in the reference key layout: (sam2clip file dict, clip2sam file dict).

    The decoder is exported like the reference's: mask token 0 and
    hypernetwork MLP 0 only, no IoU head. Used by tests; also lets our
    fine-tuned weights run in the reference code base.
    """
    sam2clip = {f"neck_student.{k}": v.clone() for k, v in model.sam2clip.state_dict().items()}
    clip2sam: StateDict = {}
    for k, v in model.state_dict().items():
        if OPTIONAL_DECODER.match(k):
            continue
        ref = ours_to_reference_key(k)
        if ref is not None:
            v = v[:1] if k == "decoder.mask_decoder.mask_tokens.weight" else v
            clip2sam[ref] = v.clone()
    return sam2clip, clip2sam


# ---------------------------------------------------------------------------
# (b) Meta SAM checkpoints
# ---------------------------------------------------------------------------
def load_sam_decoder(decoder: "OVSAMDecoder", path: PathLike) -> None:
    """Meta SAM ``prompt_encoder.*`` + ``mask_decoder.*`` -> ``decoder`` (strict on those).

    The label token / label MLP are not in SAM files and keep their values.
    """
    sd = load_state_dict_file(path)
    provided = {k: v for k, v in sd.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    if not any(k.startswith("prompt_encoder.") for k in provided):
        raise CheckpointError(f"{path}: no 'prompt_encoder.*' keys: not a SAM checkpoint")
    required = [k for k in decoder.state_dict() if k.startswith(("prompt_encoder.", "mask_decoder."))]
    apply_state_dict(decoder, path, "SAM prompt encoder / mask decoder", provided, required)


def load_sam_iou_scorer(cfg: "DecoderConfig", path: PathLike) -> "SAMIoUScorer":
    """Meta SAM ``mask_decoder.*`` -> a frozen :class:`~ovsam_ros.model.sam_iou.SAMIoUScorer` (strict)."""
    scorer = SAMIoUScorer(cfg)
    sd = {f"mask_decoder.{k}": v for k, v in strip_prefix(load_state_dict_file(path), "mask_decoder").items()}
    if not sd:
        raise CheckpointError(f"{path}: no 'mask_decoder.*' keys: not a SAM checkpoint")
    apply_state_dict(scorer, path, "SAM mask decoder (IoU scorer)", sd, scorer.state_dict().keys())
    for p in scorer.parameters():
        p.requires_grad_(False)
    return scorer.eval()


def load_sam_image_encoder(encoder: nn.Module, path: PathLike) -> None:
    """Meta SAM ``image_encoder.*`` -> a ``segment_anything`` ``ImageEncoderViT`` (strict)."""
    sd = strip_prefix(load_state_dict_file(path), "image_encoder")
    if not sd:
        raise CheckpointError(f"{path}: no 'image_encoder.*' keys: not a SAM checkpoint")
    apply_state_dict(encoder, path, "SAM image encoder", sd, encoder.state_dict().keys(), display=lambda k: f"image_encoder.{k}")


# A small SAM-family encoder with the tiny OVSAM preset's geometry (256 px in, 16x16x32 out).
TINY_TEACHER_KWARGS: Dict[str, Any] = dict(
    img_size=256,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    mlp_ratio=4.0,
    out_chans=32,
    qkv_bias=True,
    use_rel_pos=True,
    window_size=4,
    global_attn_indexes=(1,),
)


def build_sam_teacher(kind: str, checkpoint: Optional[PathLike] = None, **tiny_overrides: Any) -> nn.Module:
    """Frozen SAM image encoder for SAM2CLIP distillation.

    ``kind``: ``'vit_b'``, ``'vit_l'``, ``'vit_h'`` (built by
    ``segment_anything.sam_model_registry``) or ``'tiny'``
    (:data:`TINY_TEACHER_KWARGS`, overridable via keyword arguments).
    """
    from segment_anything import sam_model_registry
    from segment_anything.modeling import ImageEncoderViT

    if kind == "tiny":
        kwargs = {**TINY_TEACHER_KWARGS, **tiny_overrides}
        encoder = ImageEncoderViT(norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)
    elif kind in ("vit_b", "vit_l", "vit_h"):
        if tiny_overrides:
            raise ValueError(f"overrides {sorted(tiny_overrides)} only apply to kind='tiny'")
        encoder = sam_model_registry[kind](checkpoint=None).image_encoder
    else:
        raise ValueError(f"unknown SAM teacher kind {kind!r}; use 'vit_b', 'vit_l', 'vit_h' or 'tiny'")
    if checkpoint is not None:
        load_sam_image_encoder(encoder, checkpoint)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval()


# ---------------------------------------------------------------------------
# (c) ovsam_ros checkpoints
# ---------------------------------------------------------------------------
def save_ovsam(
    model: "OVSAM",
    path: PathLike,
    include_backbone: bool = True,
    extra: Optional[Mapping[str, Any]] = None,
) -> None:
    """Write ``model`` atomically (temp file in the same folder + ``os.replace``).

    ``include_backbone=False`` leaves out the frozen CLIP weights (~300 MB for
    RN50x16); loading then needs ``cfg.backbone.pretrained`` or ``clip_pretrained``.
    """
    path = os.path.expanduser(os.fspath(path))
    payload = ovsam_payload(model, include_backbone, extra)
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except Exception as error:
        # A full disk surfaces from torch.save's zip writer as "unexpected pos", the ENOSPC only in its
        # context: one line naming the folder, the size and the free space instead.
        if find_disk_full(error) is None:
            raise
        raise disk_full_error(os.path.dirname(os.path.abspath(path)), os.path.basename(path),
                              serialized_size(payload)) from None


def ovsam_payload(model: "OVSAM", include_backbone: bool = True,
                  extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """What :func:`save_ovsam` writes (tensors on the CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if not include_backbone:
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    payload: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": model.current_config().to_dict(),
        "includes_backbone": include_backbone,
        "model": state,
    }
    if extra:
        payload["extra"] = dict(extra)
    return payload


class _ByteCounter:
    """A write-only file that keeps nothing but the number of bytes written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n

    def flush(self) -> None:
        pass


def serialized_size(obj: Any) -> int:
    """Exact size of ``torch.save(obj)`` in bytes, found by serialising to a counter (no disk, no copy
    kept): what a checkpoint will take on disk before it is written."""
    counter = _ByteCounter()
    torch.save(obj, counter)
    return counter.size


TRAIN_STATE_FORMAT = "ovsam_ros.train_state"

#: Key of ``extra`` holding the vocabulary a stage-2 run trained with (``Vocabulary.to_dict()``):
#: the predictor's default vocabulary for that checkpoint (``ovsam_ros.loading.build_predictor``).
CHECKPOINT_VOCABULARY_KEY = "vocabulary"


#: Key of ``extra`` holding the prompt templates the run's text embeddings were made with (a list
#: of '{}' strings): CLIP2SAM learned to match embeddings averaged over exactly these, so they are
#: the predictor's default templates for that checkpoint.
CHECKPOINT_TEMPLATES_KEY = "text_templates"


def checkpoint_vocabulary(extra: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The stored training vocabulary of a checkpoint's ``extra`` (None when it has none)."""
    data = (extra or {}).get(CHECKPOINT_VOCABULARY_KEY)
    return dict(data) if isinstance(data, Mapping) and isinstance(data.get("classes"), list) and data["classes"] else None


def checkpoint_templates(extra: Optional[Mapping[str, Any]]) -> Optional[Tuple[str, ...]]:
    """The prompt templates a stage-2 checkpoint was trained with (None for older checkpoints)."""
    data = (extra or {}).get(CHECKPOINT_TEMPLATES_KEY)
    if isinstance(data, (list, tuple)) and data and all(isinstance(t, str) and t.count("{}") == 1 for t in data):
        return tuple(data)
    return None


def is_train_state_file(path: PathLike) -> bool:
    """Whether ``path`` is a training ``state.pt`` (checked in the zip's pickle bytes, nothing
    is unpickled)."""
    import zipfile

    try:
        with zipfile.ZipFile(os.path.expanduser(os.fspath(path))) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            return bool(names) and TRAIN_STATE_FORMAT.encode() in archive.read(names[0])
    except (OSError, zipfile.BadZipFile, KeyError):
        return False


def read_ovsam_checkpoint(path: PathLike) -> Tuple[OVSAMConfig, StateDict, Dict[str, Any]]:
    """(config, state dict, whole payload) of an ``ovsam_ros`` file, validated."""
    if os.path.isfile(os.path.expanduser(os.fspath(path))) and is_train_state_file(path):
        model_file = Path(os.path.expanduser(os.fspath(path))).with_name("model.pt")
        raise CheckpointError(
            f"{path} is a training-state file (optimizer, scheduler and RNG states that --resume reads), "
            f"not a model. Use the model checkpoint saved with it: {model_file}"
            f"{'' if model_file.is_file() else ' (missing here)'}, or the run's final <output_dir>/model.pt.")
    try:
        obj = read_checkpoint(path, foreign="refuse")  # our own format: only tensors and plain data
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f"{err} Not an {FORMAT_NAME} model checkpoint: give the model.pt a training run wrote, or convert "
            "the file with save_ovsam.") from None
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT_NAME:
        hint = ""
        if isinstance(obj, Mapping):
            keys = [str(k) for k in obj]
            if any(k.startswith("neck_student.") for k in keys) or "state_dict" in obj:
                hint = " (looks like a reference OVSAM file: use build_ovsam(..., sam2clip_checkpoint=/clip2sam_checkpoint=))"
            elif any(k.startswith("prompt_encoder.") for k in keys):
                hint = " (looks like a Meta SAM file: use build_ovsam(..., sam_checkpoint=))"
        raise CheckpointError(f"{path}: not an {FORMAT_NAME} checkpoint (no format={FORMAT_NAME!r} marker){hint}")
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: {FORMAT_NAME} format version {version!r} is not supported (need {FORMAT_VERSION})")
    try:
        cfg = OVSAMConfig.from_dict(obj["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid model config: {err}") from err
    state = obj.get("model")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'model' entry is not a state dict")
    return cfg, dict(state), dict(obj)


__all__ = [
    "LOAD_LOGGER",
    "LoadProgress",
    "file_size_text",
    "size_text",
    "CheckpointError",
    "CheckpointNotFoundError",
    "UnsafeCheckpointError",
    "TRAIN_STATE_FORMAT",
    "CHECKPOINT_TEMPLATES_KEY",
    "CHECKPOINT_VOCABULARY_KEY",
    "checkpoint_templates",
    "checkpoint_vocabulary",
    "is_train_state_file",
    "TINY_TEACHER_KWARGS",
    "apply_state_dict",
    "build_sam_teacher",
    "export_reference_checkpoints",
    "extract_state_dict",
    "load_reference_clip2sam",
    "load_reference_sam2clip",
    "load_sam_decoder",
    "load_sam_image_encoder",
    "load_sam_iou_scorer",
    "load_state_dict_file",
    "ours_to_reference_key",
    "read_checkpoint",
    "read_ovsam_checkpoint",
    "reference_clip2sam_to_ours",
    "ovsam_payload",
    "save_ovsam",
    "serialized_size",
    "strip_prefix",
]
