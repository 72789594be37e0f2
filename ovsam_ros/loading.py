"""Build a model and a predictor from a YAML file (config/models/*.yaml) or a dict.

A model file names a preset architecture and the LOCAL weight files to load;
any file left out stays at random init, and :func:`build_model` says so loudly,
because an untrained recognition head gives meaningless labels.

Paths in a model YAML: ``~`` and ``$VARS`` are expanded; a path that is still relative
(weight files, ``onnx_dir``, cache folders, a vocabulary file) is read from the YAML's own
folder, not the current directory, so a YAML works wherever it is launched from. (A dict
source has no folder: its relative paths are the current directory's.)

Vocabulary: an ``ovsam_checkpoint`` written by stage 2 stores the classes it was trained on;
when the YAML has no ``predictor.vocabulary`` key and no vocabulary is passed (``--vocab``,
the node's ``vocabulary`` parameter), the predictor labels with those (one INFO line says
so). Without either, ``coco``. A checkpoint file (``.pt`` / ``.pth``) can also be passed
where a YAML is expected: it loads with the predictor defaults below, the same rule.

    model:
      preset: rn50x16            # tiny | tiny-convnext | rn50x16 | convnext_large
      overrides: {}              # nested OVSAMConfig fields, e.g. {decoder: {label_token: false}}
      clip_weights: ~/ovsam_weights/RN50x16-openai.pt
      ovsam_checkpoint: null     # an ovsam_ros checkpoint (training output): all weights in one file
      sam_checkpoint: ~/ovsam_weights/sam_vit_h_4b8939.pth
      sam2clip_checkpoint: ~/ovsam_weights/sam2clip_vith_rn50x16.pth
      clip2sam_checkpoint: ~/ovsam_weights/clip2sam_lvis_rn50x16.pth
      seed: 0                    # random-init seed for whatever no file provides
    predictor:
      vocabulary: lvis           # absent: the ovsam_checkpoint's training vocabulary, else coco
      templates: vild
      device: auto
      precision: fp32
      top_k: 5
      text_cache_dir: ~/.cache/ovsam_ros/text
      optimize: true             # inference path: BN folded, weights in the inference dtype, fused attention
      attention: chunked         # SAM2CLIP rel-pos attention: chunked (any device) | flex (compiled, CUDA) | full
      compile: off               # off | reduce-overhead / max-autotune (CUDA graphs, CUDA only) | default (also CPU)
      compile_cache_dir: default # persistent compile cache: default = $XDG_CACHE_HOME/ovsam_ros/compile
                                 # (~/.cache/ovsam_ros/compile); a path; null = none
      names_only: false          # true: each class encoded from its name alone (the reference's LVIS text)
      max_synonyms: null         # at most N synonyms per class (null: all)
      resize: pil                # pil (segment_anything's) | cv2 (the reference's bilinear resize)
      roi_box: mask              # box CLIP2SAM pools: mask (the reference) | largest_component (of the mask's largest piece)
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml

from ovsam_ros.backends import TORCH
from ovsam_ros.backends import get as get_backend
from ovsam_ros.model.build import build_ovsam, load_ovsam
from ovsam_ros.model.checkpoints import LOAD_LOGGER, LoadProgress, size_text
from ovsam_ros.model.config import OVSAMConfig
from ovsam_ros.model.ovsam import OVSAM
from ovsam_ros.resources import config_dir, model_config_dir, share_dirs
from ovsam_ros.runtime import resolve_device, resolve_precision

log = logging.getLogger(__name__)

PRESETS = {
    "tiny": lambda: OVSAMConfig.tiny("rn"),
    "tiny-convnext": lambda: OVSAMConfig.tiny("convnext"),
    "rn50x16": OVSAMConfig.rn50x16,
    "convnext_large": OVSAMConfig.convnext_large,
}

# config/ of the checkout or install this code runs from (ovsam_ros.resources); None when not found.
CONFIG_DIR = config_dir()

# Loads that log their progress at INFO (ModelSpec.large): the full-size presets, or weight files of
# this total size; the tiny demo/test models (about a second) log theirs at DEBUG.
LARGE_PRESETS = ("rn50x16", "convnext_large")
LARGE_LOAD_BYTES = 64 * 2**20


@dataclass
class ModelSpec:
    preset: Optional[str] = None  # None: "tiny", or the ovsam_checkpoint's own architecture
    overrides: dict[str, Any] = field(default_factory=dict)
    clip_weights: Optional[str] = None
    ovsam_checkpoint: Optional[str] = None
    sam_checkpoint: Optional[str] = None
    sam2clip_checkpoint: Optional[str] = None
    clip2sam_checkpoint: Optional[str] = None
    seed: int = 0
    # backend: onnx runs graphs written by `ovsam export` (ovsam_ros.export.backend); the
    # weight-file keys above are then unused except clip_weights (text tower, optional).
    backend: str = "torch"
    onnx_dir: Optional[str] = None
    onnx_providers: Optional[list] = None  # ONNX Runtime execution providers, best first
    # Logged when the model is built: what the model knows (e.g. the shapes demo model: only
    # the synthetic shapes world) and how to switch to real weights.
    notice: Optional[str] = None

    @property
    def preset_name(self) -> str:
        return self.preset or "tiny"

    def config(self) -> OVSAMConfig:
        if self.preset_name not in PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; choose from {sorted(PRESETS)}")
        data = _merge(PRESETS[self.preset_name]().to_dict(), self.overrides)
        if self.clip_weights:
            data["backbone"]["pretrained"] = _expand(self.clip_weights)
        return OVSAMConfig.from_dict(data)

    @property
    def trained(self) -> bool:
        """Whether every part that recognition depends on comes from a trained file."""
        if self.backend != TORCH:
            return get_backend(self.backend).trained(self)
        return bool(self.ovsam_checkpoint) or bool(
            self.clip_weights and self.sam2clip_checkpoint and self.clip2sam_checkpoint
        )

    def weight_fields(self) -> list[tuple[str, str]]:
        """(YAML key, expanded path) of every weight file a PyTorch build reads."""
        names = ("ovsam_checkpoint", "clip_weights") if self.ovsam_checkpoint else (
            "clip_weights", "sam_checkpoint", "sam2clip_checkpoint", "clip2sam_checkpoint")
        return [(name, _expand(getattr(self, name))) for name in names if getattr(self, name)]

    def missing_weight_files(self) -> list[tuple[str, str]]:
        """(YAML key, expanded path) of every weight file a PyTorch build would read that is not a file."""
        return [(name, path) for name, path in self.weight_fields() if not os.path.isfile(path)]

    def weight_files(self) -> list[str]:
        """The (expanded) weight files a PyTorch build reads."""
        return [path for _, path in self.weight_fields()]

    @property
    def large(self) -> bool:
        """Whether loading takes long enough (seconds to minutes on a CPU) to log each stage at
        INFO: a full-size preset, or weight files of :data:`LARGE_LOAD_BYTES` or more."""
        if self.preset_name in LARGE_PRESETS:
            return True
        total = 0
        for path in self.weight_files():
            with contextlib.suppress(OSError):
                total += os.path.getsize(path)
        return total >= LARGE_LOAD_BYTES


#: The vocabulary of a model YAML without a ``predictor.vocabulary`` key whose model carries none.
DEFAULT_VOCABULARY = "coco"

# Fields holding file or folder paths, read relative to the model YAML's folder (load_specs).
MODEL_PATH_FIELDS = ("clip_weights", "ovsam_checkpoint", "sam_checkpoint", "sam2clip_checkpoint",
                     "clip2sam_checkpoint", "onnx_dir")
PREDICTOR_PATH_FIELDS = ("text_cache_dir", "compile_cache_dir")
#: Suffixes of a checkpoint passed where a model YAML is expected (``--model runs/s2/model.pt``).
CHECKPOINT_SUFFIXES = (".pt", ".pth")


@dataclass
class PredictorSpec:
    vocabulary: Optional[str] = DEFAULT_VOCABULARY
    templates: Union[str, list[str]] = "vild"
    device: str = "auto"
    precision: str = "fp32"
    top_k: int = 5
    text_cache_dir: Optional[str] = "~/.cache/ovsam_ros/text"
    optimize: bool = True  # False: the plain modules under autocast (A/B comparisons)
    attention: str = "chunked"  # ovsam_ros.model.inference.REL_POS_ATTENTIONS (inference path only)
    compile: str = "off"  # torch.compile mode (ovsam_ros.model.compile.COMPILE_MODES); CUDA-graph modes: CUDA only
    compile_cache_dir: Optional[str] = "default"  # the user's cache (XDG_CACHE_HOME respected); None: no cache
    # everything(): with the published decoder (no IoU head), score masks with an extra pass of
    # SAM's own decoder from model.sam_checkpoint (needs that file; masks are unchanged).
    sam_iou: bool = True
    # everything()/text queries: SAM's 3 multimask tokens per grid point; false for a "sam"-token
    # decoder trained by our stage 2, which trains only the single-mask token (tokens 1-3 random).
    everything_multimask: bool = True
    # Label with the reference's frozen-CLIP ensemble (learned x CLIP geometric mean, alpha for
    # base classes, beta for novel ones; see OVSAMPredictor.ensemble_logits). The published
    # rn50x16 configs turn it on; it needs the CLIP image head (PyTorch backend).
    clip_ensemble: bool = False
    ensemble_alpha: float = 0.1
    ensemble_beta: float = 0.9
    # Never predict the classes the vocabulary splits 'unused' (COCO's 15 outside the 48/17 split),
    # as the reference never does (-1000 in its classifier); on in rn50x16_coco.yaml.
    exclude_unused: bool = False
    # Which texts name a class: names_only = each class's name alone (the reference's LVIS text
    # embeddings); max_synonyms = at most N synonyms per class (null: all). The published LVIS
    # config sets names_only; COCO keeps the reference's per-class synonym lists.
    names_only: bool = False
    max_synonyms: Optional[int] = None
    # Image resize kernel: pil (segment_anything's ResizeLongestSide) | cv2 (bilinear without
    # antialiasing, the reference's mmcv resize: the published rn50x16 configs use it).
    resize: str = "pil"
    # Which box of a predicted mask CLIP2SAM pools: mask (the reference: the whole mask's box) |
    # largest_component (the box of its largest connected piece; PyTorch backend only).
    roi_box: str = "mask"


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


#: Prefix of a path inside the installed ovsam_ros Python package (bundled weights), e.g.
#: ``ovsam_ros://data/models/shapes.pt``: model YAMLs are installed apart from the package.
PACKAGE_SCHEME = "ovsam_ros://"


def _expand(path: str) -> str:
    if str(path).startswith(PACKAGE_SCHEME):
        return str(Path(__file__).resolve().parent / str(path)[len(PACKAGE_SCHEME):])
    return os.path.expandvars(os.path.expanduser(path))


def _from_mapping(cls: type, data: Optional[dict[str, Any]], where: str):
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**data)


def bundled_model_names() -> list[str]:
    """Names ``model: <name>`` accepts (the YAMLs in the installed config/models/)."""
    folder = model_config_dir()
    return [] if folder is None else sorted(p.stem for p in folder.glob("*.yaml"))


def resolve_config_path(name_or_path: Union[str, Path]) -> Path:
    """A path, or the name of a bundled file in config/models/ ("tiny", "rn50x16")."""
    path = Path(_expand(str(name_or_path)))
    if path.is_file():
        return path
    folder = model_config_dir()
    if folder is None:
        looked = ", ".join(str(d) for d in share_dirs()) or "no share directory found"
        raise FileNotFoundError(
            f"model config {name_or_path!r} is not a file, and the bundled config/models/ of ovsam_ros was not "
            f"found ({looked}; AMENT_PREFIX_PATH={os.environ.get('AMENT_PREFIX_PATH', '')!r})")
    bundled = folder / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    raise FileNotFoundError(f"model config {name_or_path!r} not found (not a file, not one of "
                            f"{bundled_model_names()} in {folder})")


def load_specs(source: Union[str, Path, dict[str, Any]]) -> tuple[ModelSpec, PredictorSpec]:
    """Parse a model YAML (path, bundled name, or already-loaded dict), or take a checkpoint
    file (``.pt`` / ``.pth``) as ``{model: {ovsam_checkpoint: <it>}}``.

    A YAML's relative paths are resolved against its folder (module docstring). The returned
    :class:`PredictorSpec` carries ``vocabulary_given``: whether the source named a vocabulary
    (:func:`build_predictor` otherwise uses the checkpoint's)."""
    folder: Optional[Path] = None
    if isinstance(source, dict):
        data, where = source, "model config"
    else:
        path = resolve_config_path(source)
        where = str(path)
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            data = {"model": {"ovsam_checkpoint": str(path.resolve())}}
        else:
            folder = path.resolve().parent
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as error:
                raise ValueError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping with 'model' and 'predictor' sections")
    unknown = sorted(set(data) - {"model", "predictor"})
    if unknown:
        raise ValueError(f"{where}: unknown section(s) {unknown}; expected 'model' and 'predictor'")
    model_spec = _from_mapping(ModelSpec, data.get("model"), f"{where}: model")
    predictor_spec = _from_mapping(PredictorSpec, data.get("predictor"), f"{where}: predictor")
    _check_values(model_spec, predictor_spec, data, where)
    predictor_spec.vocabulary_given = "vocabulary" in (data.get("predictor") or {})
    predictor_spec.templates_given = "templates" in (data.get("predictor") or {})
    if folder is not None:
        for spec, names in ((model_spec, MODEL_PATH_FIELDS), (predictor_spec, PREDICTOR_PATH_FIELDS)):
            for name in names:
                setattr(spec, name, _relative_to(folder, getattr(spec, name)))
        predictor_spec.vocabulary = _vocabulary_file_relative_to(folder, predictor_spec.vocabulary)
    return model_spec, predictor_spec


def _check_values(model_spec: ModelSpec, predictor_spec: PredictorSpec, data: dict[str, Any], where: str) -> None:
    """Every key the source sets, by the rules of :mod:`ovsam_ros.model_yaml_values` (errors name the
    file, key and value); ``model.overrides`` field by field as the config it makes."""
    from ovsam_ros.model_yaml_values import check_model_values, check_predictor_values

    for spec, values in ((model_spec, check_model_values(data.get("model") or {}, list(PRESETS), where)),
                         (predictor_spec, check_predictor_values(data.get("predictor") or {}, where))):
        for key, value in values.items():
            setattr(spec, key, value)
    if model_spec.overrides:
        OVSAMConfig.from_dict(_merge(PRESETS[model_spec.preset_name]().to_dict(), model_spec.overrides),
                              where=f"{where}: model.overrides")


def _relative_to(folder: Path, value: Any) -> Any:
    """``value`` (a path setting of a YAML in ``folder``) as the YAML means it: relative paths
    (after ``~`` / ``$VARS`` expansion) are the YAML folder's. Absolute, ``~``, ``ovsam_ros://``
    paths, ``null`` and the word ``default`` are kept as written."""
    if not isinstance(value, str) or not value or value == "default" or value.startswith(PACKAGE_SCHEME):
        return value
    expanded = _expand(value)
    return value if os.path.isabs(expanded) else str(folder / expanded)


def _vocabulary_file_relative_to(folder: Path, value: Any) -> Any:
    """A YAML's ``vocabulary:`` naming a .txt/.json file relative to the YAML's folder (and not a
    built-in name or inline list): that file. Anything else is kept as written."""
    if not isinstance(value, str) or not value.strip():
        return value
    from ovsam_ros.model.vocabulary import BUILTIN_VOCABULARIES, INLINE_PREFIX, looks_like_path

    text = value.strip()
    if (text.lower().replace("-", "_") in BUILTIN_VOCABULARIES or text.lower().startswith(INLINE_PREFIX)
            or not looks_like_path(text) or any(sep in text for sep in (",", ";", "\n"))):
        return value
    expanded = _expand(text)
    if os.path.isabs(expanded):
        return value
    return str(folder / expanded)


def build_model(spec: ModelSpec, progress: Optional[LoadProgress] = None) -> OVSAM:
    """Build the model a spec describes; logs a loud warning when it is not fully trained.

    ``progress``: where each stage and weight file is logged as it starts (default: a
    :class:`LoadProgress` at INFO for a large model, :attr:`ModelSpec.large`, else DEBUG)."""
    if progress is None:
        progress = LoadProgress(logging.INFO if spec.large else logging.DEBUG)
    if spec.backend != TORCH:
        model = get_backend(spec.backend).load(spec)
        if not model.trained:
            log.warning("\n" + "!" * 78 + f"\n!! UNTRAINED MODEL: the ONNX graphs in {spec.onnx_dir} were exported from a "
                        "model\n!! without trained weights: masks and labels are MEANINGLESS.\n" + "!" * 78)
        return model.eval()
    if spec.ovsam_checkpoint:
        if spec.preset is not None and spec.preset not in PRESETS:
            raise ValueError(f"unknown model preset {spec.preset!r}; choose from {sorted(PRESETS)}")
        model = load_ovsam(_expand(spec.ovsam_checkpoint), clip_pretrained=_expand(spec.clip_weights) if spec.clip_weights else None,
                           progress=progress)
        check_preset(spec, model.cfg)
    else:
        cfg = spec.config()
        # Seeded so an untrained demo model is the same on every run and machine.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = build_ovsam(
                cfg,
                sam_checkpoint=_expand(spec.sam_checkpoint) if spec.sam_checkpoint else None,
                sam2clip_checkpoint=_expand(spec.sam2clip_checkpoint) if spec.sam2clip_checkpoint else None,
                clip2sam_checkpoint=_expand(spec.clip2sam_checkpoint) if spec.clip2sam_checkpoint else None,
                progress=progress,
            )
    if not spec.trained:
        log.warning(untrained_warning(spec))
    if spec.notice:
        log.warning(spec.notice.strip())
    return model.eval()


