"""ONNX export of the tiny model: graphs are valid, dynamic in prompts/points/classes, and ONNX
Runtime (CPU, fp32) matches PyTorch within the documented tolerance (atol 1e-4 + rtol 1e-3 x max|value|)."""

import json
import math

import numpy as np
import onnx
import pytest
import torch

from ovsam_ros import cli
from ovsam_ros.export.backend import sam_point_inputs
from ovsam_ros.export.folder import ExportCheckError
from ovsam_ros.export.onnx_export import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    TOLERANCE,
    ImageEncoderGraph,
    example_decoder_inputs,
    export_onnx,
)
from ovsam_ros.loading import ModelSpec, build_model
from ovsam_ros.model import OVSAM, OVSAMConfig
from ovsam_ros.model.ovsam import ImageFeatures


def tiny(seed=0, **decoder):
    cfg = OVSAMConfig.tiny()
    for key, value in decoder.items():
        setattr(cfg.decoder, key, value)
    torch.manual_seed(seed)
    return OVSAM(cfg).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`ovsam export --model tiny` (the seed-0 tiny model of config/models/tiny.yaml)."""
    out = tmp_path_factory.mktemp("onnx") / "tiny"
    assert cli.main(["export", "--model", "tiny", "--out", str(out), "--threads", "2"]) == 0
    return out


def close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.allclose(a, b, atol=TOLERANCE["atol"] + TOLERANCE["rtol"] * float(np.abs(b).max()), rtol=0)


def test_export_writes_valid_graphs_manifest_and_model_yaml(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert set(manifest["files"]) == {"image_encoder", "decoder", "decoder_multimask", "text_tower"}
    assert manifest["check"]["ok"], manifest["check"]["summary"]
    assert manifest["image_outputs"] == ["sam_embedding", "fpn0", "fpn1", "fpn2", "fpn3", "clip_c5"]
    assert manifest["trained"] is False and manifest["opset"] == 17
    for name in ("image_encoder", "decoder", "decoder_multimask"):
        graph = onnx.load(str(exported / manifest["files"][name]))
        onnx.checker.check_model(graph)
    decoder = onnx.load(str(exported / "decoder.onnx"))
    assert [i.name for i in decoder.graph.input] == list(DECODER_INPUTS)
    assert [o.name for o in decoder.graph.output] == list(DECODER_OUTPUTS)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in decoder.graph.input}
    assert dims["point_coords"][:2] == ["num_prompts", "num_points"]
    assert dims["text_embeddings"][:2] == ["num_classes", "num_synonyms"]
    assert any(n.op_type == "RoiAlign" for n in decoder.graph.node)
    text = (exported / "model.yaml").read_text()
    assert "backend: onnx" in text and str(exported.resolve()) in text


def test_onnxruntime_matches_pytorch(exported):
    import onnxruntime as ort

    model = build_model(ModelSpec(preset="tiny", seed=0))
    s = model.image_size
    image = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(5))
    enc = ort.InferenceSession(str(exported / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    got = enc.run(None, {"image": image.numpy()})
    with torch.no_grad():
        want = ImageEncoderGraph(model)(image)
    for a, b in zip(got, want):
        assert close(a, b.numpy())

    features = ImageFeatures(want[0], [], list(want[1:5]))
    dec = ort.InferenceSession(str(exported / "decoder_multimask.onnx"), providers=["CPUExecutionProvider"])
    # 6 prompts of 3 clicks: neither N nor P equals the export example's (3 prompts, 2 clicks)
    inputs = example_decoder_inputs(model, want[:5], num_prompts=6, num_points=3, num_classes=11, num_synonyms=4,
                                    seed=9)
    out = dict(zip(DECODER_OUTPUTS, dec.run(None, {k: v.numpy() for k, v in inputs.items()})))
    with torch.no_grad():
        ref = model.decode(features, inputs["point_coords"][:, :3], inputs["point_labels"][:, :3].long(),
                           multimask_output=True)
    assert out["masks_lowres"].shape == (6, 3, 64, 64) and out["class_logits"].shape == (6, 3, 12)
    assert close(out["masks_lowres"], ref["masks_lowres"].numpy())
    assert close(out["iou"], ref["iou"].numpy())
    assert np.array_equal(out["roi_boxes"], ref["roi_boxes"].numpy())
    assert close(out["region_embeddings"], ref["region_embeddings"].numpy())
    from ovsam_ros.model.recognition import class_logits
    from ovsam_ros.model.vocabulary import TextEmbeddings, Vocabulary

    names = [f"c{i}" for i in range(11)]
    text = TextEmbeddings(inputs["text_embeddings"], inputs["text_valid"] > 0.5,
                          Vocabulary(name="t", version="", classes=names, synonyms=[[n] for n in names]))
    logits = class_logits(ref["region_embeddings"].reshape(-1, model.clip_dim), text).reshape(6, 3, 12)
    assert close(out["class_logits"], logits.numpy())


def _hand_class_logits(regions: np.ndarray, text: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Cosine x the reference's logit scale exp(4.6052), max over the valid synonyms, background column 0 (the
    documented decoder output)."""
    r = regions / np.linalg.norm(regions, axis=-1, keepdims=True)
    t = text / np.linalg.norm(text, axis=-1, keepdims=True)
    sims = np.einsum("nd,csd->ncs", r, t)
    sims = np.where(valid[None] > 0.5, sims, -np.inf)
    return np.concatenate([math.exp(4.6052) * sims.max(axis=-1), np.zeros((len(r), 1))], axis=1)


