"""Every script in examples/ runs as written, and the README and the docs show them
as they run (the docs include the files themselves; the README's copy is compared)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from torch_features import TORCH_VERSION

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
README = ROOT / "README.md"

# Examples of what the installed torch or the installed extras may lack.
NEEDS_TORCH = {
    "distributed.py": ((2, 7), "FSDP2 (fully_shard) runs on CPU from torch 2.7"),
    "torch_mentor_switch.py": ((2, 13), "reading torch_mentor files is measured from torch 2.13"),
}

# The optional frameworks an example may import (each an extra of its own).
FRAMEWORKS = ("lightning", "transformers", "accelerate", "deepspeed")
# Frameworks an example needs without importing them itself (its engine is chosen by name).
NEEDS_MODULES = {
    "transformers_deepspeed.py": ("deepspeed",),
    "lightning_deepspeed.py": ("deepspeed",),
}


def _imported_frameworks(script: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module.split(".")[0])
    return sorted({name for name in found if name in FRAMEWORKS})


def _skip_reason(script: Path) -> str | None:
    """Why ``script`` cannot run here, or None."""
    version, reason = NEEDS_TORCH.get(script.name, ((0, 0), ""))
    if version > TORCH_VERSION:
        return reason
    for framework in (*_imported_frameworks(script), *NEEDS_MODULES.get(script.name, ())):
        if importlib.util.find_spec(framework) is None:
            return f"needs {framework}, not installed"
    return None


# Examples that start 2-process worlds (or their launchers): the distributed group.
WORLD_EXAMPLES = (
    "deepspeed_loop.py",
    "transformers_deepspeed.py",
    "lightning_deepspeed.py",
    "lightning_distributed.py",
    "transformers_distributed.py",
    "distributed.py",
)
# The longest first, so that the parallel runs finish together.
_SLOW_FIRST = (
    *WORLD_EXAMPLES,
    "transformers_finetune.py",
    "lightning_finetune.py",
    "property_test.py",
)


def _run_in_parallel(
    scripts: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, object]]:
    """Each script run once, in a fresh process and an empty folder.

    The runs go in parallel, as many as there are CPUs: each spends about as
    long importing torch (and its framework) as running, and one at a time
    they were the suite's longest stretch. One torch thread each, so that
    parallel runs do not spin-wait on each other's cores.
    """
    order = sorted(
        (path for path in scripts if _skip_reason(path) is None),
        key=lambda path: (
            _SLOW_FIRST.index(path.name) if path.name in _SLOW_FIRST else len(_SLOW_FIRST),
            path.name,
        ),
    )
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
        return dict(zip((path.name for path in order), pool.map(run, order)))


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """The one-process examples, each run once as a script."""
    return _run_in_parallel(
        [path for path in EXAMPLES if path.name not in WORLD_EXAMPLES], tmp_path_factory
    )


@pytest.fixture(scope="module")
def world_example_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, object]]:
    """The examples that start 2-process worlds, each run once as a script."""
    return _run_in_parallel(
        [path for path in EXAMPLES if path.name in WORLD_EXAMPLES], tmp_path_factory
    )


def _check_run(script: Path, runs: dict[str, tuple[Path, object]]) -> None:
    reason = _skip_reason(script)
    if reason is not None:
        pytest.skip(reason)
    folder, completed = runs[script.name]
    assert isinstance(completed, subprocess.CompletedProcess), f"{script.name} timed out"
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip()
    assert list(folder.iterdir()) == []  # leaves nothing behind


ONE_PROCESS = [path for path in EXAMPLES if path.name not in WORLD_EXAMPLES]
IN_WORLDS = [path for path in EXAMPLES if path.name in WORLD_EXAMPLES]


@pytest.mark.parametrize("script", ONE_PROCESS, ids=[path.name for path in ONE_PROCESS])
def test_example_runs(script: Path, example_runs: dict[str, tuple[Path, object]]):
    _check_run(script, example_runs)


@pytest.mark.distributed
@pytest.mark.parametrize("script", IN_WORLDS, ids=[path.name for path in IN_WORLDS])
def test_example_runs_in_a_world(script: Path, world_example_runs: dict[str, tuple[Path, object]]):
    _check_run(script, world_example_runs)


def test_the_world_examples_exist():
    assert sorted(path.name for path in IN_WORLDS) == sorted(WORLD_EXAMPLES)


def _code(script: Path) -> str:
    """The script without its module docstring."""
    text = script.read_text()
    assert text.startswith('"""')
    return text[text.index('"""', 3) + 3 :].strip("\n")


def test_the_readme_shows_its_example_as_it_runs():
    """Each Python block of the README is an example's code, verbatim."""
    blocks = re.findall(r"```python\n(.*?)\n```", README.read_text(), flags=re.DOTALL)
    codes = {_code(script): script.name for script in EXAMPLES}
    assert blocks, "the README shows no example"
    for block in blocks:
        assert block in codes, f"README block is no example's code:\n{block[:300]}"
    assert codes.get(blocks[0]) == "gradual_unfreezing.py"


DOCS = ROOT / "docs"
INCLUDE = re.compile(r"```\{literalinclude\} \.\./examples/(\S+)\n```")


def test_the_docs_include_examples_that_exist():
    """The guides show code by including the example files themselves."""
    included = {name for page in DOCS.rglob("*.md") for name in INCLUDE.findall(page.read_text())}
    assert included, "no page includes an example"
    assert included <= {path.name for path in EXAMPLES}


# The guides written with their examples: each includes these files.
GUIDE_EXAMPLES = {
    "getting-started.md": ["quickstart.py"],
    "functional-core.md": ["quickstart.py"],
    "curriculum.md": ["curriculum_loop.py"],
    "mentee.md": ["mentee_finetune.py"],
    "schedules.md": [
        "gradual_unfreezing.py",
        "schedule_loop.py",
        "schedule_fit.py",
        "schedule_recipe.py",
    ],
    "hygiene.md": ["vit_hygiene.py"],
    "testing.md": ["property_test.py"],
    "scaling-out.md": ["distributed.py"],
    "integrations.md": [
        "lightning_finetune.py",
        "lightning_distributed.py",
        "lightning_deepspeed.py",
        "transformers_finetune.py",
        "transformers_distributed.py",
        "transformers_deepspeed.py",
    ],
    "deepspeed.md": ["deepspeed_loop.py"],
    "torch-mentor.md": ["torch_mentor_switch.py"],
}


@pytest.mark.parametrize("page", sorted(GUIDE_EXAMPLES))
def test_each_guide_includes_its_examples(page: str):
    assert INCLUDE.findall((DOCS / page).read_text()) == GUIDE_EXAMPLES[page]


@pytest.mark.parametrize("page", sorted(GUIDE_EXAMPLES))
def test_guides_paste_no_code(page: str):
    """Code in a guide comes from an example file (run above), never a pasted copy."""
    assert "```python" not in (DOCS / page).read_text()