def check_preset(spec: ModelSpec, checkpoint_cfg: OVSAMConfig) -> None:
    """A ``preset`` next to an ``ovsam_checkpoint`` must name the checkpoint's architecture:
    the checkpoint carries its own config, and silently using it would hide a wrong file."""
    if spec.preset is None:
        return
    wanted = PRESETS[spec.preset]().backbone.model_name
    found = checkpoint_cfg.backbone.model_name
    if wanted != found:
        raise ValueError(
            f"model.preset {spec.preset!r} (CLIP {wanted}) disagrees with {spec.ovsam_checkpoint}, which holds "
            f"a {found} model. Use the checkpoint trained for {spec.preset!r}, or drop 'preset' "
            "(an ovsam_checkpoint carries its own architecture).")


def untrained_warning(spec: ModelSpec) -> str:
    missing = [
        name
        for name, value in (
            ("clip_weights", spec.clip_weights),
            ("sam2clip_checkpoint", spec.sam2clip_checkpoint),
            ("clip2sam_checkpoint", spec.clip2sam_checkpoint),
        )
        if not value
    ]
    return (
        "\n" + "!" * 78 + "\n"
        f"!! UNTRAINED MODEL (preset {spec.preset_name!r}): no {', '.join(missing)} configured.\n"
        "!! Parts without weights are randomly initialised: masks and labels are MEANINGLESS.\n"
        "!! Point the model config at real weight files (see README, 'Weights').\n" + "!" * 78
    )


