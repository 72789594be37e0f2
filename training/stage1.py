"""Stage 1: SAM2CLIP distillation (images only, no labels).

A frozen SAM-family image encoder (the teacher: Meta SAM ViT-H/L/B, or a
tiny one for tests) and the frozen CLIP backbone see the same padded,
normalised image; only ``model.sam2clip`` trains, to reproduce the teacher's
[256, G, G] embedding under an MSE loss (reference: AdamW 1e-4, wd 0.05,
500-step warmup + cosine, grad clip 5, 24 epochs, 16 images per batch).

Teacher features can be cached on disk (``teacher.cache_dir``): the teacher
then runs once per image over the whole training run (and across runs); the
cache files are written by a background thread. The teacher runs batched, in
the training's autocast dtype by default (``teacher.dtype: auto``: bf16 on a
CUDA GPU that has it; the paper's teacher ran in fp32, ``teacher.dtype: fp32``).

    ovsam-train-stage1 --config stage1_tiny --set data.images=/data/frames --output-dir runs/s1
    torchrun --nproc_per_node=4 -m training.stage1 --config stage1_rn50x16 ...
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ovsam_ros.model.checkpoints import build_sam_teacher
from ovsam_ros.model.fingerprint import module_fingerprint
from ovsam_ros.model.ovsam import OVSAM

from . import engine
from .cli_common import STAGE_COMMANDS, main_wrapper
from .data.common import write_json
from .data.datasets import ImageFolderDataset, collate_images
from .data.feature_cache import BackgroundCacheWriter, TeacherFeatureCache
from .data.sampler import steps_per_epoch
from .heartbeat import Heartbeat, duration

log = logging.getLogger("training")

DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/stage1",
    "model": copy.deepcopy(engine.MODEL_DEFAULTS),
    "teacher": {
        "kind": "tiny",  # vit_h | vit_l | vit_b | tiny
        "checkpoint": None,  # Meta SAM .pth (image_encoder.* keys); None: random init (tests only)
        "seed": 0,  # random-init seed when there is no checkpoint
        "cache_dir": None,  # on-disk teacher-feature cache
        "cache_dtype": "float32",  # float32 | float16 | bfloat16
        "dtype": "auto",  # auto (= train.amp: bf16/fp16 on CUDA, else fp32) | fp32 | bf16 | fp16
        "batch_size": 0,  # images per teacher forward (0: all uncached images of a micro-batch at once)
        "overrides": {},  # kind=tiny only: ImageEncoderViT arguments (e.g. out_chans, img_size) to match a student
        # SAM2CLIP's absolute position embedding at a fresh start (no resume / init_checkpoint /
        # sam2clip_checkpoint): the teacher's image_encoder.pos_embed, as the reference neck is built.
        # auto: copy when the shapes match, else keep zeros (logged); copy: a mismatch is an error; zero: never copy.
        "init_pos_embed": "auto",
    },
    "data": {
        "images": None,  # folder (or list of folders) of images, searched recursively
        "flip": False,  # random horizontal flip (the cache keeps one entry per flip state)
        "check_images": False,  # decode every image at start-up, skip (and count) unreadable ones
        "input_bits": 16,  # bits of 16-bit images that hold data (12 / 10: machine-vision cameras), as the node's
        "float_max": 1.0,  # float images: the value that is white (255.0 for 0..255 float data)
    },
    "train": {**copy.deepcopy(engine.TRAIN_DEFAULTS), "epochs": 24, "batch_size": 16, "warmup_steps": 500,
              "schedule": "cosine", "grad_clip": 5.0},
}


class Stage1Net(nn.Module):
    """Frozen CLIP backbone -> trainable SAM2CLIP (the module DDP wraps)."""

    def __init__(self, model: OVSAM) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.sam2clip = model.sam2clip

    def forward(self, batch: Dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            feats = self.backbone(batch["images"])
        return self.sam2clip(feats)


def teacher_geometry(teacher: nn.Module) -> Dict[str, int]:
    img = int(teacher.img_size)
    patch = teacher.patch_embed.proj.kernel_size[0]
    out = [m for m in teacher.neck.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    return {"image_size": img, "grid": img // patch, "channels": int(out)}


def build_teacher(tcfg: Dict[str, Any], model: OVSAM) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(tcfg["seed"]))
        ckpt = os.path.expanduser(tcfg["checkpoint"]) if tcfg.get("checkpoint") else None
        teacher = build_sam_teacher(tcfg["kind"], ckpt, **(tcfg.get("overrides") or {}))
    if ckpt is None and tcfg["kind"] != "tiny":
        log.warning("teacher %s has no checkpoint: distilling a RANDOM encoder (only useful for tests)", tcfg["kind"])
    geo = teacher_geometry(teacher)
    want = {"image_size": model.image_size, "grid": model.cfg.embedding_size, "channels": model.cfg.sam2clip.out_chans}
    if geo != want:
        raise ValueError(f"teacher {tcfg['kind']!r} produces {geo['channels']}x{geo['grid']}x{geo['grid']} features "
                         f"from {geo['image_size']} px images, but the student's SAM2CLIP gives "
                         f"{want['channels']}x{want['grid']}x{want['grid']} from {want['image_size']} px "
                         "(choose a teacher matching model.image_size and sam2clip.out_chans)")
    return teacher


def init_pos_embed(model: OVSAM, teacher: nn.Module, mode: str) -> bool:
    """Copy the teacher's absolute position embedding into ``model.sam2clip.pos_embed``.

    The reference builds its SAM2CLIP neck with the SAM checkpoint's ``image_encoder.pos_embed``
    (a frozen buffer, no interpolation: the grids are equal by construction, see
    :func:`build_teacher`). Returns whether it was copied.
    """
    if mode not in ("auto", "copy", "zero"):
        raise ValueError(f"teacher.init_pos_embed must be auto, copy or zero, got {mode!r}")
    if mode == "zero":
        return False
    source = getattr(teacher, "pos_embed", None)
    target = model.sam2clip.pos_embed
    if source is None or tuple(source.shape) != tuple(target.shape):
        why = ("the teacher has no absolute position embedding" if source is None else
               f"teacher pos_embed {tuple(source.shape)} vs SAM2CLIP {tuple(target.shape)} "
               "(set sam2clip.embed_dim to the teacher's width)")
        if mode == "copy":
            raise ValueError(f"teacher.init_pos_embed=copy: cannot copy: {why}")
        log.info("SAM2CLIP pos_embed stays zero: %s", why)
        return False
    with torch.no_grad():
        target.copy_(source.detach().to(device=target.device, dtype=target.dtype))
    log.info("SAM2CLIP pos_embed initialised from the teacher's image encoder")
    return True


TEACHER_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_teacher_dtype(spec: str, amp: Optional[torch.dtype]) -> Optional[torch.dtype]:
    """``teacher.dtype`` -> autocast dtype (None: fp32). ``auto`` follows the training's AMP dtype."""
    if spec == "auto":
        return amp
    if spec not in TEACHER_DTYPES:
        raise ValueError(f"teacher.dtype must be auto, fp32, bf16 or fp16, got {spec!r}")
    return TEACHER_DTYPES[spec]


