"""`ovsam weights check`: each file present/missing, size, sha256 against the published one or
SHA256SUMS, the command that fetches what is missing, and the exit status."""

from __future__ import annotations

import pytest
from weights_server import payload, sha256, write_model_yaml, write_sources

from ovsam_ros.cli import main as ovsam


@pytest.fixture
def setup(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    data = {"a.pth": payload(20_000, 1), "b.pth": payload(5_000, 2), "c.pth": payload(1_000, 3)}
    yaml_path = write_model_yaml(tmp_path / "m.yaml", {"sam2clip_checkpoint": weights / "a.pth",
                                                       "clip2sam_checkpoint": weights / "b.pth",
                                                       "sam_checkpoint": weights / "c.pth"})
    sources = write_sources(tmp_path / "s.yaml", {
        "a.pth": {"sha256": sha256(data["a.pth"]), "size": 20_000, "sources": [{"url": "https://x/a.pth"}]},
        "b.pth": {"sources": [{"url": "https://x/b.pth"}]},
        "c.pth": {"sources": [{"url": "https://x/c.pth"}]},
    })
    return yaml_path, sources, weights, data


def check(capsys, yaml_path, sources, *more):
    code = ovsam(["weights", "check", "--model", str(yaml_path), "--sources", str(sources), *more])
    return code, capsys.readouterr().out


def test_missing_files_fail_and_name_the_download_command(capsys, setup):
    yaml_path, sources, weights, data = setup
    (weights / "a.pth").write_bytes(data["a.pth"])
    code, out = check(capsys, yaml_path, sources)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"model {yaml_path}: 3 weight file(s)"
    assert f"  model.sam2clip_checkpoint  {'ok':<9}  {'20 kB':>8}  {weights / 'a.pth'}" in lines
    assert f"sha256 {sha256(data['a.pth'])}  matches the sources table" in out
    assert f"  model.clip2sam_checkpoint  {'MISSING':<9}  {'-':>8}  {weights / 'b.pth'}" in lines
    assert lines[-1] == (f"2 of 3 missing. Fetch them with: ovsam weights download --model {yaml_path} "
                         f"--sources {sources}")


def test_all_present_passes_and_says_how_each_was_checked(capsys, setup):
    yaml_path, sources, weights, data = setup
    for name, content in data.items():
        (weights / name).write_bytes(content)
    (weights / "SHA256SUMS").write_text(f"{sha256(data['b.pth'])}  b.pth\n")
    code, out = check(capsys, yaml_path, sources)
    assert code == 0, out
    assert "matches SHA256SUMS (recorded when it was downloaded)" in out  # b: no published sum, recorded
    assert f"sha256 {sha256(data['c.pth'])}  no published sha256 to compare" in out  # c: nothing to compare
    assert out.splitlines()[-1] == "all 3 weight files are in place"


def test_a_file_differing_from_its_published_sum_or_size_fails(capsys, setup):
    yaml_path, sources, weights, data = setup
    for name, content in data.items():
        (weights / name).write_bytes(content)
    bad = bytearray(data["a.pth"])
    bad[0] ^= 1
    (weights / "a.pth").write_bytes(bytes(bad))
    code, out = check(capsys, yaml_path, sources)
    assert code == 1
    assert "model.sam2clip_checkpoint  DIFFERS" in out
    assert f"sha256 {sha256(bytes(bad))}  published: {sha256(data['a.pth'])} (the sources table)" in out
    assert "1 of 3 differ from the published file: move them away, then run ovsam weights download" in out
    (weights / "a.pth").write_bytes(data["a.pth"][:-10])  # wrong size: found without hashing
    code, out = check(capsys, yaml_path, sources, "--no-hash")
    assert code == 1 and "size 19990 bytes, published 20000 (the sources table)" in out


def test_bundled_shapes_model_is_in_place(capsys):
    code = ovsam(["weights", "check", "--model", "shapes"])
    out = capsys.readouterr().out
    assert code == 0 and "model.ovsam_checkpoint  ok" not in out  # no published sum: reported, not failed
    assert "unchecked" in out and "the weight file is in place" in out


def test_check_of_the_published_model_in_an_empty_home(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    code = ovsam(["weights", "check"])  # default: rn50x16, the node's default
    out = capsys.readouterr().out
    assert code == 1
    assert f"MISSING           -  {tmp_path}/ovsam_weights/RN50x16-openai.pt" in out
    assert out.splitlines()[-1] == "4 of 4 missing. Fetch them with: ovsam weights download --model rn50x16"
