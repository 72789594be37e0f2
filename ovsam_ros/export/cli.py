"""``ovsam export``: write ONNX graphs (+ manifest, text tower, a ready model YAML) for deployment.

    ovsam export --model tiny --out exports/tiny                       # seconds; checks ORT vs PyTorch
    ovsam export --model config/models/rn50x16.yaml --out ~/ovsam_onnx/rn50x16
    ovsam export --model rn50x16 --random-init --out /tmp/rn50x16      # architecture only (no weights here)

Then ``ovsam segment IMAGE --model exports/tiny/model.yaml ...`` or the ROS node with
``model:=exports/tiny/model.yaml`` run the exported graphs (ONNX Runtime); see docs/jetson.md
for TensorRT engines on a Jetson.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence


#: The model YAML an export writes next to its graphs.
MODEL_YAML = "model.yaml"
VOCABULARY_FILE = "vocabulary.json"  # a stage-2 checkpoint's own classes, when the source YAML names none


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny",
                        help="model YAML (name in config/models/ or path) or preset; its weight files are loaded")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: new, empty, or an earlier export (replaced once the new one is "
                             "complete); a folder holding other files is refused")
    parser.add_argument("--random-init", action="store_true",
                        help="ignore the YAML's weight files (export the architecture with random weights)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="padded input size (default: the model's, 1024 for the published model)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 16 for RoiAlign half_pixel; default 17)")
    parser.add_argument("--no-multimask", action="store_true", help="skip decoder_multimask.onnx")
    parser.add_argument("--no-c5", action="store_true", help="no raw CLIP C5 output from the image encoder")
    parser.add_argument("--no-text-tower", action="store_true",
                        help="do not save text_tower.pt (the backend then needs clip_weights in its YAML)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")


def _model_yaml_text(out: Path, predictor_section: dict, command: str) -> str:
    """The ``model.yaml`` that runs the export in ``out`` (written into the export, listed in its manifest)."""
    import yaml

    body = yaml.safe_dump({"model": {"backend": "onnx", "onnx_dir": str(out.resolve())},
                           "predictor": predictor_section}, sort_keys=False)
    return (f"# Written by: {command}\n"
            "# Runs the exported graphs with ONNX Runtime. Execution providers, best first, e.g.\n"
            "#   onnx_providers: [[TensorrtExecutionProvider, {trt_fp16_enable: true, trt_engine_cache_enable: true,\n"
            "#                     trt_engine_cache_path: /tmp/ovsam_trt}], CUDAExecutionProvider, CPUExecutionProvider]\n"
            + body)


def _trained_defaults(model: Any, spec: Any, pspec: Any, section: dict, out: Path) -> dict:
    """A stage-2 checkpoint's own vocabulary and prompt templates, where the source YAML names
    neither: the PyTorch predictor uses them (ovsam_ros.loading), so the export must too. Written
    as ``vocabulary.json`` in the export (listed and hashed like its other files) and named in
    its model.yaml; else the ONNX model would label a fleet's classes from the default (coco)."""
    import json

    from ovsam_ros.model.checkpoints import checkpoint_templates, checkpoint_vocabulary

    if not spec.ovsam_checkpoint:
        return {}
    extra = getattr(model, "checkpoint_extra", None)
    files = {}
    stored = checkpoint_vocabulary(extra)
    if stored is not None and not getattr(pspec, "vocabulary_given", True):
        files[VOCABULARY_FILE] = json.dumps(stored, indent=1) + "\n"
        section["vocabulary"] = str(out / VOCABULARY_FILE)
        print(f"  vocabulary: the {len(stored['classes'])} class(es) {spec.ovsam_checkpoint} was trained with "
              f"-> {VOCABULARY_FILE}", flush=True)
    templates = checkpoint_templates(extra)
    if templates is not None and not getattr(pspec, "templates_given", True):
        section["templates"] = list(templates)
    return files


def run_from_args(args: argparse.Namespace, command: str) -> int:
    import dataclasses
    import logging

    import torch

    from ovsam_ros.export.folder import ExportCheckError, check_target
    from ovsam_ros.export.onnx_export import export_onnx
    from ovsam_ros.loading import PRESETS, ModelSpec, PredictorSpec, build_model, load_specs, untrained_warning
    from ovsam_ros.model.ovsam import OVSAM

    out = args.out.expanduser().resolve()
    check_target(out)  # a folder an export did not write is refused before the model loads
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        spec, pspec = load_specs(args.model)
    except FileNotFoundError:
        if args.model not in PRESETS:
            raise
        spec, pspec = ModelSpec(preset=args.model), PredictorSpec()
    if spec.backend != "torch":
        raise ValueError(f"{args.model}: already an ONNX model (backend {spec.backend!r})")
    if args.input_size is not None:
        spec.overrides = {**(spec.overrides or {}), "image_size": int(args.input_size)}
    if args.random_init:
        cfg = spec.config()
        cfg.backbone.pretrained = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = OVSAM(cfg).eval()
        trained = False
        logging.getLogger("ovsam").warning(untrained_warning(dataclasses.replace(spec, clip_weights=None)))
    else:
        model = build_model(spec)
        trained = spec.trained
    print(f"exporting {args.model} ({model.cfg.backbone.model_name}, {model.image_size}px, "
          f"{'trained' if trained else 'UNTRAINED'}) to {out}", flush=True)
    section = dataclasses.asdict(pspec)
    extra_files = _trained_defaults(model, spec, pspec, section, out) if not args.random_init else {}
    if section.get("roi_box", "mask") != "mask":  # e.g. the shapes model's largest_component
        print(f"  note: the ONNX decoder pools the whole mask's box, so the written YAML says roi_box: mask "
              f"(the source YAML's roi_box {section['roi_box']!r} needs the PyTorch backend; labels may differ "
              "a little)",
              flush=True)
        section["roi_box"] = "mask"
    try:
        manifest = export_onnx(model, out, opset=args.opset, multimask=not args.no_multimask,
                               with_c5=not args.no_c5, text_tower=not args.no_text_tower, trained=trained,
                               check=not args.no_check, source={"model": str(args.model), "command": command},
                               log_fn=lambda m: print("  " + m, flush=True),
                               extra_files={**extra_files, MODEL_YAML: _model_yaml_text(out, section, command)})
    except ExportCheckError as failed:
        print(f"ovsam export: error: {failed}", file=sys.stderr)
        return 1
    for name, file in manifest["files"].items():
        size = (out / file).stat().st_size / 2**20
        print(f"  {file:<26} {size:9.1f} MB")
    print(f"  manifest.json, and {out / MODEL_YAML} (use it as --model / the node's model parameter)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ovsam-export", description=__doc__.split("\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args, shlex.join(["ovsam-export", *argv]))
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        print(f"ovsam export: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
