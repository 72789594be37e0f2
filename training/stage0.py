"""Stage 0: contrastive pretraining of a small open_clip CLIP on captioned object crops.

No pretrained CLIP can be downloaded here, so the bundled shapes-world model
trains its own, before the two OVSAM stages (which keep CLIP frozen). This is
plain CLIP training with open_clip's own pieces: ``open_clip.create_model``
builds the model from a registered config (``ovsam-shapes-rn``: a tiny
ModifiedResNet image tower and a 2-layer text transformer with the real CLIP
BPE tokenizer), ``open_clip.loss.ClipLoss`` is the loss, the learnable
``logit_scale`` is CLIP's.

Data: every instance of a COCO-format training set (the shapes world's train
split holds base classes only) is cropped around its box with random margin and
resized to the image tower's native size; its caption is a template filled with
the class name ("a photo of a red circle."). A step holds one crop per class, so
no caption repeats within its contrastive problem (a repeat would be a false
negative). When every class name is "<colour> <shape>", the same step also holds
one crop per colour ("a red object.") and one per shape ("a circle."), each group
its own ClipLoss (weight 0.5): the text tower then learns the two words separately,
which is what lets it place held-out pairs ("red star") next to their images.

Metric: zero-shot top-1 accuracy of held-out crops (val split, base AND novel
classes) against all class names, printed before and after training.

Output ``<output_dir>/clip.pt``: an open_clip state dict, loadable with
``open_clip.create_model("ovsam-shapes-rn", pretrained=...)`` and by a model YAML
as ``clip_weights`` (stage 1 uses it as ``model.clip_weights``).

    ovsam-train-stage0 --config stage0_shapes --set data.annotations=data/shapes/annotations/instances_train.json
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .cli_common import STAGE_COMMANDS, main_wrapper
from .data.coco import CocoInstances
from .data.common import sample_seed, write_json

log = logging.getLogger("training")

DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/stage0",
    "model": {"name": "ovsam-shapes-rn"},  # an open_clip config name (ours are registered by ovsam_ros)
    "data": {
        "annotations": None,  # COCO-format instances JSON of the training scenes
        "images": None,  # image root (default: next to the JSON)
        "val_annotations": None,  # held-out scenes for the zero-shot metric (base + novel classes)
        "crops_per_instance": 2,  # random-margin crops per instance in the crop bank
        "margin": [1.1, 1.6],  # crop side = this x the box's longer side
        "templates": ["a photo of a {}.", "a {}.", "a picture of a {}.", "a {} shape.", "{}",
                      "a drawing of a {}.", "there is a {}."],
        "attribute_batches": True,  # also colour-only / shape-only batches when names are "<colour> <shape>"
        "max_val_crops": 600,
        "input_bits": 16,  # bits of 16-bit images that hold data (12 / 10: machine-vision cameras), as the node's
        "float_max": 1.0,  # float images: the value that is white (255.0 for 0..255 float data)
    },
    "train": {
        "steps": 1500,
        "lr": 2.0e-3,
        "weight_decay": 0.1,
        "warmup_steps": 50,
        "threads": 1,
        "log_every": 50,
        "eval_every": 0,  # 0: only before and after training
    },
}


# ----------------------------------------------------------------------------- crops
def crop_instance(image: np.ndarray, box: Sequence[float], size: int, scale: float,
                  shift: Tuple[float, float]) -> np.ndarray:
    """Square crop around ``box`` (xyxy), side ``scale`` x its longer side, resized to ``size``."""
    import cv2

    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * scale
    cx = (x0 + x1) / 2 + shift[0] * side
    cy = (y0 + y1) / 2 + shift[1] * side
    # border pixels are replicated beyond the image (the objects touch its edges)
    m = (size / side)
    warp = np.array([[m, 0, -(cx - side / 2) * m], [0, m, -(cy - side / 2) * m]], np.float32)
    return cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_AREA if m < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def build_crop_bank(coco: CocoInstances, size: int, seed: int, crops_per_instance: int,
                    margin: Sequence[float], max_crops: Optional[int] = None,
                    progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(crops uint8 [N, size, size, 3], class indices [N]) of every instance (deterministic)."""
    crops: List[np.ndarray] = []
    labels: List[int] = []
    indices = range(len(coco))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="crops", unit="img", dynamic_ncols=True)
    for index in indices:
        record = coco.images[index]
        image, masks = coco.load(index)
        for j, (inst, m) in enumerate(zip(record.instances, masks)):
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            for k in range(crops_per_instance):
                rng = sample_seed(seed, 17, index, j, k)
                scale = float(rng.uniform(*margin))
                shift = (float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08)))
                crops.append(crop_instance(image, box, size, scale, shift))
                labels.append(int(inst.label))
        if max_crops and len(crops) >= max_crops:
            break
    if not crops:
        raise ValueError(f"{coco.annotation_file}: no instances to crop")
    if max_crops:
        crops, labels = crops[:max_crops], labels[:max_crops]
    return np.stack(crops), np.asarray(labels, np.int64)


