"""The bundled shapes-world model and the recipe that re-creates it (tools/train_demo_model.sh).

* The bundled checkpoint is evaluated on freshly generated scenes of a seed no training
  run uses, with the issue's targets as floors: a regression test of the whole stack
  (CLIP, SAM2CLIP, CLIP2SAM, decoder, recognition, text query).
* ``tools/train_demo_model.sh --quick`` runs every stage at a reduced size; it fails
  unless each stage improves its own metric.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from training_helpers import ROOT, subprocess_env

pytestmark = pytest.mark.e2e

#: A scene seed never used for training (the recipe uses seed 0, the demo camera 2026).
FRESH_SEED = 4242

#: The issue's targets on held-out scenes; see ovsam_ros/data/models/shapes_metrics.json.
TARGETS = {
    "box_iou": 0.85,
    "point_iou": 0.75,
    "box_accuracy_base": 0.90,
    "box_accuracy_novel": 0.50,
    "text_query_hit_rate_novel": 0.70,
}
#: Targets the bundled model does not reach yet (strict xfail: the day a retrained model reaches
#: one, the test fails until the entry is removed). None: measured on the recipe's 100 held-out
#: validation scenes (ovsam_ros/data/models/shapes_metrics.json) / on these 24 fresh scenes:
#: box IoU 0.883 / 0.897, point IoU 0.874 / 0.888, base labels 92.7 % / 92.0 %, novel labels
#: 85.2 % / 93.8 %, novel text queries 96.7 % / 93.8 %.
NOT_REACHED: dict = {}
#: Targets within one object / query of the line here (not strict: numerical noise must not
#: decide CI; the regression floors below still guard them). None: base labels are 69 of 75
#: objects here, the target 68.
BORDERLINE: dict = {}
#: Regression floors of the bundled model on these fresh scenes: ABOVE each target (a floor at or
#: below an asserted target adds nothing: the target fails first) and below the measured value by
#: a margin no numerical noise reaches (about 0.03 of mean IoU, i.e. ~3 of the 91 prompts' masks
#: lost; at least 2 objects for rates). Measured: box IoU 0.897, point IoU 0.888, novel labels
#: 15 of 16, novel text queries 15 of 16. A change that costs the stack quality fails here while
#: the targets still pass.
REGRESSION_FLOORS = {
    "box_iou": 0.87,
    "point_iou": 0.86,
    "box_accuracy_novel": 0.70,  # 12 of 16 (target 0.50)
    "text_query_hit_rate_novel": 0.80,  # 13 of 16 (target 0.70: 12)
}
#: Targets that are their own floor: no value lies between the target and the measured one without
#: making the floor the measured value itself (flaky).
NO_FLOOR = {
    "box_accuracy_base": "69 of 75 base objects measured; the target 0.90 already needs 68",
}


@pytest.fixture(scope="module")
def shapes_predictor():
    """The bundled model's predictor, built once for this module (loading takes seconds)."""
    from ovsam_ros.loading import build_predictor

    predictor = build_predictor("shapes", text_cache_dir=None)
    assert predictor.trained
    return predictor


@pytest.fixture(scope="module")
def fresh_eval(tmp_path_factory, shapes_predictor):
    from training.data.coco import CocoInstances
    from training.demo_model import headline, world_query_options
    from training.evaluate import evaluate
    from training.synthetic import make_dataset

    root = tmp_path_factory.mktemp("fresh_shapes")
    data = make_dataset(root, seed=FRESH_SEED, world="shapes", splits={"test": 24})
    predictor = shapes_predictor
    assert not predictor.everything_multimask  # the shapes YAML: the single trained mask token
    metrics = evaluate(predictor, CocoInstances(data["test"], data["images"]), ("box", "point"),
                       progress=False, text_queries=True, query_options=world_query_options())
    return headline(metrics)


