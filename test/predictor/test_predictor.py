"""OVSAMPredictor: prompts in original pixels, masks back at original size, labels from the vocabulary."""

import numpy as np
import pytest
import torch

from ovsam_ros.model.vocabulary import TextEmbeddingCache, Vocabulary
from ovsam_ros.predictor import EverythingOptions, OVSAMPredictor
from ovsam_ros.prompts import Prompt, PromptError
from ovsam_ros.results import InstanceResult

from predictor_helpers import tiny_model


def test_predict_before_set_image_fails_clearly():
    fresh = OVSAMPredictor(tiny_model(), vocabulary=None)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict([Prompt(points=[[1, 1]])])


def test_masks_come_back_at_original_size_in_prompt_order(predictor, image):
    predictor.set_image(image)
    prompts = [
        Prompt(box=[150, 80, 320, 200]),
        Prompt(points=[[200, 120]]),
        Prompt(box=[10, 10, 100, 100]),
        Prompt(points=[[200, 120], [20, 20]], point_labels=[1, 0], box=[150, 80, 320, 200]),
    ]
    results = predictor.predict(prompts)
    assert [r.prompt_index for r in results] == [0, 1, 2, 3]
    for r in results:
        assert r.mask.shape == (300, 500) and r.mask.dtype == bool
        assert len(r.labels) == 3 and all(0 <= l.class_index < 80 for l in r.labels)
        assert r.labels[0].score >= r.labels[1].score >= r.labels[2].score
        assert r.low_res_logits.shape == (64, 64)
        assert np.isclose(np.linalg.norm(r.embedding), 1.0, atol=1e-4)
    assert predictor.predict([]) == []


def test_multimask_keep_all_and_refinement_with_mask_input(predictor, image):
    predictor.set_image(image)
    candidates = predictor.predict([Prompt(points=[[200, 120]])], multimask_output=True, keep="all")
    assert len(candidates) == 3 and {c.prompt_index for c in candidates} == {0}
    best = predictor.predict([Prompt(points=[[200, 120]])], multimask_output=True)
    assert len(best) == 1 and best[0].predicted_iou == max(c.predicted_iou for c in candidates)
    refined = predictor.predict([Prompt(points=[[200, 120]], mask_input=best[0].low_res_logits)])
    assert refined[0].mask.shape == (300, 500)
    with pytest.raises(ValueError, match="mask_input must be"):
        predictor.predict([Prompt(points=[[200, 120]], mask_input=np.zeros((8, 8)))])


def test_best_of_three_never_picks_a_nan_predicted_iou(predictor, image, monkeypatch):
    """keep="best" takes the highest predicted IoU; a NaN (fp16 overflow, a degenerate mask token) never
    wins: the decoder's IoU of the best candidate of each prompt is made NaN here, and the pick must be
    the best of the two others (keep="all" lists what was decoded)."""
    run_decoder = predictor._run_decoder

    def nan_for_the_best(*args, **kwargs):
        out = run_decoder(*args, **kwargs)
        best = out["iou"].argmax(dim=1)
        out["iou"][torch.arange(len(best)), best] = float("nan")
        return out

    monkeypatch.setattr(predictor, "_run_decoder", nan_for_the_best)
    predictor.set_image(image)
    prompts = [Prompt(points=[[200, 120]]), Prompt(points=[[40, 250]])]
    everything = predictor.predict(prompts, multimask_output=True, keep="all")
    best = predictor.predict(prompts, multimask_output=True)
    for i, chosen in enumerate(best):
        candidates = [c for c in everything if c.prompt_index == i]
        assert len(candidates) == 3 and sum(np.isnan(c.predicted_iou) for c in candidates) == 1
        assert chosen.predicted_iou == max(c.predicted_iou for c in candidates if not np.isnan(c.predicted_iou))


def test_bad_prompts_name_the_prompt(predictor, image):
    predictor.set_image(image)
    with pytest.raises(PromptError, match="prompt 1: point .* outside"):
        predictor.predict([Prompt(points=[[1, 1]]), Prompt(points=[[900, 1]])])


