"""Model YAMLs: presets, weight files, clear errors, and the loud untrained warning."""

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from ovsam_ros.loading import CONFIG_DIR, build_predictor, load_specs
from ovsam_ros.model import save_ovsam
from ovsam_ros.predictor import OVSAMPredictor
from ovsam_ros.prompts import Prompt

from predictor_helpers import tiny_model


def test_bundled_configs_parse():
    for path in sorted((CONFIG_DIR / "models").glob("*.yaml")):
        model, predictor = load_specs(path)
        model.config()  # preset + overrides form a valid OVSAMConfig
        assert predictor.precision in ("fp32", "fp16", "bf16")
    model, _ = load_specs("rn50x16")
    assert model.trained and model.config().backbone.model_name == "RN50x16"


@pytest.mark.parametrize("data, message", [
    ({"model": {"preset": "huge"}}, "unknown model preset 'huge'"),
    ({"model": {"presett": "tiny"}}, "unknown key\\(s\\) \\['presett'\\]"),
    ({"predictor": {"precision": "fp8"}}, "precision must be one of"),
    ({"extra": {}}, "unknown section"),
    ({"model": {"preset": "tiny", "overrides": {"decoder": {"nonsense": 1}}}}, "unknown key"),
])
def test_bad_configs_fail_clearly(data, message):
    with pytest.raises(ValueError, match=message):
        build_predictor(data)


def test_missing_weight_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "sam_vit_h.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_predictor({"model": {"preset": "tiny", "sam_checkpoint": str(missing)}})


def test_every_missing_weight_file_is_named_at_once_before_anything_loads(tmp_path, monkeypatch):
    """Before: the first missing file only, after the CLIP load, in open_clip's words."""
    import ovsam_ros.loading as loading

    monkeypatch.setattr(loading, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    there = tmp_path / "sam2clip.pth"
    there.write_bytes(b"x")
    model = {"preset": "tiny", "clip_weights": str(tmp_path / "clip.pt"), "sam_checkpoint": "~/no/sam.pth",
             "sam2clip_checkpoint": str(there), "clip2sam_checkpoint": str(tmp_path / "c2s.pth")}
    with pytest.raises(FileNotFoundError) as error:
        build_predictor({"model": model})
    text = str(error.value)
    assert text.startswith("3 weight file(s) of model tiny")
    for key, path in (("clip_weights", tmp_path / "clip.pt"), ("sam_checkpoint", Path("~/no/sam.pth").expanduser()),
                      ("clip2sam_checkpoint", tmp_path / "c2s.pth")):
        assert f"model.{key}: {path}" in text
    assert "sam2clip" not in text and "no published source" in text and "--model shapes" in text


def test_untrained_model_warns_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="ovsam_ros.loading"):
        predictor = build_predictor({"model": {"preset": "tiny"}, "predictor": {"vocabulary": "inline:cat", "device": "cpu"}})
    assert not predictor.trained
    assert "UNTRAINED MODEL" in caplog.text and "MEANINGLESS" in caplog.text


def test_ovsam_checkpoint_round_trip_through_yaml(tmp_path, caplog):
    model = tiny_model(seed=5)
    save_ovsam(model, tmp_path / "trained.pt")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({
        "model": {"ovsam_checkpoint": str(tmp_path / "trained.pt")},
        "predictor": {"vocabulary": "cat, dog", "device": "cpu", "text_cache_dir": str(tmp_path / "cache")},
    }))
    with caplog.at_level(logging.WARNING, logger="ovsam_ros.loading"):
        loaded = build_predictor(tmp_path / "model.yaml")
    assert loaded.trained and "UNTRAINED" not in caplog.text
    assert loaded.everything_multimask  # SAM's generator unless the model YAML says otherwise
    original = OVSAMPredictor(model, vocabulary="cat, dog")
    image = np.random.default_rng(2).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    results = []
    for predictor in (original, loaded):
        predictor.set_image(image)
        results.append(predictor.predict([Prompt(points=[[40, 60]], point_labels=[1])])[0])
    assert np.array_equal(results[0].mask, results[1].mask)
    assert np.array_equal(results[0].low_res_logits, results[1].low_res_logits)
    assert [l.name for l in results[0].labels] == [l.name for l in results[1].labels]


def test_synonym_options_flow_from_the_yaml_and_overrides(tmp_path):
    spec = tmp_path / "v.json"
    spec.write_text('{"classes": [{"name": "sofa", "synonyms": ["sofa", "couch", "lounge"]}, "cup/mug"]}')
    base = {"model": {"preset": "tiny"}, "predictor": {"vocabulary": str(spec), "text_cache_dir": None}}
    yaml_names = build_predictor({**base, "predictor": {**base["predictor"], "names_only": True}})
    assert yaml_names.names_only and yaml_names.vocabulary.synonyms == [["sofa"], ["cup"]]
    overridden = build_predictor({**base, "predictor": {**base["predictor"], "names_only": True}}, names_only=False,
                                 max_synonyms=2)
    assert overridden.vocabulary.synonyms == [["sofa", "couch"], ["cup", "mug"]]
    with pytest.raises(ValueError, match="max_synonyms"):
        build_predictor({**base, "predictor": {**base["predictor"], "max_synonyms": 0}})
    assert overridden.transform.resize == "pil"  # segment_anything's, unless the YAML says cv2
    assert build_predictor({**base, "predictor": {**base["predictor"], "resize": "cv2"}}).transform.resize == "cv2"


