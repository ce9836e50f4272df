"""The default demo, run once per test session and shared by the tests that read it.

tests/test_demo.py and tests/test_cli.py both read it; a fixture in each
calls :func:`default_demo`, which runs the demo the first time only (about
20 seconds: the same run ``python -m mentor_fn demo`` makes).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import pytest
import torch

from mentor_fn._app.demo.run import DEFAULT_OUTPUT, DemoResult, run_demo


@dataclass(frozen=True)
class DemoRun:
    """One default run of the demo, and what it printed."""

    result: DemoResult
    text: str
    """Its output, with paths as ``python -m mentor_fn demo`` prints them in the
    folder holding ``mentor_fn_demo/`` (so docs/demo.md's block can be compared)."""
    threads_before: int
    threads_after: int
    deterministic_before: bool
    deterministic_after: bool


_RUNS: dict[str, DemoRun] = {}


def default_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The session's default run (seed 0, not quiet), made on the first call."""
    if "default" not in _RUNS:
        root = tmp_path_factory.mktemp("demo")
        stream = io.StringIO()
        before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        result = run_demo(output=root / DEFAULT_OUTPUT, stream=stream)
        after = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        text = stream.getvalue().replace(f"{root}{os.sep}", "")
        _RUNS["default"] = DemoRun(result, text, before[0], after[0], before[1], after[1])
    return _RUNS["default"]
