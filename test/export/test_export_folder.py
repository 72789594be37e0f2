"""Issue #24 item 5: an export folder is written whole or not at all, is owned, and is checked on load.

Before: `ovsam export` over an earlier export, killed part-way, left a new image_encoder.onnx with
the old decoder, manifest and model.yaml, which loaded silently and gave other masks; exporting
into a folder holding the user's own model.yaml overwrote it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ovsam_ros import cli
from ovsam_ros.export import onnx_export
from ovsam_ros.export.folder import ExportFolderError, ExportIntegrityError
from ovsam_ros.export.onnx_export import export_onnx
from ovsam_ros.loading import build_predictor
from ovsam_ros.model import OVSAM, OVSAMConfig
from ovsam_ros.prompts import Prompt

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--no-check", "--no-multimask", "--threads", "2"]


def _tiny(seed):
    torch.manual_seed(seed)
    return OVSAM(OVSAMConfig.tiny()).eval()


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def _source_yaml(tmp_path, seed):
    path = tmp_path / f"tiny_seed{seed}.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "tiny", "seed": seed},
                                    "predictor": {"vocabulary": "cup, bottle", "device": "cpu",
                                                  "text_cache_dir": None}}))
    return path


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two CLI exports of different tiny models (seed 0 and seed 1) into new folders: the 'earlier' and
    the 'other' one. (An existing empty folder is test_onnx_export's pytest tmp_path.)"""
    base = tmp_path_factory.mktemp("exports")
    out = {}
    for seed in (0, 1):
        folder = base / f"seed{seed}"
        assert cli.main(["export", "--model", str(_source_yaml(base, seed)), "--out", str(folder), *FAST]) == 0
        out[seed] = folder
    return out


def _copy(folder, to):
    to.mkdir(parents=True)
    for p in folder.iterdir():
        (to / p.name).write_bytes(p.read_bytes())
    return to


def _masks(model_yaml):
    predictor = build_predictor(model_yaml)
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 255, (200, 240, 3), dtype=np.uint8))
    return np.stack([r.mask for r in predictor.predict([Prompt(box=[40, 30, 200, 170])])])


