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
