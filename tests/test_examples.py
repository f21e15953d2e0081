"""The scripts in examples/ run and succeed (they check their own results)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.usefixtures("ckpt_kernel")


@pytest.mark.parametrize("script", ["resume_long_computation.py", "read_old_variable.py"])
def test_example_succeeds(script: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--images-dir", str(tmp_path / "images")],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
