"""The random number generators a training run draws from, captured and restored.

A resumed run continues bit-for-bit only if dropout, shuffling and
augmentation draw the same numbers: torch's CPU generator, the CUDA ones,
Python's ``random`` and numpy's global generator (when numpy is in use).
Plain data and tensors only, so a checkpoint can hold them.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RandomStates"]


@dataclass(frozen=True)
class RandomStates:
    """The random number generators a continued run draws from, as saved."""

    torch_cpu: torch.Tensor | None
    """None where the file holds none (a converted torch_mentor checkpoint)."""
    cuda: tuple[torch.Tensor, ...] = ()
    python: tuple[Any, ...] | None = None
    numpy: Mapping[str, Any] | None = None
    """numpy's global generator, when the saving program had imported numpy."""

    @classmethod
    def capture(cls) -> RandomStates:
        """The generators' states now (dropout on a GPU and Python-level
        augmentation draw from the CUDA, ``random`` and numpy ones)."""
        cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else ()
        return cls(torch.get_rng_state(), cuda, random.getstate(), _numpy_state())

    def restore(self) -> None:
        """Set the generators to these states (CUDA ones when the device count
        matches; none of torch's when its CPU state was not saved)."""
        if self.torch_cpu is not None:
            torch.set_rng_state(self.torch_cpu)
        if self.cuda and torch.cuda.is_available() and len(self.cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(list(self.cuda))
        if self.python is not None:
            random.setstate(self.python)
        if self.numpy is not None:
            try:
                import numpy
            except ImportError:
                return  # this program cannot draw from it either
            saved = self.numpy
            numpy.random.set_state(
                (
                    saved["algorithm"],
                    saved["keys"].numpy().astype(numpy.uint32),
                    saved["position"],
                    saved["has_gauss"],
                    saved["cached_gaussian"],
                )
            )


def _numpy_state() -> dict[str, Any] | None:
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None  # not imported: nothing can have drawn from it
    algorithm, keys, position, has_gauss, cached_gaussian = numpy.random.get_state()
    return {
        "algorithm": str(algorithm),
        # Its (624,) uint32 array as a tensor: weights-only loading takes no numpy.
        "keys": torch.from_numpy(keys.astype(numpy.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }
