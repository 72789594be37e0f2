"""Stage 2: CLIP2SAM + mask decoder + label token on COCO-format instances.

Everything else (CLIP backbone, SAM2CLIP, prompt encoder) is frozen. Per image
(reference recipe) up to ``instances_per_image`` ground-truth instances are
prompted, half by their box and half by one random point inside the mask;
novel classes are dropped (``data.train_splits``). Losses:

* softmax CE (weight 2) of the region embeddings' cosine logits against the
  text embeddings of the whole vocabulary (``loss.class_list: all``, the
  reference) or of the training splits' classes only (``train_splits``), with
  a background column (weight 0.1);
* mask BCE (5) + Dice (5) on uncertainty-sampled points (Mask2Former);
* optional: IoU-head MSE (``loss.iou_weight``; ours, the reference has no IoU head).

With ``data.class_folders.root`` ImageNet-style class folders join the
training set: whole-image box prompts, classification loss only (the paper's
vocabulary expansion), scored against their own vocabulary.

The output ``<output_dir>/model.pt`` is an ``ovsam_ros`` checkpoint: load it
with ``load_ovsam`` or in a model YAML as ``model: {ovsam_checkpoint: ...}``.
It (and every step checkpoint's model.pt) stores the run's vocabulary
(``extra["vocabulary"]``: class names, the synonyms trained on, base/novel
split); a model YAML without ``predictor.vocabulary`` labels with it.

    ovsam-train-stage2 --config stage2_tiny --set model.init_checkpoint=runs/s1/model.pt
    torchrun --nproc_per_node=8 -m training.stage2 --config stage2_coco_rn50x16 ...
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ovsam_ros.model.checkpoints import CHECKPOINT_TEMPLATES_KEY, CHECKPOINT_VOCABULARY_KEY
from ovsam_ros.model.fingerprint import text_model_id, text_weights_fingerprint
from ovsam_ros.model.ovsam import OVSAM
from ovsam_ros.model.vocabulary import (
    OpenCLIPTextEncoder,
    TextEmbeddingCache,
    TextEmbeddings,
    Vocabulary,
    check_synonym_options,
    encode_vocabulary,
    get_templates,
)

from . import engine
from .cli_common import STAGE_COMMANDS, main_wrapper
from .data.coco import CocoInstances
from .data.common import DataError, write_json
from .data.datasets import ClassFolderDataset, ConcatDataset, DetectionDataset, collate_instances
from .losses import classification_loss, lowres_iou, mask_losses, sample_points

log = logging.getLogger("training")

DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/stage2",
    "model": copy.deepcopy(engine.MODEL_DEFAULTS),
    "train_prompt_encoder": False,  # reference: frozen (SAM's); True helps a randomly initialised one
    "train_sam2clip": False,  # reference: frozen after stage 1; True (ours) lets the mask loss refine it,
    #                           for a stage 1 whose teacher is weak (the shapes-world recipe)
    "output_tokens": None,  # decoder token set to train: reference ([label, mask0], no IoU token) | sam |
    #                          null = the model's own (a SAM-initialised model resolves 'auto' to sam)
    "label_weight": None,  # weight of the decoder's label-token embedding added to each RoI embedding:
    #                        null = the model's own; the reference has 0 (label_mlp unused, frozen); > 0
    #                        (ours) trains label_mlp too and is saved with the model (the shapes recipe)
    "data": {
        "annotations": None,  # COCO-format instances JSON
        "images": None,  # image root (file_name is relative to it); default: next to the JSON
        "vocabulary": None,  # load_vocabulary spec; default: the JSON's categories (+ their 'split')
        "train_splits": ["base"],  # classes trained on; instances of other splits are dropped (counted)
        "instances_per_image": 40,
        "fill_instances": False,  # fewer instances: repeat them (fresh prompts) up to instances_per_image:
        #                           cycle (the reference: 0,1,2,0,1,2,...) | random (ours) | false
        "box_fraction": 0.5,  # share of box prompts; the rest are one random point inside the mask
        "box_count": "round",  # round (ours: round(N x box_fraction), 20 of 40) | reference (N // 2 + 1: 21 of 40)
        "scale_range": [0.9, 2.0],  # scale jitter (x resize-longest-side); LVIS reference: [0.1, 2.0]
        "flip": True,
        "min_mask_area": 32,  # pixels after the transform
        "unknown_category": "error",  # error | skip
        "missing_images": "error",  # error | skip
        "corrupt_images": "error",  # error | skip (with check_images)
        "self_intersecting": "skip",  # skip | keep | error
        "check_polygons": True,  # test polygons for self-intersection (~1-2 min once for all of COCO)
        "check_images": False,  # decode every image at start-up
        "input_bits": 16,  # bits of 16-bit images that hold data (12 / 10: machine-vision cameras), as the node's
        "float_max": 1.0,  # float images: the value that is white (255.0 for 0..255 float data)
        "class_folders": {
            "root": None,  # ImageNet-style root/<class>/*.jpg (vocabulary expansion, labels only)
            "vocabulary": None,  # e.g. imagenet21k (folders named by WordNet id); default: folder names
            "repeat": 1,
            "unknown_class": "error",
            "scale_range": [1.0, 1.0],
        },
    },
    "loss": {
        # Classes the softmax CE runs over: all = the whole vocabulary (the reference: 80 COCO classes,
        # trained on base annotations only); train_splits = only the classes in data.train_splits (ours)
        "class_list": "train_splits",
        "cls_weight": 2.0,
        "background_weight": 0.1,
        "mask_bce_weight": 5.0,
        "mask_dice_weight": 5.0,
        "iou_weight": 0.0,  # > 0: also train SAM's IoU head (MSE to the low-res mask IoU)
        "num_points": 12544,
        "oversample_ratio": 3.0,
        "importance_sample_ratio": 0.75,
        "point_sampling": "uncertainty",  # uncertainty | random
    },
    "text": {
        "templates": "vild",  # vild (14) | single | a list of '{}' templates
        "cache_dir": None,  # text-embedding cache folder
        # Which texts of each class are encoded (the classes and labels stay the same):
        "names_only": False,  # the class name only, cleaned like the reference's split_label (its LVIS training)
        "max_synonyms": None,  # keep at most this many synonyms per class (null: all)
    },
    "train": {**copy.deepcopy(engine.TRAIN_DEFAULTS), "epochs": 12, "batch_size": 16, "schedule": "multistep",
              "milestones": [8, 11], "grad_clip": 0.01},
}


def trainable_filter(model: OVSAM, iou_weight: float, prompt_encoder: bool = False, sam2clip: bool = False):
    label_mlp = model.clip2sam.label_weight != 0.0
    use_iou = model.decoder.output_tokens == "sam"
    hyper = "decoder.mask_decoder.output_hypernetworks_mlps."

    def keep(name: str) -> bool:
        if name.startswith("clip2sam."):
            return True
        if name.startswith("sam2clip."):
            return sam2clip
        if name.startswith("decoder.prompt_encoder."):
            return prompt_encoder
        if name == "decoder.label_token.weight":
            return bool(model.decoder.use_label_token)
        if name.startswith("decoder.label_mlp."):
            return label_mlp and bool(model.decoder.use_label_token)
        if name.startswith("decoder.mask_decoder."):
            if name.startswith(hyper):  # only mask 0 is trained (reference: single mask token)
                return name[len(hyper):].split(".")[0] == "0"
            if name.startswith("decoder.mask_decoder.iou_prediction_head."):
                return use_iou and iou_weight > 0
            if name.startswith("decoder.mask_decoder.iou_token."):
                return use_iou
            return True
        return False

    return keep


class Stage2Net(nn.Module):
    """Encode images, decode box and point prompts (the module DDP wraps)."""

    def __init__(self, model: OVSAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        m = self.model
        feats = m.encode_image(batch["images"])
        out: Dict[str, Any] = {}
        for group in ("box", "point"):
            g = batch["groups"][group]
            if g is None:
                continue
            if group == "box":
                res = m.decode(feats, boxes=g["prompts"], multimask_output=False, image_index=g["image_index"],
                               roi_boxes=g["roi_boxes"])
            else:
                labels = torch.ones(g["prompts"].shape[0], 1, dtype=torch.long, device=g["prompts"].device)
                res = m.decode(feats, point_coords=g["prompts"].unsqueeze(1), point_labels=labels,
                               multimask_output=False, image_index=g["image_index"], roi_boxes=g["roi_boxes"])
            out[group] = res
        return out


def encode_text(model: OVSAM, vocab: Vocabulary, templates: Any, cache_dir: Optional[str],
                device: torch.device, env: Optional[engine.DistEnv] = None) -> TextEmbeddings:
    """Text embeddings of ``vocab`` with the model's CLIP text tower (cached on disk when asked)."""
    templates = get_templates(templates)
    model_id = text_model_id(model.cfg.backbone.model_name, model.backbone.clip)

    def compute() -> TextEmbeddings:
        with torch.no_grad():
            return encode_vocabulary(OpenCLIPTextEncoder(model.backbone.clip), model.tokenizer, vocab, templates,
                                     device=device, progress=False, model_id=model_id)

    if not cache_dir:
        return compute().to(device)
    cache = TextEmbeddingCache(os.path.expanduser(cache_dir))
    wid = text_weights_fingerprint(model.backbone.clip)  # the predictor's key: the cache can be shared
    if env is None or env.is_main:
        emb = cache.get_or_compute(compute, model_id=model_id, weights_id=wid, vocab=vocab, templates=templates)
    if env is not None:
        env.barrier()
        if not env.is_main:
            emb = cache.get(model_id, wid, vocab, templates) or compute()
    return emb.to(device)


class Stage2Task(engine.Task):
    name = "stage2"
    find_unused_parameters = True  # FPN levels / groups without RoIs in a batch get no gradient

    def __init__(self, cfg: Dict[str, Any], env: engine.DistEnv, resume_from: Optional[Path]) -> None:
        self.cfg = cfg
        self.env = env
        dcfg, lcfg = cfg["data"], cfg["loss"]
        seed = int(cfg["seed"])

        # The data first (annotations, vocabulary, class folders): a wrong path or an empty file
        # is reported before minutes of model loading. Only the input size waits for the model.
        if not dcfg["annotations"]:
            raise ValueError("data.annotations is not set: give a COCO-format instances JSON")
        self.coco = CocoInstances(
            dcfg["annotations"], dcfg["images"], dcfg["vocabulary"], keep_splits=dcfg["train_splits"],
            require_instances=True, unknown_category=dcfg["unknown_category"],
            missing_images=dcfg["missing_images"], corrupt_images=dcfg["corrupt_images"],
            self_intersecting=dcfg["self_intersecting"], check_images=bool(dcfg["check_images"]),
            check_polygons=bool(dcfg["check_polygons"]), input_bits=dcfg.get("input_bits", 16),
            float_max=dcfg.get("float_max", 1.0))
        if self.coco.num_instances == 0:  # refused before minutes of model loading, each reason counted
            raise DataError(self.coco.unusable_message())
        full = self.coco.vocab
        tcfg = cfg["text"]
        check_synonym_options(tcfg.get("max_synonyms"), tcfg.get("names_only", False))
        if tcfg.get("names_only"):
            full = full.names_only()
        full = full.with_max_synonyms(tcfg.get("max_synonyms"))
        if full.split is not None and dcfg["train_splits"]:
            train_idx = [i for i, s in enumerate(full.split) if s in dcfg["train_splits"]]
        else:
            train_idx = list(range(len(full)))
        if not train_idx:
            raise ValueError(f"no class of vocabulary '{full.name}' is in data.train_splits={dcfg['train_splits']}")
        # Stored in model.pt (checkpoint_extra): every class the data names, with the texts trained on and
        # the base/novel/unused split (novel classes too: the open-vocabulary head is meant to name them).
        self.vocabulary = full
        class_list = lcfg.get("class_list", "train_splits")
        if class_list == "all":  # instances stay base-only (keep_splits); the CE runs over every class
            self.train_vocab = full
            label_map: Optional[Dict[int, int]] = None
        elif class_list == "train_splits":
            self.train_vocab = full.subset(train_idx, name=f"{full.name}:{'+'.join(dcfg['train_splits'] or ['all'])}")
            label_map = {full_i: j for j, full_i in enumerate(train_idx)}
        else:
            raise ValueError(f"loss.class_list must be all or train_splits, got {class_list!r}")
        cf = dcfg.get("class_folders") or {}
        self.class_folders = None
        if cf.get("root"):
            self.class_folders = ClassFolderDataset(
                cf["root"], cf.get("vocabulary"), None, seed=seed, scale_range=tuple(cf.get("scale_range") or (1, 1)),
                unknown_class=cf.get("unknown_class", "error"), check_images=bool(dcfg["check_images"]),
                input_bits=dcfg.get("input_bits", 16), float_max=dcfg.get("float_max", 1.0))
        log.info("stage 2: %d image(s) / %d instance(s) in %s; building the model (%s) on %s ...", len(self.coco),
                 self.coco.num_instances, dcfg["annotations"],
                 cfg["model"].get("init_checkpoint") or cfg["model"]["preset"], env.device)

        self.model = engine.build_model(cfg["model"], seed, resume_from).to(env.device)
        tokens = cfg.get("output_tokens")
        if tokens is not None:
            if tokens not in ("reference", "sam"):
                raise ValueError(f"output_tokens must be reference, sam or null, got {tokens!r}")
            self.model.decoder.output_tokens = tokens
        if cfg.get("label_weight") is not None:
            weight = float(cfg["label_weight"])
            if weight != 0.0 and not self.model.decoder.use_label_token:
                raise ValueError(f"label_weight={weight} needs the decoder's label token, and this model has "
                                 "none (decoder.label_token: false)")
            self.model.clip2sam.label_weight = weight
        if self.model.decoder.output_tokens == "reference" and float(lcfg["iou_weight"]) > 0:
            raise ValueError("loss.iou_weight > 0 needs the 'sam' token set: the reference token set "
                             "([label, mask0]) has no IoU token to train (set loss.iou_weight=0 or output_tokens=sam)")
        self.trainable = engine.freeze_all_but(
            self.model, trainable_filter(self.model, float(lcfg["iou_weight"]), bool(cfg["train_prompt_encoder"]),
                                         bool(cfg["train_sam2clip"])))
        self.model.eval()
        self.net = Stage2Net(self.model)
        size = self.model.image_size

        parts: List[Any] = [DetectionDataset(
            self.coco, size, seed=seed, instances_per_image=int(dcfg["instances_per_image"]),
            box_fraction=float(dcfg["box_fraction"]), scale_range=tuple(dcfg["scale_range"]), flip=bool(dcfg["flip"]),
            min_mask_area=int(dcfg["min_mask_area"]), label_map=label_map,
            fill_instances=dcfg["fill_instances"], box_count=str(dcfg["box_count"]))]
        repeats = [1]
        texts = [self.train_vocab]
        if self.class_folders is not None:
            self.class_folders.set_image_size(size)
            parts.append(self.class_folders)
            repeats.append(int(cf.get("repeat") or 1))
            texts.append(self.class_folders.vocab)
        self.dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts, repeats)
        self.collate = collate_instances
        templates = get_templates(cfg["text"]["templates"])
        self.templates = templates
        log.info("stage 2: text embeddings of %s with %d template(s)%s ...",
                 " and ".join(f"{len(v)} classes ({v.name})" for v in texts), len(templates),
                 f" (cache {cfg['text']['cache_dir']})" if cfg["text"]["cache_dir"] else "")
        self.texts = [encode_text(self.model, v, cfg["text"]["templates"], cfg["text"]["cache_dir"], env.device, env)
                      for v in texts]
        self.seed = seed

    def checkpoint_extra(self) -> Dict[str, Any]:
        """The run's vocabulary (``Vocabulary.to_dict``; names, synonyms as trained, split) and prompt
        templates: the predictor's defaults when a model YAML names this checkpoint and neither."""
        return {CHECKPOINT_VOCABULARY_KEY: self.vocabulary.to_dict(), CHECKPOINT_TEMPLATES_KEY: list(self.templates)}

    # ------------------------------------------------------------------ batches
    def prepare(self, batch: Dict[str, Any], env: engine.DistEnv) -> Dict[str, Any]:
        items = batch["items"]
        dev = env.device
        boxes, points, is_box, labels, image_index, sources, has_mask, masks = [], [], [], [], [], [], [], []
        for i, it in enumerate(items):
            k = int(it["labels"].shape[0])
            boxes.append(it["boxes"])
            points.append(it["points"])
            is_box.append(it["is_box"])
            labels.append(it["labels"])
            image_index.append(torch.full((k,), i, dtype=torch.long))
            sources.append(torch.full((k,), int(it["source"]), dtype=torch.long))
            has_mask.append(torch.full((k,), bool(it["has_mask"]), dtype=torch.bool))
            if it["has_mask"]:
                masks.append(it["masks"])
        cat = lambda xs, dtype=None: torch.cat(xs).to(dev) if xs else torch.zeros(0, dtype=dtype, device=dev)  # noqa: E731
        b = {
            "images": batch["images"],
            "boxes": cat(boxes).float().reshape(-1, 4),
            "points": cat(points).float().reshape(-1, 2),
            "is_box": cat(is_box, torch.bool).bool(),
            "labels": cat(labels, torch.long).long(),
            "image_index": cat(image_index, torch.long),
            "source": cat(sources, torch.long),
            "has_mask": cat(has_mask, torch.bool).bool(),
            "masks": torch.cat(masks).to(dev) if masks else None,
            "items": items,
        }
        n = b["labels"].shape[0]
        groups: Dict[str, Any] = {"box": None, "point": None}
        if n == 0:  # keep every trainable parameter in the graph (DDP); the loss is multiplied by 0
            s = float(self.model.image_size)
            groups["box"] = {"idx": torch.zeros(0, dtype=torch.long, device=dev),
                             "prompts": torch.tensor([[0.0, 0.0, s, s]], device=dev),
                             "roi_boxes": torch.tensor([[0.0, 0.0, s, s]], device=dev),
                             "image_index": torch.zeros(1, dtype=torch.long, device=dev)}
        else:
            for name, sel in (("box", b["is_box"]), ("point", ~b["is_box"])):
                idx = torch.nonzero(sel).flatten()
                if idx.numel():
                    groups[name] = {"idx": idx, "image_index": b["image_index"][idx], "roi_boxes": b["boxes"][idx],
                                    "prompts": b["boxes"][idx] if name == "box" else b["points"][idx]}
        b["groups"] = groups
        return b

    def count(self, batch: Dict[str, Any]) -> int:
        return int(batch["labels"].shape[0])

    # ------------------------------------------------------------------ losses
    def loss(self, outputs: Dict[str, Any], batch: Dict[str, Any], step: int):
        lcfg = self.cfg["loss"]
        n = batch["labels"].shape[0]
        if n == 0:
            res = outputs["box"]
            zero = 0.0 * (res["masks_lowres"].float().sum() + res["region_embeddings"].float().sum()
                          + res["iou"].float().nan_to_num().sum())
            return zero, {"loss": zero.detach(), "cls": zero.detach(), "bce": zero.detach(),
                          "dice": zero.detach(), "iou": zero.detach()}
        dev = batch["labels"].device
        # back to instance order: cat the groups, then invert their index permutation
        names = list(outputs)
        order = torch.cat([batch["groups"][g]["idx"] for g in names])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=dev)
        lowres = torch.cat([outputs[g]["masks_lowres"][:, :1].float() for g in names])[inverse]
        regions = torch.cat([outputs[g]["region_embeddings"][:, 0].float() for g in names])[inverse]
        iou_pred = torch.cat([outputs[g]["iou"][:, 0].float().nan_to_num() for g in names])[inverse]

        # classification, per label space (0: detection vocabulary, 1: class folders)
        cls = lowres.new_zeros(())
        for source, text in enumerate(self.texts):
            sel = batch["source"] == source
            if sel.any():
                cls = cls + classification_loss(regions[sel], batch["labels"][sel], text,
                                                float(lcfg["background_weight"]))
        # masks on sampled points
        bce = dice = iou_l = lowres.new_zeros(())
        hm = batch["has_mask"]
        if hm.any():
            logits = lowres[hm]
            targets = batch["masks"].unsqueeze(1)
            counts, gens = [], []
            for it in batch["items"]:
                counts.append(int(it["labels"].shape[0]) if it["has_mask"] else 0)
                e, i = it["key"]
                gens.append(torch.Generator().manual_seed(hash_seed(self.seed, e, i)))
            coords = sample_points(logits, int(lcfg["num_points"]), gens, counts, float(lcfg["oversample_ratio"]),
                                   float(lcfg["importance_sample_ratio"]), lcfg["point_sampling"])
            bce, dice = mask_losses(logits, targets, coords)
            if float(lcfg["iou_weight"]) > 0:
                with torch.no_grad():
                    actual = lowres_iou(logits.detach(), targets)
                iou_l = ((iou_pred[hm] - actual) ** 2).sum()
        total = (float(lcfg["cls_weight"]) * cls + float(lcfg["mask_bce_weight"]) * bce
                 + float(lcfg["mask_dice_weight"]) * dice + float(lcfg["iou_weight"]) * iou_l)
        return total, {"loss": total.detach(), "cls": cls.detach(), "bce": bce.detach(), "dice": dice.detach(),
                       "iou": iou_l.detach()}


