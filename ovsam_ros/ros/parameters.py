"""Every parameter of the OVSAM node, declared in ONE table.

The table gives each parameter its name, default, description and allowed
values; :func:`descriptor` turns a row into a ``ParameterDescriptor`` (with
``IntegerRange`` / ``FloatingPointRange`` so ``ros2 param describe`` shows the
limits) and :func:`validate` gives the reason a value is rejected. The node,
``config/ovsam.yaml`` and the README are checked against this table by tests.

``when = "configure"`` rows (model settings) are read when the node is
configured; changing them while a model is loaded is rejected (run the
``cleanup`` transition first). All other rows apply from the next frame.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence, Union

Value = Union[bool, int, float, str]

MODES = ("prompt", "everything", "text")
PRECISIONS = ("", "fp32", "fp16", "bf16")
TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("best_effort", "reliable")  # the names ros2 topic --qos-reliability uses
MASK_ENCODINGS = ("coco_rle", "png", "raw")  # = ovsam_ros.ros.mask_codec.MASK_ENCODINGS (a test pins it)
INSTANCE_ID_FORMATS = ("png", "raw")
DETECTION_CLASS_IDS = ("name", "index")  # = ovsam_ros.ros.outputs.DETECTION_CLASS_IDS (a test pins it)
_DEVICE_RE = re.compile(r"^(|auto|cpu|cuda(:\d+)?|mps)$")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Value
    description: str
    choices: Optional[Sequence[str]] = None
    min: Optional[float] = None  # inclusive
    max: Optional[float] = None  # inclusive
    when: str = "runtime"  # "configure": fixed while a model is loaded
    read_only: bool = False  # set at start only (params file, -p, launch); never over the network
    why: str = ""  # why the range is what it is; appended to a range error

    @property
    def type(self) -> type:
        return type(self.default)


PARAMETERS: tuple[ParamSpec, ...] = (
    # -- model (read at configure) ---------------------------------------------------
    ParamSpec("model", "rn50x16",
              "Model YAML: a name in config/models/ (shapes, tiny, rn50x16, convnext_large), or a model YAML / "
              ".pt / .pth checkpoint in model_dirs (by path or bare file name; other paths are refused unread). "
              "'rn50x16' (the default) is the published OVSAM: `ovsam weights download --model rn50x16` fetches "
              "its files; configure fails naming them while they are missing. 'shapes' is the bundled demo model: it knows only the synthetic shapes world. "
              "'tiny' is a random-init smoke-test model: labels are meaningless.", when="configure"),
    ParamSpec("vocabulary", "",
              "Initial vocabulary: coco | lvis | imagenet21k | a .txt/.json file in vocabulary_dirs (path or bare "
              "name; other paths are refused unread) | 'cup, door handle' | "
              "'inline:cup' (one class). A lone unknown name or a missing file is an error. "
              "'' = the model YAML's (if it names none: a trained checkpoint's own classes, else coco). Change it at runtime with the set_vocabulary service.", when="configure"),
    ParamSpec("vocabulary_dirs", "",
              "Directories (separated by ':') the vocabulary parameter and the set_vocabulary service may read "
              ".txt/.json files from; a bare file name is looked up in them. '' = the package's vocabularies and "
              "~/.cache/ovsam_ros/vocabularies. Other paths are refused unread. Read-only: set it at start.",
              read_only=True),
    ParamSpec("model_dirs", "",
              "Directories (separated by ':') the model parameter may read model YAMLs and checkpoints from; a "
              "bare file name is looked up in them. Bundled names (shapes, tiny, ...) are always allowed. '' = "
              "~/ovsam_weights, ~/ovsam_onnx and ~/.cache/ovsam_ros/models. Other paths are refused unread. "
              "Read-only: set it at start.", read_only=True),
    ParamSpec("device", "", "cpu | cuda | cuda:N | auto; '' = the model YAML's.", when="configure"),
    ParamSpec("precision", "", "fp32 | fp16 | bf16; '' = the model YAML's.", choices=PRECISIONS, when="configure"),
    ParamSpec("clip_ensemble", "",
              "Label with the reference's frozen-CLIP ensemble (learned x CLIP geometric mean; what makes "
              "novel classes work): on | off; '' = the model YAML's (on for the published rn50x16 configs).",
              choices=("", "on", "off"), when="configure"),
    ParamSpec("compile", "",
              "torch.compile the model: reduce-overhead | max-autotune (CUDA graphs; CUDA only) | default | "
              "max-autotune-no-cudagraphs (CPU too) | off; '' = the model YAML's (off). The first start compiles "
              "(minutes); the artefacts go to the model YAML's compile_cache_dir ($XDG_CACHE_HOME/ovsam_ros/"
              "compile by default), so a restart with a warm cache skips compilation.",
              choices=("", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
              when="configure"),
    ParamSpec("synonyms", "",
              "Which texts name a class: all (every synonym the vocabulary lists, past the YAML's max_synonyms) "
              "| names (the class name "
              "alone, as the reference encodes LVIS); '' = the model YAML's (names for rn50x16 LVIS). Applies "
              "to set_vocabulary too.", choices=("", "all", "names"), when="configure"),
    # -- ROS interfaces (read at configure) ----------------------------------------------
    ParamSpec("image_transport", "raw",
              "Camera input, ONE subscription: raw (sensor_msgs/Image on 'image') or compressed "
              "(sensor_msgs/CompressedImage on 'image/compressed', JPEG/PNG).", choices=TRANSPORTS,
              when="configure"),
    ParamSpec("input_reliability", "best_effort",
              "QoS reliability of the camera subscription: best_effort matches every camera; reliable "
              "matches only reliable publishers.", choices=RELIABILITIES, when="configure"),
    ParamSpec("input_depth", 1, "QoS depth of the camera subscription; 1 = only the newest frame.",
              min=1, max=100, when="configure"),
    ParamSpec("output_reliability", "reliable",
              "QoS reliability of the outputs (~/masks, ~/instance_ids[/compressed], ~/overlay, ~/points, "
              "~/detections[_3d], ~/markers; ~/label_info is always reliable + latched): reliable matches every "
              "subscriber; best_effort never blocks on a slow link.", choices=RELIABILITIES, when="configure"),
    # -- camera images (next frame) --------------------------------------------------------
    ParamSpec("input_bits", 16,
              "Bits of 16-bit images (mono16, 16UC1, rgb16 ...) that hold the picture: 16, or 12 / 10 for "
              "machine-vision cameras that put 12- / 10-bit data in mono16 (0..2^N-1 is black..white; read as "
              "16-bit such frames look black). A frame using under 1/16 of the range is warned about "
              "(rate-limited).", min=8, max=16),
    ParamSpec("float_max", 1.0,
              "32FC1 images: the value shown as white (1.0; 255.0 for 0..255 float data); never guessed from "
              "the pixels.", min=1e-6, max=1e9),
    # -- compute ---------------------------------------------------------------------
    ParamSpec("num_threads", 2,
              "torch CPU threads (process-wide); 0 = PyTorch's default (all cores).", min=0, max=256),
    ParamSpec("max_rate_hz", 0.0, "Process at most this many frames per second; 0 = as fast as possible.",
              min=0.0, max=1000.0),
    # -- what to segment -------------------------------------------------------------
    ParamSpec("mode", "prompt",
              "What to do with a frame when no prompt or text query applies to it: prompt (nothing: wait "
              "for prompts), everything (segment and label every object), text (run 'query'). Prompts "
              "and text queries that arrive on their topics take precedence.", choices=MODES),
    ParamSpec("query", "", "Text query used in mode 'text' when none arrived on the text_query topic."),
    ParamSpec("top_k", 5, "Labels reported per instance.", min=1, max=100),
    ParamSpec("max_instances", 20, "Everything/text modes: keep at most this many instances, best first.",
              min=1, max=1000),
    # -- work one message may cause (anyone on the DDS domain can publish prompts) ----------
    ParamSpec("max_prompts", 100,
              "Prompts used from one PromptArray, detection_prompts message or segment request. The prompts "
              "after the first max_prompts are rejected (a segment request: refused), counted in "
              "prompts_over_limit, with a warning; never silently truncated. 100 = the usual per-image "
              "detection cap of detectors (COCO's maxDets); each prompt costs one decoder pass.",
              min=1, max=1000, why="every prompt costs a decoder pass and a tracked mask"),
    ParamSpec("max_prompt_points", 64,
              "Points one prompt may have; a prompt with more is rejected alone, counted in prompts_over_limit. "
              "Interactive clicks need a handful; the decoder's cost grows with the points.",
              min=1, max=1000, why="the decoder's attention grows with the points of a prompt"),
    ParamSpec("multimask_output", False,
              "Prompt mode: let the decoder propose 3 masks per prompt and keep the best (ambiguous clicks)."),
    ParamSpec("points_per_side", 16, "Everything mode: point grid size (N x N prompts).", min=1, max=64),
    ParamSpec("points_per_batch", 64, "Everything mode: prompts per decoder call (memory vs. speed).",
              min=1, max=4096),
    ParamSpec("pred_iou_thresh", 0.8, "Everything mode: drop masks with a lower predicted IoU.", min=0.0, max=1.0),
    ParamSpec("stability_score_thresh", 0.9, "Everything mode: drop masks with a lower stability score.",
              min=0.0, max=1.0),
    ParamSpec("box_nms_thresh", 0.7, "Everything mode: box IoU above which duplicate masks are removed.",
              min=0.0, max=1.0),
    ParamSpec("min_mask_area", 0, "Everything mode: drop masks with fewer pixels.", min=0, max=1 << 30),
    ParamSpec("text_min_score", 0.0, "Text mode: drop matches whose query score is below this.", min=0.0, max=1.0),
    # -- outputs ---------------------------------------------------------------------
    ParamSpec("mask_encoding", "coco_rle",
              "How each mask of ~/masks travels (LabeledMask.mask_encoding; every form is lossless): coco_rle "
              "(COCO RLE of the mask's box, ~1 kB per mask), png (1-bit PNG of the box) or raw (mono8 image of "
              "the box, 30-60x larger). Python decodes any with ovsam_ros.ros.mask_codec.decode_mask.",
              choices=MASK_ENCODINGS),
    ParamSpec("publish_instance_ids", False,
              "Publish the instance-ID image (pixel = instance_id + 1, or the track id with tracking; 0 = none). "
              "Off by default: ~/masks holds the same masks (ovsam_ros.ros.messages.instance_id_image_from_msg "
              "rebuilds this image from it)."),
    ParamSpec("instance_ids_format", "png",
              "Form of the instance-ID image: png (lossless 16-bit PNG, sensor_msgs/CompressedImage on "
              "~/instance_ids/compressed, ~25 kB at 720p) or raw (mono16 sensor_msgs/Image on ~/instance_ids, "
              "1.8 MB at 720p).", choices=INSTANCE_ID_FORMATS),
    ParamSpec("detection_class_id", "name",
              "~/detections and ~/detections_3d: ObjectHypothesis.class_id is the label (name) or the class "
              "index (index; ~/label_info maps it to the name, background = 65535).", choices=DETECTION_CLASS_IDS),
    ParamSpec("publish_markers", True,
              "Publish ~/markers (visualization_msgs/MarkerArray for RViz: each instance's 3D extent and label "
              "in the depth frame, marker id = track id, deleted when the track ends) when depth gives 3D."),
    ParamSpec("publish_overlay", False, "Publish ~/overlay (rgb8 debug image; costs a few ms per frame)."),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages (in every lifecycle state); 0 = off.",
              min=0.0, max=3600.0),
    ParamSpec("input_timeout", 5.0,
              "Diagnostics turn WARN when the active node received no image for this many seconds; 0 = never.",
              min=0.0, max=3600.0),
    # -- prompts on the right frame ------------------------------------------------------
    ParamSpec("frame_buffer_size", 30,
              "Recent frames kept so that stamped one-shot prompts and detections run on the frame they "
              "name (header.stamp); older ones run on the newest frame, counted.", min=1, max=300,
              why="buffered frames are kept in memory; 300 is 10 s of a 30 Hz camera, far past a detector's delay"),
    ParamSpec("frame_buffer_max_age", 2.0,
              "Seconds a buffered frame stays usable; also how long a prompt stamped newer than every "
              "buffered frame waits for its frame. Older frames leave the buffer (and memory) at once.",
              min=0.01, max=10.0,
              why="buffered frames are kept in memory; a detector answering later is of no use to a moving robot"),
    ParamSpec("frame_buffer_max_mb", 256,
              "Memory (MiB of image data) the buffered frames may take together; the oldest leave first, the "
              "newest always stays. 256 holds 30 frames of a 1080p rgb8 camera (6.2 MB each); a 4K camera "
              "keeps ~10. The depth images kept for pairing get a second budget of this size.", min=1, max=4096, why="buffered frames are kept in memory"),
    ParamSpec("stamp_tolerance", 0.001,
              "Seconds between a prompt's stamp and a buffered frame's stamp that still count as the same "
              "frame.", min=0.0, max=1.0),
    ParamSpec("detection_prompt_type", "box",
              "detection_prompts: each detection becomes a box prompt, or a positive point at the box "
              "centre.", choices=("box", "point")),
    ParamSpec("detection_min_score", 0.0, "detection_prompts: ignore detections scored below this.",
              min=0.0, max=1.0),
    # -- tracking --------------------------------------------------------------------
    ParamSpec("tracking", True,
              "Give instances track ids that stay the same across frames (mask IoU with constant-velocity "
              "prediction); ~/instance_ids and overlay colours then use track ids."),
    ParamSpec("track_iou_threshold", 0.3, "Tracking: lowest mask IoU that continues a track.", min=0.0, max=1.0),
    ParamSpec("track_lifetime", 1.0, "Tracking: seconds an unmatched track survives (an object hidden for "
              "less keeps its id). Ids are never reused.", min=0.0, max=3600.0),
    ParamSpec("track_min_hits", 1, "Tracking: frames a track needs before its id is reported (before: "
              "track_id 0, left out of ~/instance_ids).", min=1, max=1000),
    ParamSpec("track_match_label", False, "Tracking: only continue a track with an instance of the same "
              "label."),
    ParamSpec("prompt_mask_feedback", False,
              "Persistent prompts: feed each prompt's previous low-resolution mask back as mask_input "
              "(temporal stability; a bad mask can persist)."),
    # -- depth to 3D -----------------------------------------------------------------
    ParamSpec("depth_tolerance", 0.02,
              "Seconds between a frame's stamp and an aligned depth image's stamp that still pair them.",
              min=0.0, max=1.0),
    ParamSpec("publish_points", False,
              "Publish ~/points (PointCloud2 of every instance's depth points, fields x y z instance_id "
              "track_id)."),
    ParamSpec("target_frame", "",
              "Report 3D in this TF frame (needs tf2_ros; without it 3D stays in the depth camera's frame, "
              "with a warning). '' = the depth image's frame."),
)

SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}
CONFIGURE_TIME = frozenset(spec.name for spec in PARAMETERS if spec.when == "configure")


def validate(name: str, value: Any) -> Optional[str]:
    """The reason ``value`` is not acceptable for parameter ``name``; None if it is."""
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    expected = spec.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        return f"{name} must be a {expected.__name__}, got {type(value).__name__} {value!r}"
    if expected is float and not math.isfinite(value):
        return f"{name} must be finite, got {value}"
    if spec.choices is not None and value not in spec.choices:
        shown = [c or "''" for c in spec.choices]
        return f"{name} must be one of {', '.join(shown)}; got {value!r}"
    why = f" ({spec.why})" if spec.why else ""
    if spec.min is not None and value < spec.min:
        return f"{name} must be >= {spec.min}, got {value}{why}"
    if spec.max is not None and value > spec.max:
        return f"{name} must be <= {spec.max}, got {value}{why}"
    if name == "device" and not _DEVICE_RE.match(value):
        return f"device must be '', auto, cpu, cuda or cuda:N; got {value!r}"
    if name == "model" and not value.strip():
        return "model must name a model YAML (e.g. 'tiny' or a path)"
    if name == "vocabulary" and value.strip():
        from ovsam_ros.model.vocabulary import classify_spec

        try:
            classify_spec(value)  # no file is read: built-in, existing file or inline list
        except (ValueError, FileNotFoundError) as error:
            return f"vocabulary: {error}"
    return None


def descriptor(spec: ParamSpec):
    """``rcl_interfaces/ParameterDescriptor`` for one table row."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    constraints = []
    if spec.choices is not None:
        constraints.append("one of: " + ", ".join(c or "''" for c in spec.choices))
    if spec.when == "configure":
        constraints.append("read at configure; fixed while the model is loaded (cleanup to change)")
    desc = ParameterDescriptor(
        name=spec.name,
        type=types[spec.type],
        description=spec.description,
        additional_constraints="; ".join(constraints),
        read_only=spec.read_only,
    )
    if spec.type is int and (spec.min is not None or spec.max is not None):
        desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=0)]
    elif spec.type is float and (spec.min is not None or spec.max is not None):
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max), step=0.0)]
    return desc


