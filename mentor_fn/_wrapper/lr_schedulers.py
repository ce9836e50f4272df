"""What an lr scheduler holds per optimizer group, and how to change it safely.

torch schedulers keep per-group copies of learning rates (``base_lrs``,
``_last_lr``, ``min_lrs``, ``max_lrs``) and write lr-like keys into the groups
(``initial_lr``, ``max_lr``, ``min_lr``). A coefficient patch must scale all of
them, or a scheduler that recomputes from its base (LambdaLR, the cosine
schedulers, OneCycleLR) silently undoes the coefficient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import wraps
from typing import Any
from weakref import ref

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "GROUP_LR_KEYS",
    "Scheduler",
    "iter_schedulers",
    "remap_scheduler_groups",
    "retarget_scheduler",
    "scale_group",
    "scaled_copy",
]

Scheduler = LRScheduler  # ReduceLROnPlateau is an LRScheduler in torch >= 2.2

# lr-like values a scheduler writes into each param group.
GROUP_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
# Per-group lists on a scheduler holding lr-like values (scaled by a patch).
SCHEDULER_LR_LISTS = ("base_lrs", "_last_lr", "min_lrs", "max_lrs")
# Per-group lists holding other per-group settings (carried, never scaled).
SCHEDULER_OTHER_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")


def iter_schedulers(scheduler: Any) -> Iterator[Any]:
    """The scheduler and, recursively, the children of SequentialLR / ChainedScheduler."""
    yield scheduler
    for child in getattr(scheduler, "_schedulers", ()) or ():
        yield from iter_schedulers(child)


def _scaled(value: Any, ratio: float) -> Any:
    if isinstance(value, torch.Tensor):
        # In place: fused/capturable optimizers hold on to the tensor.
        return value.mul_(ratio)
    return value * ratio


def scale_group(optimizer: torch.optim.Optimizer, scheduler: Any, index: int, ratio: float) -> None:
    """Scale every lr-like value of group ``index`` in the optimizer and scheduler.

    Each list is scaled once, however many schedulers hold it: SequentialLR's
    ``_last_lr`` *is* its current child's list (``get_last_lr()`` returns the
    list itself), so scaling per scheduler would scale it twice.
    """
    group = optimizer.param_groups[index]
    for key in GROUP_LR_KEYS:
        if key in group and group[key] is not None:
            group[key] = _scaled(group[key], ratio)
    if scheduler is None:
        return
    seen: set[int] = set()
    for node in iter_schedulers(scheduler):
        for name in SCHEDULER_LR_LISTS:
            values = getattr(node, name, None)
            if not isinstance(values, list) or id(values) in seen:
                continue
            seen.add(id(values))
            if index < len(values) and values[index] is not None:
                values[index] = _scaled(values[index], ratio)


def remap_scheduler_groups(scheduler: Any, sources: Sequence[tuple[int, float]]) -> None:
    """Rebuild every per-group list of the scheduler for a new group layout.

    ``sources[i] = (old group, factor)``: new group ``i`` takes the entry of old
    group ``old group``, with lr-like values multiplied by ``factor``.
    """
    for node in iter_schedulers(scheduler):
        for name in SCHEDULER_LR_LISTS:
            values = getattr(node, name, None)
            if isinstance(values, list) and values:
                setattr(node, name, [scaled_copy(values[old], factor) for old, factor in sources])
        for name in SCHEDULER_OTHER_LISTS:
            values = getattr(node, name, None)
            if isinstance(values, list) and values:
                setattr(node, name, [values[old] for old, _ in sources])


def scaled_copy(value: Any, factor: float) -> Any:
    """``value * factor``; a tensor is copied first (the original stays untouched)."""
    if isinstance(value, torch.Tensor):
        return value.clone().mul_(factor)
    return value * factor


def retarget_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer) -> None:
    """Point the scheduler (and its children) at a rebuilt optimizer."""
    old = getattr(scheduler, "optimizer", None)
    for node in iter_schedulers(scheduler):
        node.optimizer = optimizer
    if old is not None and hasattr(old, "_opt_called"):
        optimizer._opt_called = old._opt_called  # type: ignore[attr-defined]
    _track_step_called(optimizer)


def _track_step_called(optimizer: torch.optim.Optimizer) -> None:
    # Same bookkeeping as LRScheduler.__init__: lets the scheduler warn when
    # it is stepped before the optimizer.
    if hasattr(optimizer.step, "_wrapped_by_lr_sched"):
        return
    optimizer_ref = ref(optimizer)
    function: Callable[..., Any] = optimizer.step.__func__  # type: ignore[attr-defined]

    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        live = optimizer_ref()
        live._opt_called = True  # type: ignore[union-attr]
        return function.__get__(live, live.__class__)(*args, **kwargs)

    wrapper._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    optimizer.step = wrapper  # type: ignore[method-assign]
