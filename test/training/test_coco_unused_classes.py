"""The published COCO config never names COCO's 15 unused classes, as the reference never does."""

from __future__ import annotations

import numpy as np
import torch


def test_published_coco_config_excludes_unused_classes_and_lvis_has_none():
    from ovsam_ros.loading import load_specs
    from ovsam_ros.model.vocabulary import load_vocabulary

    coco = load_specs("rn50x16_coco")[1]
    assert coco.vocabulary == "coco" and coco.exclude_unused is True
    assert load_vocabulary("coco").split.count("unused") == 15
    lvis = load_specs("rn50x16")[1]  # LVIS has no unused split: nothing to exclude
    assert "unused" not in (load_vocabulary(lvis.vocabulary).split or [])


def test_exclude_unused_flows_from_the_yaml_to_every_label(tmp_path):
    """The CLI and the node build their predictor with build_predictor: the YAML key reaches the labels."""
    from ovsam_ros.loading import build_predictor
    from ovsam_ros.prompts import Prompt

    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    names = {}
    for exclude in (False, True):
        torch.manual_seed(0)
        spec = {"model": {"preset": "tiny", "seed": 0},
                "predictor": {"vocabulary": "coco", "device": "cpu", "precision": "fp32", "top_k": 80,
                              "text_cache_dir": None, "clip_ensemble": True, "exclude_unused": exclude}}
        predictor = build_predictor(spec)
        assert predictor.exclude_unused is exclude
        predictor.set_image(image)
        results = predictor.predict([Prompt(box=[10, 10, 90, 70]), Prompt(points=[[60, 40]], point_labels=[1])])
        names[exclude] = [{lab.name for lab in r.labels} for r in results]
    split = predictor.text.vocab.split
    unused = {name for name, s in zip(predictor.text.vocab.classes, split) if s == "unused"}
    for labels in names[False]:
        assert labels & unused  # top-80 of 80: every class is listed when nothing is excluded
    for labels in names[True]:
        assert labels and not labels & unused and len(labels) == 65