@pytest.mark.parametrize("metric", sorted(TARGETS))
def test_bundled_model_meets_target_on_fresh_scenes(fresh_eval, metric, request):
    if metric in NOT_REACHED:
        request.applymarker(pytest.mark.xfail(strict=True, reason=NOT_REACHED[metric]))
    elif metric in BORDERLINE:
        request.applymarker(pytest.mark.xfail(strict=False, reason=BORDERLINE[metric]))
    value = fresh_eval[metric]
    assert value is not None and value >= TARGETS[metric], f"{metric} = {value} < target {TARGETS[metric]}"


@pytest.mark.parametrize("metric", sorted(REGRESSION_FLOORS))
def test_bundled_model_keeps_its_measured_quality_on_fresh_scenes(fresh_eval, metric):
    value = fresh_eval[metric]
    assert value is not None and value >= REGRESSION_FLOORS[metric], f"{metric} = {value}"


def test_every_floor_can_fail_on_its_own():
    """Each target either has a floor above it (a floor at or below an asserted target can never
    fail first) or says why it is its own floor; an unreached target's floor only needs to exist."""
    assert set(REGRESSION_FLOORS) | set(NO_FLOOR) == set(TARGETS) and not set(REGRESSION_FLOORS) & set(NO_FLOOR)
    for metric, floor in REGRESSION_FLOORS.items():
        if metric not in NOT_REACHED:
            assert floor > TARGETS[metric], f"{metric}: floor {floor} <= target {TARGETS[metric]} guards nothing"


def test_text_query_ranks_a_rendered_object_through_the_model(shapes_predictor):
    """``query`` on regions that come from an IMAGE through the model (not a class's own text embedding used as a
    region): fresh world scenes whose objects are known, one box prompt per object. Each query's scores equal
    the documented rule written out by hand (softmax over [x100 cosine per vocabulary class other than the
    one the phrase names, the phrase, background 0], the phrase's column), and the object of the queried
    class is ranked first far above chance."""
    import numpy as np
    import torch

    from ovsam_ros.prompts import Prompt
    from ovsam_ros.shapes_world import WORLD_CLASSES, world_scene

    predictor = shapes_predictor
    predictor.set_vocabulary("shapes")
    model, templates = predictor.model, predictor.templates
    vocab = predictor.text.embeddings.cpu().double()
    valid = predictor.text.valid.cpu()
    scale = math.exp(4.6052)  # the reference's logit scale (~100)
    hits = chance = queries = 0
    for index in range(6):
        image, objects = world_scene(FRESH_SEED, index, size=(256, 256))
        prompts = []
        for _, mask in objects:
            ys, xs = np.nonzero(mask)
            prompts.append(Prompt(box=[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]))
        predictor.set_image(image)
        results = predictor.predict(prompts)
        names = [WORLD_CLASSES[c].name for c, _ in objects]
        regions = torch.nn.functional.normalize(torch.as_tensor(np.stack([r.embedding for r in results])).double(),
                                                dim=-1)
        vocab_logits = scale * torch.where(valid, torch.einsum("nd,csd->ncs", regions, vocab), -torch.inf).amax(-1)
        for name in sorted(set(names)):
            with torch.no_grad():
                phrase = model.encode_text(model.tokenizer([t.format(name) for t in templates]), normalize=True)
            phrase = torch.nn.functional.normalize(phrase.mean(0).double().cpu(), dim=-1)
            others = vocab_logits.clone()
            others[:, [c for c, n in enumerate(predictor.vocabulary.classes) if n == name]] = -torch.inf
            logits = torch.cat([others, scale * (regions @ phrase)[:, None], torch.zeros(len(results), 1)], 1)
            want = logits.softmax(-1)[:, -2].numpy()
            ranked = predictor.query(name, candidates=results, max_instances=len(results))
            order = [next(i for i, r in enumerate(results) if r is q) for q in ranked]
            assert sorted(order) == list(range(len(results)))
            np.testing.assert_allclose([q.query_score for q in ranked], want[order], rtol=1e-4, atol=1e-6)
            assert all(np.diff(want[order]) <= 1e-7)  # best first
            queries += 1
            hits += names[order[0]] == name
            chance += names.count(name) / len(names)
    # measured 16 / 22 with the bundled model; a uniform ranking gets ~6 / 22
    assert hits >= 0.55 * queries and hits >= 2 * chance, (hits, chance, queries)


