"""Stage 2 against the reference recipe (HarborYuan/ovsam clip2sam_coco_rn50x16 + its data
preprocessor and mmengine schedule): warmup, prompt filling, the class list of the CE, RoIs from
GT boxes, the token set. Each is pinned against a hand computation or torch's own scheduler."""

from __future__ import annotations

import json
from typing import List

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovsam_ros.model.recognition import DEFAULT_LOGIT_SCALE
from training import engine, stage2
from training.config import load_config
from training.data.coco import ImageRecord, Instance
from training.data.datasets import DetectionDataset, collate_instances
from training.engine import DistEnv
from training.losses import classification_loss


def test_warmup_is_mmengines_linear_lr_then_multistep():
    """The reference: LinearLR(start_factor=0.001, begin=0, end=500, by_epoch=False) + MultiStepLR at
    epochs 8 and 11. mmengine's LinearLR is torch's LinearLR with total_iters = end - begin - 1."""
    cfg = load_config(stage2.DEFAULTS, "stage2_coco_rn50x16")["train"]
    assert cfg["warmup_steps"] == 500 and cfg["warmup_factor"] == 0.001
    steps_per_epoch, total = 100, 1200
    ours = engine.lr_lambda(cfg, total, steps_per_epoch)
    for k in (0, 1, 250, 498, 499, 500, 799, 800, 1100):  # hand formula
        warm = 0.001 + 0.999 * min(k, 499) / 499
        assert ours(k) == pytest.approx(warm * 0.1 ** ((k >= 800) + (k >= 1100)), rel=1e-12), k

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.001, total_iters=499)
    steps = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[800, 1100], gamma=0.1)
    for k in range(total):
        assert ours(k) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), k
        opt.step()
        warmup.step()
        steps.step()


class _OneImage:
    """A COCO-like source with one 64x64 image and hand-drawn instance masks."""

    def __init__(self, masks: List[np.ndarray], labels: List[int]):
        self.masks = masks
        self.images = [ImageRecord(image_id=1, file="mem", height=64, width=64,
                                   instances=[Instance(ann_id=i, label=l, segmentation=None, bbox=None)
                                              for i, l in enumerate(labels)])]

    def __len__(self) -> int:
        return 1

    def load(self, index):
        return np.full((64, 64, 3), 128, np.uint8), list(self.masks)


