"""Every script in examples/ (the README's quick starts) runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_the_quick_starts_are_there():
    names = {path.name for path in EXAMPLES}
    assert {"quickstart.py", "curriculum_loop.py", "mentee_finetune.py"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path):
    completed = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip()
    assert list(tmp_path.iterdir()) == []  # leaves nothing behind
