"""Pausing Python's cyclic garbage collector around allocation-heavy work."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["collector_paused"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def collector_paused(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``function`` with Python's cyclic garbage collector paused.

    Deriving one group per layer allocates tens of thousands of containers in
    one go (the model walk's tuples, the group dicts and lists). With the
    collector running, its young collections promote the short-lived ones, and
    in a program that has imported torch, every other build of a 10k-layer
    model set off a full collection of the whole heap (over half a second).
    Paused, the temporaries are freed by reference counting first. Nothing is
    lost: the collector runs as usual afterwards.
    """

    @functools.wraps(function)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not gc.isenabled():
            return function(*args, **kwargs)
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            gc.enable()

    return paused
