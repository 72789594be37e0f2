"""Evaluation with the OVSAM paper's protocol (Table 1) on COCO-format data.

Every ground-truth instance is prompted either by its ground-truth box
(``box``) or by one point at the maximum of its mask's distance transform
(``point``, the paper's ``*``: the first maximum of kornia's distance transform
of the mask resized to the model input, as the reference evaluation computes it;
``training.data.transforms.reference_point``). For each prompt the model predicts
one mask and a label; reported per prompt type:

* mask IoU (mean over instances) overall / base classes / novel classes,
* label accuracy (% of instances whose top-1 label is the ground-truth class),
  overall / base / novel, plus per class (IoU, accuracy, count),
* optionally the paper's recognition baselines on the SAME masks
  (``--baselines image-crop feature-crop``, see ``ovsam_ros.baselines``),
* optionally (``--text-queries``, ours) the text-query hit rate: for every class
  present in an image, ``predictor.query(class name)`` over the image's
  everything-mode masks; a hit when its best mask overlaps an instance of that
  class with IoU >= 0.5; per split (base / novel).

The predictor is the one robots use (``OVSAMPredictor``), so the numbers are
what the node will deliver. With ``--model`` it keeps the model YAML's predictor
settings (templates, CLIP ensemble, synonyms, device, ...) unless a flag names
one; precision is fp32 unless ``--precision`` says otherwise (the reference
evaluates in fp32). The settings used are printed before the table and stored
in the metrics JSON (``settings``). Base / novel come from the vocabulary's split;
without a split every class is base (seen in training), the rule stage 2 trains
with (``classes_seen_in_training``): metrics and the CLIP ensemble's weights agree.

    ovsam-evaluate --checkpoint runs/stage2/model.pt --annotations val.json --images data/images \\
        --prompts box point --baselines feature-crop --out runs/stage2/eval.json
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .cli_parsers import POINT_RULES, PROMPT_TYPES, evaluate_parser
from .data.coco import CocoInstances
from .data.common import DataError, write_json
from .data.transforms import distance_transform_point, reference_point

log = logging.getLogger("training")



def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


#: Which box the frozen-CLIP ensemble pools for point prompts: ``scaled`` (the ground-truth box mapped to the
#: model input like every prompt) or ``unscaled`` (the published point configs' quirk: the box in ORIGINAL-image
#: pixels pooled on the C5 map of the resized image, because their pipeline loads annotations after Resize and
#: only masks are rescaled; reproduces Table 1's point* rows, see docs/fidelity.md).
POINT_CLIP_BOXES = ("scaled", "unscaled")

#: IoU at which a text query's best mask counts as finding the object.
QUERY_HIT_IOU = 0.5


def text_query_hits(predictor, instances: Sequence[Any], masks: Sequence[np.ndarray], vocab,
                    split_of, options=None) -> List[Dict[str, Any]]:
    """Query every class present in the current image (everything-mode candidates computed once,
    with ``options``: an ``EverythingOptions``, default SAM's generator settings)."""
    candidates = predictor.everything(options)
    rows = []
    for label in sorted({inst.label for inst in instances}):
        truth = [m for inst, m in zip(instances, masks) if inst.label == label]
        found = predictor.query(vocab.classes[label], candidates=candidates, max_instances=1)
        best = max((mask_iou(found[0].mask, t) for t in truth), default=0.0) if found else 0.0
        rows.append({"label": label, "split": split_of(label), "iou": best, "hit": best >= QUERY_HIT_IOU})
    return rows


def evaluate(predictor, coco: CocoInstances, prompts: Sequence[str] = PROMPT_TYPES,
             baselines: Sequence[str] = (), max_images: Optional[int] = None, multimask: bool = False,
             progress: bool = True, text_queries: bool = False, point_rule: str = "reference",
             query_options=None, point_clip_box: str = "scaled") -> Dict[str, Any]:
    """Run the protocol; returns the metrics dict (see module doc).

    As the reference: instances of classes split ``unused`` (COCO's 15 classes outside the
    48/17 split) are dropped and those classes can never be predicted; the frozen-CLIP
    ensemble (when the predictor has it on) pools each instance's ground-truth box.
    ``point_rule``: ``reference`` (first distance-transform maximum of the mask resized to the
    model input, :func:`reference_point`) or ``centered`` (the maximum nearest the centroid of
    the tied maxima, on the original mask).
    ``point_clip_box``: see :data:`POINT_CLIP_BOXES` (box prompts always pool the scaled box, as the
    reference's box path rescales its boxes).
    """
    if point_rule not in POINT_RULES:
        raise ValueError(f"point_rule must be one of {POINT_RULES}, got {point_rule!r}")
    if point_clip_box not in POINT_CLIP_BOXES:
        raise ValueError(f"point_clip_box must be one of {POINT_CLIP_BOXES}, got {point_clip_box!r}")
    from ovsam_ros.baselines import relabel
    from ovsam_ros.prompts import Prompt

    for p in prompts:
        if p not in PROMPT_TYPES:
            raise ValueError(f"prompt type must be one of {PROMPT_TYPES}, got {p!r}")
    vocab = coco.vocab
    # The dataset's classes with the predictor's synonym policy (names only for the LVIS config).
    wanted = predictor.vocabulary_for(vocab)
    if predictor.vocabulary is None or predictor.vocabulary.fingerprint() != wanted.fingerprint():
        predictor.set_vocabulary(wanted)
    predictor.exclude_unused = True
    records: Dict[str, List[Dict[str, Any]]] = {p: [] for p in prompts}
    query_rows: List[Dict[str, Any]] = []
    skipped = defaultdict(int)
    images = coco.images[: max_images] if max_images else coco.images
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(images), desc="evaluate", unit="img", dynamic_ncols=True)
        except ImportError:
            bar = None
    t0 = time.time()
    for index in range(len(images)):
        record = images[index]
        image, masks = coco.load(index)
        predictor.set_image(image)
        valid = [(inst, m) for inst, m in zip(record.instances, masks) if m.any()]
        skipped["empty_mask"] += len(masks) - len(valid)
        kept = [(inst, m) for inst, m in valid if coco.split_of(inst.label) != "unused"]
        skipped["unused_class"] += len(valid) - len(kept)
        valid = kept
        if not valid:
            if bar is not None:
                bar.update(1)
            continue
        for kind in prompts:
            plist, gt_boxes = [], []
            for inst, m in valid:
                box = inst.box_xyxy() if inst.bbox is not None else _mask_box(m)
                gt_boxes.append(list(box))
                if kind == "box":
                    plist.append(Prompt(box=list(box)))
                else:
                    plist.append(Prompt(points=[list(_point(predictor, m, point_rule))], point_labels=[1]))
            clip_boxes = np.asarray(gt_boxes, np.float64)
            if kind == "point" and point_clip_box == "unscaled":
                clip_boxes = _unscaled_clip_boxes(predictor, clip_boxes, image.shape[:2])
            results = predictor.predict(plist, multimask_output=multimask, keep="best",
                                        clip_boxes=clip_boxes.astype(np.float32))
            if len(results) != len(plist):
                raise RuntimeError(f"predictor returned {len(results)} results for {len(plist)} prompts")
            relabeled = {b: relabel(predictor, results, b) for b in baselines}
            for j, ((inst, m), res) in enumerate(zip(valid, results)):
                pred = res.labels[0].class_index if res.labels else -1
                row = {"image_id": record.image_id, "ann_id": inst.ann_id, "label": inst.label,
                       "split": coco.split_of(inst.label), "iou": mask_iou(res.mask, m), "pred": int(pred)}
                for b, rs in relabeled.items():
                    row[f"pred_{b}"] = rs[j].labels[0].class_index if rs[j].labels else -1
                records[kind].append(row)
        if text_queries:
            query_rows += text_query_hits(predictor, [i for i, _ in valid], [m for _, m in valid], vocab,
                                          coco.split_of, query_options)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    out: Dict[str, Any] = {
        "annotations": coco.annotation_file,
        "vocabulary": vocab.name,
        "classes": len(vocab),
        "images": len(images),
        "seconds": round(time.time() - t0, 2),
        "skipped": {**coco.skipped.to_dict()["counts"], **{k: v for k, v in skipped.items() if v}},
        "prompts": {},
    }
    for kind, rows in records.items():
        out["prompts"][kind] = summarize(rows, vocab, baselines)
    if text_queries:
        out["text_query"] = {"hit_iou": QUERY_HIT_IOU, "overall": _hit_block(query_rows)}
        for s in sorted({r["split"] for r in query_rows}):
            out["text_query"][s] = _hit_block([r for r in query_rows if r["split"] == s])
    return out


