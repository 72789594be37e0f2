"""Checkpoint files from the wild: mmengine-style pickles load without mmengine, and pickles
that would run code are refused before anything runs."""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from ovsam_ros.model.checkpoints import (
    CheckpointError,
    export_reference_checkpoints,
    load_reference_clip2sam,
    load_reference_sam2clip,
    load_sam_decoder,
    load_state_dict_file,
    read_checkpoint,
    save_ovsam,
)
from ovsam_ros.model.build import load_ovsam
from ovsam_ros.model.errors import UnsafeCheckpointError
from ovsam_ros.model.safe_load import ForeignObject, safe_torch_load

FOREIGN = "mmengine.logging.history_buffer"  # mmengine is not installed here (asserted below)


def _save_with_foreign_classes(monkeypatch, path, payload_factory):
    """torch.save a payload whose classes live in a module registered only while saving (and
    its parents), so the file names a module that is not importable when it is read back."""
    parts = FOREIGN.split(".")
    with monkeypatch.context() as m:
        for i in range(1, len(parts) + 1):
            m.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        mod = sys.modules[FOREIGN]

        class HistoryBuffer:  # what mmengine's MessageHub keeps per logged scalar
            def __init__(self, log, count):
                self._log_history = np.asarray(log, dtype=np.float64)
                self._count_history = np.asarray(count)
                self.max_length = 1000000

        HistoryBuffer.__module__, HistoryBuffer.__qualname__ = FOREIGN, "HistoryBuffer"
        mod.HistoryBuffer = HistoryBuffer
        torch.save(payload_factory(HistoryBuffer), path)
    assert FOREIGN not in sys.modules


def _mmengine_checkpoint(state_dict):
    def factory(HistoryBuffer):
        return {
            "meta": {
                "epoch": np.int64(12), "iter": 90000, "lr": np.float32(1e-4), "seed": np.int32(42),
                "mmengine_version": "0.10.3", "cfg": "model = dict(type='OVSAM')",
                "dataset_meta": {"classes": ("person", "bicycle"), "palette": [(220, 20, 60), (119, 11, 32)]},
                "hist": np.arange(6, dtype=np.int16).reshape(2, 3),
            },
            "state_dict": state_dict,
            "message_hub": {
                "log_scalars": {"train/loss": HistoryBuffer([0.5, 0.25], [1, 1])},
                "runtime_info": {"epoch": 12, "iter": 90000},
                "resumed_keys": {"epoch": False},
            },
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                          "param_groups": [{"lr": np.float64(1e-5), "betas": (0.9, 0.999), "params": [0]}]},
            "param_schedulers": [{"last_epoch": 11, "base_lrs": [1e-4]}],
        }
    return factory


