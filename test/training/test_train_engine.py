"""The shared training loop: schedules, checkpoints, resume lookup, accumulation, teacher cache."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

from ovsam_ros.model import OVSAM, OVSAMConfig, load_ovsam
from training import engine, stage1, stage2
from training.config import load_config

from training_helpers import stage2_overrides


def test_lr_schedules():
    base = dict(engine.TRAIN_DEFAULTS)
    cos = engine.lr_lambda({**base, "schedule": "cosine", "warmup_steps": 10, "warmup_factor": 0.1}, 100, 10)
    assert math.isclose(cos(0), 0.1) and cos(5) < cos(10) and math.isclose(cos(100), 0.0, abs_tol=1e-9)
    assert cos(10) > cos(50) > cos(90)
    ms = engine.lr_lambda({**base, "schedule": "multistep", "milestones": [8, 11], "gamma": 0.1}, 120, 10)
    assert ms(79) == 1.0 and math.isclose(ms(80), 0.1) and math.isclose(ms(110), 0.01)
    with pytest.raises(ValueError, match="schedule"):
        engine.lr_lambda({**base, "schedule": "linear"}, 10, 1)


def test_no_weight_decay_for_norms_biases_tokens():
    lin, emb = torch.nn.Linear(3, 3), torch.nn.Embedding(2, 3)
    named = [("a.weight", lin.weight), ("a.bias", lin.bias), ("label_token.weight", emb.weight)]
    groups = engine.param_groups(named, 0.05)
    assert groups[0]["weight_decay"] == 0.05 and groups[0]["params"] == [lin.weight]
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 2


def test_checkpoint_manager_is_atomic_and_prunes(tmp_path):
    torch.manual_seed(0)
    model = OVSAM(OVSAMConfig.tiny())
    mgr = engine.CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        mgr.save(step, model, {"step": step}, include_backbone=False, extra={})
    assert [p.name for p in mgr.list()] == ["step-00000002", "step-00000003"]
    # what a kill in the middle of a save leaves behind is never picked up
    partial = mgr.root / ".tmp-step-00000009-123"
    partial.mkdir()
    (partial / "model.pt").write_bytes(b"half")
    no_state = mgr.root / "step-00000010"
    no_state.mkdir()
    (no_state / "model.pt").write_bytes(b"x")
    assert mgr.latest().name == "step-00000003"
    assert engine.resolve_resume("auto", tmp_path).name == "step-00000003"
    assert engine.resolve_resume(str(mgr.root / "step-00000002"), tmp_path).name == "step-00000002"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        engine.resolve_resume(str(no_state), tmp_path)
    assert engine.resolve_resume("auto", tmp_path / "fresh") is None
    mgr.save(4, model, {"step": 4}, include_backbone=False, extra={})
    assert not partial.exists()  # leftovers of killed runs are cleaned up on the next save


def _stage2_cfg(synth, init, out, *extra):
    return load_config(stage2.DEFAULTS, "stage2_tiny", stage2_overrides(
        synth, init, out, "train.max_steps=3", "train.batch_size=4", "train.checkpoint_every=0",
        "data.instances_per_image=4", "loss.num_points=256", *extra))


def test_gradient_accumulation_matches_one_big_batch(tmp_path, synth, stage1_checkpoint):
    a = stage2.train(_stage2_cfg(synth, stage1_checkpoint, tmp_path / "a"), quiet=True)
    b = stage2.train(_stage2_cfg(synth, stage1_checkpoint, tmp_path / "b", "train.grad_accum=2"), quiet=True)
    la, lb = [r["loss"] for r in a.history], [r["loss"] for r in b.history]
    assert len(la) == 3 and all(abs(x - y) < 1e-4 * max(1.0, abs(x)) for x, y in zip(la, lb))
    ma, mb = load_ovsam(a.final_model), load_ovsam(b.final_model)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-4), k


def test_stage2_trains_only_the_heads(tmp_path, synth, stage1_checkpoint):
    info = stage2.train(_stage2_cfg(synth, stage1_checkpoint, tmp_path / "s2"), quiet=True)
    before, after = load_ovsam(stage1_checkpoint).state_dict(), load_ovsam(info.final_model).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("clip2sam.") for k in changed)
    assert any(k.startswith("decoder.mask_decoder.transformer.") for k in changed)
    assert "decoder.label_token.weight" in changed
    frozen = ("backbone.", "sam2clip.", "decoder.prompt_encoder.", "decoder.mask_decoder.output_hypernetworks_mlps.1.")
    assert not [k for k in changed if k.startswith(frozen)]
    assert (tmp_path / "s2" / "data_report.json").is_file() and (tmp_path / "s2" / "config.yaml").is_file()


def test_stage1_teacher_cache_runs_teacher_once_and_changes_nothing(tmp_path, synth):
    def cfg(out, *extra):
        return load_config(stage1.DEFAULTS, "stage1_tiny", [
            f"data.images={synth['images']}/val", f"output_dir={out}", "train.epochs=2", "train.batch_size=4",
            "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0", *extra])

    plain = stage1.train(cfg(tmp_path / "plain"), quiet=True)
    cached = stage1.train(cfg(tmp_path / "cached", f"teacher.cache_dir={tmp_path / 'cache'}"), quiet=True)
    assert [r["loss"] for r in plain.history] == [r["loss"] for r in cached.history]
    files = list((tmp_path / "cache").rglob("*.pt"))
    assert len(files) == 8  # one entry per image, written in epoch 0, read in epoch 1
    a, b = load_ovsam(plain.final_model).state_dict(), load_ovsam(cached.final_model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    only_sam2clip = {k for k in a if not torch.equal(a[k], _untrained_tiny_state()[k])}
    assert only_sam2clip and all(k.startswith("sam2clip.") for k in only_sam2clip)


@functools.lru_cache(maxsize=1)
def _untrained_tiny_state():
    """The untrained tiny model stage 1 starts from (preset tiny, seed 0)."""
    from ovsam_ros.model import build_ovsam

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_ovsam(OVSAMConfig.tiny()).state_dict()


def test_teacher_must_match_the_student():
    cfg = OVSAMConfig.tiny()
    cfg.image_size = 320
    with pytest.raises(ValueError, match="teacher 'tiny' produces 32x16x16"):
        stage1.build_teacher({"kind": "tiny", "checkpoint": None, "seed": 0}, OVSAM(cfg))


def test_missing_data_settings_are_explained(tmp_path):
    cfg = load_config(stage2.DEFAULTS, "stage2_tiny", ["data.annotations=null", "model.init_checkpoint=null",
                                                         f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="data.annotations"):
        stage2.train(cfg, quiet=True)
    cfg1 = load_config(stage1.DEFAULTS, "stage1_tiny", ["data.images=null", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="data.images"):
        stage1.train(cfg1, quiet=True)


# Class folders renamed to words the detection data never uses: only the class-folder images themselves
# can teach the model these names (the detection vocabulary trains other text embeddings).
FOLDER_NAMES = ("kettle", "violin", "tractor", "lantern", "pelican", "saddle")


def _class_folder_loss(model: OVSAM, images: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                       names, templates) -> float:
    """Mean CE of (scaled cosine to each name's template-averaged text embedding, background column 0) for the
    whole-image box of each image, written out here from the model's encoders (not the training loss code)."""
    with torch.no_grad():
        text = []
        for name in names:
            emb = model.encode_text(model.tokenizer([t.format(name) for t in templates]), normalize=True)
            text.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
        text = torch.stack(text)
        out = model.decode(model.encode_image(images), boxes=boxes, multimask_output=False,
                           image_index=torch.arange(len(images)))
        cos = torch.nn.functional.normalize(out["region_embeddings"][:, 0], dim=-1) @ text.t()
        logits = torch.cat([math.exp(4.6052) * cos, torch.zeros(len(images), 1)], dim=1)  # reference logit scale
        return float(torch.nn.functional.cross_entropy(logits, labels))


def test_class_folder_joint_training(tmp_path, synth, stage1_checkpoint, monkeypatch):
    """ImageNet-style folders join stage 2 (whole-image boxes, classification only, own vocabulary): their
    images reach the classification loss with their folder's label, and that loss falls on them."""
    import shutil

    from ovsam_ros.model.vocabulary import get_templates
    from training.data.datasets import ClassFolderDataset

    src = sorted(p for p in (Path(synth["root"]) / "classes").iterdir() if p.is_dir())
    assert len(src) == len(FOLDER_NAMES)
    root = tmp_path / "folders"
    for folder, name in zip(src, FOLDER_NAMES):
        shutil.copytree(folder, root / name)
    names = sorted(FOLDER_NAMES)  # vocabulary from the folder names, in folder order
    seen = []  # (step, file, label) of every class-folder instance handed to the loss
    loss = stage2.Stage2Task.loss

    def spy(self, outputs, batch, step):
        for it in batch["items"]:
            if it["source"] == 1:
                seen.append((step, it["file"], int(it["labels"][0])))
        assert int((batch["source"] == 1).sum()) == sum(it["source"] == 1 for it in batch["items"])
        return loss(self, outputs, batch, step)

    monkeypatch.setattr(stage2.Stage2Task, "loss", spy)
    cfg = _stage2_cfg(synth, stage1_checkpoint, tmp_path / "cf", f"data.class_folders.root={root}",
                      "data.class_folders.repeat=4", "train.max_steps=8", "train.warmup_steps=0", "train.lr=1e-2")
    info = stage2.train(cfg, quiet=True)
    assert len(info.history) == 8 and all(math.isfinite(r["loss"]) for r in info.history)
    assert '"class_folders"' in (tmp_path / "cf" / "data_report.json").read_text()
    assert len(seen) >= 8 and len({f for _, f, _ in seen}) >= 6
    assert all(label == names.index(Path(f).parent.name) for _, f, label in seen)

    data = ClassFolderDataset(str(root), None, 256)
    items = [data[(0, i)] for i in range(len(data))]
    images = torch.stack([it["image"] for it in items])
    boxes = torch.cat([it["boxes"] for it in items])
    labels = torch.cat([it["labels"] for it in items])
    templates = get_templates(cfg["text"]["templates"])
    before = _class_folder_loss(load_ovsam(stage1_checkpoint), images, boxes, labels, names, templates)
    after = _class_folder_loss(load_ovsam(info.final_model), images, boxes, labels, names, templates)
    # measured: 3.03 -> 2.32; with the class-folder instances weighted 0 in the loss: 3.03 -> 6.09
    assert after < 0.85 * before, (before, after)


def test_batches_without_instances_still_step(tmp_path, synth, stage1_checkpoint, monkeypatch):
    """Every instance dropped (min_mask_area) -> zero loss, no crash (and no DDP hang: all params in the graph).
    (The up-front refusal of a dataset with no usable instance is switched off to reach the step.)"""
    from training.data.datasets import DetectionDataset

    monkeypatch.setattr(DetectionDataset, "never_big_enough", lambda self, record, inst: False)
    info = stage2.train(_stage2_cfg(synth, stage1_checkpoint, tmp_path / "empty", "data.min_mask_area=1000000",
                                    "train.max_steps=2"), quiet=True)
    assert [r["count"] for r in info.history] == [0.0, 0.0] and all(r["loss"] == 0.0 for r in info.history)


def test_amp_only_on_cuda(caplog):
    cpu = torch.device("cpu")
    assert engine.resolve_amp("auto", cpu) is None and engine.resolve_amp("off", cpu) is None
    assert engine.resolve_amp("bf16", cpu) is None and "only used on CUDA" in caplog.text
    assert engine.resolve_amp("fp16", torch.device("cuda", 0)) is torch.float16
    with pytest.raises(ValueError, match="train.amp"):
        engine.resolve_amp("int8", cpu)


def test_one_loader_serves_every_epoch_and_throughput_is_logged(tmp_path, synth):
    """Workers start once per run (a loader per epoch restarted them: the GPU waited at every epoch start)."""
    import os

    from training.data.datasets import collate_images
    from training.engine import DistEnv

    cfg = load_config(stage1.DEFAULTS, "stage1_tiny", [
        f"data.images={synth['images']}/val", f"output_dir={tmp_path}", "train.epochs=3", "train.batch_size=4",
        "train.num_workers=1", "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=0"])
    env = DistEnv()
    task = stage1.Stage1Task(cfg, env, None)
    inner = task.dataset

    class WithPid(torch.utils.data.Dataset):
        def __len__(self):
            return len(inner)

        def __getitem__(self, key):
            return {**inner[key], "pid": os.getpid()}

    pids = []
    task.dataset = WithPid()
    task.collate = lambda items: {**collate_images(items), "pid": [it["pid"] for it in items]}
    prepare = task.prepare
    task.prepare = lambda b, e: (pids.extend(b["pid"]), prepare(b, e))[1]
    info = engine.run(task, cfg, env)
    task.close()
    assert info.steps == 6 and {r["epoch"] for r in info.history} == {0, 1, 2}
    assert len(set(pids)) == 1 and pids[0] != os.getpid()  # one worker process for all three epochs
    for r in info.history:
        assert r["images_per_s"] == pytest.approx(4 / r["step_s"]) and 0 <= r["data_s"] <= r["step_s"]
        assert "gpu_util" not in r  # CPU run


def test_num_workers_auto():
    env = engine.DistEnv()
    assert engine.resolve_num_workers(3, env) == 3 and engine.resolve_num_workers(None, env) == 0
    assert 0 <= engine.resolve_num_workers("auto", env) <= 16
    with pytest.raises(ValueError, match="num_workers"):
        engine.resolve_num_workers(-1, env)
