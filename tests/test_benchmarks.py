"""Smoke test: `python -m benchmarks --quick` runs every benchmark (timings not judged)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(path.stem for path in (ROOT / "benchmarks").glob("bench_*.py"))


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_every_bench_module_is_discovered():
    completed = _run("--list", timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == BENCHMARKS
    assert BENCHMARKS  # at least one


def test_quick_mode_runs_every_benchmark():
    completed = _run("--quick", timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = completed.stdout.rsplit("summary", 1)[1]
    for name in BENCHMARKS:
        assert name in summary
    assert "crashed" not in summary
    assert "|---" in completed.stdout  # the tables were printed
