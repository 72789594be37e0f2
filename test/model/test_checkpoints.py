from __future__ import annotations

import os

import open_clip
import pytest
import torch

from ovsam_ros.model import (
    CheckpointError,
    CheckpointNotFoundError,
    OVSAMConfig,
    build_ovsam,
    build_sam_teacher,
    load_ovsam,
    load_reference_clip2sam,
    load_reference_sam2clip,
    load_sam_decoder,
    save_ovsam,
)
from ovsam_ros.model.checkpoints import export_reference_checkpoints, read_ovsam_checkpoint

BOXES = torch.tensor([[50.0, 20.0, 150.0, 110.0], [120.0, 100.0, 250.0, 250.0]])
POINTS = torch.tensor([[[100.0, 60.0], [30.0, 30.0]], [[200.0, 180.0], [0.0, 0.0]]])
LABELS = torch.tensor([[1, 0], [1, -1]])


def _run(model, images):
    with torch.no_grad():
        f = model.encode_image(images)
        a = model.decode(f, boxes=BOXES)
        b = model.decode(f, POINTS, LABELS, multimask_output=False, image_index=1)
    return [f.sam_embedding, *f.fpn_features] + [v for d in (a, b) for v in d.values() if v is not None]


def _assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)  # bit-exact (IoU may be NaN)


def _differs(xs, ys) -> bool:
    return any(not torch.allclose(x, y) for x, y in zip(xs, ys))


# --- (c) ovsam_ros format ------------------------------------------------------------------------
def test_save_load_reproduces_outputs_exactly(tmp_path, tiny_model_factory, tiny_images):
    model = tiny_model_factory("rn", seed=0)
    path = tmp_path / "sub" / "tiny.pt"
    save_ovsam(model, path, extra={"step": 7})
    assert os.listdir(path.parent) == ["tiny.pt"]  # atomic write leaves no temp file
    cfg, state, payload = read_ovsam_checkpoint(path)
    assert (payload["format"], payload["version"], payload["extra"]) == ("ovsam_ros", 1, {"step": 7})
    assert cfg == model.current_config() and set(state) == set(model.state_dict())  # "auto" saved resolved

    loaded = load_ovsam(path)
    other = tiny_model_factory("rn", seed=42)  # a differently initialised model really differs
    _assert_same(_run(loaded, tiny_images), _run(model, tiny_images))
    assert _differs(_run(other, tiny_images), _run(model, tiny_images))

    other.clip2sam.label_weight = 0.25  # runtime switches are saved with the config
    other.decoder.output_tokens = "reference"
    save_ovsam(other, path)  # overwrite in place
    reloaded = load_ovsam(path)
    assert reloaded.clip2sam.label_weight == 0.25 and reloaded.decoder.output_tokens == "reference"
    _assert_same(_run(reloaded, tiny_images), _run(other, tiny_images))


def test_save_without_backbone_needs_clip_weights(tmp_path, tiny_model_factory, tiny_images):
    model = tiny_model_factory("convnext", seed=0)
    path = tmp_path / "nobb.pt"
    save_ovsam(model, path, include_backbone=False)
    assert not any(k.startswith("backbone.") for k in read_ovsam_checkpoint(path)[1])
    with pytest.raises(CheckpointError, match="without CLIP backbone weights"):
        load_ovsam(path)
    clip_path = tmp_path / "clip.pt"
    torch.save(model.backbone.clip.state_dict(), clip_path)
    _assert_same(_run(load_ovsam(path, clip_pretrained=str(clip_path)), tiny_images), _run(model, tiny_images))


