"""What differs between the torch versions mentor_fn supports (2.4 to 2.14): one home.

- DTensor (the sharded parameters of FSDP2 and tensor parallelism) is public
  in ``torch.distributed.tensor`` from torch 2.5. torch 2.4 defines it in
  ``torch.distributed._tensor``, and its ``torch.distributed.tensor`` is a
  package without it (imported by ``torch.distributed.tensor.parallel``).

Version differences in the tests (optimizers, FSDP2's public path) are in
``tests/torch_features.py``.
"""

from __future__ import annotations

import sys

import torch

__all__ = ["is_dtensor"]

# Where each torch keeps DTensor, newest first.
_DTENSOR_MODULES = ("torch.distributed.tensor", "torch.distributed._tensor")


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a sharded or replicated distributed tensor).

    No DTensor can exist unless torch's module defining it was imported, so
    nothing is imported here: importing it would cost for nothing.

    Example:
        >>> is_dtensor(torch.zeros(2))
        False
    """
    for name in _DTENSOR_MODULES:
        dtensor = getattr(sys.modules.get(name), "DTensor", None)
        if dtensor is not None:
            return isinstance(tensor, dtensor)
    return False