def _hit_block(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"queries": len(rows), "hit_rate": _mean([float(r["hit"]) for r in rows]),
            "mean_iou": _mean([r["iou"] for r in rows])}


def _point(predictor, mask: np.ndarray, rule: str):
    """One positive point (original pixels) for ``mask`` by ``rule`` (see :func:`evaluate`)."""
    if rule == "centered":
        return distance_transform_point(mask)
    oh, ow = mask.shape
    h, w = predictor.transform.get_input_size((oh, ow))
    x, y = reference_point(mask, (h, w), device=getattr(predictor, "device", None))
    return x * ow / w, y * oh / h  # the predictor maps it back to exactly (x, y) input pixels


def _unscaled_clip_boxes(predictor, boxes: np.ndarray, shape) -> np.ndarray:
    """Boxes that the predictor (which maps original -> input pixels) turns into the ORIGINAL numbers in
    input pixels: the reference point configs' frozen-CLIP box (:data:`POINT_CLIP_BOXES`)."""
    oh, ow = shape
    h, w = predictor.transform.get_input_size((oh, ow))
    return boxes * np.array([ow / w, oh / h, ow / w, oh / h])


def _mask_box(m: np.ndarray):
    ys, xs = np.nonzero(m)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def summarize(rows: List[Dict[str, Any]], vocab, baselines: Sequence[str] = ()) -> Dict[str, Any]:
    def block(sel: List[Dict[str, Any]], pred_key: str = "pred") -> Dict[str, Any]:
        return {"count": len(sel), "iou": _mean([r["iou"] for r in sel]),
                "accuracy": _mean([float(r[pred_key] == r["label"]) for r in sel])}

    splits = sorted({r["split"] for r in rows})
    res: Dict[str, Any] = {"overall": block(rows)}
    for s in splits:
        res[s] = block([r for r in rows if r["split"] == s])
    per_class = {}
    for c in sorted({r["label"] for r in rows}):
        sel = [r for r in rows if r["label"] == c]
        per_class[vocab.classes[c]] = {**block(sel), "split": sel[0]["split"]}
    res["per_class"] = per_class
    accs = [v["accuracy"] for v in per_class.values() if v["accuracy"] is not None]
    res["class_mean_accuracy"] = _mean(accs)
    res["baselines"] = {}
    for b in baselines:
        entry = {"overall": block(rows, f"pred_{b}")["accuracy"]}
        for s in splits:
            entry[s] = block([r for r in rows if r["split"] == s], f"pred_{b}")["accuracy"]
        res["baselines"][b] = entry
    return res


