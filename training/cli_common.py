"""Argument handling shared by ``ovsam-train-stage1`` and ``ovsam-train-stage2``."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from ovsam_ros.disk_space import DiskSpaceError, find_disk_full, free_bytes, size_text

from .config import ConfigError, dump, load_config

log = logging.getLogger("training")

# prog, description, default config of each training stage's command; here (no torch) so that
# training.entry_points can answer --help before importing the stage.
STAGE_COMMANDS: Dict[str, tuple] = {
    "stage0": (
        "ovsam-train-stage0",
        "Stage 0: pretrain a small open_clip CLIP (image + text towers) contrastively on captioned object "
        "crops of a COCO-format dataset (open_clip's ClipLoss). Writes <output_dir>/clip.pt, an open_clip "
        "state dict the OVSAM stages use as model.clip_weights.",
        "stage0_shapes"),
    "stage1": (
        "ovsam-train-stage1",
        "Stage 1 of OVSAM training: distil a frozen SAM image encoder into SAM2CLIP on top of the frozen "
        "CLIP backbone (images only, no labels). Config: YAML + --set overrides.",
        "stage1_tiny"),
    "stage2": (
        "ovsam-train-stage2",
        "Stage 2 of OVSAM training: CLIP2SAM + SAM decoder + label token on COCO-format instances "
        "(box and point prompts; CE + mask BCE/Dice). The result loads into the predictor and the ROS node.",
        "stage2_tiny"),
}


#: The stages that train with training.engine: one run per output folder, --resume / --overwrite.
RUN_FOLDER_COMMANDS = (STAGE_COMMANDS["stage1"][0], STAGE_COMMANDS["stage2"][0])


def build_parser(prog: str, description: str, default_config: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Multi-GPU / multi-node: launch the same command with torchrun, e.g.\n"
            f"  torchrun --nproc_per_node=8 -m training.{prog.split('-')[-1]} --config ...\n"
            "train.batch_size is the GLOBAL batch; it is split over processes and grad_accum.\n"
            "Outputs: <output_dir>/model.pt (ovsam_ros checkpoint, loadable by the predictor and node),\n"
            "checkpoints/step-*/ (resume), metrics.jsonl, config.yaml, data_report.json, tb/ (TensorBoard)."
            + ("\nAn output_dir that holds another run is refused: --resume continues it, --overwrite deletes it."
               if prog in RUN_FOLDER_COMMANDS else "")),
    )
    parser.add_argument("--config", default=default_config,
                        help=f"YAML file, or the name of a bundled one in training/configs/ (default: {default_config})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=2e-4 --set data.images=/data/robot "
                             "(repeatable; values are YAML)")
    parser.add_argument("--output-dir", default=None, help="shortcut for --set output_dir=DIR")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                        help="continue exactly where a run stopped: without a value, the latest checkpoint in "
                             "output_dir (a fresh start if there is none); or a checkpoints/step-* folder. "
                             "Refused if the checkpoint was trained with other settings than the few a resume "
                             "may change (train.max_steps, checkpoint_every, log_every, num_workers, ...: "
                             "training.engine.SAFE_RESUME_KEYS)")
    if prog in RUN_FOLDER_COMMANDS:
        parser.add_argument("--overwrite", action="store_true",
                            help="output_dir holds another run: delete its files (checkpoints/, metrics.jsonl, "
                                 "model.pt, config.yaml, data_report.json, tb/; nothing else) and start over. "
                                 "They are deleted once the new model and data have loaded, not moved aside. "
                                 "Without it (and without --resume) such a folder is refused")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("--quiet", action="store_true", help="warnings only")
    return parser


def parse_config(parser: argparse.ArgumentParser, args: argparse.Namespace, defaults: Dict[str, Any]) -> Dict[str, Any]:
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    try:
        return load_config(copy.deepcopy(defaults), args.config, overrides)
    except (ConfigError, FileNotFoundError) as err:
        parser.error(str(err))
        raise  # unreachable


def main_wrapper(prog: str, description: str, default_config: str, defaults: Dict[str, Any],
                 train: Callable[[Dict[str, Any], Optional[str], bool], Any],
                 argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(prog, description, default_config)
    args = parser.parse_args(argv)
    cfg = parse_config(parser, args, defaults)
    if args.print_config:
        sys.stdout.write(dump(cfg))
        return 0
    try:
        if getattr(args, "overwrite", False):
            train(cfg, args.resume, args.quiet, overwrite=True)
        else:
            train(cfg, args.resume, args.quiet)
    except (ValueError, FileNotFoundError, DiskSpaceError) as err:  # DataError, CheckpointError, ConfigError: ValueErrors
        if os.environ.get("OVSAM_TRACEBACK"):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("OVSAM_TRACEBACK"):
            raise
        # Ctrl-C: what is on disk and how to go on, not a traceback from wherever the loop was.
        print(f"{prog}: stopped (Ctrl-C). The complete checkpoints in {cfg.get('output_dir')}/checkpoints are "
              f"kept: the same command with --resume continues from the newest", file=sys.stderr)
        return 130
    except Exception as err:
        # Any other write that met a full disk (metrics, TensorBoard, a teacher cache): one line, not the
        # chained traceback with the ENOSPC in its middle.
        full = find_disk_full(err)
        if full is None or os.environ.get("OVSAM_TRACEBACK"):
            raise
        where = full.filename or cfg.get("output_dir") or "."
        print(f"{prog}: error: no space left on the disk of {where} ({full.strerror or full}); "
              f"{size_text(_free(where))} free. Free space, then continue with --resume", file=sys.stderr)
        return 2
    return 0


def _free(path: Any) -> Optional[int]:
    try:
        return free_bytes(path)
    except OSError:
        return None