def test_ovsam_format_errors(tmp_path, tiny_model_factory):
    with pytest.raises(CheckpointNotFoundError, match="does-not-exist.pt") as info:
        load_ovsam(tmp_path / "does-not-exist.pt")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_ovsam(junk)

    sam_like = tmp_path / "sam_like.pth"
    torch.save({"prompt_encoder.x": torch.zeros(1)}, sam_like)
    with pytest.raises(CheckpointError, match="Meta SAM"):
        load_ovsam(sam_like)

    model = tiny_model_factory("rn")
    path = tmp_path / "tiny.pt"
    save_ovsam(model, path)
    payload = torch.load(path, weights_only=True)
    payload["model"]["decoder.label_token.weight"] = torch.zeros(1, 5)
    del payload["model"]["sam2clip.neck.0.weight"]
    payload["model"]["decoder.bogus"] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        load_ovsam(path)
    msg = str(err.value)
    assert "tiny.pt" in msg and "sam2clip.neck.0.weight" in msg and "decoder.bogus" in msg
    assert "decoder.label_token.weight (file (1, 5) vs model (1, 32))" in msg


# --- (a) reference layout --------------------------------------------------------------------------
def _write_reference(tmp_path, model):
    sam2clip, clip2sam = export_reference_checkpoints(model)
    # As published: an mmengine-style dict with 'state_dict' (+ other prefixes the loader must ignore).
    p1, p2 = tmp_path / "sam2clip_vith_rn50x16.pth", tmp_path / "clip2sam_coco_rn50x16.pth"
    torch.save({"meta": {"epoch": 24}, "state_dict": {**sam2clip, "backbone.foo": torch.zeros(1)}}, p1)
    torch.save({"state_dict": clip2sam}, p2)
    return p1, p2, sam2clip, clip2sam


def test_reference_key_layout(tmp_path, tiny_model):
    sam2clip, clip2sam = export_reference_checkpoints(tiny_model)
    assert "neck_student.patch_embeds.3.projection.weight" in sam2clip and "neck_student.pos_embed" in sam2clip
    for key in [
        "fpn_neck.lateral_convs.0.conv.weight",
        "fpn_neck.fpn_convs.3.conv.bias",
        "mask_decoder.roi_conv.0.conv.weight",
        "mask_decoder.label_token.weight",
        "mask_decoder.label_mlp.layers.2.weight",
        "mask_decoder.mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
        "mask_decoder.mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
    ]:
        assert key in clip2sam, key
    assert clip2sam["mask_decoder.mask_decoder.mask_tokens.weight"].shape == (1, 32)  # one mask token
    assert clip2sam["mask_decoder.label_mlp.layers.2.weight"].shape == (64, 32)  # -> CLIP dim
    assert not any("iou_" in k or "hypernetworks_mlps.1" in k for k in clip2sam)
    assert not any(k.startswith("mask_decoder.prompt_encoder") for k in clip2sam)


def test_reference_files_load_and_run(tmp_path, tiny_model_factory, tiny_images):
    source = tiny_model_factory("rn", seed=0, output_tokens="reference")
    p1, p2, _, _ = _write_reference(tmp_path, source)
    target = tiny_model_factory("rn", seed=9, output_tokens="reference")
    # Prompt encoder and CLIP are not in the reference files: they come from SAM / open_clip.
    target.decoder.prompt_encoder.load_state_dict(source.decoder.prompt_encoder.state_dict())
    target.backbone.load_state_dict(source.backbone.state_dict())
    rows_before = target.decoder.mask_decoder.mask_tokens.weight[1:].clone()
    assert _differs(_run(target, tiny_images), _run(source, tiny_images))
    load_reference_sam2clip(target, p1)
    load_reference_clip2sam(target, p2)
    _assert_same(_run(target, tiny_images), _run(source, tiny_images))
    # Only mask token 0 comes from the reference file; SAM's multimask tokens are kept.
    assert torch.equal(target.decoder.mask_decoder.mask_tokens.weight[1:], rows_before)
    assert torch.equal(target.decoder.mask_decoder.mask_tokens.weight[0], source.decoder.mask_decoder.mask_tokens.weight[0])


