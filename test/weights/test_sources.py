"""The table of sources (ovsam_ros/data/weights/sources.yaml): it covers every file the published
model YAMLs name, its open_clip entry is open_clip's own registry, and a malformed table is an error
that names the entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from weights_server import write_sources

from ovsam_ros.loading import load_specs
from ovsam_ros.weights.download import _header_sha256
from ovsam_ros.weights.sources import (HF_SHA256_HEADER, load_table, mirror_source, open_clip_url_sha256)

ROOT = Path(__file__).resolve().parents[2]
# OpenAI's CLIP RN50x16 sha256, as OpenAI publishes it in the file's URL (openai/CLIP clip/clip.py _MODELS;
# the reference repo's vendored ext/open_clip/pretrained.py has the same URL).
OPENAI_RN50X16_SHA256 = "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa"


@pytest.mark.parametrize("model", ["rn50x16", "rn50x16_coco"])
def test_every_file_of_the_published_models_has_a_source(model):
    spec, _ = load_specs(model)
    table = load_table()
    names = [Path(path).name for _, path in spec.weight_fields()]
    assert len(names) == 4
    for name in names:
        entry = table.get(name)
        assert entry is not None, f"{name} ({model}) has no source"
        assert entry.sources() and all(s.url.startswith("https://") for s in entry.sources())


def test_the_clip_file_comes_from_open_clips_registry_with_openais_sha256():
    import open_clip
    from open_clip.constants import HF_WEIGHTS_NAME

    openai, hf = load_table().get("RN50x16-openai.pt").sources()
    assert openai.url == open_clip.get_pretrained_url("RN50x16", "openai")
    assert openai.sha256 == OPENAI_RN50X16_SHA256
    hub = open_clip.get_pretrained_cfg("RN50x16", "openai")["hf_hub"].rstrip("/")
    assert hf.url == f"https://huggingface.co/{hub}/resolve/main/{HF_WEIGHTS_NAME}"
    assert hf.sha256_header == HF_SHA256_HEADER and hf.sha256 is None


def test_open_clip_url_rule_matches_open_clips():
    """open_clip.pretrained.download_pretrained_from_url: the folder of an openaipublic URL is the
    sha256; an mlfoundations file name ends in a sha256 prefix; other hosts state none."""
    assert open_clip_url_sha256("https://openaipublic.azureedge.net/clip/models/"
                                f"{OPENAI_RN50X16_SHA256}/RN50x16.pt") == OPENAI_RN50X16_SHA256
    assert open_clip_url_sha256("https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/"
                                "rn50-quickgelu-yfcc15m-455df137.pt") == "455df137"
    assert open_clip_url_sha256("https://example.org/x/RN50.pt") is None


def test_published_sums_and_sizes_of_the_ovsam_files_are_stated():
    table = load_table()
    # The Git LFS pointers of HarborYuan/ovsam_models (Hugging Face commits 1b935e1 / a7abe75).
    assert table.get("sam2clip_vith_rn50x16.pth").published_sums()[0][0].startswith("f2b14b8e")
    assert table.get("sam2clip_vith_rn50x16.pth").size == 536408050
    assert table.get("clip2sam_coco_rn50x16.pth").published_sums()[0][0].startswith("c3825558")
    # Meta publishes no checksum for SAM: none is made up.
    assert table.get("sam_vit_h_4b8939.pth").published_sums() == []


def test_hf_sources_follow_hf_endpoint(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.internal:8080/")
    source = load_table().get("clip2sam_lvis_rn50x16.pth").sources()[0]
    assert source.url == "http://hub.internal:8080/HarborYuan/ovsam_models/resolve/main/clip2sam_lvis_rn50x16.pth"


@pytest.mark.parametrize("value, sha", [
    ('"' + "ab" * 32 + '"', "ab" * 32), ('W/"' + "AB" * 32 + '"', "ab" * 32),
    ('"d3c9a9b0e4"', None),  # a git blob id (non-LFS file): not a sha256
    ("", None), (None, None),
])
def test_etag_header_values(value, sha):
    assert _header_sha256(value) == sha


@pytest.mark.parametrize("files, message", [
    ({"a.pth": {"sources": []}}, "'sources' must be a non-empty list"),
    ({"a.pth": {"sources": [{"ur": "https://x/a"}]}}, "expected exactly one of open_clip, hf, url"),
    ({"a.pth": {"sources": [{"url": "https://x/a"}], "sha256": "1234"}}, "not a sha256"),
    ({"a.pth": {"sources": [{"url": "https://x/a"}], "sha": "ab"}}, "unknown key(s) ['sha']"),
    ({"a.pth": {"sources": [{"url": "https://x/a"}], "size": -3}}, "positive number of bytes"),
    ({"d/a.pth": {"sources": [{"url": "https://x/a"}]}}, "a file name, not a path"),
])
def test_malformed_tables_name_the_entry(tmp_path, files, message):
    path = write_sources(tmp_path / "t.yaml", files)
    with pytest.raises(ValueError, match=r"files\.") as error:
        load_table(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_a_source_of_the_wrong_kind_fails_when_expanded(tmp_path):
    path = write_sources(tmp_path / "t.yaml", {"a.pth": {"sources": [{"url": "ftp://x/a"}]},
                                               "b.pth": {"sources": [{"open_clip": {"model": "RN50x16", "tag": "nope"}}]}})
    table = load_table(path)
    with pytest.raises(ValueError, match="url must be http"):
        table.get("a.pth").sources()
    with pytest.raises(ValueError, match=r"open_clip has no pretrained weights 'RN50x16' / 'nope' .*'openai'"):
        table.get("b.pth").sources()


def test_mirror_sources(tmp_path):
    assert mirror_source("http://nas:8000/w/", "a b.pth").url == "http://nas:8000/w/a%20b.pth"
    assert mirror_source(f"file://{tmp_path}", "a.pth").url == str(tmp_path / "a.pth")
    with pytest.raises(FileNotFoundError, match="mirror folder not found"):
        mirror_source(str(tmp_path / "nope"), "a.pth")


def test_the_table_is_installed_with_the_package():
    setup = (ROOT / "setup.py").read_text()
    assert "data/weights/*.yaml" in setup
    assert yaml.safe_load((ROOT / "ovsam_ros" / "data" / "weights" / "sources.yaml").read_text())["files"]
