"""The advice that follows "weight files not found" (model loading, the node's configure): the one
command that fetches them. Cheap to import (no torch, no model code): the loader imports it."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Optional, Sequence, Union

from ovsam_ros.resources import model_config_dir
from ovsam_ros.weights.sources import table_names

ModelRef = Union[str, os.PathLike, None]


def model_argument(model: ModelRef) -> str:
    """How to name a model on the command line: a bundled YAML by its name, anything else by its path."""
    if model is None:
        return "<model YAML>"
    text = str(model)
    path = Path(os.path.expandvars(os.path.expanduser(text)))
    folder = model_config_dir()
    if folder is not None and path.suffix == ".yaml" and path.is_file():
        try:
            if path.resolve().parent == folder.resolve():
                return path.stem
        except OSError:
            pass
    if path.suffix == "" and folder is not None and (folder / f"{text}.yaml").is_file():
        return text
    return shlex.quote(str(path.resolve()) if path.exists() else text)


def download_command(models: Union[ModelRef, Sequence[ModelRef]], weights_dir: Optional[Path] = None) -> str:
    """``ovsam weights download --model <m> [--dir DIR]``."""
    if models is None or isinstance(models, (str, os.PathLike)):
        models = [models]
    parts = ["ovsam weights download"] + [f"--model {model_argument(m)}" for m in models]
    if weights_dir is not None:
        parts.append(f"--dir {shlex.quote(str(weights_dir))}")
    return " ".join(parts)


def missing_weights_advice(missing: Sequence[tuple[str, str]], model: ModelRef) -> str:
    """What to do about missing weight files ``(YAML key, path)`` of ``model`` (a name or YAML path)."""
    published = table_names()
    fetchable = [path for _, path in missing if Path(path).name in published]
    unpublished = [f"model.{key}" for key, path in missing if Path(path).name not in published]
    parts = []
    if fetchable:
        parts.append(f"Fetch {'it' if len(fetchable) == 1 else 'them'} with: {download_command(model)} "
                     "(README, 'Weights'), or point the model YAML at your copies")
    if unpublished:
        parts.append(f"{', '.join(unpublished)}: no published source (ovsam_ros/data/weights/sources.yaml); "
                     "place the file there or point the model YAML at it (training outputs: README 'Training')")
    parts.append("the bundled demo model needs no weight files: --model shapes, or model:=shapes for the node and "
                 "launch file (it knows only the synthetic shapes world)")
    return "; ".join(parts) + "."