SYNONYM_CHOICES = ("all", "names")


def build_predictor(source: Union[str, Path, dict[str, Any]], synonyms: Optional[str] = None, *,
                    measure_cpu_fp16: bool = False, **overrides: Any):
    """Model + predictor from a model YAML; ``overrides`` replace predictor fields (device=...; None
    keeps the YAML's). ``synonyms`` is the CLI/node switch: 'names' = each class by its name alone,
    'all' = every synonym the vocabulary lists (it also lifts the YAML's ``max_synonyms`` cap, which a
    None override could not), None/'' = the YAML's policy."""
    from ovsam_ros.model.vocabulary import TextEmbeddingCache, get_templates, load_vocabulary
    from ovsam_ros.predictor import OVSAMPredictor

    model_spec, predictor_spec = load_specs(source)
    if synonyms:
        if synonyms not in SYNONYM_CHOICES:
            raise ValueError(f"synonyms must be one of {', '.join(SYNONYM_CHOICES)}; got {synonyms!r}")
        predictor_spec.names_only = synonyms == "names"
        if synonyms == "all":
            predictor_spec.max_synonyms = None
    from ovsam_ros.model_yaml_values import check_predictor_values

    for key, value in overrides.items():
        if value is None:
            continue
        if not hasattr(predictor_spec, key):
            raise ValueError(f"unknown predictor option {key!r}")
        setattr(predictor_spec, key, check_predictor_values({key: value})[key])
    # Device and precision first (a CUDA device without CUDA fails before a minutes-long load), and
    # the CPU rule of every YAML entry point (CLI, node, ovsam-evaluate, startup/fidelity benchmarks): fp16 on a CPU
    # runs fp32, with one warning (ovsam_ros.runtime.resolve_precision).
    device = resolve_device(predictor_spec.device)
    if overrides.get("precision") is not None:
        asked = "requested"
    else:
        asked = "model config" if isinstance(source, dict) else f"model YAML {resolve_config_path(source)}"
    # measure_cpu_fp16: the fidelity benchmark measures fp16 itself, on whatever device it has.
    precision = predictor_spec.precision if measure_cpu_fp16 else resolve_precision(
        predictor_spec.precision, device, source=asked)
    # Vocabulary: one chosen by the YAML or the caller wins; otherwise a stage-2 checkpoint's own
    # (read with the model below), else the default. Cheap input checks before the model load
    # (seconds, minutes for large presets): a vocabulary typo or missing file fails now.
    chosen = getattr(predictor_spec, "vocabulary_given", True) or overrides.get("vocabulary") is not None
    from_checkpoint = not chosen and bool(model_spec.ovsam_checkpoint) and model_spec.backend == TORCH

    def load(spec: Any):
        return load_vocabulary(spec, max_synonyms=predictor_spec.max_synonyms, names_only=predictor_spec.names_only)

    vocabulary = None if from_checkpoint or predictor_spec.vocabulary is None else load(predictor_spec.vocabulary)
    templates = get_templates(predictor_spec.templates)
    if model_spec.backend == TORCH:
        check_weight_files(model_spec, asked, source=None if isinstance(source, dict) else source)
    # Progress lines: what loads, each weight file with its size, each stage (INFO for large models).
    progress = LoadProgress(logging.INFO if model_spec.large else logging.DEBUG)
    with _show_load_progress():
        name = model_spec.preset or (Path(model_spec.ovsam_checkpoint).name if model_spec.ovsam_checkpoint else "tiny")
        if model_spec.backend != TORCH:
            what = f"{model_spec.backend} graphs in {model_spec.onnx_dir}"
        else:
            files = model_spec.weight_files()
            total = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
            what = f"{len(files)} weight file(s), {size_text(total)}" if files else "no weight files (random init)"
        progress.say("loading model %s on %s in %s: %s", name, device, precision, what)
        model = build_model(model_spec, progress)
        if from_checkpoint:
            vocabulary = _checkpoint_vocabulary(model, model_spec, predictor_spec, load)
        if model_spec.ovsam_checkpoint and model_spec.backend == TORCH:
            _say_what_the_checkpoint_is(model, model_spec, None if from_checkpoint else vocabulary)
        if (model_spec.ovsam_checkpoint and model_spec.backend == TORCH and overrides.get("templates") is None
                and not getattr(predictor_spec, "templates_given", True)):
            templates = _checkpoint_templates(model, model_spec) or templates
        iou_scorer = None
        if (predictor_spec.sam_iou and model_spec.backend == "torch" and model_spec.sam_checkpoint
                and not model_spec.ovsam_checkpoint and model.decoder.output_tokens == "reference"):
            from ovsam_ros.model.checkpoints import load_sam_iou_scorer

            sam_file = _expand(model_spec.sam_checkpoint)
            with progress.stage("SAM IoU scorer (everything mode)", sam_file, short="IoU scorer"):
                iou_scorer = load_sam_iou_scorer(model.cfg.decoder, sam_file)
        cache = TextEmbeddingCache(_expand(predictor_spec.text_cache_dir)) if predictor_spec.text_cache_dir else None
        text = "no vocabulary" if vocabulary is None else (
            f"vocabulary '{vocabulary.name}' ({len(vocabulary)} classes; "
            + ("from the text cache, else encoded now" if cache else "encoded now") + ")")
        with progress.stage("inference path + vocabulary", detail=f"{device}, {precision}, {text}", short="predictor"):
            predictor = OVSAMPredictor(
                model,
                vocabulary=vocabulary,
                device=str(device),
                precision=precision,
                top_k=predictor_spec.top_k,
                templates=templates,
                text_cache=cache,
                trained=model_spec.trained,
                optimize=predictor_spec.optimize,
                attention=predictor_spec.attention,
                compile=predictor_spec.compile,
                compile_cache_dir=predictor_spec.compile_cache_dir,  # resolved by ovsam_ros.model.compile
                iou_scorer=iou_scorer,
                clip_ensemble=predictor_spec.clip_ensemble,
                ensemble_alpha=predictor_spec.ensemble_alpha,
                ensemble_beta=predictor_spec.ensemble_beta,
                exclude_unused=predictor_spec.exclude_unused,
                names_only=predictor_spec.names_only,
                max_synonyms=predictor_spec.max_synonyms,
                resize=predictor_spec.resize,
                everything_multimask=predictor_spec.everything_multimask,
                roi_box=predictor_spec.roi_box,
            )
        progress.summary(f"model {name}")
    return predictor


