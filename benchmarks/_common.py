"""Helpers shared by the benchmark modules."""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Sequence

import torch


def machine() -> str:
    """One line naming the interpreter, torch and the machine a table came from."""
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"
    )


def quick_and_repeats_arguments(
    module: str,
    description: str,
    argv: Sequence[str] | None,
    *,
    quick_help: str,
    repeats_help: str,
) -> argparse.Namespace:
    """Parse the ``--quick`` / ``--repeats N`` options most benchmarks take.

    ``module`` is the benchmark's module name (the program is ``python -m
    module``); ``description`` its docstring, of which the first paragraph is
    shown. ``--repeats`` must be >= 1 (None when not given).
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=description.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=None, help=repeats_help)
    arguments = parser.parse_args(argv)
    if arguments.repeats is not None and arguments.repeats < 1:
        parser.error("--repeats must be >= 1")
    return arguments
