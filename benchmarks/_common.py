"""Helpers shared by the benchmark modules."""

from __future__ import annotations

import os
import platform

import torch


def machine() -> str:
    """One line naming the interpreter, torch and the machine a table came from."""
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"
    )
