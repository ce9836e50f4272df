"""Every ``>>>`` example in the package runs, and shows what it says it shows."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import mentor_fn

PACKAGE = Path(mentor_fn.__file__).parent


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


# The frameworks the adapters import (optional extras).
FRAMEWORKS = ("lightning", "transformers", "accelerate", "deepspeed")


def import_module(module_name: str) -> object:
    """The module; one that needs a framework that is not installed skips."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        missing = (error.name or "").split(".")[0]
        if missing in FRAMEWORKS or any(f"needs {name}" in str(error) for name in FRAMEWORKS):
            pytest.skip(f"{module_name} needs a framework that is not installed ({error})")
        raise


def examples_in(module_name: str) -> int:
    try:
        module = import_module(module_name)
    except pytest.skip.Exception:
        return 0
    finder = doctest.DocTestFinder()
    return sum(len(test.examples) for test in finder.find(module))


@pytest.mark.parametrize("module_name", [name for name in module_names()])
def test_docstring_examples_run(module_name, one_torch_thread):
    module = import_module(module_name)
    failed, attempted = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert failed == 0, f"{failed} of {attempted} examples failed in {module_name}"


def test_the_examples_are_many():
    """The check above finds what it runs: most public modules carry examples."""
    assert sum(examples_in(name) for name in module_names()) > 100
