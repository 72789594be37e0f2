"""Train the bundled shapes-world demo model from nothing (``tools/train_demo_model.sh``).

Every stage is this package's own pipeline, run in one process:

1. ``training.synthetic`` writes the shapes world (6 colours x 6 shapes, 6 held-out
   novel pairs; train split = base classes only) with COCO masks and captions;
2. stage 0 (``training.stage0``) pretrains the small open_clip CLIP on captioned crops;
3. stage 1 (``training.stage1``) distils SAM2CLIP on top of that frozen CLIP;
4. stage 2 (``training.stage2``) trains CLIP2SAM + decoder (+ the neck) on base classes;
5. ``training.evaluate`` scores the stage-1 and stage-2 models on held-out scenes.

Each stage must improve its own metric over its starting point (zero-shot accuracy
for stage 0, distillation loss for stage 1, training loss for stage 2 and, in a full
run, box-prompt IoU and label accuracy of the whole model on held-out scenes over the
stage-1 model); the run fails otherwise. ``--quick`` does all of it at a
reduced size (CI). ``--install`` copies the result into the package
(``ovsam_ros/data/models/shapes.pt`` + ``shapes_metrics.json``), where the ``shapes``
model YAML finds it.

    python -m training.demo_model --out runs/shapes            # the bundled model
    python -m training.demo_model --out /tmp/q --quick         # every stage, small, with checks
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

log = logging.getLogger("training")

PACKAGE_MODEL_DIR = Path(__file__).resolve().parents[1] / "ovsam_ros" / "data" / "models"

#: Run sizes. ``full`` makes the bundled model; ``quick`` checks every stage in CI.
SIZES: Dict[str, Dict[str, int]] = {
    "full": {"train": 2000, "val": 100, "stage0_steps": 6000, "stage1_steps": 75, "stage2_steps": 4000,
             "eval_images": 100},
    "quick": {"train": 24, "val": 8, "stage0_steps": 60, "stage1_steps": 12, "stage2_steps": 24,
              "eval_images": 6},
}


class StageCheckFailed(RuntimeError):
    """A stage did not improve its own metric."""


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / max(1, len(values)))


def evaluate_model(checkpoint: Path, annotations: str, images: str, max_images: int,
                   text_queries: bool = False) -> Dict[str, Any]:
    """Score ``checkpoint`` with the predictor settings of the ``shapes`` model YAML (what the demo,
    CLI and node run), only the weights swapped: e.g. no frozen-CLIP ensemble, which the published
    rn50x16 configs use and which lowers this small CLIP's labels."""
    import yaml

    from ovsam_ros.loading import build_predictor, resolve_config_path

    from .data.coco import CocoInstances
    from .evaluate import evaluate

    coco = CocoInstances(annotations, images)
    # The shapes YAML's whole predictor section, so no setting can be left behind; its model
    # section (the bundled file and its notice) gives way to the checkpoint scored.
    shapes = yaml.safe_load(resolve_config_path("shapes").read_text())
    predictor = build_predictor({"model": {"ovsam_checkpoint": str(checkpoint)}, "predictor": shapes["predictor"]})
    return evaluate(predictor, coco, ("box", "point"), max_images=max_images, progress=False,
                    text_queries=text_queries, query_options=world_query_options())


def world_query_options():
    """Text queries' candidate search as ``ovsam demo`` runs it on world scenes (the demo's settings;
    single- or multi-mask candidates are the predictor's, from the shapes YAML)."""
    from ovsam_ros.demo_scoring import WORLD_EVERYTHING
    from ovsam_ros.predictor import EverythingOptions

    return EverythingOptions(**WORLD_EVERYTHING)