def test_matches_segment_anything_sampredictor(image):
    """Same prompt encoder/decoder weights and image embedding -> SAM's own predictor gives the same masks."""
    from segment_anything.modeling import Sam
    from segment_anything.predictor import SamPredictor

    model = tiny_model(seed=3, label_token=False)
    ours = OVSAMPredictor(model, vocabulary=None)
    ours.set_image(image)

    class _Encoder(torch.nn.Module):  # never run: SamPredictor gets our cached embedding
        img_size = model.image_size

    sam = Sam(_Encoder(), model.decoder.prompt_encoder, model.decoder.mask_decoder).eval()
    theirs = SamPredictor(sam)
    theirs.original_size, theirs.input_size = ours.original_size, ours.input_size
    theirs.features, theirs.is_image_set = ours.features.sam_embedding, True

    point, box = np.array([[210.0, 130.0]]), np.array([140.0, 70.0, 330.0, 210.0])
    for kwargs in (dict(point_coords=point, point_labels=np.array([1])), dict(box=box),
                   dict(point_coords=point, point_labels=np.array([1]), box=box)):
        masks, iou, low_res = theirs.predict(**kwargs, multimask_output=False)
        prompt = Prompt(points=kwargs.get("point_coords"), point_labels=kwargs.get("point_labels"), box=kwargs.get("box"))
        result = ours.predict([prompt])[0]
        np.testing.assert_allclose(result.low_res_logits, low_res[0], atol=1e-5)
        assert result.predicted_iou == pytest.approx(float(iou[0]), abs=1e-5)
        assert (result.mask != masks[0]).mean() < 1e-4

    # Multimask output, every candidate kept: SAM's three masks, in SAM's order.
    masks, iou, low_res = theirs.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
    candidates = ours.predict([Prompt(points=point, point_labels=[1])], multimask_output=True, keep="all")
    assert len(candidates) == 3
    for k, result in enumerate(candidates):
        np.testing.assert_allclose(result.low_res_logits, low_res[k], atol=1e-5)
        assert result.predicted_iou == pytest.approx(float(iou[k]), abs=1e-5)
        assert (result.mask != masks[k]).mean() < 1e-4
    best = ours.predict([Prompt(points=point, point_labels=[1])], multimask_output=True)[0]
    assert best.predicted_iou == pytest.approx(float(iou.max()), abs=1e-6)

    # Refinement: the previous low-res logits fed back as mask_input (SAM's iterative use), with a
    # second, negative point; and a hand-made mask_input that differs from any prediction.
    previous = low_res[int(np.argmax(iou))]
    blob = np.full(previous.shape, -8.0, np.float32)
    blob[10:30, 20:50] = 8.0
    for mask_input in (previous, blob):
        two = dict(point_coords=np.array([[210.0, 130.0], [60.0, 40.0]]), point_labels=np.array([1, 0]))
        masks, iou, low_res = theirs.predict(**two, mask_input=mask_input[None], multimask_output=False)
        result = ours.predict([Prompt(points=two["point_coords"], point_labels=two["point_labels"],
                                      mask_input=mask_input)])[0]
        np.testing.assert_allclose(result.low_res_logits, low_res[0], atol=1e-5)
        assert result.predicted_iou == pytest.approx(float(iou[0]), abs=1e-5)
        assert (result.mask != masks[0]).mean() < 1e-4
        without, _, _ = theirs.predict(**two, multimask_output=False)
        assert (without[0] != masks[0]).mean() > 1e-3  # the mask input really changed the answer


def test_known_object_maps_back_exactly_for_non_square_images(monkeypatch):
    """A rectangle the decoder 'predicts' in the padded frame lands on exactly the right original pixels."""
    model = tiny_model()
    predictor = OVSAMPredictor(model, vocabulary=None)
    predictor.set_image(np.zeros((320, 512, 3), np.uint8))  # scale 0.5 -> input 160 x 256, low-res 64 x 64

    def fake_decode(features, coords=None, labels=None, boxes=None, mask_input=None, multimask_output=True, **_):
        n = (boxes if boxes is not None else coords).shape[0]
        low = torch.full((n, 1, 64, 64), -10.0)
        low[:, :, 5:20, 8:24] = 10.0  # 8 original pixels per low-res pixel: y 40..160, x 64..192
        return {"masks_lowres": low, "iou": torch.ones(n, 1), "region_embeddings": torch.randn(n, 1, model.clip_dim),
                "roi_boxes": None, "label_embeddings": None}

    monkeypatch.setattr(model, "decode", fake_decode)
    result = predictor.predict([Prompt(box=[60, 40, 200, 160])])[0]
    expected = np.zeros((320, 512), bool)
    expected[40:160, 64:192] = True
    # Edges land exactly on the right pixels; only the four corners are rounded by
    # the bilinear upsampling (SAM's postprocessing does the same).
    assert result.box == (64, 40, 192, 160)
    assert np.array_equal(result.mask[100], expected[100]) and np.array_equal(result.mask[:, 128], expected[:, 128])
    wrong = np.argwhere(result.mask != expected)
    assert len(wrong) <= 4 * 6
    corners = np.array([[40, 64], [40, 191], [159, 64], [159, 191]])
    assert all(np.abs(corners - w).sum(axis=1).min() <= 4 for w in wrong)


