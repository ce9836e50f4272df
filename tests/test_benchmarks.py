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


SAVED = ROOT / "docs" / "benchmarks"


def _readme_benchmark_tables() -> list[str]:
    """The markdown tables of the README's "Benchmarks" section, each as one string."""
    section = (ROOT / "README.md").read_text().split("\n## Benchmarks\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    tables, current = [], []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    return tables


def test_the_readme_quotes_its_benchmark_tables_from_saved_outputs():
    """Every table the README shows is a benchmark's output, verbatim, as saved by
    ``python -m benchmarks --save docs/benchmarks`` (no number typed by hand)."""
    tables = _readme_benchmark_tables()
    assert len(tables) >= 6
    saved = {path.name: path.read_text() for path in SAVED.glob("bench_*.txt")}
    assert sorted(saved) == [f"{name}.txt" for name in BENCHMARKS]
    for table in tables:
        sources = [name for name, text in saved.items() if table in text]
        assert sources, f"README table not in any docs/benchmarks/*.txt:\n{table}"