def _rect(y0, y1, x0, x1):
    m = np.zeros((64, 64), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_fewer_instances_are_filled_to_40_prompts_by_cycling():
    masks = [_rect(2, 20, 3, 30), _rect(25, 60, 5, 15), _rect(30, 50, 30, 62)]
    source = _OneImage(masks, labels=[4, 0, 7])
    item = DetectionDataset(source, 64, instances_per_image=40, fill_instances="cycle")[0]
    # the reference tiles the instance list and keeps the first 40: 0,1,2,0,1,2,... (14/13/13)
    order = [i % 3 for i in range(40)]
    assert item["labels"].tolist() == [[4, 0, 7][i] for i in order]
    for row, i in enumerate(order):
        assert torch.equal(item["masks"][row][:64, :64], torch.from_numpy(masks[i])), row
        x, y = item["points"][row].tolist()  # a fresh random point per repeat, inside its mask
        assert masks[i][int(y), int(x)]
    assert int(item["is_box"].sum()) == 20  # half box, half point prompts
    assert len({tuple(p) for p in item["points"].tolist()}) > 3  # repeats got their own points

    random_fill = DetectionDataset(source, 64, instances_per_image=40, fill_instances="random")[0]
    assert len(random_fill["labels"]) == 40 and random_fill["labels"][:3].tolist() == [4, 0, 7]
    assert len(DetectionDataset(source, 64, instances_per_image=40, fill_instances=False)[0]["labels"]) == 3
    with pytest.raises(ValueError, match="fill_instances"):
        DetectionDataset(source, 64, fill_instances="repeat")


@pytest.fixture(scope="module")
def reversed_classes(synth, tmp_path_factory):
    """The synthetic train JSON with its class order reversed, so that the base classes are not the
    first ones and an index into the full list differs from one into the base-only list."""
    data = json.loads(open(synth["train"]).read())
    n = len(data["categories"])
    data["categories"] = [{**c, "id": n + 1 - c["id"]} for c in reversed(data["categories"])]
    for ann in data["annotations"]:
        ann["category_id"] = n + 1 - ann["category_id"]
    path = tmp_path_factory.mktemp("s2recipe_json") / "instances_train.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture(scope="module")
def tasks(synth, reversed_classes, tmp_path_factory):
    out = tmp_path_factory.mktemp("s2recipe")

    def make(*extra):
        cfg = load_config(stage2.DEFAULTS, "stage2_tiny", [
            f"data.annotations={reversed_classes}", f"data.images={synth['images']}", "data.vocabulary=null",
            f"output_dir={out}", "model.init_checkpoint=null", "train.progress=false", "data.check_polygons=false",
            *extra])
        return stage2.Stage2Task(cfg, DistEnv(), None)

    return {"all": make("loss.class_list=all", "output_tokens=reference", "loss.iou_weight=0"),
            "train_splits": make("loss.class_list=train_splits"), "make": make}


def test_ce_runs_over_the_full_class_list_with_base_annotations_only(reversed_classes, tasks):
    cats = json.loads(open(reversed_classes).read())["categories"]
    names = [c["name"] for c in cats]
    base = [i for i, c in enumerate(cats) if c["split"] == "base"]
    assert len(base) < len(names)  # there are classes that never get an annotation
    full, sub = tasks["all"], tasks["train_splits"]
    assert list(full.train_vocab.classes) == names and len(full.texts[0].vocab) == len(names)
    assert list(sub.train_vocab.classes) == [names[i] for i in base]
    seen = []
    for index in range(len(full.dataset)):
        a, b = full.dataset[index]["labels"].tolist(), sub.dataset[index]["labels"].tolist()
        assert a == [base[j] for j in b]  # same instances, full-list indices, base classes only
        seen += a
    assert set(seen) <= set(base) and max(seen) >= len(base)  # indices beyond the base-only list occur
    assert min(base) > 0  # ... and the base classes are not a prefix of the list

    torch.manual_seed(0)
    labels = torch.tensor(seen[:16])
    regions = torch.randn(len(labels), full.texts[0].embeddings.shape[-1])
    text = full.texts[0].embeddings[:, 0]  # one synonym per synthetic class
    logits = DEFAULT_LOGIT_SCALE * F.normalize(regions, dim=-1) @ F.normalize(text, dim=-1).T
    logits = torch.cat([logits, torch.zeros(len(labels), 1)], 1)  # background column, logit 0
    assert logits.shape[1] == len(names) + 1
    hand = F.cross_entropy(logits, labels, reduction="sum")
    assert classification_loss(regions, labels, full.texts[0], 0.1).item() == pytest.approx(hand.item(), rel=1e-5)


def test_rois_are_the_gt_boxes_for_box_and_point_prompts(tasks):
    task = tasks["all"]
    items = [task.dataset[(0, i)] for i in range(2)]
    batch = task.prepare(collate_instances(items), DistEnv())
    for name in ("box", "point"):
        g = batch["groups"][name]
        assert g is not None and g["idx"].numel() > 0
        for row, i in enumerate(g["idx"].tolist()):
            mask = batch["masks"][i].numpy()
            ys, xs = np.nonzero(mask)
            gt = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # the instance's box, by hand
            assert g["roi_boxes"][row].tolist() == gt
            if name == "point":
                x, y = g["prompts"][row].tolist()
                assert mask[int(y), int(x)]  # the prompt is a point, the RoI is still the box


def test_reference_token_set_trains_without_an_iou_token(tasks):
    task = tasks["all"]
    assert task.model.decoder.output_tokens == "reference"
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert "decoder.mask_decoder.output_hypernetworks_mlps.0.layers.0.weight" in trainable
    assert not any("iou_token" in n or "iou_prediction_head" in n for n in trainable)
    assert tasks["train_splits"].model.decoder.output_tokens == "sam"  # the model's own (stage2_tiny)
    with pytest.raises(ValueError, match="no IoU token"):
        tasks["make"]("output_tokens=reference", "loss.iou_weight=1.0")
    ref = load_config(stage2.DEFAULTS, "stage2_coco_rn50x16")
    assert ref["output_tokens"] == "reference" and ref["loss"]["iou_weight"] == 0
    assert ref["loss"]["class_list"] == "all" and ref["data"]["fill_instances"] == "cycle"


def test_names_only_and_max_synonyms_choose_the_encoded_texts(synth, tasks, tmp_path):
    """The reference trains LVIS on the class name only (its split_label of the LVIS name):
    text.names_only encodes exactly that, text.max_synonyms keeps the first synonyms; the classes,
    their order and the training labels stay the same."""
    data = json.loads(open(synth["train"]).read())
    for c in data["categories"]:  # LVIS-style entries: raw name with '_' and a qualifier, 3 synonyms
        c["synonyms"] = [f"{c['name']} toy", f"{c['name']} model", "plaything"]
        c["name"] = c["name"].replace(" ", "_") + "_(Toy)"
    path = tmp_path / "instances_lvis_style.json"
    path.write_text(json.dumps(data))
    raw = [c["name"] for c in data["categories"]]

    def texts(*extra):
        task = tasks["make"](f"data.annotations={path}", "loss.class_list=all", *extra)
        return task, task.texts[0].vocab

    full_task, full = texts()
    names_task, names = texts("text.names_only=true")
    _, capped = texts("text.max_synonyms=1")
    by_hand = [[r.replace("_", " ").lower()] for r in raw]  # split_label: '_' -> ' ', lower case
    assert names.synonyms == by_hand and names.classes == full.classes
    assert full.synonyms == [c["synonyms"] for c in data["categories"]]
    assert capped.synonyms == [[c["synonyms"][0]] for c in data["categories"]]
    assert names_task.texts[0].embeddings.shape[:2] == (len(raw), 1)
    assert not torch.allclose(names_task.texts[0].embeddings[:, 0], full_task.texts[0].embeddings[:, 0])
    assert names_task.dataset[0]["labels"].tolist() == full_task.dataset[0]["labels"].tolist()
    with pytest.raises(ValueError, match="max_synonyms"):
        texts("text.max_synonyms=0")


def test_label_weight_adds_the_label_token_and_trains_label_mlp(tasks):
    """The reference multiplies the label token's output by 0 (label_mlp unused and frozen); the
    shapes recipe sets label_weight: the region embedding the CE sees is then RoI + w * label
    embedding, and label_mlp learns from the classification loss."""
    reference = tasks["train_splits"]
    assert reference.model.clip2sam.label_weight == 0.0
    assert not any(n.startswith("decoder.label_mlp.") for n, p in reference.model.named_parameters()
                   if p.requires_grad)

    task = tasks["make"]("label_weight=0.5", "loss.class_list=train_splits")
    model = task.model
    assert model.clip2sam.label_weight == 0.5
    items = [task.dataset[(0, i)] for i in range(2)]
    batch = task.prepare(collate_instances(items), DistEnv())
    out = task.net(batch)
    with torch.no_grad():
        feats = model.encode_image(batch["images"])
    for name in ("box", "point"):
        g, res = batch["groups"][name], out[name]
        label = res["label_embeddings"]
        assert label is not None and label.norm(dim=-1).min() > 0
        roi = model.clip2sam(feats.fpn_features, g["roi_boxes"], g["image_index"])
        torch.testing.assert_close(res["region_embeddings"][:, 0], roi + 0.5 * label, rtol=1e-5, atol=1e-5)
    total, _ = task.loss(out, batch, 0)
    total.backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("decoder.label_mlp.")]
    assert grads and all(gr is not None and gr.abs().sum() > 0 for gr in grads)
    # saved with the model (current_config is what save_ovsam writes): the predictor adds it the same way
    assert model.current_config().clip2sam.label_weight == 0.5

    with pytest.raises(ValueError, match="label token"):
        tasks["make"]("label_weight=1.0", "model.overrides.decoder.label_token=false")