def test_synonyms_switch_all_lifts_the_yaml_cap_and_names_keeps_one(tmp_path):
    """The CLI's --synonyms / the node's `synonyms`: 'all' must mean every listed synonym even when the
    model YAML caps them (a None override cannot clear a YAML value), 'names' the class name alone."""
    spec = tmp_path / "v.json"
    spec.write_text('{"classes": [{"name": "sofa", "synonyms": ["sofa", "couch", "lounge"]}, "cup/mug"]}')
    capped = {"model": {"preset": "tiny"},
              "predictor": {"vocabulary": str(spec), "text_cache_dir": None, "max_synonyms": 1}}
    assert build_predictor(capped).vocabulary.synonyms == [["sofa"], ["cup"]]
    everything = build_predictor(capped, synonyms="all")
    assert everything.vocabulary.synonyms == [["sofa", "couch", "lounge"], ["cup", "mug"]]
    assert everything.max_synonyms is None and not everything.names_only
    everything.set_vocabulary(str(spec))  # the policy stays with the predictor for later vocabularies
    assert everything.vocabulary.synonyms == [["sofa", "couch", "lounge"], ["cup", "mug"]]
    assert build_predictor(capped, synonyms="names").vocabulary.synonyms == [["sofa"], ["cup"]]
    assert build_predictor(capped, synonyms="").vocabulary.synonyms == [["sofa"], ["cup"]]  # '' = the YAML's
    with pytest.raises(ValueError, match="synonyms must be one of all, names"):
        build_predictor(capped, synonyms="al")


def test_model_yaml_roi_box_reaches_the_predictors_decoder(tmp_path, monkeypatch):
    """predictor.roi_box from the YAML: the instance's embedding is the RoI of the mask's largest
    piece (by hand: a mask made of a 6x8 and a 2x2 piece); a typo is an error naming the choices."""
    import torch
    import torch.nn.functional as F

    base = {"model": {"preset": "tiny"}, "predictor": {"vocabulary": "cat, dog", "text_cache_dir": None}}
    predictor = build_predictor({**base, "predictor": {**base["predictor"], "roi_box": "largest_component"}})
    assert predictor.roi_box == "largest_component" and build_predictor(base).roi_box == "mask"
    decoder = predictor.model.decoder
    real_forward = decoder.forward

    def two_pieces(*args, **kwargs):  # a random tiny decoder's masks are one blob: draw one in two pieces
        out = real_forward(*args, **kwargs)
        masks = torch.full_like(out.masks, -5.0)
        masks[..., 10:16, 20:28] = 5.0  # rows 10-15, cols 20-27 of the 64 px low-res mask
        masks[..., 50:52, 2:4] = 5.0    # a stray 2x2 fragment
        return out._replace(masks=masks)

    monkeypatch.setattr(decoder, "forward", two_pieces)
    predictor.set_image(np.random.default_rng(4).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    (result,) = predictor.predict([Prompt(points=[[100, 50]], point_labels=[1])])
    piece = torch.tensor([[20.0, 10.0, 28.0, 16.0]]) * 4  # low-res 64 px -> input 256 px
    with torch.no_grad():
        region = predictor.model.clip2sam(predictor.features.fpn_features, piece)
        label = real_forward(predictor.features.sam_embedding, torch.tensor([[[100.0, 50.0]]]),
                             torch.ones(1, 1, dtype=torch.long), None, None, False).label_embeddings
    expected = F.normalize(predictor.model.clip2sam.combine(region[:, None], label)[0, 0].float(), dim=-1)
    np.testing.assert_allclose(result.embedding, expected.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="roi_box must be one of mask, largest_component"):
        build_predictor({**base, "predictor": {**base["predictor"], "roi_box": "largest"}})


def test_model_yaml_selects_the_single_mask_token_for_everything_mode(tmp_path):
    save_ovsam(tiny_model(seed=5), tmp_path / "trained.pt")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({
        "model": {"ovsam_checkpoint": str(tmp_path / "trained.pt")},
        "predictor": {"vocabulary": "cat, dog", "device": "cpu", "text_cache_dir": None,
                      "everything_multimask": False},
    }))
    assert not build_predictor(tmp_path / "model.yaml").everything_multimask


def test_published_configs_follow_the_reference_configs():
    """RoI sizes of HarborYuan/ovsam's ovsam_{coco,lvis}_rn50x16_point.py (12 and 7), ensemble on;
    text as its tools/gen_cls.py builds it: COCO from the per-class synonym lists, LVIS from the
    class name alone (mmdet's LVISV1Dataset classes), 14 ViLD templates."""
    from ovsam_ros.loading import load_specs

    for name, roi, vocab, head, names_only in (("rn50x16_coco", 12, "coco", "clip2sam_coco", False),
                                               ("rn50x16", 7, "lvis", "clip2sam_lvis", True)):
        model, predictor = load_specs(name)
        cfg = model.config()
        assert (cfg.clip2sam.roi_size, predictor.vocabulary, predictor.clip_ensemble) == (roi, vocab, True)
        assert head in model.clip2sam_checkpoint and cfg.decoder.output_tokens == "auto"
        assert (predictor.names_only, predictor.max_synonyms, predictor.templates) == (names_only, None, "vild")
        assert predictor.resize == "cv2"  # mmcv imrescale, bilinear: the reference's test pipeline
        assert predictor.roi_box == "mask"  # the whole predicted mask's box, as the reference pools
    _, onnx = load_specs("jetson_onnx")  # the exported rn50x16 LVIS graphs
    assert (onnx.vocabulary, onnx.names_only, onnx.resize) == ("lvis", True, "cv2")
