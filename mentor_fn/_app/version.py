"""The installed distribution's version: one home, read from its metadata (``pyproject.toml``)."""

from __future__ import annotations

import importlib.metadata

__all__ = ["VERSION"]

try:
    VERSION = importlib.metadata.version("mentor_fn")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    VERSION = "unknown (not installed)"
