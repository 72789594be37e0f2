"""Every console script answers ``--help`` and argument errors before importing torch, rclpy or
open_clip (seconds of imports, 15 s on a loaded machine, for a usage line). The check is on
``sys.modules`` after the entry function returns, not on time: it holds on any machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', (ROOT / "setup.py").read_text()))
HEAVY = ("torch", "rclpy", "open_clip", "segment_anything")

# Calls the entry function as the installed console script does, once per argv, then reports
# which heavy modules got imported.
PROBE = """
import importlib, sys
module, func = sys.argv[1].split(":")
entry = getattr(importlib.import_module(module), func)
for argv in (["--help"], ["--no-such-option"]):
    sys.argv = ["prog", *argv]
    try:
        code = entry()
    except SystemExit as exit:
        code = exit.code
    print("EXIT", argv[0], code)
print("HEAVY", *[name for name in {heavy!r} if name in sys.modules])
"""


def test_every_console_script_is_probed():
    assert len(SCRIPTS) >= 13 and "ovsam-node" in SCRIPTS and "ovsam-train-stage2" in SCRIPTS


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_and_usage_errors_do_not_import_heavy_modules(script):
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), SCRIPTS[script]],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout and ": error:" in result.stderr
    lines = result.stdout.splitlines()
    assert "EXIT --help 0" in lines and "EXIT --no-such-option 2" in lines, lines[-3:]
    heavy = next(line for line in lines if line.startswith("HEAVY")).split()[1:]
    assert heavy == [], f"{script} --help imported {heavy}"