def test_the_manifest_lists_every_file_with_its_sha256(exports):
    folder = exports[0]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert set(manifest["sha256"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert set(manifest["sha256"]) == {"image_encoder.onnx", "decoder.onnx", "text_tower.pt", "model.yaml"}
    for name, digest in manifest["sha256"].items():
        assert digest == _sha(folder / name)  # hashlib over the bytes on disk, not the exporter's own number
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no partial folder left


def test_a_mixed_folder_is_refused_on_load_naming_the_file_and_both_sums(exports, tmp_path):
    """The issue's state: the other export's image encoder with this export's decoder and manifest."""
    mixed = _copy(exports[0], tmp_path / "mixed")
    (mixed / "image_encoder.onnx").write_bytes((exports[1] / "image_encoder.onnx").read_bytes())
    source = yaml.safe_load((mixed / "model.yaml").read_text())
    source["model"]["onnx_dir"] = str(mixed)
    with pytest.raises(ExportIntegrityError) as info:
        build_predictor(source)
    message = str(info.value)
    assert str(mixed / "image_encoder.onnx") in message
    assert _sha(exports[1] / "image_encoder.onnx") in message  # what is there
    assert _sha(exports[0] / "image_encoder.onnx") in message  # what the manifest says
    from ovsam_ros.export.backend import OnnxOVSAM

    with pytest.raises(ExportIntegrityError, match="image_encoder.onnx"):  # built directly, manifest read by it
        OnnxOVSAM(mixed, text_tower=None)


def test_a_failed_export_over_an_earlier_one_changes_nothing(exports, tmp_path, monkeypatch):
    out = _copy(exports[0], tmp_path / "out")
    before = _snapshot(out)
    real = onnx_export._export
    calls = []

    def fail_on_the_decoder(module, args, path, *rest):
        calls.append(Path(path).name)
        if len(calls) == 2:
            raise RuntimeError("simulated failure after the image encoder was written")
        return real(module, args, path, *rest)

    monkeypatch.setattr(onnx_export, "_export", fail_on_the_decoder)
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(_tiny(1), out, check=False, multimask=False, text_tower=False)
    assert calls == ["image_encoder.onnx", "decoder.onnx"]
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # its partial folder removed


def _short_boxes(monkeypatch):
    """A real ORT-vs-PyTorch disagreement: the ONNX decoder's mask boxes one pixel short on the right."""
    from ovsam_ros.export.onnx_export import DecoderGraph

    right = DecoderGraph.mask_boxes

    def short(masks):
        boxes = right(masks)
        return torch.cat([boxes[..., :2], (boxes[..., 2:3] - 1).clamp(min=0), boxes[..., 3:]], dim=-1)

    monkeypatch.setattr(DecoderGraph, "mask_boxes", staticmethod(short))


def test_an_export_failing_its_check_never_replaces_the_earlier_one(exports, tmp_path, monkeypatch, capsys):
    """Before: an export ORT disagreed with was installed over the earlier (good) export, and only the
    exit status said so: a robot restarted on that folder ran the wrong graphs."""
    out = _copy(exports[0], tmp_path / "out")
    before = _snapshot(out)
    _short_boxes(monkeypatch)
    code = cli.main(["export", "--model", str(_source_yaml(tmp_path, 1)), "--out", str(out),
                     "--no-multimask", "--threads", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "ONNX Runtime disagrees with PyTorch" in err and "roi_boxes" in err
    assert f"{out} is unchanged (the earlier export is still there)" in err
    assert _snapshot(out) == before
    aside = tmp_path / "out.check-failed"
    assert str(aside) in err
    manifest = json.loads((aside / "manifest.json").read_text())
    assert manifest["check"]["ok"] is False and "roi_boxes" in manifest["check"]["failures"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.check-failed", "tiny_seed1.yaml"]
    # a passing export then replaces the earlier one as usual; the failed one stays aside until replaced
    monkeypatch.undo()
    assert cli.main(["export", "--model", str(_source_yaml(tmp_path, 1)), "--out", str(out),
                     "--no-multimask", "--threads", "2"]) == 0
    assert _snapshot(out) != before and json.loads((out / "manifest.json").read_text())["check"]["ok"] is True


def test_a_killed_export_leaves_the_earlier_export_as_it_was(exports, tmp_path):
    """A real SIGKILL (no cleanup can run) right after the new image encoder is written."""
    out = _copy(exports[0], tmp_path / "out")
    source = yaml.safe_load((out / "model.yaml").read_text())
    source["model"]["onnx_dir"] = str(out)
    masks_before = _masks(source)
    before = _snapshot(out)
    script = (
        "import os, signal, sys\n"
        "from ovsam_ros import cli\n"
        "from ovsam_ros.export import onnx_export\n"
        "real = onnx_export._export\n"
        "def export(module, args, path, *rest):\n"
        "    if os.path.basename(path) == 'decoder.onnx':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(module, args, path, *rest)\n"
        "onnx_export._export = export\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script, "export", "--model", str(_source_yaml(tmp_path, 1)),
                           "--out", str(out), *FAST], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "image_encoder.onnx written" in proc.stdout  # it was killed part-way, not before starting
    assert _snapshot(out) == before
    np.testing.assert_array_equal(_masks(source), masks_before)
    partial = [p for p in out.parent.iterdir() if p.name.startswith(".out.export-")]
    assert len(partial) == 1 and (partial[0] / "image_encoder.onnx").is_file()  # the kill's leftover, hidden
    # the next export next to it completes, replaces the earlier one and removes the dead run's partial
    assert cli.main(["export", "--model", str(_source_yaml(tmp_path, 1)), "--out", str(out), *FAST]) == 0
    assert _sha(out / "image_encoder.onnx") == _sha(exports[1] / "image_encoder.onnx")
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def test_re_export_replaces_an_earlier_export_and_says_what_was_edited(exports, tmp_path, capsys):
    out = _copy(exports[0], tmp_path / "out")
    with open(out / "model.yaml", "a") as fh:
        fh.write("# my note\n")
    assert cli.main(["export", "--model", str(_source_yaml(tmp_path, 1)), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"replacing the earlier export in {out} (edited since: model.yaml" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert {p.name for p in out.iterdir()} == set(manifest["sha256"]) | {"manifest.json"}
    assert _sha(out / "image_encoder.onnx") == _sha(exports[1] / "image_encoder.onnx")
    assert yaml.safe_load((out / "model.yaml").read_text())["model"]["onnx_dir"] == str(out.resolve())
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # a plain mkdir's mode, not mkdtemp's 0700


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("foreign", [["model.yaml"], ["model.yaml", "notes.txt"], ["weights", "model.yaml"]])
def test_a_folder_an_export_did_not_write_is_refused_and_unchanged(tmp_path, capsys, monkeypatch, foreign):
    out = tmp_path / "mine"
    out.mkdir()
    for name in foreign:
        if name == "weights":
            (out / name).mkdir()
        else:
            (out / name).write_text(f"# the user's own {name}\n")
    before = sorted(os.listdir(out))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr("ovsam_ros.loading.build_model", no_model)
    assert cli.main(["export", "--model", "tiny", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"refusing to export into {out}" in err and ", ".join(sorted(foreign)) in err
    assert sorted(os.listdir(out)) == before and (out / "model.yaml").read_text() == "# the user's own model.yaml\n"
    with pytest.raises(ExportFolderError, match="an export did not write"):
        export_onnx(_tiny(0), out, check=False, multimask=False, text_tower=False)
    assert sorted(os.listdir(out)) == before and sorted(os.listdir(tmp_path)) == ["mine"]


def test_an_export_folder_with_a_users_file_added_is_refused_naming_it(exports, tmp_path):
    out = _copy(exports[0], tmp_path / "out")
    (out / "calibration.yaml").write_text("fx: 1\n")
    with pytest.raises(ExportFolderError, match="it holds calibration.yaml, which the export there did not write"):
        export_onnx(_tiny(1), out, check=False, multimask=False, text_tower=False)
    assert _sha(out / "image_encoder.onnx") == _sha(exports[0] / "image_encoder.onnx")


def test_an_export_by_an_older_version_is_refused_but_still_loads_with_a_warning(exports, tmp_path, caplog):
    out = _copy(exports[0], tmp_path / "old")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["sha256"]
    manifest["format_version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportFolderError, match="older ovsam_ros"):
        export_onnx(_tiny(1), out, check=False, multimask=False, text_tower=False)
    source = yaml.safe_load((out / "model.yaml").read_text())
    source["model"]["onnx_dir"] = str(out)
    assert build_predictor(source) is not None
    assert "no file hashes" in caplog.text