def format_table(metrics: Dict[str, Any]) -> str:
    def pct(v: Optional[float]) -> str:
        return "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.1f}"

    lines = [f"{metrics['annotations']}: {metrics['images']} images, vocabulary '{metrics['vocabulary']}' "
             f"({metrics['classes']} classes)"]
    header = f"{'prompt':8s} {'method':13s} {'IoU':>6s} {'IoU_b':>6s} {'IoU_n':>6s} {'Acc':>6s} {'Acc_b':>6s} {'Acc_n':>6s}  count"
    lines += [header, "-" * len(header)]
    for kind, m in metrics["prompts"].items():
        base, novel = m.get("base", {}), m.get("novel", {})
        lines.append(f"{kind:8s} {'ovsam':13s} {pct(m['overall']['iou'])} {pct(base.get('iou'))} {pct(novel.get('iou'))} "
                     f"{pct(m['overall']['accuracy'])} {pct(base.get('accuracy'))} {pct(novel.get('accuracy'))}  "
                     f"{m['overall']['count']}")
        for b, acc in m["baselines"].items():
            lines.append(f"{kind:8s} {b:13s} {'':6s} {'':6s} {'':6s} {pct(acc['overall'])} {pct(acc.get('base'))} "
                         f"{pct(acc.get('novel'))}")
    if "text_query" in metrics:
        tq = metrics["text_query"]
        lines.append(f"text query (class names, hit = best mask IoU >= {tq['hit_iou']}): " + ", ".join(
            f"{k} {pct(v['hit_rate']).strip()}% of {v['queries']}" for k, v in tq.items() if isinstance(v, dict)))
    lines.append("")
    for kind, m in metrics["prompts"].items():
        lines.append(f"per class ({kind} prompts):")
        for name, v in m["per_class"].items():
            lines.append(f"  {name:28s} {v['split']:6s} IoU {pct(v['iou'])}  Acc {pct(v['accuracy'])}  n={v['count']}")
    return "\n".join(lines)


