"""Catching an optimizer whose parameters are no longer the model's.

That happens when the model is sharded with ``fully_shard`` (or its
parameters or modules are replaced) after the optimizer was built: it would
silently train tensors the model no longer uses. A step pre-hook watches
cheaply: the process's count of module and parameter registrations (any
assignment of a module or parameter, anywhere, changes it) and the registry
lookups that lead to one parameter (``fully_shard`` writes the registries
directly, but replaces every parameter). Only when either moved is the
whole optimizer checked, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .registration_lookups import lookups_hold, registration_lookups
from .structure_watch import structure_generation

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
) -> RemovableHandle:
    """Register a step pre-hook on ``optimizer`` that calls ``check`` when needed.

    Call it when the optimizer's parameters are known to be the model's
    (after a walk). The hook compares the registration count with the one
    it last saw (a module or parameter assigned anywhere changes it) and
    follows the few registry lookups that lead to one parameter of the
    optimizer (sharding swaps every parameter without registering: one
    suffices); together about 1 us. When either moved, ``check`` (the whole
    optimizer's check) runs; once it passes, the new count is the one to
    compare with. Returns the hook's handle: remove it when the optimizer's
    groups are replaced (a rebuild in place registers a new guard).
    """
    # (): no parameter to watch; None: its registration was not found (check at every step).
    lookups: tuple[Any, ...] | None = ()
    for group in optimizer.param_groups:
        if group["params"] and group.get("layers"):
            sentinel, layer = group["params"][0], group["layers"][0]
            lookups = registration_lookups(model, layer, sentinel)
            break
    seen = [structure_generation()]

    def check_before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        generation = structure_generation()
        if generation != seen[0] or lookups is None or not lookups_hold(lookups):
            check()
            seen[0] = generation

    return optimizer.register_step_pre_hook(check_before_step)
