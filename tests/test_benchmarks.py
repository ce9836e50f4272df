"""Smoke test: `python -m benchmarks --quick` runs every benchmark (timings not judged)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


# The benchmarks that start process groups (a 2-process DDP world; DeepSpeed's
# engine): smoke-tested in the distributed group.
WORLD_BENCHMARKS = ("bench_ddp", "bench_deepspeed")


@pytest.mark.parametrize(
    "names",
    [
        pytest.param([name for name in BENCHMARKS if name not in WORLD_BENCHMARKS], id="one"),
        pytest.param(list(WORLD_BENCHMARKS), id="worlds", marks=pytest.mark.distributed),
    ],
)
def test_quick_mode_runs_every_benchmark(names):
    assert set(WORLD_BENCHMARKS) <= set(BENCHMARKS)
    completed = _run("--quick", *(f"--only={name}" for name in names), timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = completed.stdout.rsplit("summary", 1)[1]
    for name in names:
        assert name in summary
    assert "crashed" not in summary
    assert "|---" in completed.stdout  # the tables were printed


SAVED = ROOT / "docs" / "benchmarks"
# Where benchmark tables are quoted: the README's "Benchmarks" section, and the
# benchmarks page of the docs.
README_SECTION = "\n## Benchmarks\n"
PAGE = ROOT / "docs" / "benchmarks.md"


def _tables(text: str) -> list[str]:
    """The markdown tables in ``text``, each as one string."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    return tables


def _readme_section() -> str:
    section = (ROOT / "README.md").read_text().split(README_SECTION, 1)[1]
    return section.split("\n## ", 1)[0]


def _saved() -> dict[str, str]:
    saved = {path.name: path.read_text() for path in SAVED.glob("bench_*.txt")}
    assert sorted(saved) == [f"{name}.txt" for name in BENCHMARKS]
    return saved


@pytest.mark.parametrize(
    ("where", "text", "at_least"),
    [
        ("README.md", _readme_section, 3),
        ("docs/benchmarks.md", PAGE.read_text, 8),
    ],
)
def test_quoted_benchmark_tables_are_saved_outputs(where, text, at_least):
    """Every table quoted is a benchmark's output, verbatim, as saved by
    ``python -m benchmarks --save docs/benchmarks`` (no number typed by hand)."""
    tables = _tables(text())
    assert len(tables) >= at_least, where
    saved = _saved()
    for table in tables:
        sources = [name for name, output in saved.items() if table in output]
        assert sources, f"{where} table not in any docs/benchmarks/*.txt:\n{table}"


def test_the_docs_name_the_machine_the_saved_outputs_name():
    """The machine the page names is the one every saved output names."""
    machine = re.search(r"Python [\d.]+, torch [^,]+, [^,]+, \d+ CPUs", PAGE.read_text())
    assert machine is not None
    for name, output in _saved().items():
        assert machine.group(0) in output.splitlines()[0], name