@dataclass(frozen=True)
class NodeSettings:
    """A consistent snapshot of every parameter (swapped atomically when one changes)."""

    model: str = "rn50x16"
    vocabulary: str = ""
    vocabulary_dirs: str = ""
    model_dirs: str = ""
    device: str = ""
    precision: str = ""
    clip_ensemble: str = ""
    compile: str = ""
    synonyms: str = ""
    image_transport: str = "raw"
    input_reliability: str = "best_effort"
    input_depth: int = 1
    output_reliability: str = "reliable"
    input_bits: int = 16
    float_max: float = 1.0
    num_threads: int = 2
    max_rate_hz: float = 0.0
    mode: str = "prompt"
    query: str = ""
    top_k: int = 5
    max_instances: int = 20
    max_prompts: int = 100
    max_prompt_points: int = 64
    multimask_output: bool = False
    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.9
    box_nms_thresh: float = 0.7
    min_mask_area: int = 0
    text_min_score: float = 0.0
    mask_encoding: str = "coco_rle"
    publish_instance_ids: bool = False
    instance_ids_format: str = "png"
    detection_class_id: str = "name"
    publish_markers: bool = True
    publish_overlay: bool = False
    diagnostics_period: float = 1.0
    input_timeout: float = 5.0
    frame_buffer_size: int = 30
    frame_buffer_max_age: float = 2.0
    frame_buffer_max_mb: int = 256
    stamp_tolerance: float = 0.001
    detection_prompt_type: str = "box"
    detection_min_score: float = 0.0
    tracking: bool = True
    track_iou_threshold: float = 0.3
    track_lifetime: float = 1.0
    track_min_hits: int = 1
    track_match_label: bool = False
    prompt_mask_feedback: bool = False
    depth_tolerance: float = 0.02
    publish_points: bool = False
    target_frame: str = ""

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "NodeSettings":
        known = {f.name for f in fields(cls)}
        coerced = {k: (float(v) if SPECS[k].type is float else v) for k, v in values.items() if k in known}
        return cls(**coerced)

    def everything_options(self):
        from ovsam_ros.predictor import EverythingOptions

        return EverythingOptions(
            points_per_side=self.points_per_side, points_per_batch=self.points_per_batch,
            pred_iou_thresh=self.pred_iou_thresh, stability_score_thresh=self.stability_score_thresh,
            box_nms_thresh=self.box_nms_thresh, min_mask_area=self.min_mask_area,
            max_instances=self.max_instances,
        )

    def tracker_config(self):
        from ovsam_ros.robot.tracking import TrackerConfig

        return TrackerConfig(iou_threshold=self.track_iou_threshold, lifetime=self.track_lifetime,
                             min_hits=self.track_min_hits, match_label=self.track_match_label)


def defaults() -> dict[str, Value]:
    return {spec.name: spec.default for spec in PARAMETERS}


def markdown_table() -> str:
    """The parameter table for the README (kept in sync by a test)."""
    rows = ["| parameter | default | applies | description |", "|---|---|---|---|"]
    for spec in PARAMETERS:
        if isinstance(spec.default, bool):
            default = str(spec.default).lower()
        elif isinstance(spec.default, str):
            default = spec.default or '""'
        else:
            default = str(spec.default)
        limits = ""
        if spec.min is not None:
            limits = f" Range {spec.min:g}..{spec.max:g}."
        applies = "at start" if spec.read_only else ("at configure" if spec.when == "configure" else "next frame")
        description = (spec.description + limits).replace("|", "\\|")
        rows.append(f"| `{spec.name}` | `{default}` | {applies} | {description} |")
    return "\n".join(rows)