def _hand_reference_files(tmp_path, model, seed=5):
    """Reference-layout files written key by key from the published names (not by our exporter).

    The reference decoder is SAM's MaskDecoder with ONE mask token and no IoU head: its keys are
    those of a segment_anything ``MaskDecoder(num_multimask_outputs=0)`` minus ``iou_*``.
    """
    gen = torch.Generator().manual_seed(seed)

    def rnd(t):
        return torch.randn(tuple(t.shape), generator=gen)

    sam2clip = {f"neck_student.{k}": rnd(v) for k, v in model.sam2clip.state_dict().items()}
    clip2sam = {}
    for i, block in enumerate(model.clip2sam.fpn.inner_blocks):
        clip2sam[f"fpn_neck.lateral_convs.{i}.conv.weight"] = rnd(block[0].weight)
        clip2sam[f"fpn_neck.lateral_convs.{i}.conv.bias"] = rnd(block[0].bias)
    for i, block in enumerate(model.clip2sam.fpn.layer_blocks):
        clip2sam[f"fpn_neck.fpn_convs.{i}.conv.weight"] = rnd(block[0].weight)
        clip2sam[f"fpn_neck.fpn_convs.{i}.conv.bias"] = rnd(block[0].bias)
    clip2sam["mask_decoder.roi_conv.0.conv.weight"] = rnd(model.clip2sam.roi_conv[0].weight)
    clip2sam["mask_decoder.label_token.weight"] = rnd(model.decoder.label_token.weight)
    for k, v in model.decoder.label_mlp.state_dict().items():
        clip2sam[f"mask_decoder.label_mlp.{k}"] = rnd(v)
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer

    d = model.cfg.decoder
    one_token = MaskDecoder(
        num_multimask_outputs=0,
        transformer=TwoWayTransformer(depth=d.depth, embedding_dim=d.transformer_dim, mlp_dim=d.mlp_dim,
                                      num_heads=d.num_heads),
        transformer_dim=d.transformer_dim,
    )
    for k, v in one_token.state_dict().items():
        if not k.startswith("iou_"):
            clip2sam[f"mask_decoder.mask_decoder.{k}"] = rnd(v)
    assert clip2sam["mask_decoder.mask_decoder.mask_tokens.weight"].shape[0] == 1
    p1, p2 = tmp_path / "hand_sam2clip.pth", tmp_path / "hand_clip2sam.pth"
    torch.save({"meta": {"epoch": 24}, "state_dict": {**sam2clip, "backbone.foo": torch.zeros(1)}}, p1)
    torch.save({"state_dict": {**clip2sam, "data_preprocessor.mean": torch.zeros(3)}}, p2)
    return p1, p2, sam2clip, clip2sam