#: What ``--checkpoint`` (no model YAML) evaluates with when no flag says otherwise: the reference
#: evaluation's templates and frozen-CLIP ensemble, on the CPU.
CHECKPOINT_DEFAULTS = {"templates": "vild", "clip_ensemble": True, "device": "cpu"}


def build_eval_predictor(checkpoint: Optional[str], model_yaml: Optional[str], device: Optional[str] = None,
                         precision: str = "fp32", templates: Optional[str] = None, clip_weights: Optional[str] = None,
                         clip_ensemble: Optional[bool] = None, synonyms: Optional[str] = None):
    """The robots' predictor, from an ovsam_ros checkpoint or a model YAML (vocabulary set later).

    ``None`` keeps the model YAML's setting (``device``, ``templates``, ``clip_ensemble``, ``synonyms``:
    'all' | 'names'); for a checkpoint, :data:`CHECKPOINT_DEFAULTS` (all synonyms)."""
    from ovsam_ros.loading import build_predictor
    from ovsam_ros.model.build import load_ovsam
    from ovsam_ros.model.checkpoints import checkpoint_templates
    from ovsam_ros.model.vocabulary import get_templates
    from ovsam_ros.predictor import OVSAMPredictor

    if checkpoint:
        clip = os.path.expanduser(clip_weights) if clip_weights else None
        from ovsam_ros.runtime import resolve_device, resolve_precision

        device = device or CHECKPOINT_DEFAULTS["device"]
        # the rule of every predictor built from a YAML: fp16 on a CPU runs fp32, saying so
        precision = resolve_precision(precision, resolve_device(device), source="ovsam-evaluate --checkpoint")
        model = load_ovsam(os.path.expanduser(checkpoint), clip_pretrained=clip)
        # the templates its text embeddings were trained with, where stage 2 stored them
        stored = checkpoint_templates(getattr(model, "checkpoint_extra", None))
        chosen = get_templates(templates) if templates else stored or get_templates(CHECKPOINT_DEFAULTS["templates"])
        return OVSAMPredictor(model, vocabulary=None, device=device, precision=precision,
                              templates=chosen, trained=True,
                              clip_ensemble=CHECKPOINT_DEFAULTS["clip_ensemble"] if clip_ensemble is None else clip_ensemble,
                              names_only=synonyms == "names")
    return build_predictor(model_yaml, device=device, precision=precision, clip_ensemble=clip_ensemble,
                           templates=templates, synonyms=synonyms)


def _templates_name(templates: Sequence[str]) -> str:
    from ovsam_ros.model.vocabulary import TEMPLATE_SETS

    named = [name for name, known in TEMPLATE_SETS.items() if tuple(known) == tuple(templates)]
    return named[0] if named else f"{len(templates)} custom template(s)"


