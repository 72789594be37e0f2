"""The predictor's inference path (optimize=True, the default) answers like the plain path."""

import numpy as np
import pytest
import torch

from ovsam_ros.model.inference import inference_dtype
from ovsam_ros.model.recognition import class_logits
from ovsam_ros.model.vocabulary import TextEmbeddings, Vocabulary
from ovsam_ros.predictor import OVSAMPredictor
from ovsam_ros.prompts import Prompt

from predictor_helpers import tiny_model


def _ragged_text(classes: int, synonyms: int, dim: int) -> TextEmbeddings:
    """Random unit text embeddings with 1..S valid synonyms per class (zero padded, like LVIS)."""
    gen = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(classes, synonyms, dim, generator=gen), dim=-1)
    valid = torch.arange(synonyms) < torch.randint(1, synonyms + 1, (classes, 1), generator=gen)
    return TextEmbeddings(emb * valid.unsqueeze(-1), valid, Vocabulary.from_names([f"c{i}" for i in range(classes)]))


def test_optimized_predictor_matches_plain_in_fp32(image, randomize_batchnorm):
    text = _ragged_text(300, 6, tiny_model().clip_dim)
    plain = OVSAMPredictor(randomize_batchnorm(tiny_model(seed=2), seed=7, rel_pos=True), vocabulary=text, top_k=5,
                           optimize=False)
    fast = OVSAMPredictor(randomize_batchnorm(tiny_model(seed=2), seed=7, rel_pos=True), vocabulary=text, top_k=5)
    assert fast.optimized and not plain.optimized
    assert inference_dtype(fast.model) == torch.float32 and inference_dtype(plain.model) is None
    prompts = [Prompt(box=[150, 80, 320, 200]), Prompt(points=[[200, 120]]),
               Prompt(points=[[200, 120], [20, 20]], point_labels=[1, 0], box=[100, 50, 350, 250])]
    for p in (plain, fast):
        p.set_image(image)
    torch.testing.assert_close(fast.features.sam_embedding, plain.features.sam_embedding, atol=1e-4, rtol=1e-4)
    a, b = plain.predict(prompts, multimask_output=True, keep="all"), fast.predict(prompts, multimask_output=True, keep="all")
    assert len(a) == len(b) == 9
    emb = torch.as_tensor(np.stack([r.embedding for r in a]))
    for x, y in zip(a, b):
        np.testing.assert_allclose(y.low_res_logits, x.low_res_logits, atol=1e-4)
        np.testing.assert_allclose(y.embedding, x.embedding, atol=1e-4)
        assert np.mean(x.mask != y.mask) < 1e-3
        assert [l.class_index for l in y.labels] == [l.class_index for l in x.labels]
        assert [l.score for l in y.labels] == pytest.approx([l.score for l in x.labels], abs=1e-4)
    # The packed vocabulary's logits equal class_logits over the padded [C, S, D] matrix.
    from ovsam_ros.model.packed_text import packed_class_logits

    torch.testing.assert_close(packed_class_logits(emb, fast._packed_text), class_logits(emb, plain.text),
                               atol=1e-4, rtol=0)
    assert fast._packed_text.matrix.shape[0] == int(plain.text.valid.sum()) < plain.text.valid.numel()


def test_reduced_precision_converts_the_image_path_once():
    predictor = OVSAMPredictor(tiny_model(), vocabulary="cat, dog", precision="bf16")
    model = predictor.model
    assert {p.dtype for p in model.sam2clip.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.backbone.clip.visual.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.decoder.parameters()} == {torch.float32}  # runs under autocast
    assert predictor._packed_text.matrix.dtype == torch.bfloat16


def test_results_carry_box_crops_equal_to_sam_postprocessing(image):
    """Masks are thresholded and cropped on the device; the crop, box and (lazily built) full mask
    equal segment_anything's own postprocessing of the same low-res logits."""
    from segment_anything.modeling import Sam

    from ovsam_ros.predictor import EverythingOptions
    from ovsam_ros.results import mask_box

    model = tiny_model(seed=5)
    predictor = OVSAMPredictor(model, vocabulary=None)
    predictor.set_image(image)

    class _Encoder(torch.nn.Module):
        img_size = model.image_size

    sam = Sam(_Encoder(), model.decoder.prompt_encoder, model.decoder.mask_decoder)
    prompts = [Prompt(box=[150, 80, 320, 200]), Prompt(points=[[200, 120]]), Prompt(points=[[20, 280]])]
    options = EverythingOptions(points_per_side=4, pred_iou_thresh=-1e9, stability_score_thresh=0.0)
    results = predictor.predict(prompts, multimask_output=True, keep="all") + predictor.everything(options)
    assert len(results) > 9
    for r in results:
        assert r.crop is not None and r.__dict__.get("_mask") is None
        low = torch.as_tensor(r.low_res_logits)[None, None]
        with torch.no_grad():
            full = (sam.postprocess_masks(low, predictor.input_size, predictor.original_size) > 0)[0, 0].numpy()
        assert r.box == mask_box(full)
        x0, y0, x1, y1 = r.box
        assert np.array_equal(r.crop, full[y0:y1, x0:x1]) and r.area == int(full.sum())
        assert np.array_equal(r.mask, full)
