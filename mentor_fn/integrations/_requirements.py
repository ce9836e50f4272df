"""Clear ImportErrors for the frameworks the adapters need (optional extras)."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

__all__ = ["require"]


def require(module: str, *, extra: str, minimum: str, adapter: str) -> ModuleType:
    """Import ``module``, or raise an ImportError saying what to install.

    The hint names the framework itself (``pip install 'lightning>=2.2'``),
    which works however mentor_fn was installed, and the ``extra`` that
    brings it.

    Raises:
        ImportError: ``module`` is not installed, or older than ``minimum``
            (its top-level package's ``__version__``).
    """
    top = module.split(".")[0]
    hint = f"pip install '{top}>={minimum}' (the {extra!r} extra of mentor_fn)"
    try:
        imported = importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{adapter} needs {top} >= {minimum}, which is not installed: {hint}"
        ) from error
    version = getattr(importlib.import_module(top), "__version__", "")
    if _release(version) < _release(minimum):
        raise ImportError(f"{adapter} needs {top} >= {minimum}, found {version}: {hint}")
    return imported


def _release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version string: ``"2.6.0rc1"`` -> ``(2, 6, 0)``."""
    numbers = re.findall(r"\d+", version.split("+")[0])[:3]
    return tuple(int(number) for number in numbers)
