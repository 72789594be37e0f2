"""Datasets and the batch order: deterministic per (seed, epoch, index), consistent prompts, rank sharding."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.data import (
    ClassFolderDataset,
    CocoInstances,
    ConcatDataset,
    DataError,
    DetectionDataset,
    ImageFolderDataset,
    StepBatchSampler,
    TeacherFeatureCache,
)
from training.data.transforms import Augment, distance_transform_point


@pytest.fixture(scope="module")
def coco(synth):
    return CocoInstances(synth["train"], synth["images"], keep_splits=["base"], require_instances=True)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_detection_sample_is_a_function_of_its_key(coco):
    ds = DetectionDataset(coco, 256, seed=1, instances_per_image=3, scale_range=(0.5, 1.5), flip=True)
    assert _same(ds[(2, 5)], ds[(2, 5)])
    assert not torch.equal(ds[(2, 5)]["image"], ds[(3, 5)]["image"])  # other epoch, other augmentation
    other_seed = DetectionDataset(coco, 256, seed=2, instances_per_image=3, scale_range=(0.5, 1.5), flip=True)
    assert not torch.equal(ds[(2, 5)]["image"], other_seed[(2, 5)]["image"])


def test_detection_prompts_masks_and_boxes_agree(coco):
    ds = DetectionDataset(coco, 256, seed=0, instances_per_image=40, scale_range=(0.8, 1.6), flip=True,
                          min_mask_area=32)
    total = 0
    for i in range(len(ds)):
        s = ds[(0, i)]
        k = s["labels"].shape[0]
        total += k
        assert s["image"].shape == (3, 256, 256) and s["masks"].shape == (k, 256, 256)
        for j in range(k):
            m = s["masks"][j].bool()
            assert m.sum() >= 32
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert s["boxes"][j].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            x, y = s["points"][j].long().tolist()
            assert m[y, x]  # the point prompt lies on the object
        assert all(0 <= l < 4 for l in s["labels"].tolist())  # base classes only, training-vocabulary indices
    assert total > 0


def test_box_fraction_and_instance_cap(coco):
    ds = DetectionDataset(coco, 256, seed=0, instances_per_image=2, box_fraction=0.5, fill_instances=True)
    for i in range(len(ds)):
        s = ds[(0, i)]
        assert s["labels"].shape[0] == 2  # capped, or filled up by repeats
        assert int(s["is_box"].sum()) == 1


def test_min_mask_area_drops_small_instances(coco):
    small = DetectionDataset(coco, 256, seed=0, min_mask_area=1)
    assert sum(small[(0, i)]["labels"].numel() for i in range(len(coco))) > 0
    # every mask under the bound at every scale: refused up front, not trained on nothing
    with pytest.raises(DataError, match="below data.min_mask_area 1000000"):
        DetectionDataset(coco, 256, seed=0, min_mask_area=10**6)


def test_augment_keeps_image_and_masks_aligned():
    rng = np.random.default_rng(0)
    img = np.zeros((60, 100, 3), np.uint8)
    img[20:40, 10:30] = 255
    mask = (img[:, :, 0] > 0)[None]
    aug = Augment(128, scale_range=(0.5, 2.5), flip=True)
    for _ in range(20):
        out, m, p = aug(rng, img, mask)
        assert out.shape[0] <= 128 and out.shape[1] <= 128 and m.shape[1:] == out.shape[:2]
        if m.any():
            assert (out[m[0]][:, 0] > 127).mean() > 0.9


def test_distance_transform_point_is_deep_inside():
    m = np.zeros((50, 80), bool)
    m[10:40, 5:75] = True
    x, y = distance_transform_point(m)
    assert m[int(y), int(x)] and 20 <= y <= 30 and 30 <= x <= 50


def test_image_folder_corrupt_images(tmp_path, synth):
    root = tmp_path / "imgs"
    shutil.copytree(Path(synth["images"]) / "val", root)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ds = ImageFolderDataset(str(root), 256)
    bad = ds.files.index(str(root / "broken.jpg"))
    with pytest.raises(DataError, match="broken.jpg"):
        ds[(0, bad)]
    checked = ImageFolderDataset(str(root), 256, check_images=True)
    assert len(checked) == len(ds) - 1 and checked.skipped.counts["corrupt_image"] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(str(empty), 256)


def test_image_folder_with_teacher_cache(tmp_path, synth):
    cache = TeacherFeatureCache(str(tmp_path / "cache"), "teacher-a")
    ds = ImageFolderDataset(str(Path(synth["images"]) / "val"), 256, cache=cache)
    item = ds[(0, 0)]
    assert item["teacher"] is None and item["cache_key"]
    cache.put(item["cache_key"], torch.ones(32, 16, 16))
    assert torch.equal(ds[(0, 0)]["teacher"], torch.ones(32, 16, 16))
    # another teacher, or a modified image, is another key
    assert TeacherFeatureCache(str(tmp_path / "cache"), "teacher-b").key(ds.files[0], 256, False) != item["cache_key"]
    # a truncated entry is recomputed, not trusted
    cache.path(item["cache_key"]).write_bytes(b"junk")
    assert ds[(0, 0)]["teacher"] is None


def test_class_folders(tmp_path, synth):
    ds = ClassFolderDataset(str(Path(synth["root"]) / "classes"), str(Path(synth["root"]) / "vocabulary.json"), 256)
    assert len(ds) == 12
    s = ds[(0, 0)]
    assert s["masks"] is None and not s["has_mask"] and s["boxes"].shape == (1, 4)
    assert ds.vocab.classes[int(s["labels"][0])] == Path(s["file"]).parent.name
    root = tmp_path / "cls"
    shutil.copytree(Path(synth["root"]) / "classes", root)
    (root / "flying saucer").mkdir()
    cv2.imwrite(str(root / "flying saucer" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="flying saucer"):
        ClassFolderDataset(str(root), str(Path(synth["root"]) / "vocabulary.json"), 256)
    ok = ClassFolderDataset(str(root), str(Path(synth["root"]) / "vocabulary.json"), 256, unknown_class="skip")
    assert ok.skipped.counts["folder_not_in_vocabulary"] == 1
    # without a vocabulary the folder names are the classes
    assert len(ClassFolderDataset(str(root), None, 256).vocab) == 7


def test_concat_dataset_routes_keys(coco, synth):
    det = DetectionDataset(coco, 256)
    cls = ClassFolderDataset(str(Path(synth["root"]) / "classes"), None, 256)
    both = ConcatDataset([det, cls], repeats=[1, 2])
    assert len(both) == len(det) + 2 * len(cls)
    assert both[(0, 0)]["source"] == 0 and both[(0, len(det))]["source"] == 1
    a, b = both[(0, len(det))], both[(0, len(det) + len(cls))]  # same file, two repeats
    assert a["file"] == b["file"]


def test_sampler_shards_global_batches_over_ranks():
    single = list(StepBatchSampler(20, 8, seed=3, epoch=1))
    assert len(single) == 2 and all(len(b) == 8 for b in single)
    ranks = [list(StepBatchSampler(20, 8, world_size=2, rank=r, seed=3, epoch=1)) for r in range(2)]
    for step in range(2):
        union = sorted(ranks[0][step] + ranks[1][step])
        assert union == sorted(single[step])
    # accumulation: micro-batches of one step cover the same images
    acc = list(StepBatchSampler(20, 8, grad_accum=2, seed=3, epoch=1))
    assert sorted(acc[0] + acc[1]) == sorted(single[0])
    # resume inside an epoch continues with the same batches
    assert list(StepBatchSampler(20, 8, seed=3, epoch=1, start_step=1)) == single[1:]
    assert list(StepBatchSampler(20, 8, seed=3, epoch=2)) != single
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(20, 6, grad_accum=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepBatchSampler(3, 8)


def test_run_sampler_is_the_epoch_samplers_back_to_back():
    from training.data.sampler import RunBatchSampler

    # 10 images, batch 4 -> 2 steps per epoch (2 images dropped), 2 micro-batches per step
    per_epoch = [list(StepBatchSampler(10, 4, grad_accum=2, seed=3, epoch=e)) for e in range(4)]
    flat = [m for ep in per_epoch for m in ep]
    assert flat[0][0][0] == 0 and flat[4][0][0] == 1  # keys carry their epoch (per-sample augmentation seeds)
    assert list(RunBatchSampler(10, 4, 2, seed=3, steps=7)) == flat[:14]
    assert len(RunBatchSampler(10, 4, 2, seed=3, steps=7)) == 14
    # resumed mid-epoch, and exactly at an epoch end (a checkpoint written after the epoch's last step)
    assert list(RunBatchSampler(10, 4, 2, seed=3, epoch=1, start_step=1, steps=3)) == flat[6:12]
    assert list(RunBatchSampler(10, 4, 2, seed=3, epoch=1, start_step=2, steps=1)) == flat[8:10]
    assert list(RunBatchSampler(10, 4, 2, seed=3, steps=0)) == []
