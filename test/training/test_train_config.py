"""Config files, --set overrides and the command-line entry points."""

from __future__ import annotations

import pytest
import yaml

from training import evaluate, stage0, stage1, stage2, synthetic
from training.config import CONFIG_DIR, ConfigError, load_config, parse_override
from training.data import rosbag


def test_bundled_configs_load_against_their_stage():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"stage1_tiny", "stage2_tiny", "stage1_rn50x16", "stage2_coco_rn50x16"} <= set(names)
    for name in names:
        defaults = {"stage0": stage0.DEFAULTS, "stage1": stage1.DEFAULTS}.get(name[:6], stage2.DEFAULTS)
        cfg = load_config(defaults, name)
        assert cfg["train"].get("batch_size", 1) >= 1
    ref = load_config(stage2.DEFAULTS, "stage2_coco_rn50x16")
    assert ref["train"]["lr"] == 1e-4 and ref["train"]["milestones"] == [8, 11] and ref["train"]["grad_clip"] == 0.01
    assert ref["loss"]["num_points"] == 12544 and ref["data"]["instances_per_image"] == 40
    assert ref["data"]["scale_range"] == [0.9, 2.0]
    s1 = load_config(stage1.DEFAULTS, "stage1_rn50x16")
    assert s1["train"]["warmup_steps"] == 500 and s1["train"]["epochs"] == 24 and s1["teacher"]["kind"] == "vit_h"


def test_overrides_are_typed_and_checked():
    assert parse_override("train.lr=2e-4") == {"train": {"lr": 2e-4}}
    cfg = load_config(stage2.DEFAULTS, "stage2_tiny", ["data.scale_range=[0.5, 1.5]", "model.init_checkpoint=null",
                                                         "model.overrides={decoder: {label_token: false}}"])
    assert cfg["data"]["scale_range"] == [0.5, 1.5] and cfg["model"]["init_checkpoint"] is None
    assert cfg["model"]["overrides"] == {"decoder": {"label_token": False}}  # free-form section
    with pytest.raises(ConfigError, match="train.lrr"):
        load_config(stage2.DEFAULTS, None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="section"):
        load_config(stage2.DEFAULTS, None, ["train=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(stage2.DEFAULTS, None, ["train.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(stage2.DEFAULTS, "no_such_config")


def test_typo_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"epoch": 3}}))
    with pytest.raises(ConfigError, match="bad.yaml.*train.epoch"):
        load_config(stage2.DEFAULTS, str(path))


@pytest.mark.parametrize("main", [stage1.main, stage2.main, evaluate.main, rosbag.main, synthetic.main])
def test_every_command_explains_itself(main, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert len(text) > 300 and "usage" in text


def test_print_config(capsys):
    assert stage2.main(["--config", "stage2_tiny", "--set", "train.lr=0.5", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 0.5 and cfg["loss"]["cls_weight"] == 2.0


def test_training_commands_report_bad_input_cleanly(tmp_path, capsys):
    code = stage2.main(["--set", f"data.annotations={tmp_path / 'missing.json'}", "--set", "model.init_checkpoint=null",
                        "--output-dir", str(tmp_path / "out"), "--quiet"])
    assert code == 2 and "missing.json" in capsys.readouterr().err
    code = stage1.main(["--set", f"data.images={tmp_path}", "--output-dir", str(tmp_path / "out1"), "--quiet"])
    assert code == 2 and "contains no images" in capsys.readouterr().err


@pytest.mark.parametrize("override", ['data.flip="false"', "data.flip=0", 'model.include_backbone="no"',
                                      "train.tensorboard='off'"])
def test_a_true_false_key_refuses_a_quoted_word_or_a_number(override):
    """Probe finding: `data.flip: "false"` (quoted) turned flipping ON (bool("false") is True)."""
    from training import stage2

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"config key '{key}' takes true or false"):
        load_config(stage2.DEFAULTS, "stage2_tiny", [override])
    assert load_config(stage2.DEFAULTS, "stage2_tiny", [f"{key}=false"])
    # a key that also takes named modes keeps them
    assert load_config(stage2.DEFAULTS, "stage2_tiny", ["data.fill_instances=cycle"])["data"]["fill_instances"] == "cycle"
