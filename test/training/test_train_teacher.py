"""Stage 1's teacher: compute dtype, batching over uncached images, background cache writes (issue 16)."""

from __future__ import annotations

import os

import pytest
import torch

from training import stage1
from training.engine import DistEnv
from training.config import load_config
from training.data.feature_cache import BackgroundCacheWriter, TeacherFeatureCache


def _task(synth, tmp_path, *extra):
    cfg = load_config(stage1.DEFAULTS, "stage1_tiny", [
        f"data.images={synth['images']}/val", f"output_dir={tmp_path}", "train.progress=false", *extra])
    return stage1.Stage1Task(cfg, DistEnv(), None)


def test_teacher_dtype_follows_amp_unless_set():
    assert stage1.resolve_teacher_dtype("auto", None) is None
    assert stage1.resolve_teacher_dtype("auto", torch.bfloat16) is torch.bfloat16
    assert stage1.resolve_teacher_dtype("fp32", torch.bfloat16) is None  # the paper's fp32 teacher
    assert stage1.resolve_teacher_dtype("fp16", None) is torch.float16
    with pytest.raises(ValueError, match="teacher.dtype"):
        stage1.resolve_teacher_dtype("half", None)


def test_teacher_cache_identity_depends_on_the_dtype(synth, tmp_path):
    task = _task(synth, tmp_path)
    tc = task.cfg["teacher"]
    fp32 = stage1.teacher_identity(tc, task.teacher)
    assert stage1.teacher_identity(tc, task.teacher, None) == fp32 and ":autocast" not in fp32  # old caches stay valid
    assert stage1.teacher_identity(tc, task.teacher, torch.bfloat16) == fp32 + ":autocast-bfloat16"
    task.close()


def test_batched_teacher_fills_only_the_uncached_images(synth, tmp_path):
    task = _task(synth, tmp_path, "teacher.batch_size=1")  # chunks of one: the reference per-image result
    task_batched = _task(synth, tmp_path)
    ds = task.dataset
    items = [ds[(0, i)] for i in range(4)]
    images = torch.stack([it["image"] for it in items])
    sentinel = [torch.full((32, 16, 16), float(i)) for i in range(4)]
    batch = {"images": images, "teacher": [sentinel[0], None, sentinel[2], None], "cache_key": [None] * 4}
    out = task_batched.prepare(dict(batch), DistEnv())
    assert task_batched.teacher_runs == 2 and task_batched.cache_hits == 2
    assert torch.equal(out["target"][0], sentinel[0]) and torch.equal(out["target"][2], sentinel[2])
    with torch.no_grad():
        for i in (1, 3):  # each computed image matches the teacher run alone on it
            torch.testing.assert_close(out["target"][i], task.teacher(images[i:i + 1])[0], rtol=1e-5, atol=1e-5)
    task.close()
    task_batched.close()


def test_bf16_teacher_is_close_to_fp32_but_not_equal(synth, tmp_path):
    fp32 = _task(synth, tmp_path)
    bf16 = _task(synth, tmp_path, "teacher.dtype=bf16")
    images = torch.stack([fp32.dataset[(0, i)]["image"] for i in range(2)])
    a, b = fp32.run_teacher(images), bf16.run_teacher(images)
    assert a.dtype == b.dtype == torch.float32
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 0.05, rel


def test_background_writer_writes_each_entry_alone_and_survives_failures(tmp_path, caplog):
    cache = TeacherFeatureCache(str(tmp_path / "cache"), "teacher-x", "float32")
    batch = torch.randn(4, 8, 16, 16)
    with BackgroundCacheWriter(cache, max_pending=2) as writer:
        for i in range(4):
            writer.put(f"{i:064x}", batch[i])  # views into one batch
        batch.zero_()  # the caller reuses its buffer at once
    assert writer.written == 4 and writer.failed == 0
    for i in range(4):
        got = cache.get(f"{i:064x}")
        assert got is not None and got.shape == (8, 16, 16) and got.abs().sum() > 0
        # one entry per file, not the whole batch the view came from (8 KB of fp32 per entry + header)
        assert os.path.getsize(cache.path(f"{i:064x}")) < 8 * 16 * 16 * 4 + 2048

    def broken_put(key, feats):
        raise OSError(28, "No space left on device")

    cache.put = broken_put
    with BackgroundCacheWriter(cache) as writer:
        writer.put("f" * 64, torch.ones(2, 2))
    assert writer.failed == 1 and "No space left" in caplog.text


