"""Executing a plan on a live optimizer and its scheduler: patching, or rebuilding, in place.

The :class:`~mentor_fn.Curriculum` decides (with :func:`~mentor_fn.plan`) and
commits (state, flags, step hooks); these functions do what the design page
(docs/design.md, "Executing a plan") asks of the optimizer and scheduler themselves.

A rebuild keeps the optimizer and scheduler objects: the derived groups
replace the old ones inside the optimizer's own ``param_groups`` list, the
carried and fresh per-parameter state replace the old inside its own
``state`` dict, and the scheduler's per-group lists are remapped (nested
schedulers too). So whatever holds those objects (a framework's optimizer
wrapper that copied their attributes, hooks registered on them, the
scheduler's own reference) stays valid. Everything else an optimizer keeps
is either per-parameter state or independent of its groups (defaults, hooks,
profiling names), except in optimizers that cache their groups' contents in
attributes of their own (``torch.optim.LBFGS``'s ``_params``): those are
rebuilt as new objects (:func:`in_place_obstacles` says which, and why).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._core.groups import Halves, groups_of_walk, is_reference_group
from .._core.model_walk import ModelLayers
from .._core.plan import Patch
from .._core.state import CurriculumState
from .lr_schedulers import (
    GROUP_LR_KEYS,
    remap_scheduler_groups,
    retarget_scheduler,
    scale_group,
    scaled_copy,
)
from .optimizer_recipe import OptimizerRecipe
from .optimizers import build_optimizer, fresh_state

__all__ = [
    "apply_patch",
    "in_place_obstacles",
    "rebuild_in_place",
    "rebuilt_optimizer",
    "reference_group",
    "reference_index",
]


def reference_group(lr: float) -> dict[str, Any]:
    """The keys of a Curriculum's parameter-less reference group at global lr ``lr``."""
    return {"params": [], "lr": lr, "layers": (), "coefficient": 1.0}


def reference_index(optimizer: torch.optim.Optimizer) -> int:
    """The position of the optimizer's reference group (the last one there is).

    Raises:
        RuntimeError: the optimizer has none (replaced or rebuilt by hand).
    """
    for index in range(len(optimizer.param_groups) - 1, -1, -1):
        if is_reference_group(optimizer.param_groups[index]):
            return index
    raise RuntimeError(
        "the optimizer has no mentor_fn reference group (was it replaced or rebuilt by hand?); "
        "call build() to derive a new one"
    )


def apply_patch(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    decision: Patch,
    *,
    reactivated: Sequence[torch.Tensor],
    recipe: OptimizerRecipe,
) -> None:
    """Scale the patched groups (scheduler values too) and refresh re-activated parameters.

    ``reactivated`` holds the parameters of ``decision.reactivated``'s
    layers; they get the state a new optimizer gives them.
    """
    fresh = fresh_state(recipe, reactivated)
    for scale in decision.scales:
        scale_group(optimizer, scheduler, scale.group, scale.ratio)
        optimizer.param_groups[scale.group]["coefficient"] = scale.new
    for parameter in reactivated:
        optimizer.state.pop(parameter, None)
        if parameter in fresh:
            optimizer.state[parameter] = fresh[parameter]