def split_names(names: Sequence[str]) -> Optional[Tuple[List[str], List[str]]]:
    """(colour word, shape word) per class when every name is exactly two words, else None."""
    parts = [n.split() for n in names]
    if not parts or any(len(p) != 2 for p in parts):
        return None
    return [p[0] for p in parts], [p[1] for p in parts]


# ----------------------------------------------------------------------------- model
class ClipTrainer:
    """The open_clip model, its tokenizer and preprocessing constants."""

    def __init__(self, name: str, device: torch.device) -> None:
        import open_clip

        from ovsam_ros.model.backbone import register_tiny_clip_configs

        register_tiny_clip_configs()
        self.model = open_clip.create_model(name, pretrained=None, device=device)
        self.tokenizer = open_clip.get_tokenizer(name)
        pp = open_clip.get_model_preprocess_cfg(self.model)
        size = pp.get("size", 224)
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = torch.tensor(pp["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pp["std"], device=device).view(1, 3, 1, 1) * 255
        self.device = device

    def images(self, crops: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device), normalize=True)

    @torch.no_grad()
    def zero_shot(self, crops: np.ndarray, labels: np.ndarray, names: Sequence[str], template: str,
                  batch: int = 256) -> np.ndarray:
        """Top-1 class index of each crop against ``names`` (filled into ``template``)."""
        was = self.model.training
        self.model.eval()
        text = self.encode_texts([template.format(n) for n in names])
        preds = []
        for i in range(0, len(crops), batch):
            img = self.model.encode_image(self.images(crops[i:i + batch]), normalize=True)
            preds.append((img @ text.t()).argmax(1).cpu().numpy())
        self.model.train(was)
        return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def zero_shot_metrics(trainer: ClipTrainer, crops: np.ndarray, labels: np.ndarray, names: Sequence[str],
                      splits: Optional[Sequence[str]], template: str) -> Dict[str, Any]:
    pred = trainer.zero_shot(crops, labels, names, template)
    correct = pred == labels
    out: Dict[str, Any] = {"crops": int(len(labels)), "accuracy": float(correct.mean()) if len(labels) else None,
                           "chance": 1.0 / len(names)}
    if splits is not None:
        for s in sorted(set(splits)):
            sel = np.array([splits[i] == s for i in labels])
            out[f"accuracy_{s}"] = float(correct[sel].mean()) if sel.any() else None
            out[f"crops_{s}"] = int(sel.sum())
    return out


# ----------------------------------------------------------------------------- batches
class BatchMaker:
    """Contrastive batches without repeated captions: per class / per colour / per shape."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray, names: Sequence[str], templates: Sequence[str],
                 attribute_batches: bool, seed: int) -> None:
        self.crops, self.labels, self.names = crops, labels, list(names)
        self.templates = list(templates)
        self.seed = seed
        self.by_class = {c: np.flatnonzero(labels == c) for c in sorted(set(labels.tolist()))}
        self.kinds = ["class"]
        self.groups: Dict[str, Dict[str, np.ndarray]] = {}
        attrs = split_names(names) if attribute_batches else None
        if attrs is not None:
            for kind, words in (("colour", attrs[0]), ("shape", attrs[1])):
                groups: Dict[str, List[int]] = {}
                for c, idx in self.by_class.items():
                    groups.setdefault(words[c], []).extend(idx.tolist())
                if len(groups) > 1:
                    self.groups[kind] = {w: np.asarray(v) for w, v in groups.items()}
                    self.kinds.append(kind)

    def batch(self, step: int) -> Tuple[np.ndarray, List[Tuple[str, int, int, List[str]]]]:
        """Crops of all groups of one step + (kind, start, end, captions) per group.

        One forward pass sees every group (the image tower's BatchNorm then always sees
        the same mix); each group is its own contrastive problem.
        """
        rng = sample_seed(self.seed, 23, step)
        picks: List[int] = []
        groups: List[Tuple[str, int, int, List[str]]] = []
        texts: List[str] = []
        for c, idx in self.by_class.items():
            picks.append(int(idx[rng.integers(0, len(idx))]))
            texts.append(self.templates[int(rng.integers(0, len(self.templates)))].format(self.names[c]))
        groups.append(("class", 0, len(picks), texts))
        for kind in self.kinds[1:]:
            phrase = "a {} object." if kind == "colour" else "a {}."
            start, texts = len(picks), []
            for word, idx in self.groups[kind].items():
                picks.append(int(idx[rng.integers(0, len(idx))]))
                texts.append(phrase.format(word))
            groups.append((kind, start, len(picks), texts))
        crops = self.crops[picks].copy()
        flip = rng.random(len(picks)) < 0.5
        crops[flip] = crops[flip][:, :, ::-1]
        gain = rng.uniform(0.9, 1.1, size=(len(picks), 1, 1, 1))
        crops = np.clip(crops.astype(np.float32) * gain, 0, 255)
        return crops, groups


# ----------------------------------------------------------------------------- training
def train(cfg: Dict[str, Any], resume: Optional[str] = None, quiet: bool = False) -> Dict[str, Any]:
    from open_clip.loss import ClipLoss

    if resume:
        raise ValueError("stage 0 has no --resume: it takes minutes; run it again")
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tcfg, dcfg = cfg["train"], cfg["data"]
    torch.set_num_threads(max(1, int(tcfg["threads"])))
    torch.manual_seed(int(cfg["seed"]))
    device = torch.device("cpu")
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if not dcfg["annotations"]:
        raise ValueError("data.annotations is not set: give a COCO-format instances JSON of training scenes")
    trainer = ClipTrainer(cfg["model"]["name"], device)
    t0 = time.time()
    rule = {"input_bits": dcfg.get("input_bits", 16), "float_max": dcfg.get("float_max", 1.0)}
    coco = CocoInstances(dcfg["annotations"], dcfg["images"], keep_splits=["base"], require_instances=True, **rule)
    names = coco.vocab.classes
    crops, labels = build_crop_bank(coco, trainer.size, int(cfg["seed"]), int(dcfg["crops_per_instance"]),
                                    dcfg["margin"], progress=not quiet)
    val = None
    if dcfg["val_annotations"]:
        vcoco = CocoInstances(dcfg["val_annotations"], dcfg["images"], **rule)
        if vcoco.vocab.classes != names:
            raise ValueError(f"{dcfg['val_annotations']}: its classes differ from the training JSON's")
        vcrops, vlabels = build_crop_bank(vcoco, trainer.size, int(cfg["seed"]) + 1, 1, [1.3, 1.3],
                                          max_crops=int(dcfg["max_val_crops"]))
        val = (vcrops, vlabels, vcoco.vocab.split)
    log.info("stage 0: %d training crops of %d classes (%.1f s to build), open_clip model %s, %.2fM params",
             len(crops), len(set(labels.tolist())), time.time() - t0, cfg["model"]["name"],
             sum(p.numel() for p in trainer.model.parameters()) / 1e6)
    template = dcfg["templates"][0]

    def evaluate() -> Optional[Dict[str, Any]]:
        if val is None:
            return None
        return zero_shot_metrics(trainer, val[0], val[1], names, val[2], template)

    before = evaluate()
    if before is not None:
        log.info("zero-shot before training: %s", before)
    maker = BatchMaker(crops, labels, names, dcfg["templates"], bool(dcfg["attribute_batches"]), int(cfg["seed"]))
    model = trainer.model
    model.train()
    loss_fn = ClipLoss()
    # The 49K-row token table stays at its random init: captions use a few dozen of its rows, and
    # updating all of them (AdamW) would cost more than the rest of the step.
    model.token_embedding.weight.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(tcfg["weight_decay"])},
                             {"params": no_decay, "weight_decay": 0.0}], lr=float(tcfg["lr"]))
    steps, warm = int(tcfg["steps"]), int(tcfg["warmup_steps"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    history: List[Dict[str, Any]] = []
    log_every = max(1, int(tcfg["log_every"]))
    running: Dict[str, List[float]] = {}
    bar = None
    if not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="stage0", unit="step", dynamic_ncols=True)
    metrics_file = (out / "metrics.jsonl").open("w")
    t_train = time.time()
    for step in range(steps):
        batch, groups = maker.batch(step)
        img = model.encode_image(trainer.images(batch), normalize=True)
        txt = trainer.encode_texts([t for g in groups for t in g[3]])
        scale = model.logit_scale.exp()
        parts = {kind: loss_fn(img[a:b], txt[a:b], scale) for kind, a, b, _ in groups}
        # the class captions are what users query; the attribute groups teach the words apart
        loss = parts["class"] + 0.5 * sum(v for k, v in parts.items() if k != "class")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # CLIP's clamp: logit scale at most 100
            model.logit_scale.clamp_(0, math.log(100))
        for kind, value in parts.items():
            running.setdefault(kind, []).append(float(value.detach()))
        if bar is not None:
            bar.update(1)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rec = {"step": step + 1, "lr": sched.get_last_lr()[0], "logit_scale": float(model.logit_scale.detach().exp()),
                   **{f"loss_{k}": float(np.mean(v)) for k, v in running.items()}}
            running = {}
            every = int(tcfg["eval_every"])
            if every and (step + 1) % every == 0 and step + 1 != steps:
                rec["zero_shot"] = evaluate()
            history.append(rec)
            metrics_file.write(__import__("json").dumps(rec) + "\n")
            metrics_file.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{rec.get('loss_class', float('nan')):.3f}")
    if bar is not None:
        bar.close()
    metrics_file.close()
    model.eval()
    after = evaluate()
    torch.save(model.state_dict(), out / "clip.pt")
    result = {"model": cfg["model"]["name"], "weights": str(out / "clip.pt"), "train_crops": int(len(crops)),
              "steps": steps, "seconds": round(time.time() - t_train, 1), "zero_shot_before": before,
              "zero_shot_after": after, "first_loss": history[0] if history else None,
              "last_loss": history[-1] if history else None, "template": template}
    write_json(out / "stage0_metrics.json", result, indent=1)
    if after is not None:
        log.info("zero-shot after training: %s", after)
    log.info("stage 0 done in %.0f s: %s", time.time() - t0, out / "clip.pt")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(*STAGE_COMMANDS["stage0"], copy.deepcopy(DEFAULTS), train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
