"""Argument parsers of the training console scripts that have no other light home.

Nothing heavy here (no torch, open_clip, model code): :mod:`training.entry_points` parses with
these before it imports the implementation, so ``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse

from ovsam_ros.cli_types import non_negative_float, number, positive_float, unit_interval
from ovsam_ros.shapes_world import WORLDS

PROMPT_TYPES = ("box", "point")
POINT_RULES = ("reference", "centered")


def evaluate_parser() -> argparse.ArgumentParser:
    """``ovsam-evaluate``."""
    parser = argparse.ArgumentParser(
        prog="ovsam-evaluate",
        description="Evaluate a model with the OVSAM paper's protocol on COCO-format data: each ground-truth "
                    "instance is prompted by its box and/or by one point at its mask's distance-transform "
                    "maximum; reports mask IoU (overall / base / novel) and label accuracy (top-1 == ground "
                    "truth), per class and overall, optionally with the image-crop / feature-crop baselines.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an ovsam_ros checkpoint (e.g. the stage-2 output model.pt)")
    src.add_argument("--model", help="a model YAML (config/models/*.yaml or a path), e.g. the reference weights")
    parser.add_argument("--clip-weights", default=None,
                        help="open_clip weights, for a checkpoint saved without the backbone (include_backbone: false)")
    parser.add_argument("--annotations", required=True, help="COCO-format instances JSON")
    parser.add_argument("--images", default=None, help="image root (default: next to the JSON)")
    parser.add_argument("--vocabulary", default=None,
                        help="vocabulary spec (default: the JSON's categories, base/novel from their 'split')")
    parser.add_argument("--prompts", nargs="+", default=list(PROMPT_TYPES), choices=PROMPT_TYPES)
    parser.add_argument("--baselines", nargs="*", default=[], choices=["image-crop", "feature-crop"])
    parser.add_argument("--max-images", type=number(int, min=1), default=None,
                        help="evaluate only the first N images of the file (default: all)")
    parser.add_argument("--text-queries", action="store_true",
                        help="also query every class present in an image by name (everything-mode masks) and "
                             "report the hit rate (best mask IoU >= 0.5 with an instance of that class)")
    query = parser.add_argument_group("text queries (everything-mode candidates)")
    query.add_argument("--query-points-per-side", type=int, default=16, help="point grid size (default 16)")
    query.add_argument("--query-iou-thresh", type=float, default=0.8,
                       help="drop candidates with a lower predicted IoU (default 0.8, SAM's generator)")
    query.add_argument("--query-stability-thresh", type=float, default=0.9,
                       help="drop candidates with a lower stability score (default 0.9, SAM's generator)")
    query.add_argument("--query-min-area", type=int, default=0, help="drop candidates with fewer pixels")
    query.add_argument("--everything-multimask", default="auto", choices=["auto", "on", "off"],
                       help="candidates from SAM's 3 multimask tokens (on) or the single trained mask token (off); "
                            "auto: the model YAML's predictor option everything_multimask, on for checkpoints")
    parser.add_argument("--multimask", action="store_true",
                        help="let the decoder propose 3 masks and keep the best by predicted IoU "
                             "(default: the single trained mask, as in the reference)")
    parser.add_argument("--clip-ensemble", default=None, choices=["on", "off"],
                        help="combine the learned labels with the frozen-CLIP branch as the reference evaluation "
                             "always does (geometric mean, alpha 0.1 base / beta 0.9 novel); default: the model "
                             "YAML's predictor.clip_ensemble (on in both rn50x16 YAMLs), on for --checkpoint")
    parser.add_argument("--synonyms", default=None, choices=["all", "names"],
                        help="which texts name a class: every synonym the vocabulary lists, or the class name "
                             "alone (the reference's LVIS text); default: the model YAML's (names for rn50x16 "
                             "LVIS, all for rn50x16_coco), all for --checkpoint")
    parser.add_argument("--point-rule", default="reference", choices=list(POINT_RULES),
                        help="point* prompt: 'reference' = first maximum of kornia's distance transform of the mask "
                             "resized to the model input, as the reference evaluation (the paper's tables; needs "
                             "kornia, requirements.txt); 'centered' = the maximum of OpenCV's exact transform nearest "
                             "the centroid of the tied maxima on the original mask")
    parser.add_argument("--point-clip-box", default="scaled", choices=["scaled", "unscaled"],
                        help="point* prompts: the ground-truth box the frozen-CLIP ensemble pools. 'scaled' (default) "
                             "maps it to the model input like every prompt; 'unscaled' reproduces the published "
                             "point configs, which pool the box in original-image pixels on the resized image's "
                             "C5 map (Table 1's point* rows; docs/fidelity.md)")
    parser.add_argument("--device", default=None,
                        help="default: the model YAML's predictor.device, cpu for --checkpoint")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                        help="default fp32, the reference evaluation's, whatever the model YAML says")
    parser.add_argument("--templates", default=None,
                        help="prompt templates: vild | single; default: the model YAML's, vild for --checkpoint")
    parser.add_argument("--unknown-category", default="error", choices=["error", "skip"])
    parser.add_argument("--input-bits", type=number(int, min=8, max=16), default=16,
                        help="bits of 16-bit images that hold data: 16 (default), 12 or 10 for machine-vision cameras "
                             "(the training config's data.input_bits, the node's input_bits)")
    parser.add_argument("--float-max", type=positive_float, default=1.0,
                        help="float images: the value shown as white (default 1.0; 255 for 0..255 float data)")
    parser.add_argument("--out", default=None, help="write the metrics JSON here")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def extract_bag_parser() -> argparse.ArgumentParser:
    """``ovsam-extract-bag``."""
    parser = argparse.ArgumentParser(
        prog="ovsam-extract-bag",
        description="Extract sensor_msgs/Image and CompressedImage frames from a rosbag2 (sqlite3 or MCAP) into "
                    "an image folder + manifest.json (topic, stamp, frame_id, file) for stage-1 training; "
                    "optionally turn recorded ovsam_ros/LabeledMaskArray messages into COCO pseudo-labels.")
    parser.add_argument("bag", help="rosbag2 folder (with metadata.yaml) or a single .db3 / .mcap file")
    parser.add_argument("--topic", action="append", required=True, help="image topic (repeatable)")
    parser.add_argument("--out", required=True, help="output folder (must be empty or new, see --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (atomically, once the new extraction has finished)")
    parser.add_argument("--rate", type=positive_float, default=None,
                        help="keep at most this many frames per second per topic (by header stamp; default: all)")
    parser.add_argument("--format", default="png", choices=["png", "jpg"], help="image files (default png, lossless)")
    parser.add_argument("--start", type=non_negative_float, default=None, help="seconds after the bag start")
    parser.add_argument("--end", type=non_negative_float, default=None,
                        help="seconds after the bag start (must be after --start)")
    parser.add_argument("--labels-topic", default=None,
                        help="an ovsam_ros/msg/LabeledMaskArray topic -> <out>/pseudo_labels.json (COCO)")
    parser.add_argument("--vocabulary", default=None,
                        help="restrict pseudo-label classes to this vocabulary (default: every label seen)")
    parser.add_argument("--min-score", type=unit_interval, default=0.0, help="drop pseudo-labels scored below this")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--depth", choices=["error", "keep"], default="error",
                        help="a topic of depth / 16-bit mono / float frames (16UC1, mono16, 32FC1, compressedDepth): "
                             "error (default: these are no training images for stage 1; extract the colour topic) "
                             "or keep (extract them losslessly: 16-bit PNG / 32-bit float TIFF, one channel)")
    return parser


def synthetic_parser() -> argparse.ArgumentParser:
    """``ovsam-make-synthetic``."""
    parser = argparse.ArgumentParser(
        prog="ovsam-make-synthetic",
        description="Write a synthetic COCO-format instance dataset (coloured shapes on textured "
                    "backgrounds, some classes marked novel) for CPU runs of the training pipeline. "
                    "Deterministic: the same --seed writes the same files.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--world", default="classic", choices=sorted(WORLDS),
                        help="classic: 6 classes, one colour per shape (2 novel); shapes: 6 colours x 6 shapes, "
                             "6 held-out novel combinations, clutter (the bundled demo model's world)")
    parser.add_argument("--captions", action="store_true",
                        help="also write annotations/captions_<split>.json (COCO captions format)")
    parser.add_argument("--train", type=int, default=200, help="training images (default 200)")
    parser.add_argument("--val", type=int, default=40, help="held-out images (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default="rle", choices=["rle", "polygon", "mixed"],
                        help="mask encoding in the JSON (default rle)")
    parser.add_argument("--min-size", type=int, default=None, help="short image side lower bound (px; default 192)")
    parser.add_argument("--max-size", type=int, default=None, help="long image side (px; default 256)")
    parser.add_argument("--max-objects", type=int, default=None, help="objects per image, at most (world default)")
    parser.add_argument("--min-radius", type=float, default=None, help="object radius lower bound (px; world default)")
    parser.add_argument("--max-radius", type=float, default=None, help="object radius upper bound (px; world default)")
    parser.add_argument("--class-folders", type=int, default=0, metavar="N",
                        help="also write N single-object images per class into classes/<name>/")
    return parser
