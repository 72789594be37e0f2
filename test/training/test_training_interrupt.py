"""Ctrl-C in a training command: one line saying what is kept and how to go on (the probe saw a
KeyboardInterrupt traceback from wherever the loop was), exit status 130 as a shell expects."""

from __future__ import annotations

import pytest

from training import stage1


def test_ctrl_c_says_how_to_continue_instead_of_a_traceback(monkeypatch, tmp_path, capsys):
    def interrupted(cfg, resume, quiet, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage1, "train", interrupted)
    monkeypatch.delenv("OVSAM_TRACEBACK", raising=False)
    try:
        code = stage1.main(["--config", "stage1_tiny", "--output-dir", str(tmp_path / "run")])
    except KeyboardInterrupt:  # caught here: escaping would stop the whole pytest session
        pytest.fail("Ctrl-C escaped from the training command as a traceback")
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert f"stopped (Ctrl-C). The complete checkpoints in {tmp_path / 'run'}/checkpoints are kept" in err
    assert "--resume" in err