def in_place_obstacles(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    """Why ``optimizer`` cannot be rebuilt in place: empty when it can.

    An optimizer that keeps its groups' contents in attributes of its own
    (a group's ``params`` list, parameters; ``torch.optim.LBFGS`` keeps
    ``_params``) would go on using them after its groups were replaced.
    Every other torch optimizer keeps nothing derived from its groups but
    its per-parameter state, which a rebuild replaces.
    """
    groups = optimizer.param_groups
    lists = {id(group["params"]) for group in groups}
    parameters = {id(parameter) for group in groups for parameter in group["params"]}
    held = lists | parameters

    def holds(value: object) -> bool:
        if id(value) in held:
            return True
        if isinstance(value, (list, tuple, set, frozenset)):
            return any(id(item) in held for item in value)
        if isinstance(value, dict):
            return any(id(item) in held for item in (*value, *value.values()))
        return False

    attributes = sorted(
        name
        for name, value in vars(optimizer).items()
        if name not in _OPTIMIZER_OWN and holds(value)
    )
    if not attributes:
        return ()
    return (
        f"optimizer: {type(optimizer).__qualname__} keeps its groups' contents in "
        f"{', '.join(attributes)}, so a new optimizer replaces it (references to the old "
        "one are stale)",
    )


_OPTIMIZER_OWN = frozenset({"param_groups", "state", "defaults"})
"""What every torch optimizer holds per group or per parameter: a rebuild replaces their contents."""


def rebuild_in_place(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    recipe: OptimizerRecipe,
    old: CurriculumState,
    new: CurriculumState,
    walked: ModelLayers,
    halves: Halves | None,
) -> None:
    """Replace the optimizer's groups and state with those ``new`` derives, in the same objects.

    Every group is derived from the reference group (its lr-like values
    scaled by the group's coefficient), so the schedule's progress is kept;
    parameters trainable before and after keep their optimizer state, the
    others get what a new optimizer gives them. What can fail (torch
    checking the newly trainable parameters) happens before anything
    changes; then the optimizer's ``param_groups`` list and ``state`` dict
    get their new contents and the scheduler's per-group lists are remapped.
    """
    derived, sources = _derived_groups(
        optimizer, recipe=recipe, new=new, walked=walked, halves=halves
    )
    carried, newcomers = _carried_state(optimizer, walked, old, new)
    fresh = fresh_state(recipe, newcomers)
    # Committing from here on: nothing below can fail on valid objects.
    state = optimizer.state
    state.clear()
    state.update(carried)
    state.update(fresh)
    optimizer.param_groups[:] = derived
    # A fused optimizer checks its parameters' devices and dtypes at its first
    # step only (torch's private flag); a new one would check the newcomers.
    if getattr(optimizer, "_need_device_dtype_check_for_fused", None) is False:
        optimizer._need_device_dtype_check_for_fused = True  # type: ignore[attr-defined]
    if scheduler is not None:
        remap_scheduler_groups(scheduler, sources)


def rebuilt_optimizer(
    old_optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    recipe: OptimizerRecipe,
    old: CurriculumState,
    new: CurriculumState,
    walked: ModelLayers,
    halves: Halves | None,
) -> torch.optim.Optimizer:
    """:func:`rebuild_in_place` into a new optimizer, the scheduler moved onto it.

    For an optimizer that cannot be rebuilt in place (:func:`in_place_obstacles`).
    What can fail (building the optimizer) happens before anything is
    changed; then the scheduler's per-group values are remapped and it is
    retargeted.
    """
    derived, sources = _derived_groups(
        old_optimizer, recipe=recipe, new=new, walked=walked, halves=halves
    )
    optimizer = build_optimizer(recipe, derived)
    # Committing from here on: nothing below can fail on valid objects.
    carried, _ = _carried_state(old_optimizer, walked, old, new)
    optimizer.state.update(carried)
    if scheduler is not None:
        remap_scheduler_groups(scheduler, sources)
        retarget_scheduler(scheduler, optimizer)
    return optimizer


def _derived_groups(
    optimizer: torch.optim.Optimizer,
    *,
    recipe: OptimizerRecipe,
    new: CurriculumState,
    walked: ModelLayers,
    halves: Halves | None,
) -> tuple[list[dict[str, Any]], list[tuple[int, float]]]:
    """The groups ``new`` derives, each a copy of the optimizer's reference group at its coefficient.

    Returns them (the reference group's copy last) and, per group, the
    scheduler entry it takes: (the reference group's index, its coefficient).
    """
    index = reference_index(optimizer)
    reference = optimizer.param_groups[index]
    groups = groups_of_walk(new, walked, recipe.lr, coalesce=recipe.coalesce, halves=halves)
    template = {key: value for key, value in reference.items() if key != "params"}
    lr_keys = [key for key in GROUP_LR_KEYS if reference.get(key) is not None]
    derived = []
    for group in groups:
        coefficient = group["coefficient"]
        # The group's own keys win: a no-decay half's weight_decay of 0.0.
        entry = {**template, **group}
        for key in lr_keys:
            entry[key] = scaled_copy(reference[key], coefficient)
        derived.append(entry)
    derived.append({**template, "params": []})
    sources = [(index, group["coefficient"]) for group in groups]
    sources.append((index, 1.0))
    return derived, sources


def _carried_state(
    optimizer: torch.optim.Optimizer,
    walked: ModelLayers,
    old_state: CurriculumState,
    new_state: CurriculumState,
) -> tuple[dict[torch.Tensor, Any], list[torch.Tensor]]:
    """The state kept (parameters trainable before and after, with state), and the others
    trainable now (they start with what a new optimizer gives them)."""
    old_trainable = old_state.resolved_trainable()
    new_trainable = new_state.resolved_trainable()
    state = optimizer.state
    carried: dict[torch.Tensor, Any] = {}
    newcomers: list[torch.Tensor] = []
    for position, parameters in enumerate(walked.parameters):
        if not new_trainable[position]:
            continue
        if not old_trainable[position]:
            newcomers.extend(parameters)
            continue
        for parameter in parameters:
            values = state.get(parameter)
            if values:
                carried[parameter] = values
            else:
                newcomers.append(parameter)
    return carried, newcomers