def headline(metrics: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The numbers the issue's targets name, from an ``evaluate`` result."""
    out: Dict[str, Optional[float]] = {}
    for kind, m in metrics["prompts"].items():
        out[f"{kind}_iou"] = m["overall"]["iou"]
        out[f"{kind}_accuracy"] = m["overall"]["accuracy"]
        out[f"{kind}_accuracy_base"] = m.get("base", {}).get("accuracy")
        out[f"{kind}_accuracy_novel"] = m.get("novel", {}).get("accuracy")
    for split, m in metrics.get("text_query", {}).items():
        if isinstance(m, dict):
            out[f"text_query_hit_rate_{split}"] = m["hit_rate"]
    return out


def run(out: Path, quick: bool = False, seed: int = 0, threads: int = 1, quiet: bool = True,
        stage2_steps: Optional[int] = None, stage0_steps: Optional[int] = None) -> Dict[str, Any]:
    """The whole recipe into ``out``; returns the summary (also ``out/summary.json``)."""
    import torch

    from . import stage0, stage1, stage2
    from .config import load_config
    from .synthetic import make_dataset

    size = dict(SIZES["quick" if quick else "full"])
    if stage2_steps:
        size["stage2_steps"] = int(stage2_steps)
    if stage0_steps:
        size["stage0_steps"] = int(stage0_steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    timings: Dict[str, float] = {}
    checks: List[Dict[str, Any]] = []

    def check(stage: str, metric: str, before: Optional[float], after: Optional[float]) -> None:
        ok = before is not None and after is not None and after > before
        checks.append({"stage": stage, "metric": metric, "before": before, "after": after, "improved": ok})
        print(f"[{stage}] {metric}: {before} -> {after} {'(improved)' if ok else '(NOT improved)'}", flush=True)

    t = time.time()
    data = make_dataset(out / "data", seed=seed, world="shapes", captions=True,
                        splits={"train": size["train"], "val": size["val"]})
    timings["data"] = time.time() - t
    print(f"[data] {size['train']} training / {size['val']} held-out scenes in {timings['data']:.0f} s", flush=True)
    images = data["images"]

    # -- stage 0: CLIP ----------------------------------------------------------------
    t = time.time()
    cfg0 = load_config(copy.deepcopy(stage0.DEFAULTS), "stage0_shapes", [
        f"output_dir={out / 'stage0'}", f"seed={seed}", f"data.annotations={data['train']}",
        f"data.images={images}", f"data.val_annotations={data['val']}", f"train.steps={size['stage0_steps']}",
        f"train.threads={threads}"])
    s0 = stage0.train(cfg0, quiet=quiet)
    timings["stage0"] = time.time() - t
    check("stage0", "zero-shot accuracy on held-out crops", s0["zero_shot_before"]["accuracy"],
          s0["zero_shot_after"]["accuracy"])
    print(f"[stage0] novel-class zero-shot accuracy {s0['zero_shot_after'].get('accuracy_novel')}, "
          f"{timings['stage0']:.0f} s", flush=True)
    clip = out / "stage0" / "clip.pt"

    # -- stage 1: SAM2CLIP ------------------------------------------------------------
    t = time.time()
    cfg1 = load_config(copy.deepcopy(stage1.DEFAULTS), "stage1_shapes", [
        f"output_dir={out / 'stage1'}", f"seed={seed}", f"model.clip_weights={clip}",
        f"data.images={Path(images) / 'train'}", f"teacher.cache_dir={out / 'teacher_cache'}",
        f"train.max_steps={size['stage1_steps']}", f"train.threads={threads}", "train.epochs=100",
        f"train.progress={not quiet}", "train.tensorboard=false"])
    s1 = stage1.train(cfg1, quiet=quiet, overwrite=True)  # a re-run of the recipe starts over
    timings["stage1"] = time.time() - t
    losses = [h["loss"] for h in s1.history if "loss" in h]
    k = max(1, min(5, len(losses) // 4))
    check("stage1", "distillation MSE (first vs last logged steps)", -_mean(losses[:k]), -_mean(losses[-k:]))

    # -- stage 2: CLIP2SAM + decoder ----------------------------------------------------
    t = time.time()
    cfg2 = load_config(copy.deepcopy(stage2.DEFAULTS), "stage2_shapes", [
        f"output_dir={out / 'stage2'}", f"seed={seed}", f"model.init_checkpoint={s1.final_model}",
        f"data.annotations={data['train']}", f"data.images={images}", f"train.max_steps={size['stage2_steps']}",
        "train.epochs=1000", f"train.threads={threads}", f"train.progress={not quiet}", "train.tensorboard=false"])
    s2 = stage2.train(cfg2, quiet=quiet, overwrite=True)
    timings["stage2"] = time.time() - t
    losses2 = [h["loss"] for h in s2.history if "loss" in h]
    k2 = max(1, min(5, len(losses2) // 4))
    check("stage2", "training loss (first vs last logged steps)", -_mean(losses2[:k2]), -_mean(losses2[-k2:]))

    # -- evaluation: the whole model before (stage-1 output) and after stage 2 -------------
    t = time.time()
    scores = score(Path(s1.final_model), Path(s2.final_model), data, size["eval_images"], quick)
    timings["evaluate"] = time.time() - t
    hb, ha = scores["eval_stage1_model"], scores["eval_final"]
    if not quick:
        # a few dozen quick steps sit in the "predict no mask yet" phase: held-out scores only count
        # for a full run (the quick run checks stage 2 by its training loss)
        check("stage2", "box-prompt mask IoU", hb["box_iou"], ha["box_iou"])
        check("stage2", "box-prompt label accuracy", hb["box_accuracy"], ha["box_accuracy"])

    summary = {
        "quick": quick, "seed": seed, "sizes": size, "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(sum(timings.values()), 1),
        "stage0": {k: s0[k] for k in ("zero_shot_before", "zero_shot_after", "steps", "seconds")},
        "stage1": {"steps": s1.steps, "first_loss": losses[0] if losses else None,
                   "last_loss": losses[-1] if losses else None},
        "stage2": {"steps": s2.steps, "first_loss": losses2[0] if losses2 else None,
                   "last_loss": losses2[-1] if losses2 else None},
        **scores, "checks": checks, "model": str(s2.final_model), "stage1_model": str(s1.final_model),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({"seconds": summary["seconds"], "final": ha}, indent=1), flush=True)
    failed = [c for c in checks if not c["improved"]]
    if failed:
        raise StageCheckFailed("stage(s) did not improve their metric: "
                               + "; ".join(f"{c['stage']} {c['metric']} {c['before']} -> {c['after']}" for c in failed))
    return summary


def scored_with() -> Dict[str, Any]:
    """The shapes YAML's predictor settings the scores depend on (kept with the metrics)."""
    from ovsam_ros.loading import load_specs

    _, spec = load_specs("shapes")
    return {k: getattr(spec, k) for k in ("templates", "precision", "clip_ensemble", "names_only", "max_synonyms",
                                          "everything_multimask", "roi_box")}


def score(stage1_model: Path, final_model: Path, data: Dict[str, str], eval_images: int,
          quick: bool) -> Dict[str, Any]:
    """Held-out scores of the stage-1 model and the final model with the shapes YAML's predictor."""
    before = evaluate_model(stage1_model, data["val"], data["images"], eval_images)
    after = evaluate_model(final_model, data["val"], data["images"], eval_images, text_queries=not quick)
    return {"eval_stage1_model": headline(before), "eval_final": headline(after), "eval_final_full": after,
            "scored_with": scored_with()}


def rescore(out: Path, threads: int = 1) -> Dict[str, Any]:
    """Score a finished run again with today's shapes YAML, no retraining (after a change to its
    predictor settings, e.g. roi_box); rewrites the scores in ``out/summary.json`` and returns it."""
    import torch

    out = Path(out)
    path = out / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no finished run in {out} to score (train it first)")
    summary = json.loads(path.read_text())
    data = json.loads((out / "data" / "dataset.json").read_text())
    stage1_model = Path(summary.get("stage1_model") or out / "stage1" / "model.pt")
    torch.set_num_threads(threads)
    t = time.time()
    scores = score(stage1_model, Path(summary["model"]), data, summary["sizes"]["eval_images"], summary["quick"])
    summary.update(scores)
    summary["seconds"]["rescore"] = round(time.time() - t, 1)
    hb, ha = scores["eval_stage1_model"], scores["eval_final"]
    for c in summary["checks"]:  # the held-out checks follow the new scores
        key = {"box-prompt mask IoU": "box_iou", "box-prompt label accuracy": "box_accuracy"}.get(c["metric"])
        if key:
            c.update(before=hb[key], after=ha[key], improved=ha[key] > hb[key])
    path.write_text(json.dumps(summary, indent=1))
    print(json.dumps({"rescored_with": scores["scored_with"], "final": ha}, indent=1), flush=True)
    return summary


def bundle(model_path: Path, dest: Path) -> int:
    """Re-save the stage-2 model for the package (config + weights, no optimizer state); returns bytes."""
    from ovsam_ros.model.build import load_ovsam
    from ovsam_ros.model.checkpoints import save_ovsam

    model = load_ovsam(str(model_path))
    save_ovsam(model, dest, include_backbone=True,
               extra={"description": "ovsam_ros shapes-world demo model (knows only the synthetic shapes world)",
                      "recreate": "bash tools/train_demo_model.sh"})
    return os.path.getsize(dest)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="train_demo_model",
        description="Train the bundled shapes-world demo model from nothing with this package's pipeline "
                    "(synthetic world -> stage 0 CLIP -> stage 1 -> stage 2 -> evaluation). Fails when a "
                    "stage does not improve its own metric.")
    parser.add_argument("--out", default="runs/shapes", help="work folder (default runs/shapes; never in git)")
    parser.add_argument("--quick", action="store_true", help="every stage at a reduced size (CI check, minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--stage0-steps", type=int, default=None, help="override the stage-0 step count")
    parser.add_argument("--stage2-steps", type=int, default=None, help="override the stage-2 step count")
    parser.add_argument("--install", action="store_true",
                        help=f"copy the model and its metrics into {PACKAGE_MODEL_DIR} (the 'shapes' model YAML)")
    parser.add_argument("--rescore", action="store_true",
                        help="no training: score the finished run in --out again with today's shapes YAML "
                             "(after changing its predictor settings) and rewrite its metrics")
    parser.add_argument("--verbose", action="store_true", help="progress bars and per-step logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    dest = Path(args.out) / "shapes.pt"
    if args.rescore:
        try:
            summary = rescore(Path(args.out), args.threads)
        except FileNotFoundError as err:
            print(f"train_demo_model: {err}", file=sys.stderr)
            return 2
        if args.install:
            install(dest, summary)
            print(f"installed into {PACKAGE_MODEL_DIR}")
        return 0
    try:
        summary = run(Path(args.out), args.quick, args.seed, args.threads, quiet=not args.verbose,
                      stage2_steps=args.stage2_steps, stage0_steps=args.stage0_steps)
    except StageCheckFailed as err:
        print(f"train_demo_model: FAILED: {err}", file=sys.stderr)
        return 1
    nbytes = bundle(Path(summary["model"]), dest)
    print(f"model: {dest} ({nbytes / 1e6:.1f} MB), total {summary['total_seconds']:.0f} s")
    if args.install:
        install(dest, summary)
        print(f"installed into {PACKAGE_MODEL_DIR}")
    return 0


def install(model: Path, summary: Dict[str, Any], folder: Path = PACKAGE_MODEL_DIR) -> None:
    """Copy a bundled model and its metrics (from ``summary.json``) where the ``shapes`` YAML finds them."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, folder / "shapes.pt")
    metrics = {k: summary[k] for k in ("seed", "sizes", "seconds", "total_seconds", "stage0", "stage1",
                                       "eval_stage1_model", "eval_final", "eval_final_full", "scored_with", "checks")}
    metrics["size_bytes"] = os.path.getsize(model)
    (folder / "shapes_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
