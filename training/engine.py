"""The training loop shared by both stages.

What it guarantees:

* **Same script, 1 CPU process or N GPUs.** Under ``torchrun`` (``WORLD_SIZE``
  set) it initialises ``torch.distributed`` (NCCL on CUDA, gloo on CPU), wraps
  the trainable network in ``DistributedDataParallel`` and shards every global
  batch over the ranks (:class:`~training.data.sampler.StepBatchSampler`).
  ``train.batch_size`` is the GLOBAL batch (images per optimizer step), and
  losses are normalised by the global number of instances/images, so the loss
  curve does not depend on the number of processes. Only rank 0 writes
  checkpoints, logs and TensorBoard events.
* **Exact resume.** Every ``train.checkpoint_every`` steps rank 0 writes
  ``checkpoints/step-XXXXXXXX/{model.pt,state.pt}`` into a temporary folder and
  renames it into place (atomic), so a kill at any moment leaves the last good
  checkpoint. ``model.pt`` is an ``ovsam_ros`` checkpoint (``save_ovsam``),
  ``state.pt`` holds optimizer, scheduler, grad-scaler, the RNG states of
  torch / numpy / python (every rank) and the data position (epoch, step in
  epoch, sampler seed). Because all data randomness is seeded per sample
  (seed, epoch, index) and per-step, a resumed run computes exactly what the
  uninterrupted run would have.
* **One run per output folder.** A run into a folder that holds another
  (checkpoints, metrics, model.pt, ``config.yaml``: the run's resolved
  config, written atomically at its start) is refused before any model is
  loaded unless ``--resume`` (continue it) or ``--overwrite`` (delete it);
  ``--resume`` refuses a checkpoint trained with other settings than
  :data:`SAFE_RESUME_KEYS` allows (:func:`plan_output_dir`, :func:`check_resume`).
* AdamW with warmup + cosine or multi-step decay, gradient clipping, gradient
  accumulation (``no_sync`` on all but the last micro-batch), AMP autocast
  (bf16 / fp16 with a grad scaler) on CUDA, tqdm progress, TensorBoard and a
  ``metrics.jsonl`` with one line per optimizer step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ovsam_ros.disk_space import DiskSpaceError, disk_full_error, find_disk_full, free_bytes, size_text
from ovsam_ros.model.build import load_ovsam
from ovsam_ros.model.checkpoints import CheckpointError, ovsam_payload, save_ovsam, serialized_size
from ovsam_ros.model.errors import UnsafeCheckpointError
from ovsam_ros.model.safe_load import safe_torch_load
from ovsam_ros.model.ovsam import OVSAM

from .config import dump
from ovsam_ros.files import atomic_write, fsync_path
from .data.sampler import RunBatchSampler, steps_per_epoch
from .parent_watch import stop_with_torchrun_agent

log = logging.getLogger("training")

TRAIN_DEFAULTS: Dict[str, Any] = {
    "epochs": 1,
    "max_steps": None,  # the run's optimizer steps (epochs cycled as needed; train.epochs is then ignored);
    #                     None: epochs x steps/epoch
    "batch_size": 4,  # GLOBAL images per optimizer step (all ranks, all accumulation micro-batches)
    "grad_accum": 1,
    "lr": 1.0e-4,
    "weight_decay": 0.05,
    "betas": [0.9, 0.999],
    "eps": 1.0e-8,
    "schedule": "cosine",  # cosine | multistep | constant
    "warmup_steps": 0,
    "warmup_factor": 0.001,
    "milestones": [],  # multistep: epochs (ints) at which lr *= gamma
    "gamma": 0.1,
    "min_lr_ratio": 0.0,  # cosine floor
    "grad_clip": 5.0,  # max global grad norm; null/0: no clipping
    "amp": "auto",  # auto (bf16 on CUDA if supported, else off) | bf16 | fp16 | off
    "device": "auto",  # auto | cpu | cuda
    "num_workers": 0,  # data-loading processes per rank; "auto": the CPUs this rank may use (at most 16)
    "prefetch_factor": 4,  # batches each worker loads ahead (num_workers > 0)
    "checkpoint_every": 100,  # optimizer steps; the end of training always checkpoints
    "keep_checkpoints": 2,
    # At the start, the disk must hold keep_checkpoints + 1 checkpoints (a new one is written before
    # the oldest goes) and model.pt, sizes measured from the model and optimizer: refuse | warn | off
    "free_space_check": "refuse",
    "log_every": 10,
    "progress": True,
    "tensorboard": True,
    "threads": None,  # torch.set_num_threads on CPU (None: leave torch's default)
    "deterministic": False,  # torch.use_deterministic_algorithms
}


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistEnv:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            t = tensor.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return t
        return tensor

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> List[Any]:
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


#: Device types training runs on (the predictor's rule, ovsam_ros.runtime.resolve_device, decides the rest).
TRAIN_DEVICE_TYPES = ("cpu", "cuda")


def training_device(device_spec: Any, option: str = "train.device") -> torch.device:
    """``device_spec`` as a device, or ValueError naming ``option``: the predictor's rule
    (:func:`ovsam_ros.runtime.resolve_device`: auto, cpu, cuda, cuda:N; CUDA asked for without
    one is an error, not a CPU fallback), and only the device types training supports."""
    from ovsam_ros.runtime import resolve_device

    spec = str(device_spec).strip() if device_spec is not None else "auto"
    try:
        device = resolve_device(spec)
    except ValueError as err:
        why = "not a device name" if str(err).startswith("invalid device") else str(err)
        raise ValueError(f"{option}={spec!r}: {why}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in TRAIN_DEVICE_TYPES:
        raise ValueError(f"{option}={spec!r}: training runs on {' or '.join(TRAIN_DEVICE_TYPES)} only; "
                         "use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{option}={spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def setup_distributed(device_spec: str = "auto", option: str = "train.device") -> DistEnv:
    """Read torchrun's environment; init the process group when WORLD_SIZE > 1. ``option``: how the
    caller names the device setting (``train.device``, ``--device``), for the error a bad one gives."""
    stop_with_torchrun_agent()  # a worker whose torchrun agent dies (kill -9) stops too, before any rendezvous
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = training_device(device_spec, option)
    if wanted.type == "cuda":
        # under torchrun each rank takes its LOCAL_RANK's GPU; a single process takes the one named
        device = wanted if wanted.index is not None and world == 1 else torch.device(f"cuda:{local}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(world, rank, local, device)


def teardown_distributed(env: DistEnv) -> None:
    release_output_lock(env)  # the end of a run (of a failed one too): the output folder is free again
    if env.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- misc helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if amp in (None, "off", "fp32", False):
        return None
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if amp in ("bf16", "fp16"):
        if device.type != "cuda":
            log.warning("train.amp=%s requested on %s: AMP is only used on CUDA; running fp32", amp, device)
            return None
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"train.amp must be auto, bf16, fp16 or off, got {amp!r}")


def lr_lambda(cfg: Dict[str, Any], total_steps: int, steps_per_ep: int) -> Callable[[int], float]:
    schedule = cfg["schedule"]
    warmup = int(cfg["warmup_steps"] or 0)
    wf = float(cfg["warmup_factor"])
    milestones = sorted(int(m) * steps_per_ep for m in (cfg["milestones"] or []))
    gamma, floor = float(cfg["gamma"]), float(cfg["min_lr_ratio"])
    if schedule not in ("cosine", "multistep", "constant"):
        raise ValueError(f"train.schedule must be cosine, multistep or constant, got {schedule!r}")

    def factor(step: int) -> float:
        # Linear warmup as mmengine's LinearLR(start_factor=wf, begin=0, end=warmup), the reference's:
        # wf at step 0, rising linearly to 1 at step warmup - 1 (mmengine: total_iters = end - begin - 1).
        w = 1.0
        if warmup > 0 and step < warmup:
            w = wf + (1.0 - wf) * step / max(1, warmup - 1)
        if schedule == "cosine":
            progress = min(1.0, step / max(1, total_steps))
            return w * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
        if schedule == "multistep":
            return w * gamma ** sum(step >= m for m in milestones)
        return w

    return factor


def param_groups(named: Sequence[Tuple[str, nn.Parameter]], weight_decay: float) -> List[Dict[str, Any]]:
    """AdamW groups: no weight decay for biases, norms (1-D tensors) and token embeddings."""
    decay, no_decay = [], []
    for name, p in named:
        if p.ndim <= 1 or name.endswith("token.weight") or name.endswith("tokens.weight"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def freeze_all_but(model: nn.Module, trainable: Callable[[str], bool]) -> List[Tuple[str, nn.Parameter]]:
    named = []
    for name, p in model.named_parameters():
        p.requires_grad_(bool(trainable(name)))
        if p.requires_grad:
            named.append((name, p))
    if not named:
        raise ValueError("nothing to train: no parameter matched")
    return named


# ----------------------------------------------------------------------------- checkpoints
STEP_DIR = "step-{:08d}"


class CheckpointManager:
    """``<output>/checkpoints/step-XXXXXXXX/{model.pt,state.pt}``, each written atomically as a folder."""

    def __init__(self, output_dir: Path, keep: int = 2) -> None:
        self.root = Path(output_dir) / "checkpoints"
        self.keep = max(1, int(keep))

    def list(self, complete_only: bool = True) -> List[Path]:
        """Step folders, oldest first; with ``complete_only`` those whose marker lists the files
        at their recorded sizes (the cheap check; :func:`verify_checkpoint` also hashes)."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith("step-"):
                try:
                    step = int(p.name[5:])
                except ValueError:
                    continue
                if not complete_only or checkpoint_problem(p, hash_files=False) is None:
                    found.append((step, p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Optional[Path]:
        items = self.list()
        return items[-1] if items else None

    def save(self, step: int, model: OVSAM, state: Dict[str, Any], include_backbone: bool,
             extra: Dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / STEP_DIR.format(step)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            tmp.mkdir()
            save_ovsam(model, tmp / "model.pt", include_backbone=include_backbone, extra=extra)
            atomic_write(tmp / "state.pt", lambda fh: torch.save(state, fh))
            write_marker(tmp)  # last: a folder without a valid marker never counts as a checkpoint
            fsync_path(tmp, directory=True)
        except Exception as error:
            shutil.rmtree(tmp, ignore_errors=True)  # never counted (no marker); its space is freed now
            if find_disk_full(error) is None:
                raise
            raise self.disk_full(final.name, checkpoint_size(model, state, include_backbone, extra)) from None
        if final.exists():  # re-saving a step (a resumed run reaching it again): replace
            trash = self.root / f".old-{final.name}-{os.getpid()}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_path(self.root, directory=True)
        for old in self.list()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in self.root.glob(".tmp-*"):  # from killed runs
            if leftover != tmp:
                shutil.rmtree(leftover, ignore_errors=True)
        return final


    def disk_full(self, name: str, needed: int) -> DiskSpaceError:
        """The one-line error for a save that ran out of space: what was kept, what to do."""
        newest = self.latest()
        kept = (f"The earlier checkpoints are intact (newest: {newest.name})" if newest is not None
                else "No checkpoint of this run was written yet")
        return disk_full_error(
            self.root, f"checkpoint {name}", needed,
            f"{kept}; with train.keep_checkpoints={self.keep} a run needs room for {self.keep + 1} checkpoints. "
            "Free space (or lower train.keep_checkpoints, or use another output_dir), then continue with --resume")


class TrainingDiverged(ValueError):
    """A non-finite loss, gradient or weight: the run stops, and nothing non-finite is saved."""


def _resume_hint(ckpt: "CheckpointManager") -> str:
    latest = ckpt.latest()
    if latest is None:
        return ("No checkpoint of this run was written before it; start again with a lower train.lr "
                "(--overwrite)")
    # --resume restores the optimizer's lr schedule; the weights alone start a run with a new lr
    return (f"The last complete checkpoint is {latest} (step {_step_of(latest)}): continue from its weights with "
            f"a lower lr: --set model.init_checkpoint={latest / 'model.pt'} --set train.lr=<lower> and a new "
            "--output-dir (a --resume keeps the checkpoint's train.lr)")


def diverged_message(stage: str, step: int, total: int, lr: float, ckpt: "CheckpointManager",
                     bad: Dict[str, float]) -> str:
    """The one line a diverged run stops with: the step, what is non-finite, the lr, where to continue."""
    what = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
    kind = "gradient norm" if set(bad) == {"grad_norm"} else "loss term(s)"
    return (f"{stage}: training diverged at step {step} of {total}: non-finite {kind} {what} (lr {lr:.3e}). "
            f"The run stopped before this step changed the weights; no model.pt was written. {_resume_hint(ckpt)}")


def non_finite_tensors(model: nn.Module) -> List[str]:
    """Names of the model's floating-point parameters / buffers that hold NaN or infinity."""
    return [name for name, t in model.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite_weights(model: nn.Module, what: str, ckpt: "CheckpointManager") -> None:
    """Refuse (:class:`TrainingDiverged`) to save ``what`` from a model with non-finite weights."""
    bad = non_finite_tensors(model)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise TrainingDiverged(f"not saving {what}: {len(bad)} weight tensor(s) hold NaN or infinity ({shown}). "
                               f"{_resume_hint(ckpt)}")


def metrics_line(record: Dict[str, Any]) -> str:
    """``record`` as one line of strict JSON: a non-finite number is written as null (JSON has no NaN)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)


#: Bytes of a checkpoint folder besides its two files (the completion marker).
MARKER_BYTES = 1024
#: AdamW keeps exp_avg + exp_avg_sq (the parameter's size each) and a step counter per parameter;
#: before the first step the optimizer holds none of it yet. Per-tensor bytes of torch.save's zip
#: records and pickle: measured 768 B for a parameter's 3 tensors (tiny model); 400 each errs high.
ADAMW_MOMENTS = 2
PER_TENSOR_BYTES = 400


def checkpoint_size(model: OVSAM, state: Dict[str, Any], include_backbone: bool, extra: Dict[str, Any]) -> int:
    """Bytes one checkpoint folder takes: ``model.pt`` and ``state.pt`` serialised exactly as
    :meth:`CheckpointManager.save` writes them (to a byte counter, not the disk)."""
    return serialized_size(ovsam_payload(model, include_backbone, extra)) + serialized_size(state) + MARKER_BYTES


def unstarted_optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """What ``state.pt`` grows by once ``optimizer`` (AdamW) has stepped: the moments of every
    trainable parameter it holds no state for yet (all of them before the first step)."""
    size = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and p not in optimizer.state:
                size += ADAMW_MOMENTS * p.numel() * p.element_size() + 3 * PER_TENSOR_BYTES
    return size


def space_needed(existing: int, saves: int, keep: int, checkpoint: int, final_model: int) -> Tuple[int, int]:
    """``(bytes, peak checkpoints)`` a run still needs on its disk: ``saves`` more checkpoints of
    ``checkpoint`` bytes with ``existing`` complete ones there now, each new one written in full
    before the oldest beyond ``keep`` is deleted (so ``keep + 1`` at the peak), then
    ``model.pt`` (``final_model`` bytes) next to the ``keep`` that stay."""
    peak = min(existing + saves, max(existing, keep) + 1)
    during_saves = (peak - existing) * checkpoint
    after = min(existing + saves, keep) if saves else existing
    return max(during_saves, (after - existing) * checkpoint + final_model, 0), peak


def remaining_saves(step: int, total: int, every: int) -> int:
    """Checkpoints a run from ``step`` to ``total`` writes: every ``every`` steps before the end, and at the end."""
    periodic = (total - 1) // every - step // every if every and total - 1 > step else 0
    return max(periodic, 0) + 1


#: train.free_space_check values (what a run does when its disk looks too small at the start).
FREE_SPACE_CHECKS = ("refuse", "warn", "off")


def check_free_space(out: Path, needed: int, peak: int, checkpoint: int, keep: int, mode: str) -> Optional[str]:
    """The message when ``out``'s disk has less than ``needed`` bytes free (None when it fits, or
    ``mode`` is off); logs the numbers at INFO either way."""
    if mode == "off":
        return None
    free = free_bytes(out)
    log.info("disk: this run needs about %s more in %s (%d checkpoint(s) of about %s at the peak, and model.pt); "
             "%s free", size_text(needed), out, peak, size_text(checkpoint), size_text(free))
    if free >= needed:
        return None
    return (f"not enough free space for this run in {out}: it needs about {size_text(needed)} more "
            f"(with train.keep_checkpoints={keep}, room for {peak} checkpoint(s) of about {size_text(checkpoint)} "
            f"at once, and model.pt), {size_text(free)} free. Free space, lower train.keep_checkpoints, or use "
            "another output_dir" + (" (train.free_space_check=warn starts anyway)" if mode == "refuse" else ""))


MARKER = "complete.json"
CHECKPOINT_FILES = ("model.pt", "state.pt")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_marker(folder: Path) -> None:
    """``complete.json``: size and sha256 of every checkpoint file, written after them."""
    files = {name: {"size": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
             for name in CHECKPOINT_FILES}
    data = json.dumps({"format": "ovsam_ros.checkpoint_marker", "version": 1, "files": files}, indent=1)
    atomic_write(folder / MARKER, lambda fh: fh.write(data.encode("utf-8")))


def checkpoint_problem(folder: Path, hash_files: bool = True) -> Optional[str]:
    """Why ``folder`` is not a complete checkpoint (None if it is): a missing or unreadable
    marker, a missing file, or a size / sha256 that differs from the marker's."""
    marker = folder / MARKER
    if not marker.is_file():
        missing = [n for n in CHECKPOINT_FILES if not (folder / n).is_file()]
        return (f"missing {', '.join(missing)}" if missing else
                f"no {MARKER} (written last: the save was interrupted, or an older ovsam_ros wrote it)")
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {MARKER} ({type(err).__name__})"
    for name in CHECKPOINT_FILES:
        path, want = folder / name, files.get(name) if isinstance(files, dict) else None
        if not isinstance(want, dict) or not path.is_file():
            return f"{name} missing"
        size = path.stat().st_size
        if size != want.get("size"):
            return f"{name} is {size} bytes, the marker says {want.get('size')} (truncated or overwritten)"
        if hash_files and _sha256(path) != want.get("sha256"):
            return f"{name} content differs from its sha256 in {MARKER} (corrupt)"
    return None


def _newest_complete(output_dir: Path, what: str) -> Optional[Path]:
    """Newest verified checkpoint under ``output_dir``; says which it took and why it skipped others."""
    manager = CheckpointManager(output_dir)
    for folder in reversed(manager.list(complete_only=False)):
        problem = checkpoint_problem(folder)
        if problem is None:
            log.info("%s: resuming from %s (newest complete checkpoint)", what, folder)
            return folder
        log.warning("%s: skipping %s: %s", what, folder, problem)
    return None


def resolve_resume(resume: Optional[str], output_dir: Path) -> Optional[Path]:
    """``--resume`` (newest complete checkpoint under output_dir; nothing there = fresh start)
    or ``--resume PATH`` (a step folder, which must be complete, or a run / checkpoints folder)."""
    if not resume:
        return None
    if resume == "auto":
        latest = _newest_complete(Path(output_dir), "--resume")
        if latest is None:
            log.warning("--resume: no complete checkpoint under %s/checkpoints; starting from scratch", output_dir)
        return latest
    path = Path(os.path.expanduser(resume))
    if path.is_file() and path.name in CHECKPOINT_FILES + (MARKER,):
        path = path.parent
    if path.is_dir() and path.name == "checkpoints" or (path / "checkpoints").is_dir():
        latest = _newest_complete(path.parent if path.name == "checkpoints" else path, f"--resume {resume}")
        if latest is None:
            raise FileNotFoundError(f"--resume {resume}: no complete checkpoint found")
        return latest
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint folder")
    problem = checkpoint_problem(path)
    if problem is not None:
        others = [p for p in CheckpointManager(path.parent.parent).list() if p != path] \
            if path.parent.name == "checkpoints" else []
        hint = f"; the newest complete one is {others[-1]}" if others else ""
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint folder: {problem}{hint}")
    return path


# ----------------------------------------------------------------------------- run folders
#: The one place that says which config keys a ``--resume`` may change. Everything else changes
#: the math of the remaining steps (model, data, optimizer, schedule shape, seeds, loss weights,
#: precision) or the run's provenance (paths of the data and of the weights it started from), and
#: a resume with such a change is refused, naming the keys. Each safe key with why it is safe:
SAFE_RESUME_KEYS: Dict[str, str] = {
    "output_dir": "where the run lives (a run folder copied elsewhere continues there)",
    "train.max_steps": "where the run ends (with the cosine schedule its length moves; the lr change is logged)",
    "train.epochs": "where the run ends (as train.max_steps; the data order of an epoch does not depend on it)",
    "train.checkpoint_every": "how often it saves",
    "train.keep_checkpoints": "how many saves it keeps",
    "train.free_space_check": "what happens when the disk looks too small at the start, nothing in the training",
    "train.log_every": "how often it logs",
    "train.progress": "progress bar",
    "train.tensorboard": "TensorBoard events",
    "train.num_workers": "loader processes: every sample's randomness is seeded by (seed, epoch, index)",
    "train.prefetch_factor": "how far the loader reads ahead",
    "train.threads": "CPU threads",
    "train.device": "where it runs (train.amp, which sets the precision, is not safe to change)",
    "train.deterministic": "algorithm choice, not the maths",
    "train.grad_accum": "micro-batches per step: same global batch, same normalisation "
                        "(test_gradient_accumulation_matches_one_big_batch)",
    "model.include_backbone": "whether saved files carry the frozen CLIP weights",
    "teacher.cache_dir": "where teacher features are cached (entries are keyed by the teacher and its dtype)",
    "teacher.batch_size": "images per teacher forward",
    "text.cache_dir": "where text embeddings are cached (keyed by the text model and the templates)",
    "data.check_images": "decode every image at start (a changed image count is caught on its own)",
}

#: What a training run writes into its output folder; ``--overwrite`` removes exactly these
#: (other files there, e.g. a teacher cache, stay).
RUN_CONFIG = "config.yaml"
RUN_ENTRIES = ("checkpoints", "metrics.jsonl", "model.pt", RUN_CONFIG, "tb", "data_report.json")
_TRASH = ".overwritten-"


class RunFolderError(ValueError):
    """An output folder that holds another run, or a --resume whose config differs in what matters."""


class _Absent:
    def __repr__(self) -> str:
        return "(not set)"


_ABSENT: Any = _Absent()


def _show(value: Any) -> str:
    if value is _ABSENT:
        return repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def config_changes(old: Dict[str, Any], new: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None,
                   prefix: str = "") -> List[Tuple[str, Any, Any]]:
    """``(dotted.key, old, new)`` for every leaf that differs (``_``-keys are bookkeeping). A key the
    old config lacks that now holds its code default (added by a newer ovsam_ros), or one the code
    no longer has, does not count."""
    changes: List[Tuple[str, Any, Any]] = []
    for key in list(old) + [k for k in new if k not in old]:
        if str(key).startswith("_"):
            continue
        path = f"{prefix}{key}"
        o, n = old.get(key, _ABSENT), new.get(key, _ABSENT)
        d = defaults.get(key, _ABSENT) if isinstance(defaults, dict) else _ABSENT
        if isinstance(o, dict) and isinstance(n, dict):
            changes += config_changes(o, n, d if isinstance(d, dict) else None, f"{path}.")
        elif o is _ABSENT and d is not _ABSENT and n == d:
            continue
        elif n is _ABSENT and isinstance(defaults, dict) and defaults and key not in defaults:
            continue
        elif o != n:
            changes.append((path, o, n))
    return changes


def _is_safe(key: str) -> bool:
    return any(key == s or key.startswith(f"{s}.") for s in SAFE_RESUME_KEYS)


def check_resume(state: Dict[str, Any], cfg: Dict[str, Any], source: Path,
                 defaults: Optional[Dict[str, Any]] = None, dataset_len: Optional[int] = None,
                 compare_config: bool = True) -> None:
    """Refuse (:class:`RunFolderError`) a resume whose config differs from the checkpoint's in a key
    outside :data:`SAFE_RESUME_KEYS`, or whose data order differs (batch, seed, dataset length);
    one message names every such key with both values. Safe changes are logged."""
    unsafe: List[Tuple[str, Any, Any]] = []
    old_cfg = state.get("config") if compare_config else None
    if isinstance(old_cfg, dict):
        changes = config_changes(old_cfg, cfg, defaults)
        unsafe = [c for c in changes if not _is_safe(c[0])]
        safe = [c for c in changes if _is_safe(c[0])]
        if safe and not unsafe:
            log.info("resuming with changed settings: %s",
                     ", ".join(f"{k} {_show(o)} -> {_show(n)}" for k, o, n in safe))
    elif compare_config:
        log.warning("%s: the checkpoint records no config; only its data order is checked", source)
    data = state.get("data") or {}
    named = {k for k, _, _ in unsafe}
    for key, name, now in (("batch_size", "train.batch_size", int(cfg["train"]["batch_size"])),
                           ("seed", "seed", int(cfg["seed"])), ("dataset_len", "dataset length", dataset_len)):
        if now is None or key not in data or name in named:
            continue
        if data[key] != now:
            unsafe.append((name, data[key], now))
    if not unsafe:
        return
    lines = "\n".join(f"  {k}: {_show(o)} -> {_show(n)}" for k, o, n in unsafe)
    sets = " ".join(f"--set {k}={_show(o)}" for k, o, _ in unsafe if o is not _ABSENT and k != "dataset length")
    raise RunFolderError(
        f"cannot resume from {source}: it was trained with other settings than these, and continuing it "
        f"would mix two runs (exact resume needs the same model, data, data order and optimisation):\n{lines}\n"
        + (f"Resume with the checkpoint's values ({sets}), " if sets else "Resume with the checkpoint's data, ")
        + "or start a new run: another --output-dir, or --overwrite instead of --resume. A resume may change only: "
        + ", ".join(SAFE_RESUME_KEYS) + ".")


def run_folder_contents(out: Path) -> List[str]:
    """What in ``out`` belongs to a training run, described (empty: no run there). ``data_report.json``
    alone does not count (a run that failed before its first step); an empty folder does not either."""
    out = Path(out)
    found: List[str] = []
    ckpt = out / "checkpoints"
    if ckpt.is_dir():
        entries = sorted(p.name for p in ckpt.iterdir())
        if entries:
            steps = [e for e in entries if e.startswith("step-")]
            shown = ", ".join(steps[-3:]) if steps else ", ".join(entries[:3])
            found.append(f"checkpoints/ ({len(entries)}: {'... ' if len(steps) > 3 else ''}{shown})")
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        try:
            n = sum(1 for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip())
            found.append(f"metrics.jsonl ({n} step{'s' if n != 1 else ''})")
        except OSError:
            found.append("metrics.jsonl")
    for name in ("model.pt", RUN_CONFIG):
        if (out / name).exists():
            found.append(name)
    tb = out / "tb"
    if tb.is_dir() and any(p.is_file() for p in tb.rglob("*")):
        found.append("tb/ (TensorBoard events)")
    return found


@dataclass(frozen=True)
class OutputPlan:
    """What a run does with its output folder: ``error`` refuses it; ``clear`` = rank 0 removes the
    previous run's files (:data:`RUN_ENTRIES`) once the new model and data are loaded."""

    error: Optional[str] = None
    clear: bool = False
    note: str = ""


def _within(path: Path, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except OSError:
        return False


def _step_of(folder: Path) -> int:
    try:
        return int(Path(folder).name[5:])
    except ValueError:
        return -1


def plan_output_dir(out: Path, cfg: Dict[str, Any], resume: Optional[str], resume_from: Optional[Path],
                    overwrite: bool = False, defaults: Optional[Dict[str, Any]] = None) -> OutputPlan:
    """Decide, from the folder alone (identical on every rank), whether a run may use ``out``:

    * empty or new: yes;
    * ``--resume`` of this folder's own checkpoint: yes, unless complete checkpoints newer than
      the one resumed exist (the new ones would be rotated away in their favour);
    * ``--resume`` with no complete checkpoint, after a run that died before its first one (only
      config / metrics / events there): restart at step 0 with those files removed, if the
      recorded config matches in every key a resume may not change;
    * anything else with a run in it: refused, unless ``--overwrite`` (its files are removed).
    """
    out = Path(out)
    found = run_folder_contents(out)
    own = resume_from is not None and _within(resume_from, out)
    if overwrite and (resume == "auto" or own):
        return OutputPlan(error=f"--overwrite and --resume contradict each other for {out}: --resume continues "
                                "its run, --overwrite deletes it; give one of them")
    if own:
        assert resume_from is not None
        newer = [p.name for p in CheckpointManager(out).list() if _step_of(p) > _step_of(resume_from)]
        if newer:
            return OutputPlan(error=(
                f"--resume {resume_from}: {out} holds newer checkpoints of its run ({', '.join(newer)}); "
                "continuing from an older one would mix the two continuations (the old, higher-numbered "
                "ones count as newest). Resume the newest (--resume without a path), or delete the newer "
                "step folders first"))
        return OutputPlan()
    if not found:
        return OutputPlan()
    if resume == "auto" and resume_from is None:
        final = [f for f in found if f == "model.pt" or f.startswith("checkpoints/")]
        if final:
            return OutputPlan(error=(
                f"--resume: {out} holds a run ({'; '.join(found)}) but no complete checkpoint to continue "
                "from. Start it over with --overwrite (deletes its files), or choose another --output-dir"))
        recorded = out / RUN_CONFIG
        if recorded.is_file():
            import yaml

            try:
                old = yaml.safe_load(recorded.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                old = None
            if isinstance(old, dict):
                unsafe = [c for c in config_changes(old, cfg, defaults) if not _is_safe(c[0])]
                if unsafe:
                    lines = "\n".join(f"  {k}: {_show(o)} -> {_show(n)}" for k, o, n in unsafe)
                    return OutputPlan(error=(
                        f"--resume: {out} holds the start of another run (no checkpoint yet: {'; '.join(found)}) "
                        f"with other settings:\n{lines}\nStart over with --overwrite (deletes its files), or "
                        "choose another --output-dir"))
        return OutputPlan(clear=True, note=(
            f"--resume: no checkpoint in {out} yet; restarting its run at step 0 (removing {'; '.join(found)})"))
    if overwrite:
        return OutputPlan(clear=True, note=f"--overwrite: deleting the previous run in {out} ({'; '.join(found)})")
    return OutputPlan(error=(
        f"output folder {out} already holds a training run: {'; '.join(found)}. Another run there would mix "
        "with it. Continue that run with --resume, or start over with --overwrite (deletes its checkpoints, "
        "metrics, model.pt and TensorBoard events), or choose another --output-dir"))


def decide_output_dir(out: Path, cfg: Dict[str, Any], resume: Optional[str], resume_from: Optional[Path],
                      overwrite: bool, env: DistEnv, defaults: Optional[Dict[str, Any]] = None) -> OutputPlan:
    """:func:`plan_output_dir` as rank 0 sees it, on every rank (so all refuse or all go on together,
    even where the ranks' file systems differ); raises :class:`RunFolderError` on a refusal."""
    plan = None
    if env.is_main:  # the lock first: checked and used by one run at a time
        release_output_lock(env)
        fd, busy = lock_output_dir(out, note_holder=False)
        if fd is not None:
            _LOCKS[id(env)] = fd
        plan = OutputPlan(error=busy) if busy else plan_output_dir(out, cfg, resume, resume_from, overwrite, defaults)
        if plan.error:
            release_output_lock(env)
        elif fd is not None:  # (a refused run leaves the folder's files as they were, the lock file too)
            note_lock_holder(fd)
    plan = env.broadcast_object(plan)
    if plan.error:
        raise RunFolderError(plan.error)
    return plan


def clear_previous_run(out: Path, plan: OutputPlan, env: DistEnv) -> None:
    """Rank 0 deletes the previous run's files (:data:`RUN_ENTRIES`) when ``plan.clear``; every rank
    waits for it. Each entry is first renamed into ``<out>/.overwritten-<pid>/`` (atomic), which is
    then deleted: a kill midway leaves either the old entry, which the next start reports again, or
    the hidden folder, which the next clear removes; never part of a checkpoint that looks whole."""
    if not plan.clear:
        return
    if env.is_main:
        out = Path(out)
        log.warning("%s", plan.note)
        trash = out / f"{_TRASH}{os.getpid()}"
        trash.mkdir(parents=True, exist_ok=True)
        for name in RUN_ENTRIES:
            if os.path.lexists(out / name):
                os.rename(out / name, trash / name)
        fsync_path(out, directory=True)
        for old in out.glob(f"{_TRASH}*"):
            shutil.rmtree(old, ignore_errors=True)
    env.barrier()


def _started(out: Path) -> bool:
    """Whether a run in ``out`` got anywhere: a logged step, a checkpoint or a final model."""
    ckpt = out / "checkpoints"
    if (out / "model.pt").exists() or (ckpt.is_dir() and any(ckpt.iterdir())):
        return True
    try:
        return any(line.strip() for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
    except OSError:
        return False


def _move_entries(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUN_ENTRIES:
        if os.path.lexists(src / name):
            os.rename(src / name, dest / name)


@contextlib.contextmanager
def replacing_previous_run(out: Path, plan: OutputPlan, env: DistEnv) -> Iterator[None]:
    """Wrap a run so that one failing before its first logged step leaves ``out`` as it found it.

    When ``plan.clear``, rank 0 moves the previous run's files (:data:`RUN_ENTRIES`) into
    ``<out>/.overwritten-<pid>/`` (renames) and deletes them once the new run logged its first step
    (or when it ends), or puts them back
    when it failed before logging a step (a config / data / disk-space error), after removing what
    the failed run wrote (config.yaml, data_report.json, tb/), so the corrected command is not refused
    as "already holds a training run". A new folder gets the same cleanup; a resumed run's files are
    never removed. A run that failed after logging steps keeps its files (and the old ones are gone)."""
    out = Path(out)
    fresh = plan.clear or not run_folder_contents(out)
    aside: Optional[Path] = None
    if env.is_main and plan.clear:
        log.warning("%s", plan.note)
        for old in out.glob(f"{_TRASH}*"):  # left by a killed run
            shutil.rmtree(old, ignore_errors=True)
        aside = out / f"{_TRASH}{os.getpid()}"
        _move_entries(out, aside)
        fsync_path(out, directory=True)
    env.barrier()
    try:
        yield
    except BaseException:
        if env.is_main and fresh and not _started(out):
            failed = out / f"{_TRASH}failed-{os.getpid()}"
            _move_entries(out, failed)
            if aside is not None:
                for entry in aside.iterdir():
                    os.rename(entry, out / entry.name)
                log.warning("the run failed before its first step: the previous run in %s is back as it was", out)
            for folder in (failed, aside):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
        elif aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


#: ``<out>/.lock``: held (fcntl.flock) by rank 0 for the life of a run; the kernel drops it when the
#: process ends, however it ends.
LOCK_FILE = ".lock"
_LOCKS: Dict[int, int] = {}  # id(DistEnv) -> descriptor of the run's lock file


def lock_output_dir(out: Path, note_holder: bool = True) -> Tuple[Optional[int], Optional[str]]:
    """Take the exclusive lock on ``out`` (created if missing): ``(descriptor, None)``, or ``(None, one
    line naming the folder and the PID of the run holding it)``. Closing the descriptor releases it.
    ``note_holder``: write this PID into the lock file now (else :func:`note_lock_holder` later)."""
    import fcntl

    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        return None, f"output folder {out} exists and is not a folder; choose another --output-dir"
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        except OSError:
            holder = ""
        os.close(fd)
        return None, (f"output folder {out} is in use by another training run ({holder or 'PID unknown'}); two runs "
                "in one folder would mix their files. Wait for it to finish, or choose another --output-dir")
    if note_holder:
        note_lock_holder(fd)
    return fd, None


def note_lock_holder(fd: int) -> None:
    """Write this process's PID and host into the held lock file (what a refused run names)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)


def release_output_lock(env: DistEnv) -> None:
    """Drop the output-folder lock of the run ``env`` belongs to (its end, failed or not)."""
    fd = _LOCKS.pop(id(env), None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the only descriptor releases the flock


# ----------------------------------------------------------------------------- task protocol
class Task:
    """What a stage plugs into :func:`run`. See ``stage1.py`` / ``stage2.py``."""

    name = "task"
    find_unused_parameters = False

    model: OVSAM
    net: nn.Module
    trainable: List[Tuple[str, nn.Parameter]]
    dataset: Dataset
    collate: Callable

    def prepare(self, batch: Dict[str, Any], env: DistEnv) -> Dict[str, Any]:
        raise NotImplementedError

    def count(self, batch: Dict[str, Any]) -> int:
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Dict[str, Any], step: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(weighted loss SUM over the micro-batch, {component: detached sum})."""
        raise NotImplementedError

    def extra_state(self) -> Dict[str, Any]:
        return {}

    def checkpoint_extra(self) -> Dict[str, Any]:
        """Plain data stored in every model.pt of the run (``extra`` of ``save_ovsam``; stage 2:
        the vocabulary it trained with, which the predictor then uses by default)."""
        return {}


@dataclass
class RunInfo:
    output_dir: Path
    final_model: Path
    steps: int
    history: List[Dict[str, Any]]


def _log_schedule_change(state: Dict[str, Any], tcfg: Dict[str, Any], total: int, spe: int) -> None:
    """A resume that moves the end of a cosine schedule (train.max_steps / epochs) changes the lr
    from the resumed step on: say so, with the lr before and after."""
    old = (state.get("config") or {}).get("train")
    if not isinstance(old, dict) or tcfg["schedule"] != "cosine":
        return
    try:
        old_spe = int(state["data"].get("steps_per_epoch") or spe)
        old_total = run_length(old, old_spe)
        step = int(state["step"])
        before = float(old["lr"]) * lr_lambda(old, old_total, old_spe)(step)
    except (KeyError, TypeError, ValueError):
        return
    if old_total != total:
        after = float(tcfg["lr"]) * lr_lambda(tcfg, total, spe)(step)
        log.warning("resume: the cosine schedule now ends at step %d instead of %d; the lr at step %d goes "
                    "from %.3e to %.3e", total, old_total, step, before, after)


def run_length(tcfg: Dict[str, Any], spe: int) -> int:
    """Optimizer steps of a run: ``train.max_steps`` when set (the data cycles through as many
    epochs as that takes), else ``train.epochs`` x steps per epoch."""
    if tcfg.get("max_steps"):
        return int(tcfg["max_steps"])
    return int(tcfg["epochs"]) * spe


def _say_run_length(tcfg: Dict[str, Any], total: int, spe: int, n: int) -> None:
    """One INFO line when train.max_steps sets the length, one WARNING when the warmup outlasts the run."""
    if tcfg.get("max_steps") and total != int(tcfg["epochs"]) * spe:
        log.info("train.max_steps=%d sets the run length: %d optimizer steps = %.2f epochs of %d steps (%d images, "
                 "batch %d); train.epochs=%s is ignored", total, total, total / spe, spe, n, int(tcfg["batch_size"]),
                 tcfg["epochs"])
    warmup = int(tcfg.get("warmup_steps") or 0)
    if warmup > total:
        factor = lr_lambda(tcfg, total, spe)
        peak = float(tcfg["lr"]) * max(factor(k) for k in range(total))
        log.warning("train.warmup_steps=%d is more than the run's %d steps: the lr never reaches train.lr=%.3g "
                    "(at most %.3g); lower train.warmup_steps or run longer", warmup, total, float(tcfg["lr"]), peak)


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    data = ("\n".join(kept) + "\n") if kept else ""
    atomic_write(path, lambda fh: fh.write(data.encode("utf-8")))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    return batch


def run(task: Task, cfg: Dict[str, Any], env: DistEnv, resume_from: Optional[Path] = None,
        resume_state: Optional[Dict[str, Any]] = None) -> RunInfo:
    """Train ``task`` as configured; returns where the final model went."""
    tcfg = cfg["train"]
    out = Path(cfg["output_dir"])
    seed = int(cfg["seed"])
    n = len(task.dataset)
    batch, accum = int(tcfg["batch_size"]), int(tcfg["grad_accum"])
    spe = steps_per_epoch(n, batch)
    if spe < 1:
        raise ValueError(f"{n} training sample(s) is fewer than one batch of {batch} (train.batch_size)")
    total = run_length(tcfg, spe)
    if env.is_main:
        _say_run_length(tcfg, total, spe, n)
    amp = resolve_amp(tcfg["amp"], env.device)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp == torch.float16))

    params = [p for _, p in task.trainable]
    optimizer = torch.optim.AdamW(param_groups(task.trainable, float(tcfg["weight_decay"])), lr=float(tcfg["lr"]),
                                  betas=tuple(tcfg["betas"]), eps=float(tcfg["eps"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg, total, spe))

    net: nn.Module = task.net
    if env.distributed:
        import inspect

        # Buffers (frozen BatchNorm statistics, CLIP's constants) are identical on every rank: no per-step sync.
        no_sync_kw = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                      inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
                      else {"broadcast_buffers": False})
        net = nn.parallel.DistributedDataParallel(
            task.net, device_ids=[env.device.index] if env.device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters, **no_sync_kw)

    step, epoch, step_in_epoch = 0, 0, 0
    if resume_state is not None:
        st = resume_state
        # the stage checked the config before loading anything; here the data order, with the dataset's length
        check_resume(st, cfg, Path(resume_from or "?"), dataset_len=n, compare_config=False)
        _log_schedule_change(st, tcfg, total, spe)
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        if st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        step, epoch, step_in_epoch = int(st["step"]), int(st["data"]["epoch"]), int(st["data"]["step_in_epoch"])
        rngs = st.get("rng") or []
        if len(rngs) == env.world_size:
            set_rng_state(rngs[env.rank])
        if env.is_main:
            log.info("resumed from %s: step %d (epoch %d, step %d of %d)", resume_from, step, epoch,
                     step_in_epoch, spe)
    if step_in_epoch >= spe:
        epoch, step_in_epoch = epoch + 1, 0

    ckpt = CheckpointManager(out, int(tcfg["keep_checkpoints"]))
    metrics_path = out / "metrics.jsonl"
    writer = None
    include_backbone = bool(cfg["model"].get("include_backbone", True))

    def train_state(step_now: int, ep: int, sie: int, rngs: List[Any]) -> Dict[str, Any]:
        return {
            "format": "ovsam_ros.train_state", "version": 1, "stage": task.name, "step": step_now,
            "data": {"epoch": ep, "step_in_epoch": sie, "sampler_seed": seed, "seed": seed,
                     "batch_size": batch, "dataset_len": n, "steps_per_epoch": spe},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": rngs, "world_size": env.world_size, "config": {k: v for k, v in cfg.items()},
            **task.extra_state(),
        }

    def model_extra(step_now: int) -> Dict[str, Any]:
        return {"stage": task.name, "step": step_now, "train_config": cfg, **task.checkpoint_extra()}

    # Before anything is written: does the disk hold what this run will write? (rank 0 measures, all ranks
    # refuse together, so no rank waits at a collective for one that stopped)
    space_mode = tcfg.get("free_space_check", "refuse")
    if space_mode not in FREE_SPACE_CHECKS:
        raise ValueError(f"train.free_space_check must be one of {', '.join(FREE_SPACE_CHECKS)}; got {space_mode!r}")
    problem = None
    if env.is_main and space_mode != "off":
        model_bytes = serialized_size(ovsam_payload(task.model, include_backbone, model_extra(step)))
        state = train_state(step, epoch, step_in_epoch, [rng_state()] * env.world_size)
        size = model_bytes + serialized_size(state) + MARKER_BYTES + unstarted_optimizer_bytes(optimizer)
        del state
        needed, peak = space_needed(len(ckpt.list()), remaining_saves(step, total, int(tcfg["checkpoint_every"] or 0)),
                                    ckpt.keep, size, model_bytes)
        problem = check_free_space(out, needed, peak, size, ckpt.keep, space_mode)
    problem = env.broadcast_object(problem)
    if problem is not None:
        if space_mode == "refuse":
            raise DiskSpaceError(problem, out)
        if env.is_main:
            log.warning("%s", problem)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", lambda fh: fh.write(dump(cfg).encode("utf-8")))
        _truncate_metrics(metrics_path, step)
        if tcfg["tensorboard"]:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # TensorBoard hides what an earlier attempt logged after the resumed step (its events
                # from step + 1 on); the resumed step's own point stays (this run does not log it again)
                writer = SummaryWriter(str(out / "tb"), purge_step=step + 1 if step else None)
            except ImportError:
                log.warning("tensorboard is not installed; logging to metrics.jsonl only")

    def save(step_now: int, ep: int, sie: int) -> None:
        rngs = env.gather_objects(rng_state())
        check_finite_weights(task.model, f"checkpoint step {step_now}", ckpt)  # every rank: all stop together
        if env.is_main:
            path = ckpt.save(step_now, task.model, train_state(step_now, ep, sie, rngs), include_backbone,
                             model_extra(step_now))
            log.info("checkpoint %s", path)
        env.barrier()

    bar = None
    if env.is_main and tcfg["progress"]:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=step, desc=task.name, unit="step", dynamic_ncols=True)
        except ImportError:
            bar = None

    history: List[Dict[str, Any]] = []
    empty_steps = 0  # optimizer steps whose global batch held no instance (stage 2)
    autocast = (lambda: torch.autocast(env.device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    log_every = max(1, int(tcfg["log_every"]))
    every = int(tcfg["checkpoint_every"] or 0)
    t_last = time.time()
    gpu_util = _gpu_utilization_reader(env.device)
    task.net.train()
    # One loader for the whole run: its workers start once and keep prefetching across epochs.
    loader = make_loader(task, tcfg, env, RunBatchSampler(
        n, batch, accum, env.world_size, env.rank, seed, epoch, step_in_epoch, total - step))
    it: Iterator = iter(loader)
    t_step = time.perf_counter()
    try:
        while step < total:
            while step_in_epoch < spe and step < total:
                data_s = 0.0
                micro = []
                for _ in range(accum):
                    t0 = time.perf_counter()
                    raw = next(it)
                    data_s += time.perf_counter() - t0
                    micro.append(task.prepare(_to_device(raw, env.device), env))
                counts = [task.count(b) for b in micro]
                global_count = float(env.all_reduce_sum(torch.tensor(float(sum(counts)), device=env.device)).item())
                denom = max(global_count, 1.0)
                optimizer.zero_grad(set_to_none=True)
                sums: Dict[str, torch.Tensor] = {}
                for j, b in enumerate(micro):
                    sync = net.no_sync() if (env.distributed and j < accum - 1) else contextlib.nullcontext()
                    with sync:
                        with autocast():
                            outputs = net(b)
                        loss_sum, parts = task.loss(outputs, b, step)
                        scaler.scale(loss_sum * (env.world_size / denom)).backward()
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + v.detach().float()
                # The loss terms of all ranks, before the optimizer step: a non-finite one stops the run
                # here, on every rank alike, before it reaches the weights (.tolist() waits for the GPU).
                names = sorted(sums)
                vec = torch.stack([torch.as_tensor(sums[k], device=env.device).float() for k in names]) \
                    if names else torch.zeros(0, device=env.device)
                terms = dict(zip(names, (env.all_reduce_sum(vec) / denom).tolist()))
                lr_now = optimizer.param_groups[0]["lr"]
                bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
                if bad:
                    raise TrainingDiverged(diverged_message(task.name, step + 1, total, lr_now, ckpt, bad))
                scaler.unscale_(optimizer)
                clip = float(tcfg["grad_clip"] or 0.0)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
                if not scaler.is_enabled() and not math.isfinite(float(grad_norm)):
                    # fp16's grad scaler skips such a step and lowers its scale (normal); without it
                    # AdamW would write the non-finite gradient into the weights
                    raise TrainingDiverged(diverged_message(task.name, step + 1, total, lr_now, ckpt,
                                                            {"grad_norm": float(grad_norm)}))
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                step_in_epoch += 1

                record = {"step": step, "epoch": epoch, "lr": lr_now,
                          "grad_norm": float(grad_norm), "count": global_count}
                record.update(terms)
                if global_count == 0 and env.is_main:
                    empty_steps += 1
                    if empty_steps == 1 or empty_steps % log_every == 0:
                        log.warning("[%s] step %d trained on nothing: its batch held 0 instances (%d such step(s) "
                                    "so far; data_report.json counts what the data lost)", task.name, step,
                                    empty_steps)
                now = time.perf_counter()
                step_s, t_step = now - t_step, now
                # throughput: global images per second of wall time, and the share spent waiting for data
                record.update({"step_s": step_s, "data_s": data_s, "images_per_s": batch / max(step_s, 1e-9)})
                if gpu_util is not None:
                    util = gpu_util()
                    if util is not None:
                        record["gpu_util"] = util
                history.append(record)
                if env.is_main:
                    with open(metrics_path, "a", encoding="utf-8") as fh:
                        fh.write(metrics_line(record) + "\n")
                    if len(history) == 1:  # the new run has started: the run it replaces goes now, not at the end
                        for old in out.glob(f"{_TRASH}*"):
                            shutil.rmtree(old, ignore_errors=True)
                    if writer is not None:
                        for k, v in record.items():
                            if k not in ("step", "epoch") and math.isfinite(v):
                                writer.add_scalar(f"{task.name}/{k}", v, step)
                    if bar is not None:
                        bar.update(1)
                        post = {"loss": f"{record.get('loss', float('nan')):.4f}", "lr": f"{record['lr']:.2e}",
                                "img/s": f"{record['images_per_s']:.1f}", "data": f"{data_s / max(step_s, 1e-9):.0%}"}
                        if "gpu_util" in record:
                            post["gpu"] = f"{record['gpu_util']:.0f}%"
                        bar.set_postfix(post)
                    if step % log_every == 0 or step == total:
                        dt = time.time() - t_last
                        t_last = time.time()
                        msg = " ".join(f"{k}={record[k]:.4f}" for k in names)
                        log.info("[%s] step %d/%d epoch %d %s lr=%.3e (%.2f s/step, %.1f images/s, %.0f%% waiting "
                                 "for data)", task.name, step, total, epoch, msg, record["lr"], dt / log_every,
                                 batch * log_every / max(dt, 1e-9), 100 * data_s / max(step_s, 1e-9))
                if (every and step % every == 0) and step < total:
                    save(step, epoch, step_in_epoch)
                    t_step = time.perf_counter()  # checkpoint time is not a training step's
            if step_in_epoch >= spe:
                epoch, step_in_epoch = epoch + 1, 0
        del it, loader
        save(step, epoch, step_in_epoch)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    final = out / "model.pt"
    if env.is_main:
        check_finite_weights(task.model, "model.pt", ckpt)
        try:
            save_ovsam(task.model, final, include_backbone=include_backbone, extra=model_extra(step))
        except DiskSpaceError as error:
            raise DiskSpaceError(f"{error}. The final checkpoint {ckpt.latest()} is complete: free space, then "
                                 "--resume writes model.pt", out, error.needed, error.free) from None
        log.info("final model: %s", final)
    env.barrier()
    return RunInfo(out, final, step, history)


def resolve_num_workers(spec: Any, env: DistEnv) -> int:
    """``train.num_workers``: an int, or ``auto`` = the CPUs this process may use, shared by the local ranks."""
    if spec in (None, ""):
        return 0
    if spec == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return max(0, min(16, cpus // max(1, local) - 1))  # one core stays with the training process
    workers = int(spec)
    if workers < 0:
        raise ValueError(f"train.num_workers must be >= 0 or 'auto', got {spec!r}")
    return workers


def make_loader(task: Task, tcfg: Dict[str, Any], env: DistEnv, sampler: Any) -> DataLoader:
    """The run's DataLoader: pinned host memory on CUDA (async copies), ``prefetch_factor`` batches ahead per worker."""
    workers = resolve_num_workers(tcfg.get("num_workers"), env)
    kwargs: Dict[str, Any] = {}
    if workers > 0:
        kwargs = {"prefetch_factor": max(1, int(tcfg.get("prefetch_factor") or 2)), "persistent_workers": True}
    return DataLoader(task.dataset, batch_sampler=sampler, collate_fn=task.collate, num_workers=workers,
                      pin_memory=env.device.type == "cuda", **kwargs)


def _gpu_utilization_reader(device: torch.device) -> Optional[Callable[[], Optional[float]]]:
    """A function giving the GPU's utilisation in % (NVML via torch), or None off CUDA / without pynvml."""
    if device.type != "cuda":
        return None
    try:
        torch.cuda.utilization(device)
    except Exception:  # pynvml missing, or no NVML: report images/s only
        return None

    def read() -> Optional[float]:
        try:
            return float(torch.cuda.utilization(device))
        except Exception:
            return None

    return read


# ----------------------------------------------------------------------------- model building
MODEL_DEFAULTS: Dict[str, Any] = {
    "init_checkpoint": None,  # an ovsam_ros checkpoint (e.g. the stage-1 output); wins over preset; the
    #                           reference / SAM files below are then loaded on top of it
    "preset": "tiny",  # tiny | tiny-convnext | rn50x16 | convnext_large (when no init_checkpoint)
    "overrides": {},  # nested OVSAMConfig fields
    "clip_weights": None,  # LOCAL open_clip weights file
    "sam_checkpoint": None,  # Meta SAM .pth: prompt encoder + mask decoder init
    "sam2clip_checkpoint": None,  # reference SAM2CLIP neck
    "clip2sam_checkpoint": None,  # reference CLIP2SAM head
    "include_backbone": True,  # store frozen CLIP weights in saved checkpoints
    # A preset whose CLIP has published weights (rn50x16, convnext_large) without clip_weights is refused:
    # a random frozen CLIP makes a useless model. true: train on a random CLIP anyway (tests, benchmarks)
    "random_clip": False,
}


def published_clip(model_name: str) -> bool:
    """Whether open_clip knows published weights for ``model_name`` (RN50x16: openai; the tiny
    test models: none). The rule ``resolve_quick_gelu`` uses for what real weights look like."""
    import open_clip

    return bool(open_clip.list_pretrained_tags_by_model(model_name))


def check_clip_weights(mcfg: Dict[str, Any], resume_from: Optional[Path] = None) -> None:
    """Refuse (ValueError) a preset build whose CLIP has published weights when ``model.clip_weights`` is
    not set, unless ``model.random_clip: true``. A checkpoint (init_checkpoint, --resume) brings its
    own CLIP, or :func:`load_ovsam` asks for the file itself."""
    if resume_from is not None or mcfg.get("init_checkpoint") or mcfg.get("clip_weights"):
        return
    from ovsam_ros.loading import PRESETS

    preset = mcfg.get("preset") or "tiny"
    if preset not in PRESETS:
        return  # ModelSpec.config() names the unknown preset
    name = PRESETS[preset]().backbone.model_name
    random_ok = mcfg.get("random_clip", False)
    if not isinstance(random_ok, bool):
        raise ValueError(f"model.random_clip must be true or false, got {random_ok!r}")
    if random_ok or not published_clip(name):
        return
    from ovsam_ros.resources import model_config_dir
    from ovsam_ros.weights.hint import download_command

    folder = model_config_dir()
    fetch = (f"Fetch them with `{download_command(preset)}`, then " if folder is not None
             and (folder / f"{preset}.yaml").is_file() else "Give them: ")
    raise ValueError(
        f"model.clip_weights is not set: preset {preset!r} trains on a frozen open_clip {name}, which needs its "
        f"published weights; without them the CLIP stays random and the trained model is useless. {fetch}"
        f"--set model.clip_weights=<local {name} weights file> (or model.random_clip=true to train on a random "
        "CLIP on purpose: tests, timing)")


def build_model(mcfg: Dict[str, Any], seed: int, resume_from: Optional[Path] = None) -> OVSAM:
    """The model to train: a resumed checkpoint, else ``init_checkpoint`` (+ reference / SAM files
    applied on top), else the preset built from the listed files (random init for what none provides)."""
    from ovsam_ros.loading import ModelSpec
    from ovsam_ros.model import checkpoints as ck
    from ovsam_ros.model.build import build_ovsam

    def path(key: str) -> Optional[str]:
        return os.path.expanduser(mcfg[key]) if mcfg.get(key) else None

    clip = path("clip_weights")
    check_clip_weights(mcfg, resume_from)
    if resume_from is not None:
        return load_ovsam(resume_from / "model.pt", clip_pretrained=clip)
    if mcfg.get("init_checkpoint"):
        model = load_ovsam(path("init_checkpoint"), clip_pretrained=clip)
        if path("sam_checkpoint"):
            ck.load_sam_decoder(model.decoder, path("sam_checkpoint"))
        if path("sam2clip_checkpoint"):
            ck.load_reference_sam2clip(model, path("sam2clip_checkpoint"))
        if path("clip2sam_checkpoint"):
            ck.load_reference_clip2sam(model, path("clip2sam_checkpoint"))
        return model
    spec = ModelSpec(preset=mcfg["preset"], overrides=mcfg.get("overrides") or {}, clip_weights=clip)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_ovsam(spec.config(), sam_checkpoint=path("sam_checkpoint"),
                           sam2clip_checkpoint=path("sam2clip_checkpoint"),
                           clip2sam_checkpoint=path("clip2sam_checkpoint"))


def load_resume_state(path: Path) -> Dict[str, Any]:
    file = path / "state.pt"
    # Our own format, but --resume may point at a run folder copied from anywhere: read it like any
    # file (no code runs), and refuse classes, which state.pt never holds (numpy RNG arrays are data).
    try:
        state = safe_torch_load(file, foreign="refuse")
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # a truncated zip: PytorchStreamReader errors, EOFError, ...
        raise CheckpointError(f"{file}: unreadable training state ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); resume from an earlier "
                              f"checkpoint folder, or --resume without a path to take the newest "
                              "complete one") from None
    if not isinstance(state, dict) or state.get("format") != "ovsam_ros.train_state":
        raise CheckpointError(f"{file}: not an ovsam_ros training-state file")
    return state


def setup_logging(env: DistEnv, level: int = logging.INFO) -> None:
    fmt = f"%(asctime)s [rank {env.rank}] %(levelname)s %(name)s: %(message)s" if env.distributed else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.WARNING, format=fmt, datefmt="%H:%M:%S")
    logging.getLogger("training").setLevel(level if env.is_main else logging.WARNING)


def configure_torch(tcfg: Dict[str, Any], env: DistEnv) -> None:
    if tcfg.get("threads"):
        torch.set_num_threads(int(tcfg["threads"]))
    if tcfg.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
