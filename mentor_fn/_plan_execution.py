"""Executing a plan on a live optimizer and its scheduler: patching in place, or rebuilding.

The :class:`~mentor_fn.Curriculum` decides (with :func:`~mentor_fn.plan`) and
commits (state, flags, step hooks); these functions do what DESIGN.md's
"Executing a plan" asks of the optimizer and scheduler themselves.
"""

from __future__ import annotations

from typing import Any

import torch

from ._groups import Halves, groups_of_walk, is_reference_group, resolved_trainable
from ._layers import ModelLayers
from ._optimizer import build_optimizer, fresh_state
from ._optimizer_recipe import OptimizerRecipe
from ._plan import Patch
from ._schedulers import (
    GROUP_LR_KEYS,
    remap_scheduler_groups,
    retarget_scheduler,
    scale_group,
    scaled_copy,
)
from ._state import CurriculumState

__all__ = ["apply_patch", "rebuilt_optimizer", "reference_group", "reference_index"]


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
    walked: ModelLayers,
    recipe: OptimizerRecipe,
) -> list[torch.Tensor]:
    """Scale the patched groups (scheduler values too) and refresh re-activated parameters.

    Returns the re-activated parameters, which now hold the state a new
    optimizer gives them.
    """
    reactivated_parameters: list[torch.Tensor] = []
    if decision.reactivated:
        reactivated = set(decision.reactivated)
        reactivated_parameters = [
            parameter for layer, _, parameter in walked.named_parameters() if layer in reactivated
        ]
    fresh = fresh_state(recipe, reactivated_parameters)
    for scale in decision.scales:
        scale_group(optimizer, scheduler, scale.group, scale.ratio)
        optimizer.param_groups[scale.group]["coefficient"] = scale.new
    for parameter in reactivated_parameters:
        optimizer.state.pop(parameter, None)
        if parameter in fresh:
            optimizer.state[parameter] = fresh[parameter]
    return reactivated_parameters


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
    """A new optimizer with the groups ``new`` derives, and the scheduler moved onto it.

    Every group is derived from the old reference group (its lr-like values
    scaled by the group's coefficient), so the schedule's progress is kept;
    parameters trainable before and after keep their optimizer state. What
    can fail (building the optimizer) happens before anything is changed;
    then the scheduler's per-group values are remapped and it is retargeted.
    """
    index = reference_index(old_optimizer)
    reference = old_optimizer.param_groups[index]
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
    optimizer = build_optimizer(recipe, derived)
    # Committing from here on: nothing below can fail on valid objects.
    _carry_state(old_optimizer, optimizer, walked, old, new)
    if scheduler is not None:
        sources = [(index, group["coefficient"]) for group in groups]
        sources.append((index, 1.0))
        remap_scheduler_groups(scheduler, sources)
        retarget_scheduler(scheduler, optimizer)
    return optimizer


def _carry_state(
    old: torch.optim.Optimizer,
    new: torch.optim.Optimizer,
    walked: ModelLayers,
    old_state: CurriculumState,
    new_state: CurriculumState,
) -> None:
    """Keep the per-parameter state of parameters trainable before and after."""
    old_trainable, new_trainable = resolved_trainable(old_state), resolved_trainable(new_state)
    for position, parameters in enumerate(walked.parameters):
        if not (old_trainable[position] and new_trainable[position]):
            continue
        for parameter in parameters:
            values = old.state.get(parameter)
            if values:
                new.state[parameter] = values