def _checkpoint_vocabulary(model: OVSAM, model_spec: ModelSpec, predictor_spec: PredictorSpec, load):
    """The vocabulary a checkpoint was trained with (stage 2 stores it), with the YAML's synonym
    policy; the default vocabulary when the checkpoint has none. Logs which one at INFO."""
    from ovsam_ros.model.checkpoints import checkpoint_vocabulary
    from ovsam_ros.model.vocabulary import Vocabulary

    stored = checkpoint_vocabulary(getattr(model, "checkpoint_extra", None))
    if stored is None:
        return None if predictor_spec.vocabulary is None else load(predictor_spec.vocabulary)
    vocabulary = load(Vocabulary.from_saved(stored))
    shown = ", ".join(vocabulary.classes[:8]) + (f", ... ({len(vocabulary)} classes)" if len(vocabulary) > 8 else "")
    # On the load-progress logger: shown by the CLI and the node while a model loads (_show_load_progress).
    logging.getLogger(LOAD_LOGGER).info(
        "vocabulary: the one %s was trained with ('%s': %s); a vocabulary in the model YAML, --vocab or "
        "the node's vocabulary parameter replaces it", model_spec.ovsam_checkpoint, vocabulary.name, shown)
    return vocabulary


def _say_what_the_checkpoint_is(model: OVSAM, model_spec: ModelSpec, vocabulary: Any) -> None:
    """One INFO line where a chosen vocabulary replaces the classes a stage-2 checkpoint was trained
    with (a params file's `vocabulary: coco` silently defeats a fleet model otherwise), and a warning
    for a stage-1 checkpoint: its decoder and label head were never trained (stage 1 distils the
    adapter only), so its names are meaningless."""
    from ovsam_ros.model.checkpoints import checkpoint_vocabulary

    extra = getattr(model, "checkpoint_extra", None) or {}
    started = ((extra.get("train_config") or {}).get("model") or {}) if isinstance(extra.get("train_config"), dict) else {}
    if extra.get("stage") == "stage1" and not started.get("clip2sam_checkpoint") and not started.get("init_checkpoint"):
        logging.getLogger(LOAD_LOGGER).warning(
            "%s is a stage-1 checkpoint: the SAM2CLIP adapter is trained, the label head (CLIP2SAM) is not: "
            "labels are meaningless until stage 2 trains it (README, Training)", model_spec.ovsam_checkpoint)
    stored = checkpoint_vocabulary(extra)
    if stored is not None and vocabulary is not None:
        logging.getLogger(LOAD_LOGGER).info(
            "vocabulary '%s' (%d classes) replaces the %d class(es) stored in %s (its training vocabulary; leave the vocabulary "
            "unset to use those)", vocabulary.name, len(vocabulary), len(stored["classes"]), model_spec.ovsam_checkpoint)