def test_hand_built_reference_files_land_in_the_named_parameters(tmp_path, tiny_model_factory, tiny_images):
    model = tiny_model_factory("rn", seed=3, output_tokens="reference")
    p1, p2, sam2clip, clip2sam = _hand_reference_files(tmp_path, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_reference_sam2clip(model, p1)
    load_reference_clip2sam(model, p2)
    sd = model.state_dict()
    # The published name -> our parameter, written out (not derived from the loader's rule table).
    named = {
        "fpn_neck.lateral_convs.0.conv.weight": "clip2sam.fpn.inner_blocks.0.0.weight",
        "fpn_neck.lateral_convs.3.conv.bias": "clip2sam.fpn.inner_blocks.3.0.bias",
        "fpn_neck.fpn_convs.1.conv.weight": "clip2sam.fpn.layer_blocks.1.0.weight",
        "fpn_neck.fpn_convs.2.conv.weight": "clip2sam.fpn.layer_blocks.2.0.weight",
        "fpn_neck.fpn_convs.3.conv.bias": "clip2sam.fpn.layer_blocks.3.0.bias",
        "mask_decoder.roi_conv.0.conv.weight": "clip2sam.roi_conv.0.weight",
        "mask_decoder.label_token.weight": "decoder.label_token.weight",
        "mask_decoder.label_mlp.layers.0.weight": "decoder.label_mlp.layers.0.weight",
        "mask_decoder.label_mlp.layers.2.bias": "decoder.label_mlp.layers.2.bias",
        "mask_decoder.mask_decoder.transformer.layers.0.self_attn.q_proj.weight":
            "decoder.mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
        "mask_decoder.mask_decoder.output_upscaling.0.weight": "decoder.mask_decoder.output_upscaling.0.weight",
        "mask_decoder.mask_decoder.output_hypernetworks_mlps.0.layers.1.weight":
            "decoder.mask_decoder.output_hypernetworks_mlps.0.layers.1.weight",
    }
    for ref, ours in named.items():
        assert torch.equal(sd[ours], clip2sam[ref]), f"{ref} did not land in {ours}"
    for ref, v in clip2sam.items():  # every other file tensor too, by the same naming
        if ref.startswith("mask_decoder.mask_decoder.") and not ref.endswith("mask_tokens.weight"):
            assert torch.equal(sd["decoder." + ref[len("mask_decoder."):]], v), ref
    for ref, v in sam2clip.items():
        assert torch.equal(sd["sam2clip." + ref[len("neck_student."):]], v), ref
    # The one reference mask token fills row 0; SAM's other tokens, the IoU head, the prompt
    # encoder and CLIP are not in the files and keep their values.
    tokens = sd["decoder.mask_decoder.mask_tokens.weight"]
    assert torch.equal(tokens[:1], clip2sam["mask_decoder.mask_decoder.mask_tokens.weight"])
    assert torch.equal(tokens[1:], before["decoder.mask_decoder.mask_tokens.weight"][1:])
    kept = [k for k in sd if k.startswith(("decoder.mask_decoder.iou_", "decoder.prompt_encoder.", "backbone.",
                                           "decoder.mask_decoder.output_hypernetworks_mlps.1."))]
    assert kept and all(torch.equal(sd[k], before[k]) for k in kept)
    changed = [k for k in sd if not torch.equal(sd[k], before[k])]
    assert len(changed) == len(clip2sam) + len(sam2clip)  # each file tensor landed somewhere distinct
    out = _run(model, tiny_images)
    assert all(torch.isfinite(x).all() for x in out[:3])


def test_reference_errors_name_key_and_file(tmp_path, tiny_model_factory):
    source = tiny_model_factory("rn", seed=0)
    target = tiny_model_factory("rn", seed=9)
    _, _, sam2clip, clip2sam = _write_reference(tmp_path, source)
    snapshot = {k: v.clone() for k, v in target.state_dict().items()}

    bad = dict(clip2sam)
    del bad["fpn_neck.fpn_convs.2.conv.bias"]
    bad["mask_decoder.extra_head.weight"] = torch.zeros(3)
    bad["mask_decoder.label_token.weight"] = torch.zeros(1, 31)
    path = tmp_path / "broken_clip2sam.pth"
    torch.save({"state_dict": bad}, path)
    with pytest.raises(CheckpointError) as err:
        load_reference_clip2sam(target, path)
    msg = str(err.value)
    assert "broken_clip2sam.pth" in msg
    assert "missing key(s): fpn_neck.fpn_convs.2.conv.bias" in msg
    assert "mask_decoder.extra_head.weight" in msg
    assert "mask_decoder.label_token.weight (file (1, 31) vs model (1, 32))" in msg
    for k, v in target.state_dict().items():  # a failed load changes nothing
        assert torch.equal(v, snapshot[k]), k

    few = {k: v for k, v in sam2clip.items() if not k.startswith("neck_student.blocks.")}
    path = tmp_path / "broken_sam2clip.pth"
    torch.save(few, path)
    with pytest.raises(CheckpointError) as err:
        load_reference_sam2clip(target, path)
    msg = str(err.value)
    assert "broken_sam2clip.pth" in msg and "neck_student.blocks.0.attn.qkv.weight" in msg
    assert "more)" in msg  # long key lists are truncated

    with pytest.raises(CheckpointError, match="neck_student"):
        load_reference_sam2clip(target, tmp_path / "clip2sam_coco_rn50x16.pth")
    with pytest.raises(CheckpointNotFoundError, match="missing.pth"):
        load_reference_clip2sam(target, tmp_path / "missing.pth")


# --- (b) Meta SAM format -------------------------------------------------------------------------------
def test_meta_sam_checkpoint_into_decoder_and_teacher(tmp_path, tiny_model_factory, tiny_sam_factory):
    model = tiny_model_factory("rn")
    sam = tiny_sam_factory(model.cfg.decoder)
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(sam.state_dict(), path)

    label_before = model.decoder.label_mlp.layers[0].weight.clone()
    load_sam_decoder(model.decoder, path)
    for k, v in sam.prompt_encoder.state_dict().items():
        assert torch.equal(model.decoder.prompt_encoder.state_dict()[k], v)
    for k, v in sam.mask_decoder.state_dict().items():
        assert torch.equal(model.decoder.mask_decoder.state_dict()[k], v)
    assert torch.equal(model.decoder.label_mlp.layers[0].weight, label_before)

    teacher = build_sam_teacher("tiny", path)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out = teacher(x)
        torch.testing.assert_close(out, sam.image_encoder(x))
    assert out.shape == (1, 32, 16, 16)  # same shape as SAM2CLIP's output: a valid distillation target

    with pytest.raises(ValueError, match="vit_q"):
        build_sam_teacher("vit_q")
    sd = sam.state_dict()
    del sd["mask_decoder.iou_token.weight"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="mask_decoder.iou_token.weight"):
        load_sam_decoder(model.decoder, path)


def test_build_ovsam_from_published_pieces(tmp_path, tiny_model_factory, tiny_sam_factory, tiny_images):
    """SAM decoder first, then reference files: fine-tuned mask token 0 wins, SAM keeps tokens 1..3."""
    source = tiny_model_factory("rn", seed=0)
    clip_path = tmp_path / "clip.pt"
    torch.save(source.backbone.clip.state_dict(), clip_path)
    sam = tiny_sam_factory(source.cfg.decoder, seed=5)
    sam_path = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), sam_path)
    p1, p2, _, _ = _write_reference(tmp_path, source)

    cfg = OVSAMConfig.from_dict(source.cfg.to_dict())
    cfg.backbone.pretrained = str(clip_path)
    model = build_ovsam(cfg, sam_checkpoint=str(sam_path), sam2clip_checkpoint=str(p1), clip2sam_checkpoint=str(p2))
    md = model.decoder.mask_decoder
    assert torch.equal(md.mask_tokens.weight[0], source.decoder.mask_decoder.mask_tokens.weight[0])
    assert torch.equal(md.mask_tokens.weight[1:], sam.mask_decoder.mask_tokens.weight[1:])
    assert torch.equal(md.iou_token.weight, sam.mask_decoder.iou_token.weight)
    assert torch.equal(model.decoder.prompt_encoder.point_embeddings[1].weight, sam.prompt_encoder.point_embeddings[1].weight)
    for k, v in source.sam2clip.state_dict().items():
        assert torch.equal(model.sam2clip.state_dict()[k], v)
    with torch.no_grad():
        f = model.encode_image(tiny_images)
    torch.testing.assert_close(f.sam_embedding, source.encode_image(tiny_images).sam_embedding)

    cfg.backbone.pretrained = str(tmp_path / "no_such_clip.bin")
    with pytest.raises(FileNotFoundError, match="no_such_clip.bin"):
        build_ovsam(cfg)