def test_any_image_type_is_accepted(predictor):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (40, 70), dtype=np.uint8)
    prompts = [Prompt(points=[[5, 5]]), Prompt(box=[3, 4, 25, 30])]

    def run(frame, image_format="RGB", **image_range):
        predictor.set_image(frame, image_format=image_format, **image_range)
        return predictor.predict(prompts)

    def same(results, reference):
        for r, ref in zip(results, reference, strict=True):
            assert r.mask.shape == ref.mask.shape and np.array_equal(r.mask, ref.mask)
            np.testing.assert_array_equal(r.low_res_logits, ref.low_res_logits)
            assert [label.class_index for label in r.labels] == [label.class_index for label in ref.labels]

    # Equivalent encodings of one picture, written by hand: each must give exactly the uint8 result.
    reference = run(rgb)
    alpha = rng.integers(0, 256, (50, 30, 1), dtype=np.uint8)
    same(run(rgb.astype(np.float32) / 255), reference)  # float 0..1
    same(run(rgb.astype(np.float64), float_max=255.0), reference)  # float 0..255, said so
    same(run(np.concatenate([rgb, alpha], axis=2), "RGBA"), reference)  # alpha ignored
    same(run(np.ascontiguousarray(rgb[:, :, ::-1]), "BGR"), reference)
    same(run(rgb.astype(np.uint16) * 257), reference)  # 16-bit: 65535 is white
    reference = run(np.repeat(grey[:, :, None], 3, axis=2))
    same(run(grey), reference)
    same(run(grey[:, :, None]), reference)
    same(run(grey.astype(np.uint16) * 257), reference)
    assert reference[0].mask.shape == (40, 70)


def test_tiny_and_degenerate_images(predictor):
    predictor.set_image(np.zeros((1, 1, 3), np.uint8))
    assert predictor.predict([Prompt(points=[[0.5, 0.5]])])[0].mask.shape == (1, 1)
    with pytest.raises(ValueError, match="too elongated"):
        predictor.set_image(np.zeros((1, 5000, 3), np.uint8))


def test_everything_mode_filters_and_deduplicates(predictor, image):
    from torchvision.ops import box_iou

    predictor.set_image(image)
    options = EverythingOptions(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                box_nms_thresh=0.5, max_instances=5)
    results = predictor.everything(options)
    assert 1 <= len(results) <= 5
    boxes = torch.tensor([r.box for r in results], dtype=torch.float32)
    overlaps = box_iou(boxes, boxes) - torch.eye(len(results))
    assert float(overlaps.max()) <= 0.5 + 1e-6
    assert all(r.labels and r.prompt_index == -1 for r in results)
    strict = predictor.everything(EverythingOptions(points_per_side=6, pred_iou_thresh=1.01))
    assert strict == []


def test_everything_single_mask_token_proposes_what_single_mask_prompts_give(image):
    """everything_multimask=False: each grid point's candidate is the single-mask token's answer to
    that point as a prompt (predict, multimask_output=False), not one of tokens 1-3."""
    from segment_anything.utils.amg import build_point_grid

    predictor = OVSAMPredictor(tiny_model(seed=3), vocabulary="cat, dog")
    predictor.set_image(image)
    grid = build_point_grid(2) * np.array([[image.shape[1], image.shape[0]]])
    prompts = [Prompt(points=[list(p)]) for p in grid]
    single = [r.low_res_logits for r in predictor.predict(prompts, multimask_output=False)]
    multi = [r.low_res_logits for r in predictor.predict(prompts, multimask_output=True, keep="all")]
    keep_all = EverythingOptions(points_per_side=2, pred_iou_thresh=-1e9, stability_score_thresh=0.0,
                                 box_nms_thresh=1.0, min_mask_area=-1)

    def matches(found, pool):
        return all(any(np.allclose(f, p, atol=1e-4) for p in pool) for f in found)

    assert predictor.everything_multimask  # SAM's generator by default
    default = [r.low_res_logits for r in predictor.everything(keep_all)]
    assert len(prompts) < len(default) <= 3 * len(prompts)
    assert matches(default, multi) and not matches(default[:1], single)
    predictor.everything_multimask = False
    found = [r.low_res_logits for r in predictor.everything(keep_all)]
    assert 1 <= len(found) <= len(prompts)
    assert matches(found, single) and not matches(found[:1], multi)


