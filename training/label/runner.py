"""Run a labelling job: one plain process, or one process per GPU under torchrun.

Rank 0 plans (reads every input once), writes ``.label/plan.json`` and hands the plan to the
other ranks (the process group ``training.engine`` uses); each rank labels its shards
(:mod:`.shards`), skipping finished ones; rank 0 then waits for every shard file and merges.
No collective runs while labelling, so a long job never meets a process-group timeout; if a
rank dies, torchrun stops the others, and a rerun with the same arguments goes on from the
finished shards. ``--out`` must be one folder every rank sees (a shared file system across nodes).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ovsam_ros.files import atomic_write
from training.data.common import DataError, range_options, write_json
from training.data.output_folder import check_out_not_input, check_replaceable, remove_folder

from .labeller import Labeller, LabelSettings
from .merge import LABELS_FILE, REPORT_FILE, merge
from .shards import STATE_DIR, Shard, ShardStore, fingerprint, frames_of, make_shards, shards_of_rank
from .input_state import describe_inputs, input_changes
from .sources import SourcePlan, plan_sources, read_frames

log = logging.getLogger(__name__)
MANIFEST_FORMAT = "ovsam_ros.label_manifest/1"


@dataclass
class LabelJob:
    inputs: List[str]
    out: str
    model: str = "shapes"
    topics: List[str] = field(default_factory=list)
    rate: Optional[float] = None
    start: Optional[float] = None
    end: Optional[float] = None
    vocabulary: Optional[str] = None
    settings: LabelSettings = field(default_factory=LabelSettings)
    shard_size: int = 16
    device: str = "auto"
    overwrite: bool = False
    review_sample: int = 16
    review_every: int = 0
    seed: int = 0
    progress: bool = True
    poll_s: float = 1.0
    # Rank 0 gives up when no other rank finishes a shard for this long (0: wait forever). torchrun
    # stops every rank when one dies, but not when one hangs (a stuck GPU, a lost NFS mount).
    wait_timeout_s: float = 1800.0
    # The range rule (ovsam_ros.image_input): bits of 16-bit data that hold the picture, the float value
    # that is white. None: the default (16 / 1.0). Only a given input_bits labels mono16 topics.
    input_bits: Optional[int] = None
    float_max: Optional[float] = None

    def range_rule(self) -> Dict[str, Any]:
        """The range settings a run records and fingerprints (ValueError for a bad value)."""
        bits, top = range_options(16 if self.input_bits is None else self.input_bits,
                                  1.0 if self.float_max is None else self.float_max)
        return {"input_bits": bits, "float_max": top, "mono16": self.input_bits is not None}


def model_files(model: str) -> Dict[str, Any]:
    """The model YAML and each weight file it names, with sha256 (for the manifest)."""
    from ovsam_ros.loading import load_specs, resolve_config_path
    from ovsam_ros.weights.checksums import file_sha256

    files: Dict[str, Any] = {}
    try:
        yaml = resolve_config_path(model)
        files["yaml"] = {"path": str(yaml.resolve()), "sha256": file_sha256(yaml)}
    except FileNotFoundError:
        raise
    spec, _ = load_specs(model)
    files["weights"] = [{"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
                        for p in spec.weight_files() if os.path.isfile(p)]
    return files


#: What an ovsam-label run writes into --out: --overwrite replaces a folder holding only these.
LABEL_ENTRIES = (STATE_DIR, "images", LABELS_FILE, REPORT_FILE, "manifest.json", "run_summary.json", "review")


def _is_label_run(out: Path) -> bool:
    return (out / STATE_DIR / "plan.json").is_file()


def _check_out(out: Path, inputs: Sequence[str], overwrite: bool) -> None:
    """Refuse an --out that is (in) an input, or that --overwrite may not replace. Deletes nothing."""
    check_out_not_input(out, inputs)
    if os.path.lexists(out) and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder")
    if overwrite:
        check_replaceable(out, "ovsam-label", f"{STATE_DIR}/plan.json", _is_label_run, LABEL_ENTRIES)
    elif out.is_dir() and any(out.iterdir()) and not _is_label_run(out):
        raise DataError(f"--out {out} is not empty and holds no ovsam-label run; choose another folder (or an "
                        "earlier ovsam-label run's with --overwrite, which replaces it)")


def _check_job(job: LabelJob) -> None:
    """Every argument a plan depends on, checked before anything in --out is touched."""
    if isinstance(job.shard_size, bool) or not isinstance(job.shard_size, int) or job.shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1 frame, got {job.shard_size}")
    if not job.inputs:
        raise ValueError("give at least one bag or image folder")
    for p in job.inputs:
        if not os.path.lexists(os.path.expanduser(p)):
            raise FileNotFoundError(f"input not found: {p}")
    if job.vocabulary:
        from ovsam_ros.model.vocabulary import load_vocabulary

        if len(load_vocabulary(job.vocabulary)) == 0:
            raise ValueError(f"--vocabulary {job.vocabulary}: no classes in it")


def _plan(job: LabelJob) -> Dict[str, Any]:
    """Rank 0: the plan (new, or the one on disk when the same job runs again on unchanged inputs).

    Every argument and input is checked (and, for a new plan, every input read) before an
    --overwrite removes the earlier run."""
    out = Path(job.out)
    _check_job(job)
    _check_out(out, job.inputs, job.overwrite)
    settings = {
        "inputs": [str(Path(os.path.expanduser(p)).resolve()) for p in job.inputs], "topics": list(job.topics),
        "rate": job.rate, "start": job.start, "end": job.end, "vocabulary": job.vocabulary,
        "label": job.settings.to_dict(), "shard_size": job.shard_size, "model": job.model,
        "model_files": model_files(job.model), **job.range_rule(),
    }
    key = fingerprint(settings)
    store = ShardStore(out)
    inputs_now = describe_inputs(settings["inputs"])
    old = None if job.overwrite else store.read_plan()
    if old is not None:
        if old.get("fingerprint") != key:
            raise DataError(f"--out {out} holds a labelling run with other settings (or other model files); "
                            "rerun with the same arguments to finish it, or pass --overwrite / another --out")
        if "input_state" not in old:
            log.warning("%s: planned by an older ovsam-label that did not record its inputs; a changed input "
                        "cannot be detected (use --overwrite to plan again)", store.plan_file)
        else:
            problem = input_changes(old["input_state"], inputs_now)
            if problem:
                raise DataError(f"{problem} since the run in {out} was planned: its plan would label stale "
                                "frames. Use a new --out, or --overwrite to start over")
        return old
    sources = plan_sources(job.inputs, job.topics, job.rate, job.start, job.end, mono16=settings["mono16"])
    if job.overwrite and os.path.lexists(out) and any(out.iterdir()):
        log.warning("--overwrite: replacing the earlier ovsam-label run in %s", out)
        remove_folder(out)
    plan = {"fingerprint": key, "settings": settings, "sources": [s.to_dict() for s in sources],
            "input_state": inputs_now}
    store.write_plan(plan)
    return plan


def _write_frame_image(path: Path, rgb: Any) -> None:
    """The converted frame as an 8-bit RGB PNG (what the labels were computed on; stage 2 reads it
    as it is, whatever its data.input_bits)."""
    import cv2

    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    if not ok:
        raise OSError(f"cannot encode {path}")
    atomic_write(path, lambda fh: fh.write(png.tobytes()))


def label_shard(labeller: Labeller, store: ShardStore, sources: Sequence[SourcePlan], shard: Shard, key: str,
                bar: Any = None, input_bits: int = 16, float_max: float = 1.0) -> int:
    """Label one shard: frames first, then the shard file (atomic) that marks it finished."""
    frames = []
    plan = sources[shard.source]
    for frame, rgb, why in read_frames(plan, frames_of(sources, shard), input_bits, float_max):
        rec = {"file": frame.file, "topic": frame.topic, "stamp_ns": frame.stamp_ns,
               "bag_time_ns": frame.bag_time_ns, "frame_id": frame.frame_id}
        if rgb is None:
            frames.append({**rec, "skipped": why})
        else:
            instances, drops = labeller.label(rgb)
            _write_frame_image(store.out / "images" / frame.file, rgb)
            frames.append({**rec, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                           "instances": instances, "drops": drops})
        if bar is not None:
            bar.update(1)
    store.write_shard(shard, key, frames, {"classes": labeller.class_names()})
    return len(frames)


def _wait_for_ranks(job: LabelJob, store: ShardStore, shards: Sequence[Shard], key: str, runs: Path,
                    world_size: int) -> None:
    """Return once every shard is finished and every rank wrote its numbers; raise DataError when
    nothing moved for ``job.wait_timeout_s`` (naming the unfinished shards' ranks)."""
    owner = {sh: i % world_size for i, sh in enumerate(shards)}  # shards_of_rank's round-robin
    seen, since, said = -1, time.monotonic(), 0.0
    while True:
        unfinished = [sh for sh in shards if not store.finished(sh, key)]
        silent = [r for r in range(world_size) if not (runs / f"rank{r}.json").is_file()]
        if not unfinished and not silent:
            return
        done = len(shards) - len(unfinished) + world_size - len(silent)
        now = time.monotonic()
        if done != seen:
            seen, since, said = done, now, 0.0
        waited = now - since
        if job.wait_timeout_s and waited > job.wait_timeout_s:
            ranks = sorted({owner[sh] for sh in unfinished} | set(silent))
            raise DataError(
                f"rank 0 waited {waited:.0f} s without any progress from rank(s) {ranks}: {len(unfinished)} shard(s) "
                f"unfinished, numbers missing from rank(s) {silent}. A rank hangs or died outside torchrun's "
                f"watch; every finished shard is kept: rerun the same command to go on (--wait-timeout "
                f"{job.wait_timeout_s:g} s; 0 waits forever)")
        if waited - said >= 60.0:  # a word a minute, so a long wait is not mistaken for a hang of rank 0
            said = waited
            log.warning("rank 0: waiting for %d shard(s) of rank(s) %s (%.0f s without progress)",
                        len(unfinished), sorted({owner[sh] for sh in unfinished} | set(silent)), waited)
        time.sleep(job.poll_s)


def _bar(total: int, rank: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"rank {rank}", unit="frame", position=rank, leave=True)


def run(job: LabelJob) -> Dict[str, Any]:
    """Label ``job``; returns the summary (rank 0 holds the merged result; others their own numbers)."""
    from ovsam_ros.loading import build_predictor
    from training.engine import setup_distributed

    env = setup_distributed(job.device, option="--device")
    try:
        job.settings.check()
        if job.review_sample < 0 or job.review_every < 0:
            raise ValueError("--review-sample and --review-every must be >= 0")
        if not (job.wait_timeout_s >= 0 and job.wait_timeout_s != float("inf")):
            raise ValueError(f"--wait-timeout must be a finite number of seconds >= 0 (0 waits forever), "
                             f"got {job.wait_timeout_s}")
        out = Path(job.out)
        # Rank 0 plans; an error there reaches every rank (each exits with it) instead of a hang.
        box: Any = None
        if env.is_main:
            try:
                box = {"plan": _plan(job), "run_id": uuid.uuid4().hex}
            except (DataError, FileNotFoundError, ValueError) as err:
                box = {"error": str(err), "kind": type(err).__name__}
        box = env.broadcast_object(box)
        if "error" in box:
            raise {"FileNotFoundError": FileNotFoundError, "ValueError": ValueError}.get(box["kind"], DataError)(
                box["error"])
        plan, run_id = box["plan"], box["run_id"]
        key = plan["fingerprint"]
        sources = [SourcePlan.from_dict(s) for s in plan["sources"]]
        shards = make_shards(sources, job.shard_size)
        store = ShardStore(out)
        mine = [sh for sh in shards_of_rank(shards, env.rank, env.world_size) if not store.finished(sh, key)]
        todo = sum(sh.stop - sh.start for sh in mine)
        t0 = time.perf_counter()
        labelled = 0
        if mine:
            overrides = {"device": str(env.device)}
            if job.vocabulary:
                overrides["vocabulary"] = job.vocabulary
            labeller = Labeller(build_predictor(job.model, **overrides), job.settings)
            class_names = labeller.class_names()
            bar = _bar(todo, env.rank, job.progress)
            try:
                for sh in mine:
                    # the plan's values: every rank converts as rank 0 fingerprinted
                    labelled += label_shard(labeller, store, sources, sh, key, bar,
                                            plan["settings"]["input_bits"], plan["settings"]["float_max"])
            finally:
                if bar is not None:
                    bar.close()
        seconds = time.perf_counter() - t0
        mine_stats = {"rank": env.rank, "frames": labelled, "seconds": round(seconds, 3),
                      "images_per_s": round(labelled / seconds, 3) if labelled and seconds > 0 else None,
                      "shards_done": len(mine), "device": str(env.device)}
        write_json(store.root / "runs" / run_id / f"rank{env.rank}.json", mine_stats)
        if not env.is_main:
            return {"rank": env.rank, **mine_stats}
        # Rank 0: wait for every shard and every rank's numbers (a dead rank makes torchrun stop this one).
        _wait_for_ranks(job, store, shards, key, store.root / "runs" / run_id, env.world_size)
        ranks = [json.loads((store.root / "runs" / run_id / f"rank{r}.json").read_text()) for r in range(env.world_size)]
        if not mine:  # the classes the labelling ranks used, without loading the model again
            first = store.read_shard(shards[0]) if shards else None
            class_names = first["stats"]["classes"] if first else _class_names(job)
        info = {"description": "ovsam-label auto-labels", "model": job.model}  # (no run details: same data, same file)
        coco, report = merge(out, sources, shards, class_names, key, info)
        from .review import write_sheets

        sheets = write_sheets(out, coco, job.review_sample, job.review_every, job.seed)
        total_frames = sum(r["frames"] for r in ranks)
        wall = max((r["seconds"] for r in ranks), default=0.0)
        summary = {"processes": env.world_size, "per_rank": ranks, "frames_labelled_this_run": total_frames,
                   "images_per_s_total": round(total_frames / wall, 3) if total_frames and wall > 0 else None,
                   "images": len(coco["images"]), "annotations": len(coco["annotations"]),
                   "review_sheets": sheets}
        manifest = {"format": MANIFEST_FORMAT, "fingerprint": key, "settings": plan["settings"],
                    "classes": list(class_names), "labels": LABELS_FILE, "images": "images",
                    "data_report": REPORT_FILE, "review": sheets, "shards": len(shards),
                    "argv": list(sys.argv), "stage2": {"data.annotations": str((out / LABELS_FILE).resolve()),
                                                       "data.images": str((out / "images").resolve()),
                                                       "data.vocabulary": None}}
        write_json(out / "manifest.json", manifest, indent=1)
        write_json(out / "run_summary.json", summary, indent=1)
        return summary
    finally:
        if env.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _class_names(job: LabelJob) -> List[str]:
    """The classes without building the model (rank 0 had no shard left to label)."""
    if job.settings.queries:
        return list(job.settings.queries)
    from ovsam_ros.loading import build_predictor

    overrides = {"device": "cpu"}
    if job.vocabulary:
        overrides["vocabulary"] = job.vocabulary
    vocab = build_predictor(job.model, **overrides).vocabulary
    if vocab is None:
        raise DataError("everything mode needs a vocabulary")
    return list(vocab.classes)