def settings_used(predictor, args, yaml_predictor=None) -> Dict[str, Dict[str, Any]]:
    """Each setting that changes the numbers: its value and where it came from (a flag, the model YAML,
    or ovsam-evaluate's own default). ``yaml_predictor``: the model YAML's ``PredictorSpec``."""
    fallback = "model YAML" if yaml_predictor is not None else "ovsam-evaluate default for --checkpoint"

    def source(flag: str, given: bool) -> str:
        return flag if given else fallback

    from ovsam_ros.model.checkpoints import checkpoint_templates

    stored = checkpoint_templates(getattr(predictor.model, "checkpoint_extra", None))
    yaml_chose = yaml_predictor is not None and getattr(yaml_predictor, "templates_given", True)
    templates_from = ("the checkpoint (the templates it was trained with)"
                      if args.templates is None and not yaml_chose and stored == tuple(predictor.templates)
                      else source("--templates", args.templates is not None))
    out = {
        "templates": {"value": _templates_name(predictor.templates), "from": templates_from},
        "clip_ensemble": {"value": "on" if predictor.clip_ensemble else "off",
                          "from": source("--clip-ensemble", args.clip_ensemble is not None)},
        "synonyms": {"value": "names" if predictor.names_only else "all", "from": source("--synonyms", args.synonyms is not None)},
        "device": {"value": str(predictor.device), "from": source("--device", args.device is not None)},
        "precision": {"value": str(predictor.precision),
                      "from": "--precision, default fp32 = the reference evaluation's"
                              + (f"; the model YAML says {yaml_predictor.precision}" if yaml_predictor is not None
                                 and yaml_predictor.precision != args.precision else "")},
    }
    if predictor.clip_ensemble:
        out["ensemble_weights"] = {"value": f"alpha {predictor.ensemble_alpha:g} base, beta {predictor.ensemble_beta:g} novel",
                                   "from": fallback}
    for key in ("resize", "roi_box"):
        value = getattr(predictor.transform, "resize", None) if key == "resize" else getattr(predictor, key, None)
        if value is not None:
            out[key] = {"value": str(value), "from": fallback}
    out["point_rule"] = {"value": args.point_rule, "from": "--point-rule"}
    out["point_clip_box"] = {"value": args.point_clip_box, "from": "--point-clip-box"}
    return out


def format_settings(settings: Dict[str, Dict[str, Any]]) -> str:
    return "settings: " + "; ".join(f"{k.replace('_', ' ')} {v['value']} ({v['from']})" for k, v in settings.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.out and os.path.isdir(args.out):  # before minutes of evaluation, not after
        print(f"ovsam-evaluate: error: --out {args.out} is a folder; give the metrics JSON's file name "
              f"(e.g. {os.path.join(args.out, 'metrics.json')})", file=sys.stderr)
        return 2
    try:
        coco = CocoInstances(args.annotations, args.images, args.vocabulary, unknown_category=args.unknown_category,
                             input_bits=args.input_bits, float_max=args.float_max)
        clip_ensemble = None if args.clip_ensemble is None else args.clip_ensemble == "on"
        predictor = build_eval_predictor(args.checkpoint, args.model, args.device, args.precision, args.templates,
                                         args.clip_weights, clip_ensemble=clip_ensemble, synonyms=args.synonyms)
        yaml_predictor = None
        if args.model:
            from ovsam_ros.loading import load_specs

            yaml_predictor = load_specs(args.model)[1]
        if args.everything_multimask != "auto":
            predictor.everything_multimask = args.everything_multimask == "on"
        settings = settings_used(predictor, args, yaml_predictor)
        print(format_settings(settings), flush=True)
        from ovsam_ros.predictor import EverythingOptions

        query_options = EverythingOptions(
            points_per_side=args.query_points_per_side, pred_iou_thresh=args.query_iou_thresh,
            stability_score_thresh=args.query_stability_thresh, min_mask_area=args.query_min_area)
        metrics = evaluate(predictor, coco, args.prompts, args.baselines, args.max_images, args.multimask,
                           progress=not args.no_progress, text_queries=args.text_queries,
                           point_rule=args.point_rule, query_options=query_options,
                           point_clip_box=args.point_clip_box)
    except (DataError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"ovsam-evaluate: error: {err}", file=sys.stderr)
        return 2
    metrics["checkpoint"] = args.checkpoint or args.model
    metrics["settings"] = settings
    print(format_table(metrics))
    if args.out:
        write_json(args.out, metrics, indent=1)
        print(f"metrics written to {os.path.abspath(args.out)}")
    evaluated = sum(p["overall"]["count"] for p in metrics["prompts"].values())
    if evaluated == 0:  # a table of "-" with exit 0 reads like a result
        skipped = ", ".join(f"{k}: {v}" for k, v in metrics["skipped"].items()) or "none"
        print(f"ovsam-evaluate: error: no instance was evaluated ({metrics['images']} image(s); skipped: "
              f"{skipped}); check the annotations' masks, crowd flags and --max-images", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
