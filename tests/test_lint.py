"""The tree stays ruff-clean (lint rules and formatting as configured in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(args):
    pytest.importorskip("ruff")
    res = subprocess.run([sys.executable, "-m", "ruff", *args, str(ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