def test_vocabulary_switch_empty_vocabulary_and_text_cache(image, tmp_path, monkeypatch):
    import ovsam_ros.predictor as predictor_module

    calls = []
    real = predictor_module.encode_vocabulary
    monkeypatch.setattr(predictor_module, "encode_vocabulary", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = TextEmbeddingCache(tmp_path)
    predictor = OVSAMPredictor(tiny_model(), vocabulary="cat, dog", text_cache=cache)
    predictor.set_image(image)
    names = {l.name for l in predictor.predict([Prompt(points=[[100, 100]])])[0].labels}
    assert names <= {"cat", "dog"} and names
    with pytest.raises(ValueError, match="contains no class names"):
        predictor.set_vocabulary(" , ")
    assert predictor.vocabulary.classes == ["cat", "dog"]  # a failed switch keeps the old vocabulary
    second = OVSAMPredictor(tiny_model(), vocabulary="cat, dog", text_cache=cache)
    assert len(calls) == 1, "second predictor should read the on-disk cache"
    assert torch.equal(second.text.embeddings, predictor.text.embeddings)
    other_weights = OVSAMPredictor(tiny_model(seed=9), vocabulary="cat, dog", text_cache=cache)
    assert len(calls) == 2, "different text-tower weights must not reuse cached embeddings"
    assert not torch.equal(other_weights.text.embeddings, predictor.text.embeddings)


def _lvis_style_file(tmp_path):
    import json

    path = tmp_path / "lvis_like.json"
    path.write_text(json.dumps({"categories": [
        {"id": 1, "name": "tape_(sticky_cloth_or_paper)", "synonyms": ["tape_(sticky_cloth_or_paper)"], "frequency": "f"},
        {"id": 2, "name": "sofa", "synonyms": ["sofa", "couch", "lounge"], "frequency": "r"},
        {"id": 3, "name": "Band_Aid", "synonyms": ["Band_Aid"], "frequency": "c"}]}))
    return str(path)


def test_synonym_policy_names_what_is_encoded_and_keys_the_cache(tmp_path, monkeypatch):
    """names_only / max_synonyms decide the texts of every vocabulary the predictor loads (string,
    file, Vocabulary, set_vocabulary); the on-disk cache never serves the other policy's embeddings."""
    import ovsam_ros.predictor as predictor_module

    encoded = []
    real = predictor_module.encode_vocabulary
    monkeypatch.setattr(predictor_module, "encode_vocabulary",
                        lambda enc, tok, vocab, *a, **k: encoded.append(vocab.synonyms) or real(enc, tok, vocab, *a, **k))
    cache = TextEmbeddingCache(tmp_path / "cache")
    spec = _lvis_style_file(tmp_path)
    model = tiny_model()
    every = OVSAMPredictor(model, vocabulary=spec, text_cache=cache)
    names = OVSAMPredictor(model, vocabulary=spec, text_cache=cache, names_only=True)
    capped = OVSAMPredictor(model, vocabulary=spec, text_cache=cache, max_synonyms=2)
    assert encoded == [[["tape (sticky cloth or paper)"], ["sofa", "couch", "lounge"], ["band aid"]],
                       [["tape (sticky cloth", "paper)"], ["sofa"], ["band aid"]],  # the reference's split_label
                       [["tape (sticky cloth or paper)"], ["sofa", "couch"], ["band aid"]]]
    assert every.text.num_synonyms == 3 and names.text.num_synonyms == 2 and capped.text.num_synonyms == 2
    assert names.text.valid.tolist() == [[True, True], [True, False], [True, False]]
    # same text -> same embedding whichever policy encoded it
    assert torch.allclose(names.text.embeddings[1, 0], every.text.embeddings[1, 0], atol=1e-6)
    assert names.vocabulary.classes == every.vocabulary.classes == ["tape (sticky cloth or paper)", "sofa", "band aid"]
    again = OVSAMPredictor(model, vocabulary=spec, text_cache=cache, names_only=True)
    assert len(encoded) == 3 and torch.equal(again.text.embeddings, names.text.embeddings)  # served from disk
    # a Vocabulary object and set_vocabulary follow the policy too
    names.set_vocabulary(Vocabulary.from_names(["cup/mug", "door"]))
    assert names.vocabulary.synonyms == [["cup"], ["door"]]
    assert names.encode_vocabulary("cup/mug, door").vocab.synonyms == [["cup"], ["door"]]
    # a text query is the phrase as typed, whatever the policy
    assert names._encode(Vocabulary.from_names(["cup/mug"])).vocab.synonyms == [["cup", "mug"]]
    for bad in ({"max_synonyms": 0}, {"names_only": "yes"}):
        with pytest.raises(ValueError, match="max_synonyms|names_only"):
            OVSAMPredictor(model, vocabulary=None, **bad)


def _region(embedding: np.ndarray) -> InstanceResult:
    """A one-pixel mask carrying ``embedding`` (an empty mask is no object: query() skips it)."""
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    return InstanceResult(mask=mask, predicted_iou=1, stability_score=1, box=(2, 1, 3, 2), embedding=embedding)


def test_text_query_ranks_the_matching_region_first(predictor):
    query_text = predictor.encode_vocabulary(Vocabulary.from_names(["red cup"]), progress=False)
    dog = predictor.text.embeddings[predictor.vocabulary.find("dog"), 0].cpu().numpy()
    cup = query_text.embeddings[0, 0].cpu().numpy()
    candidates = [_region(e) for e in (dog, cup)]
    ranked = predictor.query("red cup", candidates=candidates, max_instances=2)
    assert ranked[0].embedding is candidates[1].embedding
    assert ranked[0].query_score > 0.5 > ranked[1].query_score
    assert predictor.query("red cup", candidates=candidates, min_score=0.99) == []
    with pytest.raises(ValueError, match="empty"):
        predictor.query("   ", candidates=candidates)


def test_a_query_naming_a_vocabulary_class_does_not_compete_with_it(predictor):
    """Querying "Dog" (a vocabulary class) on the dog's own text embedding: the dog column leaves the
    softmax, so the phrase's score is softmax([cat, phrase, background])[phrase] by hand (a tie with
    the dog column would cap it at 0.5); a phrase naming no class keeps every column."""
    from ovsam_ros.model.recognition import class_logits

    text = predictor.text
    dog_index = predictor.vocabulary.find("dog")
    dog = text.embeddings[dog_index, 0].cpu().numpy()
    candidate = _region(dog)
    (ranked,) = predictor.query(" Dog ", candidates=[candidate])
    region = torch.as_tensor(dog)[None]
    vocab = class_logits(region, text)[0]  # [classes..., background]
    phrase = class_logits(region, predictor.encode_vocabulary(Vocabulary.from_names(["Dog"]), progress=False),
                          with_background=False)[0, 0]
    others = [vocab[i] for i in range(len(predictor.vocabulary)) if i != dog_index]
    want = torch.stack([*others, phrase, vocab[-1]]).softmax(0)[-2]
    assert ranked.query_score == pytest.approx(float(want), rel=1e-5) and ranked.query_score > 0.5
    assert predictor._classes_named_by("red dog") == [] and predictor._classes_named_by("DOG") == [dog_index]


def test_a_query_naming_a_class_by_a_synonym_stands_for_that_class(predictor):
    """"Sofa" is a synonym of COCO's "couch": like the display name, it takes the couch column out of
    the softmax (with it, the class's max-over-synonyms logit ties the phrase: 0.5 at best). Region:
    the couch class's own "sofa" text embedding; the score is the documented rule by hand."""
    from ovsam_ros.model.recognition import class_logits

    text, vocab = predictor.text, predictor.vocabulary
    couch = vocab.find("couch")
    assert vocab.classes[couch] == "couch" and "sofa" in vocab.synonyms[couch]
    sofa = text.embeddings[couch, vocab.synonyms[couch].index("sofa")].cpu().numpy()
    candidate = _region(sofa)
    (ranked,) = predictor.query("Sofa", candidates=[candidate])
    region = torch.as_tensor(sofa)[None]
    columns = class_logits(region, text)[0]  # [classes..., background]
    phrase = class_logits(region, predictor.encode_vocabulary(Vocabulary.from_names(["Sofa"]), progress=False),
                          with_background=False)[0, 0]
    others = [columns[i] for i in range(len(vocab)) if i != couch]
    want = torch.stack([*others, phrase, columns[-1]]).softmax(0)[-2]
    assert ranked.query_score == pytest.approx(float(want), rel=1e-5) and ranked.query_score > 0.5
    assert predictor._classes_named_by(" SOFA ") == predictor._classes_named_by("couch") == [couch]


def test_precision_and_device_options(image):
    prompts = [Prompt(box=[150, 80, 320, 200]), Prompt(points=[[200, 120]]), Prompt(points=[[40, 250]])]
    fp32 = OVSAMPredictor(tiny_model(), vocabulary="cat, dog", precision="fp32")
    fp32.set_image(image)
    reference = fp32.predict(prompts)
    bf16 = OVSAMPredictor(tiny_model(), vocabulary="cat, dog", precision="bf16")
    bf16.set_image(image)
    assert bf16.features.clip_features[3].dtype == torch.bfloat16  # really ran in bf16
    for low, ref in zip(bf16.predict(prompts), reference, strict=True):
        assert low.mask.shape == (300, 500)
        iou = (low.mask & ref.mask).sum() / max(1, (low.mask | ref.mask).sum())
        assert iou > 0.9, iou
        scale = np.abs(ref.low_res_logits).max()
        assert np.abs(low.low_res_logits - ref.low_res_logits).max() < 0.1 * scale
        assert 0 < np.abs(low.low_res_logits - ref.low_res_logits).max()  # not silently fp32
        assert low.predicted_iou == pytest.approx(ref.predicted_iou, abs=0.05)
        assert np.dot(low.embedding, ref.embedding) > 0.98
    with pytest.raises(ValueError, match="precision"):
        OVSAMPredictor(tiny_model(), vocabulary=None, precision="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            OVSAMPredictor(tiny_model(), vocabulary=None, device="cuda")


@pytest.mark.parametrize("method", ["image-crop", "feature-crop"])
def test_baselines_relabel_the_same_masks(predictor, image, method):
    from ovsam_ros.baselines import relabel

    predictor.set_image(image)
    results = predictor.predict([Prompt(box=[150, 80, 320, 200]), Prompt(points=[[20, 20]])])
    relabeled = relabel(predictor, results, method)
    assert len(relabeled) == 2
    for before, after in zip(results, relabeled):
        assert after.mask is before.mask and len(after.labels) == 3
        assert not np.allclose(after.embedding, before.embedding)
    # One crop recomputed by hand with open_clip / torchvision directly.
    import open_clip
    import torch.nn.functional as F
    from torchvision.ops import roi_align

    backbone = predictor.model.backbone
    target = results[0]
    x0, y0, x1, y1 = target.box
    size = backbone.clip_image_size
    with torch.no_grad():
        if method == "image-crop":
            mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN) * 255
            std = torch.tensor(open_clip.OPENAI_DATASET_STD) * 255
            crop = torch.from_numpy(image[y0:y1, x0:x1].astype(np.float32)).permute(2, 0, 1)
            inside = torch.from_numpy(target.mask[y0:y1, x0:x1])
            crop = torch.where(inside, crop, mean[:, None, None])  # background: CLIP's mean colour
            crop = F.interpolate(crop[None], size=(size, size), mode="bicubic", align_corners=False)
            expected = backbone.clip.encode_image((crop - mean[:, None, None]) / std[:, None, None])
        else:
            scale = predictor.model.image_size / max(image.shape[:2])  # longest side -> model input
            box = torch.tensor([[0.0, x0 * scale, y0 * scale, x1 * scale, y1 * scale]])
            c5 = predictor.features.clip_features[3]
            pooled = roi_align(c5, box, output_size=size // 32, spatial_scale=1 / 32, sampling_ratio=0, aligned=True)
            expected = backbone.clip.visual.attnpool(pooled)
    expected = F.normalize(expected.float(), dim=-1)[0].numpy()
    np.testing.assert_allclose(relabeled[0].embedding, expected, atol=1e-4)
    scores = predictor.label_embeddings(torch.from_numpy(expected)[None])[0]
    assert [label.class_index for label in relabeled[0].labels] == [label.class_index for label in scores]
    with pytest.raises(ValueError, match="baseline"):
        relabel(predictor, results, "magic")


def test_everything_with_reference_tokens_filters_by_stability_and_optional_sam_iou(image):
    """Published decoder (one mask token, no IoU head): stability filter; IoU from SAM's own decoder."""
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer
    from segment_anything.utils.amg import build_point_grid

    from ovsam_ros.model.sam_iou import SAMIoUScorer

    model = tiny_model(output_tokens="reference")
    with torch.no_grad():  # random init gives logits near 0 (stability 0): make them decisive
        model.decoder.mask_decoder.output_hypernetworks_mlps[0].layers[-1].weight.mul_(30)
    predictor = OVSAMPredictor(model, vocabulary="coco", top_k=1)
    predictor.set_image(image)
    options = EverythingOptions(points_per_side=4, stability_score_thresh=0.12, box_nms_thresh=1.0,
                                max_instances=100)
    plain = predictor.everything(options)
    # The default IoU threshold must not drop every mask when there is no IoU head ...
    assert plain and all(np.isnan(r.predicted_iou) and r.stability_score >= 0.12 for r in plain)
    # ... and the stability threshold does filter (16 grid points, one mask each).
    assert len(plain) < len(predictor.everything(EverythingOptions(points_per_side=4, stability_score_thresh=0.0,
                                                                   box_nms_thresh=1.0))) == 16
    stabilities = [r.stability_score for r in plain]
    assert stabilities == sorted(stabilities, reverse=True)  # ranked by stability without an IoU

    torch.manual_seed(5)
    scorer = SAMIoUScorer(model.cfg.decoder)
    scored = OVSAMPredictor(model, vocabulary="coco", top_k=1, iou_scorer=scorer)
    scored.set_image(image)
    loose = scored.everything(EverythingOptions(points_per_side=4, pred_iou_thresh=-10.0,
                                                stability_score_thresh=0.12, box_nms_thresh=1.0, max_instances=100))
    # Same masks as without the scorer (it only adds a score), now with SAM's predicted IoU.
    assert sorted(m.mask.sum() for m in loose) == sorted(m.mask.sum() for m in plain)
    # Independent: segment_anything's MaskDecoder forward (single-mask output) on the same embedding.
    sam_md = MaskDecoder(transformer_dim=32, iou_head_hidden_dim=32,
                         transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2))
    sam_md.load_state_dict(scorer.mask_decoder.state_dict())
    height, width = image.shape[:2]
    grid = build_point_grid(4) * np.array([[width, height]])
    coords = scored.transform.apply_coords(grid[:, None, :], (height, width))
    pe = model.decoder.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(points=(coords, torch.ones(coords.shape[:2], dtype=torch.int64)), boxes=None, masks=None)
        _, expected = sam_md(scored.features.sam_embedding, pe.get_dense_pe(), sparse, dense, multimask_output=False)
    expected = expected[:, 0].numpy()
    for r in loose:
        assert np.isclose(expected, r.predicted_iou, atol=1e-5).any()
    ious = [r.predicted_iou for r in loose]
    assert ious == sorted(ious, reverse=True)
    threshold = float(np.median(expected))
    strict = scored.everything(EverythingOptions(points_per_side=4, pred_iou_thresh=threshold,
                                                 stability_score_thresh=0.12, box_nms_thresh=1.0))
    assert all(r.predicted_iou > threshold for r in strict) and len(strict) < len(loose)


def test_clip_ensemble_is_the_reference_geometric_mean(image):
    """Labels with clip_ensemble: q^(1-a) p^a for base classes and background, q^(1-b) p^b for novel ones,
    unused classes excluded, p from CLIP's own attention pool on the box RoIAligned from C5 (hand-written).
    A mask with foreground at SAM's low resolution but none at C5's (the third, 2-pixel box prompt) keeps
    the learned scores alone, as the reference's open_voc_inference does."""
    from torchvision.ops import roi_align

    model = tiny_model()
    with torch.no_grad():  # random init gives logits near 0, empty at C5 resolution: make them decisive
        model.decoder.mask_decoder.output_hypernetworks_mlps[0].layers[-1].weight.mul_(30)
    predictor = OVSAMPredictor(model, vocabulary="coco", top_k=80, clip_ensemble=True, exclude_unused=True)
    plain = OVSAMPredictor(model, vocabulary="coco", top_k=80)
    predictor.set_image(image)
    plain.set_image(image)
    prompts = [Prompt(box=[150, 80, 320, 200]), Prompt(box=[10, 10, 300, 290]), Prompt(box=[440, 0, 442, 2])]
    results = predictor.predict(prompts)
    learned_only = plain.predict(prompts)
    text = predictor.text
    emb, valid = text.embeddings, text.valid  # [C, S, D], [C, S]

    def logits(x):  # cosine, max over synonyms, x scale, background column 0
        sims = torch.einsum("d,csd->cs", torch.nn.functional.normalize(x, dim=-1), emb)
        sims = sims.masked_fill(~valid, -torch.inf).max(dim=1).values * model_scale
        return torch.cat([sims, torch.zeros(1)])

    from ovsam_ros.model.recognition import DEFAULT_LOGIT_SCALE as model_scale

    split = text.vocab.split
    c5 = predictor.features.clip_features[-1]

    def clip_probs(box):  # CLIP's attention pool on the box (model-input pixels) RoIAligned from C5
        roi = roi_align(c5, torch.cat([torch.zeros(1), box])[None], output_size=256 // 32, spatial_scale=1 / 32,
                        sampling_ratio=0, aligned=True)
        with torch.no_grad():
            return logits(model.backbone.clip.visual.attnpool(roi)[0]).softmax(-1)

    def rule(q, p, a, b):
        weight = torch.tensor([a if s == "base" else b for s in split] + [a])
        g = q ** (1 - weight) * p ** weight
        g[:-1][torch.tensor([s == "unused" for s in split])] = 0
        return g / g.sum()

    def check_scores(r, expected):
        got = {lab.class_index: lab.score for lab in r.labels}
        assert set(got) == {i for i, s in enumerate(split) if s != "unused"}
        for i, score in got.items():  # absolute for the top scores, relative for the small ones
            assert abs(score - float(expected[i])) < 1e-4, (i, score, float(expected[i]))
            assert score == pytest.approx(float(expected[i]), rel=1e-3, abs=1e-30), (i, score, float(expected[i]))
        assert r.labels[0].class_index == int(expected[:-1].argmax())
        return got

    checked_nonempty = []
    for r, base_r in zip(results, learned_only):
        assert np.array_equal(r.mask, base_r.mask)  # the ensemble changes labels only
        low = torch.as_tensor(r.low_res_logits)[None, None]
        ys, xs = np.nonzero(r.low_res_logits > 0)  # the box CLIP2SAM pools: the low-res mask's, input pixels
        assert len(xs)  # every mask here has foreground at SAM's low resolution
        p = clip_probs(torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32) * 4)
        q = logits(torch.as_tensor(r.embedding)).softmax(-1)
        nonempty = bool((torch.nn.functional.interpolate(low, size=c5.shape[-2:], mode="bilinear") > 0).any())
        # empty at C5: q alone (the reference's fallback)
        got = check_scores(r, rule(q, p, 0.1, 0.9) if nonempty else rule(q, p, 0.0, 0.0))
        if not nonempty:  # CLIP's weight would change this row's scores far beyond the tolerance above
            with_clip = rule(q, p, 0.1, 0.9)
            assert max(abs(float(with_clip[i]) / got[i] - 1) for i in got if got[i] > 1e-30) > 0.5
        checked_nonempty.append(nonempty)
    assert checked_nonempty == [True, True, False]  # both branches of the rule are checked

    # clip_boxes (original pixels: the evaluation's ground-truth boxes) are pooled where they lie in the
    # image, mapped to the model's input as segment_anything maps box prompts (ResizeLongestSide).
    from segment_anything.utils.transforms import ResizeLongestSide

    given = np.array([[100, 50, 400, 250]], np.float32)
    (r,) = predictor.predict(prompts[:1], clip_boxes=given)
    box = torch.as_tensor(ResizeLongestSide(256).apply_boxes(given, image.shape[:2]), dtype=torch.float32)[0]
    assert not torch.allclose(box, torch.as_tensor(given[0]))  # a 500 px wide image: the boxes differ
    check_scores(r, rule(logits(torch.as_tensor(r.embedding)).softmax(-1), clip_probs(box), 0.1, 0.9))
    # Labels really changed (the frozen-CLIP branch carries information).
    assert any(r.labels[0].score != b.labels[0].score for r, b in zip(results, learned_only))
