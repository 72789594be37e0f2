"""The ONNX Runtime backend behind OVSAMPredictor, selected by a model YAML (`backend: onnx`)."""

import numpy as np
import pytest
import torch

from ovsam_ros.export.backend import OnnxOVSAM
from ovsam_ros.export.onnx_export import export_onnx
from ovsam_ros.loading import ModelSpec, build_model, build_predictor, load_specs
from ovsam_ros.model import OVSAM, OVSAMConfig
from ovsam_ros.predictor import EverythingOptions, OVSAMPredictor
from ovsam_ros.prompts import Prompt


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return OVSAM(OVSAMConfig.tiny()).eval()


@pytest.fixture(scope="module")
def onnx_dir(torch_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_backend")
    manifest = export_onnx(torch_model, out, check=False)
    assert "text_tower" in manifest["files"]
    return out


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 60, (300, 500, 3), dtype=np.uint8)
    frame[80:200, 150:320] = (200, 40, 40)
    return frame


def yaml_dict(onnx_dir):
    return {"model": {"backend": "onnx", "onnx_dir": str(onnx_dir)},
            "predictor": {"vocabulary": "coco", "device": "cpu", "text_cache_dir": None, "top_k": 3}}


def test_model_yaml_selects_the_onnx_backend(onnx_dir, torch_model):
    spec, _ = load_specs(yaml_dict(onnx_dir))
    assert spec.backend == "onnx" and spec.trained is False
    model = build_model(spec)
    assert isinstance(model, OnnxOVSAM)
    assert model.image_size == 256 and model.decoder.low_res_size == 64 and model.clip_dim == 64
    assert model.providers[-1] == "CPUExecutionProvider"
    # the text tower is the exported model's: same weights -> same text embeddings and cache keys
    tokens = model.tokenizer(["a photo of a cat."])
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens), torch_model.encode_text(tokens), atol=1e-6)
    with pytest.raises(ValueError, match="backend must be"):
        build_model(ModelSpec(backend="tensorrt"))
    with pytest.raises(FileNotFoundError, match="ovsam export"):
        build_model(ModelSpec(backend="onnx", onnx_dir=str(onnx_dir / "missing")))


def test_predictor_results_match_pytorch(onnx_dir, torch_model, image):
    ref = OVSAMPredictor(torch_model, vocabulary="coco", top_k=3)
    ours = build_predictor(yaml_dict(onnx_dir))
    assert ours.text_weights_id == ref.text_weights_id
    ref.set_image(image)
    ours.set_image(image)
    prompts = [Prompt(points=[[120 + 30 * i, 140]], point_labels=[1]) for i in range(4)]
    prompts += [Prompt(box=[140, 70, 330, 210]), Prompt(points=[[200, 120], [60, 40]], point_labels=[1, 0], box=[100, 50, 350, 250])]
    for multimask in (False, True):
        a = ref.predict(prompts, multimask_output=multimask, keep="all")
        b = ours.predict(prompts, multimask_output=multimask, keep="all")
        assert len(a) == len(b) == len(prompts) * (3 if multimask else 1)
        for x, y in zip(a, b):
            np.testing.assert_allclose(y.low_res_logits, x.low_res_logits, atol=1e-4)
            assert np.mean(x.mask != y.mask) < 1e-3
            assert x.prompt_index == y.prompt_index
            assert [l.class_index for l in x.labels] == [l.class_index for l in y.labels]
    refine = [Prompt(points=[[200, 120]], point_labels=[1], mask_input=b[0].low_res_logits)]
    np.testing.assert_allclose(ours.predict(refine)[0].low_res_logits, ref.predict(refine)[0].low_res_logits, atol=1e-4)
    options = EverythingOptions(points_per_side=6, pred_iou_thresh=-1e9, stability_score_thresh=0.0, box_nms_thresh=1.0)
    assert len(ours.everything(options)) == len(ref.everything(options)) > 0


def test_onnx_backend_limits_are_clear(onnx_dir, image):
    predictor = build_predictor(yaml_dict(onnx_dir))
    predictor.set_image(image)
    with pytest.raises(ValueError, match="roi_boxes"):
        predictor.model.decode(predictor.features, torch.zeros(1, 1, 2), torch.ones(1, 1), roi_boxes=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="pools the box of the whole mask"):
        predictor.model.decode(predictor.features, torch.zeros(1, 1, 2), torch.ones(1, 1), roi_box="largest_component")
    with pytest.raises(ValueError, match=r"\[1, 3, 256, 256\]"):
        predictor.model.encode_image(torch.zeros(2, 3, 256, 256))
    with pytest.raises(ValueError, match="roi_box 'largest_component' needs the PyTorch model"):
        spec = yaml_dict(onnx_dir)
        build_predictor({**spec, "predictor": {**spec["predictor"], "roi_box": "largest_component"}})
