"""ovsam-evaluate's own inputs, checked before minutes of evaluation (probe findings)."""

from __future__ import annotations

import pytest

from training.evaluate import main


def test_max_images_must_be_positive(capsys):
    """Before: --max-images -1 evaluated all but the last image (a Python slice), 0 meant all."""
    for value in ("-1", "0"):
        with pytest.raises(SystemExit) as exit:
            main(["--model", "shapes", "--annotations", "x.json", "--max-images", value])
        assert exit.value.code == 2 and "--max-images: must be >= 1" in capsys.readouterr().err


def test_an_out_folder_is_refused_before_the_evaluation(tmp_path, capsys, monkeypatch):
    """Before: IsADirectoryError traceback after the whole evaluation had run."""
    import training.evaluate as evaluate

    def must_not_run(*args, **kwargs):
        raise AssertionError("the annotations were read: the --out check came too late")

    monkeypatch.setattr(evaluate, "CocoInstances", must_not_run)
    assert main(["--model", "shapes", "--annotations", "x.json", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path} is a folder" in err and "metrics.json" in err