def _checkpoint_templates(model: OVSAM, model_spec: ModelSpec) -> Optional[tuple[str, ...]]:
    """The prompt templates a stage-2 checkpoint's text embeddings were made with (None: an older
    checkpoint, which keeps the YAML default). Logged at INFO when they differ from that default."""
    from ovsam_ros.model.checkpoints import checkpoint_templates
    from ovsam_ros.model.vocabulary import TEMPLATE_SETS

    stored = checkpoint_templates(getattr(model, "checkpoint_extra", None))
    if stored is not None and stored != tuple(TEMPLATE_SETS[PredictorSpec.templates]):
        logging.getLogger(LOAD_LOGGER).info(
            "prompt templates: the %d template(s) %s learned with (predictor.templates in the model YAML or "
            "--templates replaces them)", len(stored), model_spec.ovsam_checkpoint)
    return stored


def check_weight_files(spec: ModelSpec, where: str = "", source: Union[str, Path, None] = None) -> None:
    """Every missing weight file in one error, before anything loads (a load would stop at the
    first, after seconds to minutes); FileNotFoundError naming each YAML key and path, and the
    command that fetches them (``ovsam weights download --model <source>``). ``source``: the model
    as the user named it (default: the YAML named in ``where``, "model YAML <path>")."""
    missing = spec.missing_weight_files()
    if missing:
        from ovsam_ros.weights.hint import missing_weights_advice

        listed = "; ".join(f"model.{name}: {path}" for name, path in missing)
        shown = f" ({where})" if where and where != "requested" else ""
        if source is None and where.startswith("model YAML "):
            source = where[len("model YAML "):]
        raise FileNotFoundError(
            f"{len(missing)} weight file(s) of model {spec.preset or 'config'}{shown} not found: {listed}. "
            + missing_weights_advice(missing, source))


@contextlib.contextmanager
def _show_load_progress():
    """Load progress lines (logger ``ovsam_ros.load``) reach the configured handlers while a
    model loads, even where the root logger is at WARNING (``ovsam``, ``ovsam-evaluate``): a large
    model loads for tens of seconds to minutes on a CPU, and silence then looks like a hang.
    Nothing changes when that logger's level is set (set WARNING to hide the lines) or INFO is
    already enabled; with no logging configured, Python prints only warnings anyway."""
    logger = logging.getLogger(LOAD_LOGGER)
    if logger.level != logging.NOTSET or logger.isEnabledFor(logging.INFO):
        yield
        return
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(logging.NOTSET)