def test_export_of_a_largest_component_yaml_writes_a_yaml_the_onnx_backend_runs(tmp_path, capsys):
    """The ONNX decoder pools the whole mask's box: a source YAML with roi_box: largest_component (the
    shapes model's) must not be copied into a model.yaml that the ONNX backend then refuses to load."""
    import yaml

    from ovsam_ros.loading import build_predictor

    source = tmp_path / "src.yaml"
    source.write_text(yaml.safe_dump({"model": {"preset": "tiny"},
                                      "predictor": {"vocabulary": "cat, dog", "text_cache_dir": None,
                                                    "roi_box": "largest_component"}}))
    out = tmp_path / "onnx"
    assert cli.main(["export", "--model", str(source), "--out", str(out), "--no-check", "--no-multimask",
                     "--threads", "2"]) == 0
    assert "roi_box: mask" in capsys.readouterr().out
    written = yaml.safe_load((out / "model.yaml").read_text())
    assert written["predictor"]["roi_box"] == "mask" and written["predictor"]["vocabulary"] == "cat, dog"
    assert build_predictor(out / "model.yaml").roi_box == "mask"


def test_reference_token_layout_exports_one_decoder(tmp_path):
    """Reference layout (one mask token + label token, label_weight 0.5): ONNX Runtime on the written files
    against the model's own PyTorch path (``OVSAM.decode``), not the exporter's self-check."""
    import onnxruntime as ort

    model = tiny(seed=3, output_tokens="reference", label_token=True)
    model.clip2sam.label_weight = 0.5  # exercise the label-token path too
    manifest = export_onnx(model, tmp_path, text_tower=False, check=False)
    assert set(manifest["files"]) == {"image_encoder", "decoder"}
    assert manifest["num_mask_tokens"] == 1

    s, low = model.image_size, model.decoder.low_res_size
    image = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(11))
    enc = ort.InferenceSession(str(tmp_path / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        feats = ImageEncoderGraph(model)(image)
    for got, want in zip(enc.run(None, {"image": image.numpy()}), feats):
        assert close(got, want.numpy())
    features = ImageFeatures(feats[0], [], list(feats[1:5]))
    dec = ort.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    checked_label = 0
    # clicks + SAM's padding point; clicks + a box; a per-prompt mask input (other N, P than the export example)
    for case, mask_in in ((dict(num_prompts=5, num_points=1, seed=21), None),
                          (dict(num_prompts=3, num_points=2, with_box=True, seed=22), None),
                          (dict(num_prompts=2, num_points=1, seed=23),
                           torch.randn(2, 1, low, low, generator=torch.Generator().manual_seed(24)))):
        inputs = example_decoder_inputs(model, feats[:5], num_classes=6, num_synonyms=3, **case)
        if mask_in is not None:
            inputs.update(mask_input=mask_in, has_mask_input=torch.ones(2))
        out = dict(zip(DECODER_OUTPUTS, dec.run(None, {k: v.numpy() for k, v in inputs.items()})))
        n, k = case["num_prompts"], case["num_points"]
        boxes = inputs["point_coords"][:, k:].reshape(n, 4) if case.get("with_box") else None
        args = (features, inputs["point_coords"][:, :k], inputs["point_labels"][:, :k].long(), boxes, mask_in)
        with torch.no_grad():
            ref = model.decode(*args, multimask_output=False)
            model.clip2sam.label_weight = 0.0
            roi_only = model.decode(*args, multimask_output=False)["region_embeddings"].numpy()
            model.clip2sam.label_weight = 0.5
        assert out["masks_lowres"].shape == (n, 1, low, low) and out["class_logits"].shape == (n, 1, 7)
        assert close(out["masks_lowres"], ref["masks_lowres"].numpy())
        assert np.isnan(out["iou"]).all() and torch.isnan(ref["iou"]).all()  # the reference layout has no IoU head
        # 0 RoI box mismatches: every region is pooled from exactly the box PyTorch pools
        assert np.array_equal(out["roi_boxes"], ref["roi_boxes"].numpy()), (out["roi_boxes"], ref["roi_boxes"])
        assert close(out["region_embeddings"], ref["region_embeddings"].numpy())
        # the label-token embedding inside ONNX's region embedding: (region - RoI part) / label_weight
        label = ref["label_embeddings"].numpy()
        assert np.abs(0.5 * label).max() > 100 * TOLERANCE["atol"]  # large enough to be seen if it were lost
        assert close((out["region_embeddings"][:, 0] - roi_only[:, 0]) / 0.5, label)
        checked_label += n
        want_logits = _hand_class_logits(ref["region_embeddings"].numpy()[:, 0], inputs["text_embeddings"].numpy(),
                                         inputs["text_valid"].numpy())
        assert close(out["class_logits"][:, 0], want_logits)
    assert checked_label == 10


def test_export_check_fails_on_wrong_roi_boxes(tmp_path, monkeypatch):
    """The exporter's own check (the manifest's ``ok``) must not pass an export whose RoI boxes are wrong:
    mask boxes one pixel short on the right (x1 without its +1) are NOT explained by logit noise."""
    from ovsam_ros.export.onnx_export import DecoderGraph, box_within_logit_noise

    right = DecoderGraph.mask_boxes

    def short(masks):
        boxes = right(masks)
        return torch.cat([boxes[..., :2], (boxes[..., 2:3] - 1).clamp(min=0), boxes[..., 3:]], dim=-1)

    monkeypatch.setattr(DecoderGraph, "mask_boxes", staticmethod(short))
    with pytest.raises(ExportCheckError) as failed:
        export_onnx(tiny(seed=3, output_tokens="reference"), tmp_path, text_tower=False)
    check = failed.value.manifest["check"]
    assert not check["ok"] and "roi_boxes" in check["failures"], check["summary"]
    assert check["roi_box_mismatches_unexplained"] > 0 and "BEYOND" in check["summary"]
    # by hand: a 4x4 logit map whose pixel (row 1, col 3) is +1e-6 (noise) and the rest of column 3 negative
    logits = torch.full((1, 1, 4, 4), -5.0)
    logits[0, 0, 1:3, 0:3] = 5.0
    logits[0, 0, 1, 3] = 1e-6
    boxes_px = np.array([[[0.0, 4.0, 12.0, 12.0]], [[0.0, 4.0, 16.0, 12.0]], [[0.0, 4.0, 8.0, 12.0]]])  # x 4 px/cell
    ok = box_within_logit_noise(boxes_px, logits.expand(3, 1, 4, 4), noise=1e-4, image_size=16)
    assert ok[:, 0].tolist() == [True, True, False]  # without / with the noisy column: fine; cutting a sure one: not


def test_sam_point_inputs_follow_sam_padding_and_box_tokens():
    coords = torch.tensor([[[10.0, 20.0]], [[30.0, 40.0]]])
    labels = torch.tensor([[1], [0]])
    c, lab = sam_point_inputs(coords, labels, None)
    assert c.shape == (2, 2, 2) and lab.tolist() == [[1.0, -1.0], [0.0, -1.0]]
    c, lab = sam_point_inputs(coords, labels, torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]))
    assert lab.tolist() == [[1.0, 2.0, 3.0], [0.0, 2.0, 3.0]] and c[1, 1:].tolist() == [[5.0, 6.0], [7.0, 8.0]]
    c, lab = sam_point_inputs(None, None, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert lab.tolist() == [[2.0, 3.0]]
    with pytest.raises(ValueError, match="at least one point or a box"):
        sam_point_inputs(None, None, None)
