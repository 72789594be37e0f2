"""`ovsam weights download` against a loopback HTTP server (test/weights/conftest.py) and mirror
folders: complete downloads, a transfer cut in the middle and resumed, corrupted files refused with
both checksums, 404, unreachable hosts, a full disk, mirrors, and files already present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from weights_server import closed_port, payload, sha256, write_model_yaml, write_sources

from ovsam_ros.cli import main as ovsam
from ovsam_ros.loading import load_specs
from ovsam_ros.weights.checksums import read_sums

SIZE = 300_000  # several 1 MiB-less chunks would be one read: the cut below is mid-file anyway


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = ovsam(["weights", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model(tmp_path):
    """A model YAML naming two weight files in tmp/weights, and the bytes each should hold."""
    weights = tmp_path / "weights"
    data = {"a.pth": payload(SIZE, 1), "b.pth": payload(SIZE // 3, 2)}
    yaml_path = write_model_yaml(tmp_path / "model.yaml", {"sam2clip_checkpoint": weights / "a.pth",
                                                           "clip2sam_checkpoint": weights / "b.pth"})
    return yaml_path, weights, data


def table(tmp_path: Path, server, data: dict[str, bytes], sums: bool = True, **extra) -> Path:
    files = {}
    for name, content in data.items():
        server.files[f"/files/{name}"] = content
        files[name] = {"sources": [{"url": server.url(f"/files/{name}")}], **({"sha256": sha256(content)} if sums else {}),
                       **extra.get(name, {})}
    return write_sources(tmp_path / "sources.yaml", files)


def download(capsys, yaml_path: Path, sources: Path, *more: str) -> tuple[int, str, str]:
    return run(capsys, "download", "--model", str(yaml_path), "--sources", str(sources), "-q", *more)


# ----------------------------------------------------------------------------- the normal path
def test_complete_download_lands_where_the_yaml_reads_verified_and_recorded(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    code, out, err = download(capsys, yaml_path, table(tmp_path, server, data))
    assert code == 0, err
    for name, content in data.items():
        assert (weights / name).read_bytes() == content
        assert f"{name}: done" in out and "sha256 verified against the sources table" in out
    assert sorted(p.name for p in weights.iterdir()) == ["SHA256SUMS", "a.pth", "b.pth"]  # no .part left
    assert read_sums(weights) == {name: sha256(content) for name, content in data.items()}
    # The files are where the loader reads them (its own path rules).
    spec, _ = load_specs(yaml_path)
    assert sorted(spec.weight_files()) == sorted(str(weights / n) for n in data)
    assert spec.missing_weight_files() == []

    # A second run finds them, checks them, fetches nothing.
    before = len(server.requests)
    code, out, _ = download(capsys, yaml_path, table(tmp_path, server, data))
    assert code == 0 and len(server.requests) == before
    assert out.count("present") == 2 and "sha256 matches the sources table" in out


def test_transfer_cut_in_the_middle_is_resumed_by_the_next_run(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    sources = table(tmp_path, server, data)
    server.cut["/files/a.pth"] = 120_000
    code, _, err = download(capsys, yaml_path, sources, "--retries", "0")
    assert code == 1
    assert f"a.pth: transfer ended after 120 kB of 300 kB (120000 of {SIZE} bytes)" in err
    assert "the partial file is kept: run the same command again to resume" in err
    assert not (weights / "a.pth").exists()  # never a half file at the path the loader reads
    assert (weights / "a.pth.part").stat().st_size == 120_000
    assert (weights / "b.pth").read_bytes() == data["b.pth"]  # the other file is unaffected

    code, out, err = download(capsys, yaml_path, sources)
    assert code == 0, err
    assert (weights / "a.pth").read_bytes() == data["a.pth"]
    assert "resumed at 120 kB" in out
    (first, _), (second, if_range) = server.gets("/files/a.pth")
    assert first is None and second == "bytes=120000-" and if_range  # only the rest, and only if unchanged
    assert not (weights / "a.pth.part").exists() and not (weights / "a.pth.part.json").exists()


def test_a_cut_transfer_is_retried_and_resumed_in_the_same_run(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    server.cut["/files/a.pth"] = 50_000
    code, out, err = download(capsys, yaml_path, table(tmp_path, server, data), "--retries", "1")
    assert code == 0, err
    assert "retry 1 of 1" in err and "resumed at 50 kB" in out
    assert (weights / "a.pth").read_bytes() == data["a.pth"]
    assert [r for r, _ in server.gets("/files/a.pth")] == [None, "bytes=50000-"]


def test_a_changed_file_on_the_server_restarts_instead_of_splicing(capsys, tmp_path, server, model):
    """If-Range: the partial file came from another version of the file; the server sends it whole."""
    yaml_path, weights, data = model
    sources = table(tmp_path, server, data)
    server.cut["/files/a.pth"] = 100_000
    download(capsys, yaml_path, sources, "--retries", "0")
    new = payload(SIZE, 99)
    sources = table(tmp_path, server, {**data, "a.pth": new})  # published anew, with its new sum
    code, out, err = download(capsys, yaml_path, sources)
    assert code == 0, err
    assert (weights / "a.pth").read_bytes() == new and "resumed" not in out


def test_corrupted_download_is_refused_with_both_checksums(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    sources = table(tmp_path, server, data)
    bad = bytearray(data["a.pth"])
    bad[1234] ^= 0xFF
    server.files["/files/a.pth"] = bytes(bad)
    code, _, err = download(capsys, yaml_path, sources)
    assert code == 1
    line = next(ln for ln in err.splitlines() if "a.pth: checksum mismatch" in ln)
    assert f"expected sha256 {sha256(data['a.pth'])} (the sources table)" in line
    assert f"got {sha256(bytes(bad))}" in line and "the download was deleted" in line
    assert not (weights / "a.pth").exists() and not (weights / "a.pth.part").exists()
    assert "a.pth" not in read_sums(weights)


def test_404_and_unreachable_host_are_one_line_each(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    port = closed_port()
    sources = write_sources(tmp_path / "sources.yaml", {
        "a.pth": {"sources": [{"url": server.url("/nothing/a.pth")}]},
        "b.pth": {"sources": [{"url": f"http://127.0.0.1:{port}/b.pth"}]},
    })
    code, _, err = download(capsys, yaml_path, sources, "--retries", "0", "--timeout", "5")
    assert code == 1
    lines = err.splitlines()
    assert f"ovsam weights: a.pth: not found (HTTP 404) at {server.url('/nothing/a.pth')}" in lines
    assert [ln for ln in lines if ln.startswith("ovsam weights: b.pth: cannot reach")] == [
        f"ovsam weights: b.pth: cannot reach 127.0.0.1:{port} (Connection refused); check the network or "
        "proxy, or use --mirror / $OVSAM_WEIGHTS_MIRROR"]
    assert lines[-1] == "ovsam weights: 2 of 2 weight file(s) not in place: a.pth, b.pth (reasons above)"
    assert sorted(os.listdir(weights)) == []  # no empty .part files left behind


def test_next_source_is_tried_when_the_first_is_gone(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    server.files["/mirror2/a.pth"] = data["a.pth"]
    server.files["/files/b.pth"] = data["b.pth"]
    sources = write_sources(tmp_path / "sources.yaml", {
        "a.pth": {"sha256": sha256(data["a.pth"]),
                  "sources": [{"url": server.url("/gone/a.pth")}, {"url": server.url("/mirror2/a.pth")}]},
        "b.pth": {"sources": [{"url": server.url("/files/b.pth")}]},
    })
    code, out, err = download(capsys, yaml_path, sources)
    assert code == 0, err
    assert "a.pth: not found (HTTP 404)" in err and (weights / "a.pth").read_bytes() == data["a.pth"]
    # b.pth has no published sum: kept, said so, its sum recorded for later checks.
    assert "b.pth: done" in out and "no published sum to compare; recorded in SHA256SUMS" in out


def test_sha256_stated_by_the_server_header_after_a_redirect_is_checked(capsys, tmp_path, server, model, monkeypatch):
    """Hugging Face: /<repo>/resolve/main/<file> answers 302 with X-Linked-Etag: "<sha256>"; the CDN
    serves the bytes. An `hf` source must check them against that header."""
    yaml_path, weights, data = model
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    for name, content in data.items():
        server.files[f"/cdn/{name}"] = content
        stated = sha256(content) if name == "a.pth" else sha256(b"something else")
        server.redirects[f"/org/repo/resolve/main/{name}"] = (server.url(f"/cdn/{name}"),
                                                             {"X-Linked-Etag": f'"{stated}"'})
    sources = write_sources(tmp_path / "sources.yaml", {
        name: {"sources": [{"hf": {"repo": "org/repo", "file": name}}]} for name in data})
    code, out, err = download(capsys, yaml_path, sources)
    assert code == 1
    assert "a.pth: done, 300 kB; sha256 verified against the X-Linked-Etag header of 127.0.0.1:" in out
    assert (weights / "a.pth").read_bytes() == data["a.pth"]
    assert f"b.pth: checksum mismatch: expected sha256 {sha256(b'something else')} (the X-Linked-Etag header" in err
    assert f"got {sha256(data['b.pth'])}" in err and not (weights / "b.pth").exists()


# ----------------------------------------------------------------------------- files already there
def test_present_files_are_never_replaced_and_a_wrong_one_is_named(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    weights.mkdir()
    (weights / "a.pth").write_bytes(b"my own file")
    (weights / "b.pth").write_bytes(data["b.pth"])
    code, out, err = download(capsys, yaml_path, table(tmp_path, server, data))
    assert code == 1 and server.requests == []
    assert (weights / "a.pth").read_bytes() == b"my own file"
    assert (f"a.pth: present at {weights / 'a.pth'} but its sha256 {sha256(b'my own file')} differs from "
            f"{sha256(data['a.pth'])} (the sources table); move it away and run again") in err
    assert "b.pth: present (100 kB), sha256 matches the sources table" in out


# ----------------------------------------------------------------------------- mirrors
def test_mirror_folder_and_environment_variable(capsys, tmp_path, server, model, monkeypatch):
    yaml_path, weights, data = model
    sources = table(tmp_path, server, data)
    mirror = tmp_path / "usb"
    mirror.mkdir()
    for name, content in data.items():
        (mirror / name).write_bytes(content)
    monkeypatch.setenv("OVSAM_WEIGHTS_MIRROR", str(mirror))
    code, out, err = download(capsys, yaml_path, sources)
    assert code == 0, err
    assert f"using the mirror $OVSAM_WEIGHTS_MIRROR={mirror}" in out
    assert f"a.pth: fetching from {mirror / 'a.pth'}" in out
    assert server.requests == []  # the internet sources were not tried
    assert all((weights / n).read_bytes() == c for n, c in data.items())


def test_mirror_copy_is_checked_against_the_published_sum(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    mirror = tmp_path / "usb"
    mirror.mkdir()
    (mirror / "a.pth").write_bytes(data["a.pth"][:-1] + b"\0")
    code, _, err = download(capsys, yaml_path, table(tmp_path, server, data), "--mirror", str(mirror))
    assert code == 1
    assert f"a.pth: checksum mismatch: expected sha256 {sha256(data['a.pth'])}" in err
    assert f"b.pth: not in the mirror: {mirror / 'b.pth'}" in err
    assert server.requests == []
    assert not weights.exists() or sorted(os.listdir(weights)) == []  # nothing half-copied left


def test_mirror_sha256sums_cover_files_without_a_published_sum(capsys, tmp_path, server, model):
    """A weights folder copied to a mirror carries its SHA256SUMS: files without a published sum are
    checked against it (a copy corrupted on the way is refused)."""
    yaml_path, weights, data = model
    mirror = tmp_path / "usb"
    mirror.mkdir()
    (mirror / "a.pth").write_bytes(data["a.pth"])
    (mirror / "b.pth").write_bytes(b"corrupted on the USB stick")
    (mirror / "SHA256SUMS").write_text(f"{sha256(data['a.pth'])}  a.pth\n{sha256(data['b.pth'])}  b.pth\n")
    code, out, err = download(capsys, yaml_path, table(tmp_path, server, data, sums=False), "--mirror", str(mirror))
    assert code == 1
    assert "a.pth: done" in out and "verified against the mirror's SHA256SUMS" in out
    assert f"b.pth: checksum mismatch: expected sha256 {sha256(data['b.pth'])} (the mirror's SHA256SUMS)" in err


def test_http_mirror_with_the_same_file_names(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    sources = table(tmp_path, server, data)
    for name, content in data.items():
        server.files[f"/internal/weights/{name}"] = content
    code, out, err = download(capsys, yaml_path, sources, "--mirror", server.url("/internal/weights/"))
    assert code == 0, err
    assert {p for p, _, _ in server.requests} == {"/internal/weights/SHA256SUMS", "/internal/weights/a.pth",
                                                  "/internal/weights/b.pth"}
    assert "sha256 verified against the sources table" in out


def test_missing_mirror_folder_is_an_error(capsys, tmp_path, server, model):
    yaml_path, _, data = model
    code, _, err = download(capsys, yaml_path, table(tmp_path, server, data), "--mirror", str(tmp_path / "nope"))
    assert code == 2 and f"mirror folder not found: {tmp_path / 'nope'}" in err


# ----------------------------------------------------------------------------- disk space
def test_disk_full_while_writing_keeps_one_clear_line(capsys, tmp_path, server, model):
    """A real ENOSPC from the kernel: the partial file is /dev/full."""
    yaml_path, weights, data = model
    weights.mkdir()
    (weights / "a.pth.part").symlink_to("/dev/full")
    code, _, err = download(capsys, yaml_path, table(tmp_path, server, data), "--retries", "0")
    assert code == 1
    line = next(ln for ln in err.splitlines() if "a.pth:" in ln)
    assert line.startswith(f"ovsam weights: a.pth: disk full writing {weights / 'a.pth'}.part after 0 B (")
    assert "free some space and run again to resume" in line


def test_not_enough_space_is_found_before_writing(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    sources = table(tmp_path, server, data)
    server.announce["/files/a.pth"] = 1 << 60  # an exabyte: more than any disk
    code, _, err = download(capsys, yaml_path, sources, "--retries", "0")
    assert code == 1
    assert f"a.pth: not enough disk space for {weights / 'a.pth'}: 1153 PB" not in err  # sizes stop at GB
    assert f"a.pth: not enough disk space for {weights / 'a.pth'}: 1152921505 GB to fetch," in err
    assert not (weights / "a.pth.part").exists()


# ----------------------------------------------------------------------------- --dir
def test_dir_puts_the_files_elsewhere_and_writes_a_yaml_that_reads_them(capsys, tmp_path, server, model):
    yaml_path, weights, data = model
    target = tmp_path / "robot_weights"
    code, out, err = download(capsys, yaml_path, table(tmp_path, server, data), "--dir", str(target))
    assert code == 0, err
    assert not weights.exists() and all((target / n).read_bytes() == c for n, c in data.items())
    written = target / "model.yaml"
    assert f"wrote {written}" in out
    spec, _ = load_specs(written)
    assert sorted(spec.weight_files()) == sorted(str((target / n).resolve()) for n in data)
    assert yaml.safe_load(written.read_text())["model"]["preset"] == "tiny"
    # check with the same --dir agrees.
    code, out, _ = run(capsys, "check", "--model", str(yaml_path), "--sources", str(tmp_path / "sources.yaml"),
                       "--dir", str(target))
    assert code == 0 and "all 2 weight files are in place" in out
