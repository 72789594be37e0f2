"""Console scripts of the training pipeline: parse the arguments, then import the implementation.

The stages, the evaluator and the bag extractor import torch, open_clip and the model at module
level (seconds; 15 s on a loaded machine). Parsing first lets ``--help`` and usage errors answer
at once; the implementation's own ``main`` then parses the same arguments again (cheap, and it
keeps ``python -m training.stage2`` / torchrun working unchanged).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional, Sequence

from .cli_common import STAGE_COMMANDS, build_parser
from .cli_parsers import evaluate_parser, extract_bag_parser, synthetic_parser


def _parse_then_run(parser: Callable[[], argparse.ArgumentParser], module: str,
                    argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser().parse_args(argv)  # exits here on --help or a usage error
    return importlib.import_module(module).main(argv)


def _stage(name: str, argv: Optional[Sequence[str]]) -> int:
    return _parse_then_run(lambda: build_parser(*STAGE_COMMANDS[name]), f"training.{name}", argv)


def stage0(argv: Optional[Sequence[str]] = None) -> int:
    return _stage("stage0", argv)


def stage1(argv: Optional[Sequence[str]] = None) -> int:
    return _stage("stage1", argv)


def stage2(argv: Optional[Sequence[str]] = None) -> int:
    return _stage("stage2", argv)


def evaluate(argv: Optional[Sequence[str]] = None) -> int:
    return _parse_then_run(evaluate_parser, "training.evaluate", argv)


def extract_bag(argv: Optional[Sequence[str]] = None) -> int:
    return _parse_then_run(extract_bag_parser, "training.data.rosbag", argv)


def make_synthetic(argv: Optional[Sequence[str]] = None) -> int:
    return _parse_then_run(synthetic_parser, "training.synthetic", argv)


def label(argv: Optional[Sequence[str]] = None) -> int:
    from .label.cli import label_parser

    return _parse_then_run(label_parser, "training.label.cli", argv)
