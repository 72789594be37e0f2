"""The paper's evaluation protocol: box / point* prompts, IoU and accuracy per split and class, baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data import CocoInstances
from training.evaluate import evaluate, format_table, main, mask_iou, summarize


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0 and mask_iou(a, ~a) == 0.0


def test_summary_by_split_and_class():
    from ovsam_ros.model.vocabulary import Vocabulary

    vocab = Vocabulary("v", "", ["a", "b"], [["a"], ["b"]], split=["base", "novel"])
    rows = [{"label": 0, "split": "base", "iou": 0.5, "pred": 0, "pred_feature-crop": 1},
            {"label": 0, "split": "base", "iou": 1.0, "pred": 1, "pred_feature-crop": 0},
            {"label": 1, "split": "novel", "iou": 0.0, "pred": 1, "pred_feature-crop": 1}]
    s = summarize(rows, vocab, ["feature-crop"])
    assert s["overall"] == {"count": 3, "iou": 0.5, "accuracy": pytest.approx(2 / 3)}
    assert s["base"]["iou"] == 0.75 and s["base"]["accuracy"] == 0.5 and s["novel"]["accuracy"] == 1.0
    assert s["per_class"]["b"]["split"] == "novel" and s["class_mean_accuracy"] == 0.75
    assert s["baselines"]["feature-crop"] == {"overall": pytest.approx(2 / 3), "base": 0.5, "novel": 1.0}


def test_evaluate_untrained_tiny_model(synth, stage1_checkpoint):
    from training.evaluate import build_eval_predictor

    coco = CocoInstances(synth["val"], synth["images"])
    predictor = build_eval_predictor(stage1_checkpoint, None, "cpu", "fp32", "single")
    metrics = evaluate(predictor, coco, ["box", "point"], ["feature-crop", "image-crop"], progress=False)
    for kind in ("box", "point"):
        m = metrics["prompts"][kind]
        assert m["overall"]["count"] == coco.num_instances
        assert 0.0 <= m["overall"]["iou"] <= 1.0 and set(m) >= {"base", "novel", "per_class", "baselines"}
        assert set(m["baselines"]) == {"feature-crop", "image-crop"}
    table = format_table(metrics)
    assert "IoU_b" in table and "feature-crop" in table and "per class" in table


def test_cli_writes_json_and_reports_bad_input(tmp_path, synth, stage1_checkpoint, capsys):
    out = tmp_path / "eval.json"
    assert main(["--checkpoint", stage1_checkpoint, "--annotations", synth["val"], "--images", synth["images"],
                 "--prompts", "box", "--max-images", "2", "--templates", "single", "--out", str(out),
                 "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["images"] == 2 and list(data["prompts"]) == ["box"]
    assert "ovsam" in capsys.readouterr().out
    assert main(["--checkpoint", stage1_checkpoint, "--annotations", str(tmp_path / "none.json"),
                 "--no-progress"]) == 2
    assert "none.json" in capsys.readouterr().err


class _ScriptedPredictor:
    """Answers each prompt from the ground truth it can see (found by the prompt, not by order),
    then ``answer(gt_mask, gt_label)`` decides what to report: an oracle, an empty one, ..."""

    def __init__(self, loaded, answer):
        from ovsam_ros.model.transforms import ImageTransform

        self.loaded, self.answer, self.vocabulary, self.gt = loaded, answer, None, None
        self.transform = ImageTransform(1024)  # the reference point rule works in model-input pixels

    def set_vocabulary(self, vocab):
        self.vocabulary = vocab

    def vocabulary_for(self, vocab):
        return vocab

    def set_image(self, image):
        matches = [(record, masks) for record, img, masks in self.loaded if np.array_equal(img, image)]
        assert len(matches) == 1
        record, masks = matches[0]
        self.gt = list(zip(record.instances, masks))

    def _find(self, prompt):
        if prompt.box is not None:
            hits = [(inst, m) for inst, m in self.gt if np.allclose(inst.box_xyxy(), prompt.box)]
        else:
            (x, y), = prompt.points
            hits = [(inst, m) for inst, m in self.gt if m[int(y), int(x)]]
        assert len(hits) == 1, f"prompt {prompt} matches {len(hits)} instances"
        return hits[0]

    def predict(self, prompts, multimask_output=False, keep="best", clip_boxes=None):
        from types import SimpleNamespace

        out = []
        for prompt in prompts:
            inst, m = self._find(prompt)
            mask, label = self.answer(m, inst.label)
            out.append(SimpleNamespace(mask=mask, labels=[SimpleNamespace(class_index=label)]))
        return out


def _half(m):
    """The first half (rounded down) of the mask's pixels in raster order: IoU k / n with the mask."""
    flat = m.reshape(-1).copy()
    on = np.flatnonzero(flat)
    flat[on[len(on) // 2:]] = False
    return flat.reshape(m.shape)


def _doubled(m):
    """The mask plus as many pixels outside it (first in raster order): IoU exactly 1/2."""
    flat = m.reshape(-1).copy()
    off = np.flatnonzero(~flat)
    flat[off[: int(m.sum())]] = True
    return flat.reshape(m.shape)


def test_protocol_scores_known_answers(synth):
    coco = CocoInstances(synth["val"], synth["images"])
    n_classes = len(coco.vocab)
    loaded = [(record, *coco.load(i)) for i, record in enumerate(coco.images)]
    gts = [(inst, m) for record, _, masks in loaded for inst, m in zip(record.instances, masks) if m.any()]
    assert len(gts) >= 8 and {coco.split_of(inst.label) for inst, _ in gts} == {"base", "novel"}

    def run(answer):
        return evaluate(_ScriptedPredictor(loaded, answer), coco, ["box", "point"], progress=False)["prompts"]

    oracle = run(lambda m, label: (m.copy(), label))
    for kind in ("box", "point"):
        assert oracle[kind]["overall"] == {"count": len(gts), "iou": 1.0, "accuracy": 1.0}
        assert oracle[kind]["base"]["accuracy"] == oracle[kind]["novel"]["accuracy"] == 1.0

    empty = run(lambda m, label: (np.zeros_like(m), (label + 1) % n_classes))
    for kind in ("box", "point"):
        assert empty[kind]["overall"] == {"count": len(gts), "iou": 0.0, "accuracy": 0.0}

    # Half of each mask, and the right label only for base classes.
    expected_iou = np.mean([(m.sum() // 2) / m.sum() for _, m in gts])
    base = [inst.label for inst, _ in gts if coco.split_of(inst.label) == "base"]
    half = run(lambda m, label: (_half(m), label if coco.split_of(label) == "base" else (label + 1) % n_classes))
    for kind in ("box", "point"):
        assert half[kind]["overall"]["iou"] == pytest.approx(expected_iou, abs=1e-12)
        assert abs(expected_iou - 0.5) < 0.01
        assert half[kind]["overall"]["accuracy"] == pytest.approx(len(base) / len(gts))
        assert (half[kind]["base"]["accuracy"], half[kind]["novel"]["accuracy"]) == (1.0, 0.0)
        per_class = half[kind]["per_class"]
        assert sum(v["count"] for v in per_class.values()) == len(gts)
        assert all(v["accuracy"] == (1.0 if v["split"] == "base" else 0.0) for v in per_class.values())

    doubled = run(lambda m, label: (_doubled(m), label))
    for kind in ("box", "point"):
        assert doubled[kind]["overall"]["iou"] == 0.5  # intersection / union, not / ground-truth area


def test_exact_edt_point_is_the_first_exact_distance_transform_maximum():
    """The rule before kornia (kept for the point-rule benchmark); the reference's own rule, kornia's, is
    pinned in test_point_rule.py."""
    from training.data.transforms import distance_transform_point, exact_edt_point

    mask = np.zeros((20, 20), bool)
    mask[2:8, 3:13] = True  # rows 2..7, cols 3..12
    # By hand: distance to the nearest background pixel = min(r - 1, 8 - r, c - 2, 13 - c); its maximum 3
    # holds on rows 4-5, cols 5-10; the first in row-major order is (row 4, col 5).
    assert exact_edt_point(mask, (20, 20)) == (5.0, 4.0)
    assert distance_transform_point(mask) != (5.0, 4.0)  # our centred rule picks the middle of the plateau
    # The mask is resized to the model input first (nearest), and the point is in input pixels.
    big = np.kron(mask, np.ones((2, 2), bool))  # 40 x 40, input 20 x 20
    assert exact_edt_point(big, (20, 20)) == (5.0, 4.0)


def test_unused_classes_are_dropped_and_never_predicted(tmp_path):
    import torch

    from ovsam_ros.model import OVSAMConfig
    from ovsam_ros.model.ovsam import OVSAM
    from ovsam_ros.model.vocabulary import Vocabulary
    from ovsam_ros.predictor import OVSAMPredictor
    from ovsam_ros.prompts import Prompt

    torch.manual_seed(0)
    vocab = Vocabulary("v", "", ["cat", "dog", "car"], [["cat"], ["dog"], ["car"]], split=["base", "unused", "novel"])
    predictor = OVSAMPredictor(OVSAM(OVSAMConfig.tiny()).eval(), vocabulary=vocab, top_k=3)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    predictor.set_image(image)
    names = {lab.name for r in predictor.predict([Prompt(box=[5, 5, 40, 40])]) for lab in r.labels}
    assert "dog" in names  # robots: every class stays nameable
    predictor.exclude_unused = True
    for ensemble in (False, True):
        predictor.clip_ensemble = ensemble
        names = {lab.name for r in predictor.predict([Prompt(box=[5, 5, 40, 40])]) for lab in r.labels}
        assert names == {"cat", "car"}


@pytest.mark.parametrize("flag, synonyms", [([], None), (["--synonyms", "names"], "names"), (["--synonyms", "all"], "all")])
def test_synonyms_option_reaches_the_eval_predictor(flag, synonyms, tmp_path, synth, monkeypatch):
    import training.evaluate as evaluate_module

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop after the options")

    monkeypatch.setattr(evaluate_module, "build_eval_predictor", fake)
    assert main(["--model", "tiny", "--annotations", str(synth["val"]), "--images", str(synth["images"]),
                 "--no-progress", *flag]) == 2
    assert seen["synonyms"] == synonyms


def test_evaluate_encodes_the_dataset_classes_with_the_predictors_synonym_policy(synth):
    """The LVIS config evaluates names only: evaluate() sets predictor.vocabulary_for(dataset vocab)."""
    from ovsam_ros.model.vocabulary import Vocabulary, load_vocabulary

    coco = CocoInstances(synth["val"], synth["images"])
    with_synonyms = Vocabulary(coco.vocab.name, coco.vocab.version, coco.vocab.classes,
                               [[c, f"{c} alias"] for c in coco.vocab.classes], coco.vocab.split, coco.vocab.ids)
    coco.vocab = with_synonyms
    loaded = [(record, *coco.load(i)) for i, record in enumerate(coco.images[:1])]

    class NamesOnly(_ScriptedPredictor):
        def vocabulary_for(self, vocab):
            return load_vocabulary(vocab, names_only=True)

    predictor = NamesOnly(loaded, lambda m, label: (m.copy(), label))
    evaluate(predictor, coco, ["box"], max_images=1, progress=False)
    assert predictor.vocabulary.synonyms == [[c] for c in coco.vocab.classes]