def teacher_identity(tcfg: Dict[str, Any], teacher: nn.Module, dtype: Optional[torch.dtype] = None) -> str:
    """What cached features depend on: the weights and the compute dtype (fp32 ids are unchanged from before)."""
    if tcfg.get("checkpoint"):
        path = Path(os.path.expanduser(tcfg["checkpoint"]))
        st = path.stat()
        ident = f"{tcfg['kind']}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    else:
        ident = f"{tcfg['kind']}:{module_fingerprint(teacher)}"
    return ident if dtype is None else f"{ident}:autocast-{str(dtype).replace('torch.', '')}"


def _describe_teacher(tc: Dict[str, Any]) -> str:
    return f"{tc['kind']} ({tc['checkpoint'] if tc.get('checkpoint') else 'no checkpoint: random init'})"


class Stage1Task(engine.Task):
    name = "stage1"
    #: seconds between "teacher still encoding" lines while one teacher call runs
    heartbeat_s = 30.0

    def __init__(self, cfg: Dict[str, Any], env: engine.DistEnv, resume_from: Optional[Path]) -> None:
        self.cfg = cfg
        tc = cfg["teacher"]
        images = cfg["data"]["images"]
        if not images:
            raise ValueError("data.images is not set: give a folder of training images (--set data.images=DIR)")
        # The data first: a wrong or empty folder is reported before minutes of model loading.
        self.dataset = ImageFolderDataset(images, None, seed=int(cfg["seed"]), flip=bool(cfg["data"]["flip"]),
                                          check_images=bool(cfg["data"]["check_images"]),
                                          input_bits=cfg["data"].get("input_bits", 16),
                                          float_max=cfg["data"].get("float_max", 1.0))
        log.info("stage 1: %d image(s) in %s; building the student (%s) and the teacher %s on %s ...",
                 len(self.dataset), images, cfg["model"].get("init_checkpoint") or cfg["model"]["preset"],
                 _describe_teacher(tc), env.device)
        self.model = engine.build_model(cfg["model"], int(cfg["seed"]), resume_from).to(env.device)
        self.trainable = engine.freeze_all_but(self.model, lambda n: n.startswith("sam2clip."))
        self.model.eval()  # frozen parts stay in eval mode; the net switches sam2clip to train
        self.teacher = build_teacher(cfg["teacher"], self.model).to(env.device)
        mcfg = cfg["model"]
        fresh = resume_from is None and not mcfg.get("init_checkpoint") and not mcfg.get("sam2clip_checkpoint")
        self.pos_embed_from_teacher = fresh and init_pos_embed(self.model, self.teacher, tc.get("init_pos_embed", "auto"))
        self.net = Stage1Net(self.model)
        self.teacher_dtype = resolve_teacher_dtype(tc["dtype"], engine.resolve_amp(cfg["train"]["amp"], env.device))
        self.teacher_batch = int(tc.get("batch_size") or 0)
        if self.teacher_batch < 0:
            raise ValueError(f"teacher.batch_size must be >= 0, got {self.teacher_batch}")
        self.cache = None
        self.writer: Optional[BackgroundCacheWriter] = None
        if tc.get("cache_dir"):
            self.cache = TeacherFeatureCache(tc["cache_dir"], teacher_identity(tc, self.teacher, self.teacher_dtype),
                                             tc["cache_dtype"])
            self.writer = BackgroundCacheWriter(self.cache)
        self.dataset.set_image_size(self.model.image_size)
        self.dataset.cache = self.cache
        self.collate = collate_images
        self.teacher_runs = 0
        self.cache_hits = 0

    def _teacher_name(self) -> str:
        return f"{self.cfg['teacher']['kind']} ({str(self.teacher_dtype or torch.float32).replace('torch.', '')})"

    def teacher_plan(self, total_steps: int, batch_size: int, budget_s: float = 10.0) -> str:
        """What the teacher has to do in this run, in one line (logged before the first step):
        how many images, how many of them the cache already holds (counted for at most ``budget_s``)."""
        n = len(self.dataset)
        name = f"stage 1: teacher {self._teacher_name()}"
        if self.cache is None:
            return (f"{name} encodes the {batch_size} image(s) of every step ({total_steps * batch_size} encodings "
                    f"over {total_steps} steps, {n} distinct images; teacher.cache_dir would make it at most "
                    f"{n * (2 if self.dataset.augment.flip else 1)})")
        flips = (False, True) if self.dataset.augment.flip else (False,)
        cached = checked = 0
        t0 = time.perf_counter()
        for file in self.dataset.files:
            for flip in flips:
                cached += self.cache.path(self.dataset.cache_key(file, flip)).is_file()
            checked += 1
            if time.perf_counter() - t0 > budget_s:
                break
        entries = "entries (images x 2 flip states)" if len(flips) == 2 else "images"
        if checked < n:
            counted = f"{cached} of the first {checked * len(flips)} (of {n * len(flips)}; counting stopped after " \
                      f"{budget_s:.0f} s)"
            rest = "the others are encoded as steps first reach them, then read from the cache"
        else:
            todo = n * len(flips) - cached
            counted = f"{cached} of {n * len(flips)}"
            rest = (f"the other {todo} are encoded as steps first reach them (up to {batch_size} per step), then "
                    "read from the cache" if todo else "every step reads its targets from the cache")
        return f"{name}: {counted} {entries} are in the teacher cache {self.cache.root}; {rest}"

    def run_teacher(self, images: torch.Tensor, done: Optional[List[int]] = None) -> torch.Tensor:
        """Teacher features [N, C, G, G] in fp32, computed in ``teacher.dtype``, ``teacher.batch_size`` at a time
        (``done[0]`` counts the images finished, for progress lines)."""
        chunk = self.teacher_batch or images.shape[0]
        outs = []
        with torch.no_grad():
            for i in range(0, images.shape[0], chunk):
                if self.teacher_dtype is None:
                    outs.append(self.teacher(images[i:i + chunk]).float())
                else:
                    with torch.autocast(images.device.type, dtype=self.teacher_dtype):
                        outs.append(self.teacher(images[i:i + chunk]).float())
                if done is not None:
                    done[0] += outs[-1].shape[0]
        return torch.cat(outs)

    def encode(self, images: torch.Tensor, from_cache: int) -> torch.Tensor:
        """:meth:`run_teacher`, saying what it does: a line before the first call (with counts) and
        after it (time per image), and every :attr:`heartbeat_s` while any call runs."""
        n = int(images.shape[0])
        first = self.teacher_runs == 0
        if first:
            log.info("teacher %s: encoding %d of this step's %d image(s) on %s (the rest from the cache), its first "
                     "of the run (a SAM ViT-H takes ~0.5 s per image on a GPU, about a minute on a CPU)",
                     self._teacher_name(), n, n + from_cache, images.device)
        done = [0]
        t0 = time.perf_counter()
        with Heartbeat(log, lambda s: f"teacher {self._teacher_name()}: still encoding, {done[0]} of {n} "
                                      f"image(s) done after {duration(s)}", self.heartbeat_s):
            feats = self.run_teacher(images, done)
        if first:
            if images.is_cuda:
                torch.cuda.synchronize(images.device)
            dt = time.perf_counter() - t0
            log.info("teacher %s: %d image(s) in %s (%.2f s per image)", self._teacher_name(), n, duration(dt),
                     dt / max(n, 1))
        return feats

    def prepare(self, batch: Dict[str, Any], env: engine.DistEnv) -> Dict[str, Any]:
        cached = batch["teacher"]
        missing = [i for i, c in enumerate(cached) if c is None]
        targets: List[Optional[torch.Tensor]] = [None if c is None else c.to(env.device, non_blocking=True)
                                                 for c in cached]
        self.cache_hits += len(cached) - len(missing)
        if missing:
            idx = torch.tensor(missing, device=batch["images"].device)
            feats = self.encode(batch["images"].index_select(0, idx), len(cached) - len(missing))
            self.teacher_runs += len(missing)
            if self.cache is not None:
                feats = feats.to(self.cache.dtype).float()  # what the cache will return next time
            for j, i in enumerate(missing):
                targets[i] = feats[j]
                if self.writer is not None:
                    self.writer.put(batch["cache_key"][i], feats[j])
        batch["target"] = torch.stack(targets)  # type: ignore[arg-type]
        return batch

    def close(self) -> None:
        """Wait for the background cache writes."""
        if self.writer is not None:
            self.writer.close()

    def count(self, batch: Dict[str, Any]) -> int:
        return int(batch["images"].shape[0])

    def loss(self, outputs: torch.Tensor, batch: Dict[str, Any], step: int):
        per_image = F.mse_loss(outputs.float(), batch["target"], reduction="none").flatten(1).mean(1)
        total = per_image.sum()
        return total, {"loss": total.detach(), "mse": total.detach()}


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
        task = Stage1Task(cfg, env, resume_from)
        try:
            with engine.replacing_previous_run(out, plan, env):  # only now: a config that fails to load keeps the old run
                if env.is_main:
                    log.info("stage 1: %d images, teacher %s (%s), student SAM2CLIP %.2fM trainable params, world size %d",
                             len(task.dataset), cfg["teacher"]["kind"],
                             str(task.teacher_dtype or torch.float32).replace("torch.", ""),
                             sum(p.numel() for _, p in task.trainable) / 1e6, env.world_size)
                    tcfg = cfg["train"]
                    spe = max(1, steps_per_epoch(len(task.dataset), int(tcfg["batch_size"])))
                    log.info("%s", task.teacher_plan(engine.run_length(tcfg, spe), int(tcfg["batch_size"])))
                    out.mkdir(parents=True, exist_ok=True)
                    write_json(out / "data_report.json",
                               {"images": len(task.dataset), "skipped": task.dataset.skipped.to_dict()}, indent=1)
                info = engine.run(task, cfg, env, resume_from, state)
        finally:
            task.close()  # every queued teacher-cache write reaches the disk
        if env.is_main:
            log.info("teacher ran on %d image(s), %d cache hit(s)", task.teacher_runs, task.cache_hits)
        return info
    finally:
        engine.teardown_distributed(env)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(*STAGE_COMMANDS["stage1"], DEFAULTS, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