def _sam_file_with_known_pos_embed(path, embed_dim):
    """A Meta-layout SAM file whose image encoder (tiny geometry) has a hand-made pos_embed."""
    from ovsam_ros.model.checkpoints import build_sam_teacher

    encoder = build_sam_teacher("tiny", embed_dim=embed_dim)
    g = encoder.pos_embed.shape[1]
    rows, cols, ch = torch.meshgrid(torch.arange(g), torch.arange(g), torch.arange(embed_dim), indexing="ij")
    known = (torch.sin(rows * 0.3 + ch * 0.1) + torch.cos(cols * 0.2 - ch * 0.05))[None].float()
    with torch.no_grad():
        encoder.pos_embed.copy_(known)
    torch.save({f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}, path)
    return known


def test_stage1_starts_sam2clip_pos_embed_from_the_teacher(synth, tmp_path):
    """Reference recipe: the SAM2CLIP neck is built with the SAM checkpoint's image_encoder.pos_embed."""
    known = _sam_file_with_known_pos_embed(tmp_path / "sam.pth", embed_dim=64)  # the tiny student's width
    task = _task(synth, tmp_path, f"teacher.checkpoint={tmp_path / 'sam.pth'}", "teacher.overrides.embed_dim=64",
                 "teacher.init_pos_embed=copy")
    assert task.pos_embed_from_teacher
    assert torch.equal(task.model.sam2clip.pos_embed, known)
    assert "sam2clip.pos_embed" not in {n for n, _ in task.model.named_parameters()}  # frozen buffer, as the reference

    off = _task(synth, tmp_path, f"teacher.checkpoint={tmp_path / 'sam.pth'}", "teacher.overrides.embed_dim=64",
                "teacher.init_pos_embed=zero")
    assert not off.pos_embed_from_teacher and not off.model.sam2clip.pos_embed.any()


def test_stage1_pos_embed_width_mismatch(synth, tmp_path):
    auto = _task(synth, tmp_path)  # stage1_tiny: 32-wide tiny teacher, 64-wide student
    assert not auto.pos_embed_from_teacher and not auto.model.sam2clip.pos_embed.any()
    with pytest.raises(ValueError, match=r"init_pos_embed=copy: cannot copy: teacher pos_embed \(1, 16, 16, 32\) "
                                         r"vs SAM2CLIP \(1, 16, 16, 64\)"):
        _task(synth, tmp_path, "teacher.init_pos_embed=copy")


def test_stage1_pos_embed_from_a_loaded_sam2clip_file_wins(synth, tmp_path):
    from ovsam_ros.model import OVSAM, OVSAMConfig
    from ovsam_ros.model.checkpoints import export_reference_checkpoints

    _sam_file_with_known_pos_embed(tmp_path / "sam.pth", embed_dim=64)
    torch.manual_seed(5)
    src = OVSAM(OVSAMConfig.tiny())
    with torch.no_grad():
        src.sam2clip.pos_embed.normal_()
    torch.save(export_reference_checkpoints(src)[0], tmp_path / "sam2clip.pth")
    task = _task(synth, tmp_path, f"teacher.checkpoint={tmp_path / 'sam.pth'}", "teacher.overrides.embed_dim=64",
                 f"model.sam2clip_checkpoint={tmp_path / 'sam2clip.pth'}")
    assert not task.pos_embed_from_teacher
    assert torch.equal(task.model.sam2clip.pos_embed, src.sam2clip.pos_embed)
