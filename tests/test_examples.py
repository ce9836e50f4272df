"""Every script in examples/ (the README's quick starts) runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_the_quick_starts_are_there():
    names = {path.name for path in EXAMPLES}
    assert set(QUICK_STARTS) <= names


# The longest first, so that the parallel runs finish together.
_SLOW_FIRST = ("transformers_finetune.py", "lightning_finetune.py", "property_test.py")


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """Every example run once, as a script in a fresh process and an empty folder.

    The runs go in parallel, as many as there are CPUs: each spends about as
    long importing torch (and its framework) as running, and one at a time
    they were the suite's longest stretch. One torch thread each, so that
    parallel runs do not spin-wait on each other's cores.
    """
    order = sorted(EXAMPLES, key=lambda path: (path.name not in _SLOW_FIRST, path.name))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(script: Path) -> tuple[Path, object]:
        folder = tmp_path_factory.mktemp(script.stem)
        try:
            completed: object = subprocess.run(
                [sys.executable, str(script)],
                capture_output=True,
                text=True,
                timeout=240,
                cwd=folder,
                env=environment,
            )
        except subprocess.TimeoutExpired as timeout:
            completed = timeout
        return folder, completed

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        results = dict(zip((path.name for path in order), pool.map(run, order)))
    return results


@pytest.mark.parametrize("script", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(script: Path, example_runs: dict[str, tuple[Path, object]]):
    folder, completed = example_runs[script.name]
    assert isinstance(completed, subprocess.CompletedProcess), f"{script.name} timed out"
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip()
    assert list(folder.iterdir()) == []  # leaves nothing behind


README = EXAMPLES[0].parent.parent / "README.md"
QUICK_STARTS = [
    "quickstart.py",
    "curriculum_loop.py",
    "mentee_finetune.py",
    "schedule_loop.py",
    "schedule_fit.py",
    "schedule_recipe.py",
    "vit_hygiene.py",
    "lightning_finetune.py",
    "transformers_finetune.py",
    "property_test.py",
]


def _code(script: Path) -> str:
    """The script without its module docstring."""
    text = script.read_text()
    assert text.startswith('"""')
    return text[text.index('"""', 3) + 3 :].strip("\n")


@pytest.mark.parametrize("name", QUICK_STARTS)
def test_the_readme_shows_each_quick_start_as_it_runs(name: str):
    blocks = re.findall(r"```python\n(.*?)\n```", README.read_text(), flags=re.DOTALL)
    script = EXAMPLES[0].parent / name
    assert _code(script) in blocks, f"README's code for {name} differs from the script"


def test_the_readme_test_command_is_what_ci_runs():
    readme = README.read_text()
    commands = re.findall(r"```bash\n(python -m venv .*?)\n```", readme)
    assert len(commands) >= 2
    install_demo, run_tests = commands[0], commands[1]
    assert install_demo.endswith("pip install -e '.[demo]' && python -m mentor_fn demo")
    ci = (README.parent / ".ci" / "run").read_text()
    for step in run_tests.split(" && ")[2:]:  # after creating and activating the venv
        assert f"\n{step}\n" in ci, step
