"""Catching an optimizer whose parameters are no longer the model's.

That happens when the model is sharded with ``fully_shard`` (or its
parameters are replaced) after the optimizer was built: it would silently
train tensors the model no longer uses. A step pre-hook watches one
parameter cheaply; only when that one moved is the whole optimizer checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._layers import lookups_hold, registration_lookups

__all__ = ["check_parameters_among", "guard_against_stale_parameters"]


def check_parameters_among(optimizer: torch.optim.Optimizer, current: set[int]) -> None:
    """Raise unless every parameter of ``optimizer`` is among ``current`` (their ids).

    Raises:
        RuntimeError: naming the stale parameter's layers and the fix.
    """
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if id(parameter) not in current:
                raise RuntimeError(
                    f"the optimizer holds a parameter (layers {group.get('layers')}) that is "
                    "no longer one of the model's: was the model sharded with fully_shard, or "
                    "its parameters replaced, after build()? Call build() again."
                )


def guard_against_stale_parameters(
    optimizer: torch.optim.Optimizer, model: nn.Module, check: Callable[[], None]
) -> None:
    """Register a step pre-hook on ``optimizer`` that calls ``check`` when needed.

    The hook watches one parameter: sharding or replacing parameters after
    build() swaps all of them, so one suffices. Watching costs the few
    registry lookups that lead to it (about 1 us); only when one of them
    changed is ``check`` (the whole optimizer's check) called.
    """
    for group in optimizer.param_groups:
        if group["params"] and group.get("layers"):
            sentinel, layer = group["params"][0], group["layers"][0]
            break
    else:
        return
    lookups = registration_lookups(model, layer, sentinel)

    def check_before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        if lookups is None or not lookups_hold(lookups):
            check()

    optimizer.register_step_pre_hook(check_before_step)