def test_recipe_scores_with_the_predictor_the_shapes_yaml_builds(monkeypatch, shapes_predictor, tmp_path):
    """The metrics the recipe writes (shapes_metrics.json, README) must be those of the predictor
    the demo, CLI and node build from the shapes YAML: same labelling rule, texts and precision;
    only the weights file differs. (Scoring with the frozen-CLIP ensemble once made the recorded
    labels 10-40 points off what the demo prints.)"""
    import training.evaluate as ev
    from training import demo_model
    from ovsam_ros.loading import resolve_config_path

    seen = {}

    def fake_evaluate(predictor, coco, *args, **kwargs):
        seen["predictor"] = predictor
        return {"prompts": {}}

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    from training.synthetic import make_dataset

    data = make_dataset(tmp_path, seed=FRESH_SEED, world="shapes", splits={"test": 1})
    demo_model.evaluate_model(demo_model.PACKAGE_MODEL_DIR / "shapes.pt", data["test"], data["images"], 1)
    ours, yaml_built = seen["predictor"], shapes_predictor
    assert "clip_ensemble: false" in resolve_config_path("shapes").read_text()
    for attr in ("clip_ensemble", "templates", "names_only", "max_synonyms", "precision", "everything_multimask",
                 "roi_box"):
        assert getattr(ours, attr) == getattr(yaml_built, attr), attr


def test_bundled_model_is_small_and_says_what_it_knows(caplog):
    from ovsam_ros.loading import build_model, load_specs

    path = ROOT / "ovsam_ros" / "data" / "models" / "shapes.pt"
    assert path.stat().st_size <= 25 * 1024 * 1024
    spec, predictor_spec = load_specs("shapes")
    assert predictor_spec.vocabulary == "shapes" and spec.trained
    with caplog.at_level("WARNING"):
        build_model(spec)
    text = caplog.text
    assert "only the synthetic shapes world" in text and "UNTRAINED" not in text


def test_train_demo_model_quick_improves_every_stage(tmp_path):
    import torch

    from ovsam_ros.loading import load_specs

    env = subprocess_env()
    env["OVSAM_VENV"] = sys.prefix  # the environment running the tests
    proc = subprocess.run(["bash", str(ROOT / "tools" / "train_demo_model.sh"), "--quick", "--out", str(tmp_path)],
                          cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = {c["stage"] for c in summary["checks"]}
    assert stages == {"stage0", "stage1", "stage2"}
    assert all(c["improved"] for c in summary["checks"])
    assert (tmp_path / "shapes.pt").is_file() and (tmp_path / "stage0" / "clip.pt").is_file()
    assert summary["scored_with"]["roi_box"] == load_specs("shapes")[1].roi_box
    # --rescore: the same run scored again (today's YAML, no training) gives the same numbers
    from training import demo_model

    previous = torch.get_num_threads()
    try:
        assert demo_model.main(["--rescore", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(previous)
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["eval_final"] == summary["eval_final"] and again["eval_stage1_model"] == summary["eval_stage1_model"]
    assert again["checks"] == summary["checks"] and "rescore" in again["seconds"]
    assert demo_model.main(["--rescore", "--out", str(tmp_path / "nothing")]) == 2
    # stage 0's output is a plain open_clip state dict: open_clip itself loads it
    import open_clip

    from ovsam_ros.model.backbone import register_tiny_clip_configs

    register_tiny_clip_configs()
    open_clip.create_model("ovsam-shapes-rn", pretrained=str(tmp_path / "stage0" / "clip.pt"))
