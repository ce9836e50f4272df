"""DistributedDataParallel that survives phase changes.

DDP registers with its reducer only the parameters that require grad when it
is constructed: unfreezing one later silently desynchronizes the ranks, and
freezing one later breaks the next reduction. :func:`wrap_ddp` constructs DDP
with every parameter trainable and ``find_unused_parameters=True``, then
restores the curriculum's flags, so phases can freeze and unfreeze freely;
:func:`check_ddp_wrappers` refuses a wrapper that would break.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakSet

from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["check_ddp_wrappers", "wrap_ddp"]

# Wrappers known to register every parameter with their reducer: made by
# wrap_ddp, or seen with every parameter trainable and unused-parameter
# detection on. Remembered here, by weak reference, not written onto the
# user's object: a later check, when phases have frozen some parameters,
# must still accept them.
_REGISTERS_EVERY_PARAMETER: WeakSet[DistributedDataParallel] = WeakSet()


def wrap_ddp(module: nn.Module, **ddp_kwargs: Any) -> DistributedDataParallel:
    """``DistributedDataParallel(module, ...)`` that survives freezing and unfreezing.

    Every parameter is made trainable while DDP is constructed (so its reducer
    knows them all), with ``find_unused_parameters=True`` (so frozen ones are
    skipped at each step); then the flags are restored. The cost is DDP's
    search for unused parameters at each forward.

    Example:
        >>> # under an initialized process group
        >>> ddp = wrap_ddp(model)                      # doctest: +SKIP
        >>> curriculum = Curriculum(ddp, lr=1e-3)      # doctest: +SKIP
    """
    if ddp_kwargs.get("find_unused_parameters") is False:
        raise ValueError(
            "wrap_ddp needs find_unused_parameters=True: frozen parameters produce no gradient"
        )
    ddp_kwargs["find_unused_parameters"] = True
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(True)
    try:
        wrapped = DistributedDataParallel(module, **ddp_kwargs)
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
    _REGISTERS_EVERY_PARAMETER.add(wrapped)
    return wrapped


def check_ddp_wrappers(model: nn.Module) -> None:
    """Refuse a DDP wrapper that a phase change would silently break.

    Accepted: wrappers made by :func:`wrap_ddp`, or constructed with
    ``find_unused_parameters=True`` while every parameter requires grad (seen
    as every parameter requiring grad now: a check at construction time, before
    any phase freezes anything; the answer is remembered by weak reference).
    Only checks: nothing is written onto the user's wrapper.

    Raises:
        ValueError: naming the trap and the fix.
    """
    for module in model.modules():
        if not isinstance(module, DistributedDataParallel) or module in _REGISTERS_EVERY_PARAMETER:
            continue
        all_trainable = all(parameter.requires_grad for parameter in module.module.parameters())
        if module.find_unused_parameters and all_trainable:
            _REGISTERS_EVERY_PARAMETER.add(module)
            continue
        problem = (
            "it was constructed while some parameters were frozen, and DDP only "
            "synchronizes the parameters that required grad when it was constructed"
            if not all_trainable
            else "it lacks find_unused_parameters=True, without which a frozen layer breaks "
            "the next gradient reduction"
        )
        raise ValueError(
            f"this DistributedDataParallel wrapper breaks on a phase change: {problem}. "
            "Wrap the bare model with mentor_fn.wrap_ddp(model, ...) instead."
        )
