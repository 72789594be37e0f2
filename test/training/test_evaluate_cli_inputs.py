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


def test_nothing_evaluated_is_an_error_naming_the_skips(tmp_path, capsys):
    """Before: a table of '-' and exit 0 when every annotation was skipped (here: all crowd)."""
    import json

    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [4, 4, 20, 20],
                         "area": 400, "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]]}],
        "categories": [{"id": 1, "name": "box"}]}))
    code = main(["--model", "shapes", "--annotations", str(tmp_path / "ann.json"), "--images", str(tmp_path),
                 "--no-progress", "--prompts", "box"])
    err = capsys.readouterr().err
    assert code == 2 and "no instance was evaluated (1 image(s); skipped: " in err and "crowd" in err