def test_open_clip_weights_wrong_model(tmp_path):
    """(d) open_clip weights of another architecture: CheckpointError naming the file."""
    from ovsam_ros.model import BackboneConfig, build_backbone
    from ovsam_ros.model.backbone import register_tiny_clip_configs

    register_tiny_clip_configs()
    path = tmp_path / "convnext_weights.pt"
    torch.save(open_clip.create_model("ovsam-tiny-convnext").state_dict(), path)
    with pytest.raises(CheckpointError, match="convnext_weights.pt"):
        build_backbone(BackboneConfig("ovsam-tiny-rn", str(path)))


# --- published files: default decoder token set ---------------------------------------------------
def _published_files(tmp_path, source):
    """A Meta-SAM-layout file and the two reference files, all from ``source`` (random weights)."""
    from segment_anything.modeling import MaskDecoder

    p1, p2, _, _ = _write_reference(tmp_path, source)
    sam_path = tmp_path / "sam_vit_tiny.pth"
    # SAM's decoder differs from the fine-tuned one: Meta SAM weights of its own.
    torch.manual_seed(77)
    sam_md = MaskDecoder(
        transformer_dim=32,
        transformer=source.decoder.mask_decoder.transformer.__class__(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
        iou_head_hidden_dim=32,
    )
    sd = {f"prompt_encoder.{k}": v for k, v in source.decoder.prompt_encoder.state_dict().items()}
    sd.update({f"mask_decoder.{k}": v for k, v in sam_md.state_dict().items()})
    torch.save(sd, sam_path)
    return sam_path, p1, p2


def test_published_clip2sam_defaults_to_reference_token_set(tmp_path, tiny_model_factory, tiny_images):
    source = tiny_model_factory("rn", seed=0, output_tokens="reference")
    sam_path, p1, p2 = _published_files(tmp_path, source)
    cfg = OVSAMConfig.tiny()
    assert cfg.decoder.output_tokens == "auto"
    cfg.backbone.pretrained = str(tmp_path / "clip.pt")
    torch.save(source.backbone.clip.state_dict(), cfg.backbone.pretrained)
    model = build_ovsam(cfg, sam_checkpoint=sam_path, sam2clip_checkpoint=p1, clip2sam_checkpoint=p2)
    assert model.decoder.output_tokens == "reference"
    # Bit-identical to the reference token set (itself pinned against the reference head in test_decoder).
    _assert_same(_run(model, tiny_images), _run(source, tiny_images))
    assert model.current_config().decoder.output_tokens == "reference"

    # An explicit choice wins: SAM's token set with the fine-tuned transformer gives other masks.
    cfg_sam = OVSAMConfig.from_dict({**cfg.to_dict(), "decoder": {**cfg.to_dict()["decoder"], "output_tokens": "sam"}})
    sam_tokens = build_ovsam(cfg_sam, sam_checkpoint=sam_path, sam2clip_checkpoint=p1, clip2sam_checkpoint=p2)
    assert sam_tokens.decoder.output_tokens == "sam"
    with torch.no_grad():
        f = model.encode_image(tiny_images)
        ref = model.decode(f, boxes=BOXES, multimask_output=False)["masks_lowres"]
        other = sam_tokens.decode(f, boxes=BOXES, multimask_output=False)["masks_lowres"]
    assert not torch.equal(ref > 0, other > 0)

    # Without a clip2sam file (Meta SAM decoder only) "auto" keeps SAM's token set.
    assert build_ovsam(OVSAMConfig.tiny(), sam_checkpoint=sam_path).decoder.output_tokens == "sam"


def test_sam_iou_scorer_is_sams_own_decoder(tmp_path, tiny_model_factory):
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer

    from ovsam_ros.model import load_sam_iou_scorer

    source = tiny_model_factory("rn", seed=0)
    sam_path, _, _ = _published_files(tmp_path, source)
    scorer = load_sam_iou_scorer(source.cfg.decoder, sam_path)
    sam_md = MaskDecoder(transformer_dim=32, iou_head_hidden_dim=32,
                         transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2))
    sam_md.load_state_dict({k[len("mask_decoder."):]: v for k, v in torch.load(sam_path).items()
                            if k.startswith("mask_decoder.")})
    emb = torch.randn(1, 32, 16, 16)
    pe = source.decoder.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(points=None, boxes=BOXES, masks=None)
        ours = scorer(emb, pe.get_dense_pe(), sparse, dense)
        _, expected = sam_md(emb, pe.get_dense_pe(), sparse, dense, multimask_output=False)
    torch.testing.assert_close(ours, expected[:, 0], rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match="mask_decoder"):
        load_sam_iou_scorer(source.cfg.decoder, tmp_path / "clip2sam_coco_rn50x16.pth")
