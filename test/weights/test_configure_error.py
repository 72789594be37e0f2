"""The robot default is the published model: without its files, loading (CLI) and the node's
configure fail with one message naming every missing file and the command that fetches them."""

from __future__ import annotations

import pytest

from ovsam_ros.loading import build_predictor, check_weight_files, load_specs
from ovsam_ros.weights.hint import download_command

FILES = ("RN50x16-openai.pt", "sam_vit_h_4b8939.pth", "sam2clip_vith_rn50x16.pth")


@pytest.mark.parametrize("model, head, precision", [
    ("rn50x16", "clip2sam_lvis_rn50x16.pth", None), ("rn50x16_coco", "clip2sam_coco_rn50x16.pth", None),
    ("rn50x16", "clip2sam_lvis_rn50x16.pth", "fp32")])
def test_missing_published_weights_name_the_download_command(tmp_path, monkeypatch, model, head, precision):
    """build_predictor is what the CLI and the node call; with --precision the message's 'where' no
    longer names the YAML, so the model must reach check_weight_files as the user named it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        build_predictor(model, precision=precision)
    message = str(error.value)
    for name in (*FILES, head):
        assert f"{tmp_path}/ovsam_weights/{name}" in message
    assert f"Fetch them with: ovsam weights download --model {model} (README, 'Weights')" in message
    assert "--model shapes, or model:=shapes for the node and launch file" in message


def test_the_model_as_named_is_used_when_given(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    spec, _ = load_specs("rn50x16_coco")
    with pytest.raises(FileNotFoundError, match="Fetch them with: ovsam weights download --model rn50x16_coco "):
        check_weight_files(spec, "requested", source="rn50x16_coco")


def test_a_yaml_path_and_an_unpublished_file(tmp_path):
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text(f"model:\n  preset: tiny\n  ovsam_checkpoint: {tmp_path}/run/model.pt\n")
    spec, _ = load_specs(yaml_path)
    with pytest.raises(FileNotFoundError) as error:
        check_weight_files(spec, f"model YAML {yaml_path}")
    message = str(error.value)
    assert f"model.ovsam_checkpoint: {tmp_path}/run/model.pt" in message
    assert "model.ovsam_checkpoint: no published source" in message and "ovsam weights download" not in message


def test_download_command_names_bundled_models_by_name(tmp_path):
    from ovsam_ros.resources import model_config_dir

    assert download_command("rn50x16") == "ovsam weights download --model rn50x16"
    assert download_command(model_config_dir() / "rn50x16_coco.yaml") == "ovsam weights download --model rn50x16_coco"
    own = tmp_path / "my model.yaml"
    own.write_text("model: {}\n")
    assert download_command(own, tmp_path / "w") == f"ovsam weights download --model '{own}' --dir {tmp_path}/w"


def test_node_configure_fails_naming_the_files_and_the_command(tmp_path, monkeypatch):
    """The node's default model (no model parameter given) on a machine without the files."""
    pytest.importorskip("rclpy")
    import rclpy
    from rclpy.context import Context
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from ovsam_ros.ros.discovery import LOCAL_ONLY
    from ovsam_ros.ros.node import OVSAMNode

    for key, value in LOCAL_ONLY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    context = Context()
    rclpy.init(args=[], context=context)
    try:
        node = OVSAMNode("ovsam_default_model", context=context, start_worker=False,
                         parameter_overrides=[Parameter("num_threads", value=1)])
        try:
            assert node.get_parameter("model").value == "rn50x16"
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
            error = node.last_error
            assert error.startswith("could not load model 'rn50x16': FileNotFoundError: 4 weight file(s)")
            for name in (*FILES, "clip2sam_lvis_rn50x16.pth"):
                assert f"{tmp_path}/ovsam_weights/{name}" in error
            assert "ovsam weights download --model rn50x16" in error and "model:=shapes" in error
            assert node.predictor is None
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
