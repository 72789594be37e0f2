"""The README's stage-1 and stage-2 commands on RN50x16-shaped files (issue 16).

A real CLIP checkpoint differs from the tiny test towers in ways that broke the
recipe before its first step (a 0-dim ``logit_scale`` in the text tower's state
dict). Here the bundled ``stage1_rn50x16`` / ``stage2_coco_rn50x16`` configs run
as the README shows them, on a randomly initialised open_clip ``RN50x16-quickgelu``
file (the architecture of OpenAI's weights, ~1.2 GB, written once per session)
and a Meta-layout SAM file; only the data, the output folders, the image size (256
instead of 1024, so two steps take seconds on a CPU) and the worker count are
overridden. Then the predictor loads the stage-2 output and finds the text
embeddings stage 2 cached: one fingerprint serves both.
"""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from torch import nn

from training_helpers import read_metrics

pytestmark = pytest.mark.e2e

IMAGE_SIZE = 256  # the published 1024 px costs minutes per step on a CPU; every shape but the grid is unchanged


@pytest.fixture(scope="session")
def rn50x16_files(tmp_path_factory):
    """{'clip': open_clip RN50x16 state dict file, 'sam': Meta-layout SAM file (teacher + decoder)}."""
    import open_clip
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from ovsam_ros.model.checkpoints import TINY_TEACHER_KWARGS
    from ovsam_ros.model.config import DecoderConfig

    root = tmp_path_factory.mktemp("rn50x16_files")
    torch.manual_seed(0)
    clip = open_clip.create_model("RN50x16-quickgelu")  # random init: no weights can be downloaded here
    assert clip.state_dict()["logit_scale"].dim() == 0  # what crashed the stage-2 start-up
    torch.save(clip.state_dict(), root / "RN50x16-openai.pt")
    del clip

    # A SAM file in Meta's layout with the ViT-H decoder's sizes and a small image encoder (a ViT-H encoder
    # is 2.5 GB and minutes per image on a CPU) whose output matches the student: 256 x 16 x 16 from 256 px.
    d, grid = DecoderConfig(), IMAGE_SIZE // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(norm_layer=partial(nn.LayerNorm, eps=1e-6),
                                      **{**TINY_TEACHER_KWARGS, "img_size": IMAGE_SIZE, "out_chans": 256}),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                     input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=d.mask_in_chans),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256,
            iou_head_depth=3, iou_head_hidden_dim=256),
    )
    torch.save(sam.state_dict(), root / "sam_vit_h_4b8939.pth")
    return {"clip": str(root / "RN50x16-openai.pt"), "sam": str(root / "sam_vit_h_4b8939.pth")}


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_readme_recipes_on_rn50x16_files(tmp_path, synth, rn50x16_files, monkeypatch):
    from ovsam_ros.loading import build_predictor
    from training import stage1, stage2

    clip, sam = rn50x16_files["clip"], rn50x16_files["sam"]
    s1, s2, text_cache = tmp_path / "s1_robot", tmp_path / "s2_robot", tmp_path / "text_cache"
    common = [f"model.overrides.image_size={IMAGE_SIZE}", "train.max_steps=2", "train.batch_size=2",
              "train.num_workers=1", "train.progress=false", "train.tensorboard=false"]

    # README: torchrun ... -m training.stage1 --config stage1_rn50x16 --output-dir runs/s1_robot --set ...
    assert stage1.main(["--config", "stage1_rn50x16", "--output-dir", str(s1), "--quiet", *_sets([
        f"data.images={synth['images']}/train", f"model.clip_weights={clip}", f"model.sam_checkpoint={sam}",
        f"teacher.checkpoint={sam}", f"teacher.cache_dir={tmp_path / 'teacher_cache'}",
        "teacher.kind=tiny", "teacher.overrides.out_chans=256",
        "teacher.init_pos_embed=auto",  # the small stand-in teacher is narrower than ViT-H: no pos_embed to copy
        *common])]) == 0
    assert [r["step"] for r in read_metrics(s1)] == [1, 2]
    saved = torch.load(s1 / "model.pt", map_location="cpu", weights_only=True)
    assert saved["config"]["backbone"]["model_name"] == "RN50x16" and not saved["includes_backbone"]

    # README: torchrun ... -m training.stage2 --config stage2_coco_rn50x16 --output-dir runs/s2_robot --set ...
    # (the text cache is the config's, moved out of $HOME; the synthetic classes are not COCO's)
    assert stage2.main(["--config", "stage2_coco_rn50x16", "--output-dir", str(s2), "--quiet", *_sets([
        f"model.init_checkpoint={s1}/model.pt", f"model.clip_weights={clip}",
        f"data.annotations={synth['train']}", f"data.images={synth['images']}", "data.vocabulary=null",
        f"text.cache_dir={text_cache}", *common])]) == 0
    records = read_metrics(s2)
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] == r["loss"] for r in records)
    cached = sorted(text_cache.rglob("*.pt"))
    assert len(cached) == 1  # the training vocabulary, encoded once with the 14 ViLD templates

    # The predictor loads the stage-2 output and reads stage 2's text embeddings from the shared cache:
    # computing them again would mean the two fingerprints disagree.
    vocab_file = tmp_path / "train_vocabulary.json"
    vocab_file.write_text(json.dumps(json.loads((s2 / "data_report.json").read_text())["train_vocabulary"]))
    import ovsam_ros.predictor as predictor_module

    def no_compute(*args, **kwargs):
        raise AssertionError("the predictor recomputed text embeddings that stage 2 had cached")

    monkeypatch.setattr(predictor_module, "encode_vocabulary", no_compute)
    predictor = build_predictor({"model": {"ovsam_checkpoint": str(s2 / "model.pt"), "clip_weights": clip},
                                 "predictor": {"vocabulary": str(vocab_file), "device": "cpu", "templates": "vild",
                                               "text_cache_dir": str(text_cache)}})
    assert predictor.model.cfg.backbone.model_name == "RN50x16"
    assert predictor.text.embeddings.shape[0] == len(predictor.vocabulary.classes)
    assert sorted(text_cache.rglob("*.pt")) == cached