def hash_seed(*parts: int) -> int:
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFFFFFFFFFFFFFF


def train(cfg: Dict[str, Any], resume: Optional[str] = None, quiet: bool = False,
          overwrite: bool = False) -> engine.RunInfo:
    """Train as ``cfg`` says. An output folder holding another run is refused unless ``resume``
    (continue it) or ``overwrite`` (delete its files once the new model and data have loaded)."""
    env = engine.setup_distributed(cfg["train"]["device"])
    engine.setup_logging(env, logging.WARNING if quiet else logging.INFO)
    try:
        engine.configure_torch(cfg["train"], env)
        engine.seed_everything(int(cfg["seed"]))
        out = Path(cfg["output_dir"])
        resume_from = engine.resolve_resume(resume, out)
        state = engine.load_resume_state(resume_from) if resume_from else None
        if state is not None:
            engine.check_resume(state, cfg, resume_from, DEFAULTS)
        plan = engine.decide_output_dir(out, cfg, resume, resume_from, overwrite, env, DEFAULTS)
        engine.check_clip_weights(cfg["model"], resume_from)  # before minutes of data and model loading
        task = Stage2Task(cfg, env, resume_from)
        with engine.replacing_previous_run(out, plan, env):  # only now: a config that fails to load keeps the old run
            if env.is_main:
                log.info("stage 2: %d images / %d instances (%d training classes: %s), %.2fM trainable params, "
                         "world size %d", len(task.coco), task.coco.num_instances, len(task.train_vocab),
                         ", ".join(task.train_vocab.classes[:8]) + (" ..." if len(task.train_vocab) > 8 else ""),
                         sum(p.numel() for _, p in task.trainable) / 1e6, env.world_size)
                out.mkdir(parents=True, exist_ok=True)
                detection = task.dataset.parts[0] if isinstance(task.dataset, ConcatDataset) else task.dataset
                report = {"detection": detection.stats(), "train_vocabulary": task.train_vocab.to_dict()}
                if task.class_folders is not None:
                    report["class_folders"] = {"images": len(task.class_folders),
                                               "skipped": task.class_folders.skipped.to_dict()}
                write_json(out / "data_report.json", report, indent=1)
            return engine.run(task, cfg, env, resume_from, state)
    finally:
        engine.teardown_distributed(env)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(*STAGE_COMMANDS["stage2"], DEFAULTS, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