def test_mmengine_checkpoint_loads_without_mmengine(tmp_path, monkeypatch):
    assert importlib.util.find_spec("mmengine") is None, "this test pins loading WITHOUT mmengine"
    weights = {"neck_student.a.weight": torch.randn(3, 4), "neck_student.a.bias": torch.randn(3)}
    path = tmp_path / "mm.pth"
    _save_with_foreign_classes(monkeypatch, path, _mmengine_checkpoint(weights))
    assert f"{FOREIGN}.HistoryBuffer" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):  # plain weights-only torch.load
        torch.load(path, weights_only=True)

    obj = read_checkpoint(path)
    meta = obj["meta"]
    assert meta["epoch"] == 12 and isinstance(meta["epoch"], np.int64)
    assert meta["lr"] == np.float32(1e-4) and meta["seed"].dtype == np.int32
    assert meta["dataset_meta"]["classes"] == ("person", "bicycle")
    np.testing.assert_array_equal(meta["hist"], np.arange(6, dtype=np.int16).reshape(2, 3))
    buf = obj["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buf, ForeignObject) and buf.foreign_name == f"{FOREIGN}.HistoryBuffer"
    np.testing.assert_array_equal(buf.state["_log_history"], [0.5, 0.25])  # inert data, nothing called
    assert "mmengine" not in sys.modules  # never imported

    sd = load_state_dict_file(path)  # only the tensors under state_dict
    assert sorted(sd) == sorted(weights)
    for k, v in weights.items():
        assert torch.equal(sd[k], v)


def test_mmengine_wrapped_reference_files_load_into_the_model(tmp_path, monkeypatch, tiny_model_factory):
    make_tiny_model = tiny_model_factory
    src = make_tiny_model("rn", seed=3)
    sam2clip, clip2sam = export_reference_checkpoints(src)
    files = {}
    for name, sd in (("sam2clip", sam2clip), ("clip2sam", clip2sam)):
        files[name] = tmp_path / f"{name}_mm.pth"
        _save_with_foreign_classes(monkeypatch, files[name], _mmengine_checkpoint(sd))
    dst = make_tiny_model("rn", seed=4)
    load_reference_sam2clip(dst, files["sam2clip"])
    load_reference_clip2sam(dst, files["clip2sam"])
    for k, v in dst.sam2clip.state_dict().items():
        assert torch.equal(v, src.sam2clip.state_dict()[k]), k
    assert torch.equal(dst.decoder.label_token.weight, src.decoder.label_token.weight)


class _RunsCommand:
    """A classic malicious pickle: unpickling calls ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    cmd = f"touch {marker}"
    return {
        "os.system": _RunsCommand(os.system, cmd),
        "subprocess.call": _RunsCommand(subprocess.call, ["touch", str(marker)]),
        "builtins.exec": _RunsCommand(exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("kind", ["os.system", "subprocess.call", "builtins.exec"])
def test_pickle_that_runs_a_command_is_refused_and_never_runs(tmp_path, kind, tiny_model):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{kind}.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": _payloads(marker)[kind]}, path)
    for load in (read_checkpoint, load_state_dict_file, lambda p: load_sam_decoder(tiny_model.decoder, p)):
        with pytest.raises(UnsafeCheckpointError, match="Nothing from the file was executed") as info:
            load(path)
        assert "refused" in str(info.value) and str(path) in str(info.value)
        assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        load_ovsam(path)
    assert not marker.exists()
    # The payload is live: an unrestricted unpickler runs it (the check above can fail).
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("target", [subprocess.Popen, eval], ids=["subprocess.Popen", "builtins.eval"])
def test_a_code_running_global_is_refused_even_when_nothing_calls_it(tmp_path, target):
    """A pickle that only NAMES subprocess.Popen or eval (a reference stored as a value, no REDUCE)
    would come back as an inert stand-in; files from the wild are refused up front instead, naming
    the global, before anything is unpickled (the pre-check holds in stand-in mode, not only in
    refuse mode)."""
    path = tmp_path / "named.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"hook": target}}, path)
    [name] = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # as pickled (Popen: commands.Popen)
    assert name.endswith(f".{target.__qualname__}")
    for foreign in ("stand_in", "refuse"):
        with pytest.raises(UnsafeCheckpointError, match=rf"its pickle references {re.escape(name)}, which can only "
                                                        "serve to run code"):
            safe_torch_load(path, foreign=foreign)
    with pytest.raises(UnsafeCheckpointError, match="Nothing from the file was executed"):
        load_state_dict_file(path)


def test_call_into_a_module_that_is_not_installed_is_refused(tmp_path, monkeypatch):
    """A REDUCE on a global we turn into a stand-in is refused too (the stand-in cannot be called)."""
    path = tmp_path / "call.pth"

    def factory(HistoryBuffer):
        return {"state_dict": {"w": torch.ones(1)}, "meta": _RunsCommand(HistoryBuffer, [1.0], [1])}

    _save_with_foreign_classes(monkeypatch, path, factory)
    with pytest.raises(UnsafeCheckpointError, match=rf"calls {FOREIGN}\.HistoryBuffer\(\[1\.0\], \[1\]\)"):
        read_checkpoint(path)


def test_our_own_formats_refuse_foreign_classes(tmp_path, monkeypatch, tiny_model):
    model = tiny_model
    path = tmp_path / "model.pt"
    save_ovsam(model, path)
    assert load_ovsam(path) is not None
    payload = safe_torch_load(path, foreign="refuse")

    def factory(HistoryBuffer):
        return {**payload, "extra": {"hub": HistoryBuffer([1.0], [1])}}

    _save_with_foreign_classes(monkeypatch, path, factory)
    with pytest.raises(UnsafeCheckpointError, match=rf"besides tensors.*{FOREIGN}\.HistoryBuffer"):
        load_ovsam(path)
    with pytest.raises(ValueError, match="foreign"):
        safe_torch_load(path, foreign="import")


def test_unreadable_file_is_a_checkpoint_error(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable PyTorch checkpoint"):
        read_checkpoint(junk)


def test_open_clip_weights_in_an_mmengine_checkpoint_load_through_open_clip(tmp_path, monkeypatch):
    """open_clip reads its weights with torch's plain weights-only unpickler, which refuses the
    foreign classes: the backbone hands it a tensors-only copy read by the safe loader."""
    import open_clip

    from ovsam_ros.model import BackboneConfig, build_backbone
    from ovsam_ros.model.backbone import register_tiny_clip_configs

    register_tiny_clip_configs()
    torch.manual_seed(7)
    source = open_clip.create_model("ovsam-tiny-rn").state_dict()
    path = tmp_path / "epoch_12.pth"
    _save_with_foreign_classes(monkeypatch, path, _mmengine_checkpoint(source))
    clip = build_backbone(BackboneConfig("ovsam-tiny-rn", str(path))).clip
    for k, v in source.items():
        assert torch.equal(clip.state_dict()[k], v), k

    marker = tmp_path / "pwned"
    torch.save({"state_dict": source, "meta": _payloads(marker)["subprocess.call"]}, path)
    with pytest.raises(UnsafeCheckpointError, match="Nothing from the file was executed"):
        build_backbone(BackboneConfig("ovsam-tiny-rn", str(path)))
    assert not marker.exists()
