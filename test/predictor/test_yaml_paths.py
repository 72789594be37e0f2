"""Issue #28 item 5: relative paths in a model YAML are the YAML folder's (not the current
directory's), and the README names the weight folder and output file the YAMLs use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ovsam_ros.loading import CONFIG_DIR, build_predictor, load_specs
from ovsam_ros.model import save_ovsam

from predictor_helpers import tiny_model

ROOT = Path(__file__).resolve().parents[2]


def _write_model_folder(folder: Path) -> Path:
    (folder / "weights").mkdir(parents=True)
    save_ovsam(tiny_model(seed=3), folder / "weights" / "tiny.pt")
    (folder / "classes.txt").write_text("cup\ndoor handle\n")
    path = folder / "robot.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"ovsam_checkpoint": "weights/tiny.pt", "sam_checkpoint": "~/somewhere/sam.pth"},
        "predictor": {"vocabulary": "classes.txt", "device": "cpu", "text_cache_dir": "cache/text"},
    }))
    return path


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    path = _write_model_folder(tmp_path / "models")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model, predictor = load_specs(path)
    folder = path.resolve().parent
    assert model.ovsam_checkpoint == str(folder / "weights" / "tiny.pt")
    assert model.sam_checkpoint == "~/somewhere/sam.pth"  # ~ stays (expanded at load)
    assert predictor.vocabulary == str(folder / "classes.txt")
    assert predictor.text_cache_dir == str(folder / "cache" / "text")


def test_yaml_with_relative_weight_path_loads_from_another_directory(tmp_path, monkeypatch):
    path = _write_model_folder(tmp_path / "models")
    monkeypatch.chdir(tmp_path)  # neither weights/tiny.pt nor classes.txt exist here
    predictor = build_predictor(str(path.relative_to(tmp_path)), text_cache_dir="")
    assert predictor.trained
    assert predictor.vocabulary.classes == ["cup", "door handle"]


def test_absolute_home_and_package_paths_and_dicts_are_kept(tmp_path, monkeypatch):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"model": {"ovsam_checkpoint": "ovsam_ros://data/models/shapes.pt",
                                              "clip_weights": "/abs/clip.pt"},
                                    "predictor": {"vocabulary": "cup, door handle", "compile_cache_dir": "default"}}))
    model, predictor = load_specs(path)
    assert model.ovsam_checkpoint == "ovsam_ros://data/models/shapes.pt"
    assert model.clip_weights == "/abs/clip.pt"
    assert predictor.vocabulary == "cup, door handle" and predictor.compile_cache_dir == "default"
    monkeypatch.chdir(tmp_path)
    model, _ = load_specs({"model": {"sam_checkpoint": "rel/sam.pth"}})  # a dict has no folder: as given
    assert model.sam_checkpoint == "rel/sam.pth"


def _yaml_weight_folders() -> set:
    folders = set()
    for path in (CONFIG_DIR / "models").glob("*.yaml"):
        folders |= set(re.findall(r"(~/[\w.-]*weights)/", path.read_text()))
    return folders


def test_readme_uses_the_yamls_weight_folder():
    assert _yaml_weight_folders() == {"~/ovsam_weights"}
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"(~/[\w.-]*weights)/", readme))
    assert used == {"~/ovsam_weights"}, used
    for recipe in (ROOT / "training" / "configs").glob("*.yaml"):
        assert set(re.findall(r"(~/[\w.-]*weights)/", recipe.read_text())) <= {"~/ovsam_weights"}, recipe


def test_yamls_name_the_file_training_writes():
    for path in [*(CONFIG_DIR / "models").glob("*.yaml"), *(ROOT / "training" / "configs").glob("*.yaml")]:
        assert "last.pt" not in path.read_text(), f"{path}: training writes model.pt"
    assert "stage2/model.pt" in (CONFIG_DIR / "models" / "rn50x16.yaml").read_text()


@pytest.mark.parametrize("name", ["rn50x16", "rn50x16_coco"])
def test_yaml_headers_say_how_relative_paths_resolve(name):
    assert "this YAML's folder" in (CONFIG_DIR / "models" / f"{name}.yaml").read_text()


def test_readme_shows_your_own_coco_json_with_the_rn50x16_recipe():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"torchrun[^\n]*stage2_coco_rn50x16(?:[^\n]*\\\n)*[^\n]*", readme)
    assert any("data.vocabulary=null" in c and "data.annotations=" in c for c in commands), commands
