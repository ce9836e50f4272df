"""torch_mentor's optimizer and scheduler state, carried into a mentor_fn Curriculum.

torch_mentor trains with Adam and StepLR. Its optimizer has either one flat
group over every parameter (0.2.2; 0.3.0 without coefficients), frozen ones
included, or one group per trainable layer tagged ``_mentor_layer`` (0.2.3;
0.3.0 after coefficients are set, without Adam's settings). Its state is
keyed by position. Carrying it builds a Curriculum on the converted model in
the same layout (``coalesce=True`` for the flat group; per layer otherwise,
layers frozen after the optimizer was built keeping their inert groups),
loads the moments by parameter (not position) through the optimizer's own
``load_state_dict``, sets each group's saved lr, and gives the scheduler its
saved progress; then the Curriculum's own ``state_dict()`` is what the
Mentee file holds. Whatever cannot be carried is said, with why.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as torch_schedulers

from .._core.groups import is_reference_group
from .._core.state import CurriculumState
from .._wrapper.curriculum import Curriculum
from .._wrapper.qualified_names import qualified_name
from .mentee_values import SchedulerRecipe

__all__ = ["CarriedTraining", "NotCarried", "carry_training", "torch_mentor_default_lr"]

torch_mentor_default_lr = 1e-3
"""torch_mentor's ``create_train_objects`` default lr (a global lr the file cannot tell)."""

_TORCH_MENTOR_KEYS = frozenset({"params", "lr", "initial_lr", "_mentor_layer", "_mentor_coeff"})
_ADAM_STATE_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
_STEP_LR_KEYS = frozenset({"step_size", "gamma", "base_lrs", "last_epoch"})


class NotCarried(Exception):
    """The optimizer state cannot be carried; the message says why."""


@dataclass(frozen=True)
class CarriedTraining:
    """The optimizer and scheduler, as the Mentee file holds them."""

    curriculum: dict[str, Any]
    """``Curriculum.state_dict()`` in the current state, the optimizer built."""
    scheduler_recipe: SchedulerRecipe | None
    notes: tuple[str, ...]
    """Changes worth saying (defaults assumed, the scheduler left out...)."""


def carry_training(
    optimizer_state: Mapping[str, Any],
    scheduler_state: Mapping[str, Any] | None,
    *,
    model: nn.Module,
    state: CurriculumState,
) -> CarriedTraining:
    """Build the Curriculum that continues torch_mentor's optimizer and scheduler.

    Args:
        optimizer_state: torch_mentor's ``optimizer_state`` (checked fields).
        scheduler_state: its ``lr_scheduler_state``, or None.
        model: the converted model (skeleton or copy); it is not trained.
        state: the converted curriculum state (in the per-layer layout the
            parameters on the model itself are frozen: they had no group).

    Raises:
        NotCarried: the state is not torch_mentor's Adam in a layout it makes,
            or does not fit the model.
    """
    groups = list(optimizer_state["param_groups"])
    notes: list[str] = []
    kwargs = _adam_kwargs(groups, optimizer_state["state"], notes)
    flat = _is_flat(groups)
    parameters = _parameters_by_index(groups, model, flat)
    _check_moments(optimizer_state["state"], parameters)
    coefficients = dict(zip(state.layers, state.resolved_coefficients()))
    if flat:
        if any(coefficients[layer] != 1.0 for layer in state.parameter_owners):
            raise NotCarried(
                "its one flat group has one lr, but the file's lr coefficients were never "
                "applied to it (set after the optimizer was built)"
            )
        build_state = CurriculumState(
            state.layers,
            parameter_owners=state.parameter_owners,
            norm_layers=state.norm_layers,
        )
        build_coefficients = [1.0]
    else:
        grouped = {group["_mentor_layer"] for group in groups}
        orphans = [
            layer
            for layer, trains in zip(state.layers, state.resolved_trainable())
            if trains and layer in state.parameter_owners and layer not in grouped
        ]
        if orphans:
            raise NotCarried(
                f"layers {orphans[:5]} are trainable but had no optimizer group (torch_mentor "
                "would rebuild the optimizer to train them)"
            )
        build_state = CurriculumState(
            state.layers,
            frozen={layer: layer not in grouped for layer in state.parameter_owners},
            coefficients=state.coefficients,
            parameter_owners=state.parameter_owners,
            norm_layers=state.norm_layers,
        )
        build_coefficients = [
            float(group.get("_mentor_coeff", coefficients[group["_mentor_layer"]]))
            for group in groups
        ]
    recipe = _step_lr_recipe(scheduler_state, notes)
    global_lr = _global_lr(groups, build_coefficients, scheduler_state if recipe else None)
    curriculum = Curriculum(
        model,
        global_lr,
        optimizer=torch.optim.Adam,
        optimizer_kwargs=kwargs,
        scheduler=None if recipe is None else _step_lr_factory(recipe),
        coalesce=flat,
        state=build_state,
    )
    curriculum.build()
    _load_saved(curriculum, groups, optimizer_state["state"], parameters, build_coefficients)
    if recipe is not None and scheduler_state is not None:
        _load_scheduler(curriculum, scheduler_state)
    try:
        curriculum.update(state)
    except (RuntimeError, ValueError) as error:  # orphans are caught above; this is the net
        raise NotCarried(str(error)) from None
    return CarriedTraining(curriculum.state_dict(), recipe, tuple(notes))


def _adam_defaults() -> dict[str, Any]:
    signature = inspect.signature(torch.optim.Adam)
    return {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if name not in ("params", "lr") and parameter.default is not parameter.empty
    }


def _adam_kwargs(
    groups: list[Mapping[str, Any]], moments: Mapping[int, Any], notes: list[str]
) -> dict[str, Any]:
    """The Adam arguments torch_mentor's groups hold (only those that differ from the defaults)."""
    defaults = _adam_defaults()
    settings = [{k: v for k, v in g.items() if k not in _TORCH_MENTOR_KEYS} for g in groups]
    foreign = sorted({key for setting in settings for key in setting if key not in defaults})
    state_keys = sorted({key for values in moments.values() for key in values})
    if foreign or not set(state_keys) <= _ADAM_STATE_KEYS:
        raise NotCarried(
            "it is not torch_mentor's Adam (its groups hold "
            f"{foreign or 'no other settings'}, its per-parameter state {state_keys}): "
            "create the training objects again in mentor_fn"
        )
    given = [setting for setting in settings if setting]
    if not given:
        notes.append(
            "the optimizer's groups held no Adam settings (torch_mentor 0.3.0 rebuilds its "
            "coefficient groups without them; its own resume then fails with KeyError "
            "'betas'): Adam's defaults, which torch_mentor created it with"
        )
        return {}
    if any(setting != given[0] for setting in given):
        raise NotCarried("its groups have different Adam settings, which torch_mentor never makes")
    return {key: value for key, value in given[0].items() if not _same(value, defaults[key])}


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, (tuple, list)) and isinstance(default, (tuple, list)):
        return tuple(value) == tuple(default)
    return value is default or bool(value == default)


def _is_flat(groups: list[Mapping[str, Any]]) -> bool:
    layers = [group.get("_mentor_layer") for group in groups]
    if all(isinstance(layer, str) for layer in layers):
        return False
    if len(groups) == 1 and layers[0] is None:
        return True
    raise NotCarried(
        f"its {len(groups)} groups are not a layout torch_mentor makes (one flat group, or "
        "one group per layer tagged _mentor_layer)"
    )


def _parameters_by_index(
    groups: list[Mapping[str, Any]], model: nn.Module, flat: bool
) -> dict[int, nn.Parameter]:
    """torch_mentor's positions -> the converted model's parameters."""
    if flat:
        parameters = list(model.parameters())  # what Adam(model.parameters()) numbered
        if list(groups[0]["params"]) != list(range(len(parameters))):
            raise NotCarried(
                f"its flat group holds {len(groups[0]['params'])} parameters, the weights "
                f"{len(parameters)}"
            )
        return dict(enumerate(parameters))
    found: dict[int, nn.Parameter] = {}
    modules = dict(model.named_modules())
    for group in groups:
        layer = group["_mentor_layer"]
        if layer not in modules:
            raise NotCarried(f"a group's layer {layer!r} is not a module of the model")
        owned = [parameter for _, parameter in modules[layer].named_parameters(recurse=False)]
        if len(owned) != len(group["params"]):
            raise NotCarried(
                f"the group of layer {layer!r} holds {len(group['params'])} parameters, the "
                f"layer {len(owned)}"
            )
        found.update(zip(group["params"], owned))
    return found


def _check_moments(moments: Mapping[int, Any], parameters: Mapping[int, nn.Parameter]) -> None:
    for index, values in moments.items():
        if index not in parameters:
            raise NotCarried(f"it holds state for parameter #{index}, which no group holds")
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            value = values.get(key)
            if isinstance(value, torch.Tensor) and value.shape != parameters[index].shape:
                raise NotCarried(
                    f"the moments of parameter #{index} have shape {list(value.shape)}, the "
                    f"parameter {list(parameters[index].shape)}"
                )


def _step_lr_recipe(
    scheduler_state: Mapping[str, Any] | None, notes: list[str]
) -> SchedulerRecipe | None:
    if scheduler_state is None:
        return None
    step_size, gamma = scheduler_state.get("step_size"), scheduler_state.get("gamma")
    if (
        not set(scheduler_state) >= _STEP_LR_KEYS
        or isinstance(step_size, bool)
        or not isinstance(step_size, int)
        or step_size < 1
        or not isinstance(gamma, (int, float))
    ):
        notes.append(
            "lr_scheduler_state: not torch_mentor's StepLR (keys "
            f"{sorted(map(str, scheduler_state))[:8]}): not carried, the run goes on without "
            "a scheduler"
        )
        return None
    return SchedulerRecipe(
        qualified_name(torch_schedulers.StepLR), {"step_size": step_size, "gamma": float(gamma)}
    )


def _step_lr_factory(recipe: SchedulerRecipe) -> Any:
    kwargs = dict(recipe.kwargs)
    return lambda optimizer: torch_schedulers.StepLR(optimizer, **kwargs)


def _global_lr(
    groups: list[Mapping[str, Any]],
    coefficients: list[float],
    scheduler_state: Mapping[str, Any] | None,
) -> float:
    """The lr the optimizer was created with (torch_mentor keeps it nowhere by name)."""
    base_lrs = None if scheduler_state is None else scheduler_state.get("base_lrs")
    if isinstance(base_lrs, list) and len(base_lrs) == 1:
        return float(base_lrs[0])  # the scheduler was made on the flat group
    starts = (
        base_lrs
        if isinstance(base_lrs, list) and len(base_lrs) == len(groups)
        else [group.get("initial_lr", group["lr"]) for group in groups]
    )
    for start, coefficient in zip(starts, coefficients):
        if coefficient > 0 and isinstance(start, (int, float)) and math.isfinite(start):
            return float(start) / coefficient
    return torch_mentor_default_lr


def _load_saved(
    curriculum: Curriculum,
    groups: list[Mapping[str, Any]],
    moments: Mapping[int, Any],
    parameters: Mapping[int, nn.Parameter],
    coefficients: list[float],
) -> None:
    """Give the built optimizer torch_mentor's moments and group lrs."""
    optimizer = curriculum.optimizer
    assert optimizer is not None
    position = {
        id(parameter): index
        for index, parameter in enumerate(p for g in optimizer.param_groups for p in g["params"])
    }
    group_of = {
        id(parameter): number
        for number, group in enumerate(optimizer.param_groups)
        for parameter in group["params"]
    }
    state_dict = optimizer.state_dict()
    state_dict["state"] = {
        position[id(parameters[index])]: dict(values) for index, values in moments.items()
    }
    decay = None
    for group, coefficient in zip(groups, coefficients):
        members = {group_of[id(parameters[index])] for index in group["params"]}
        if len(members) != 1:
            raise NotCarried("a torch_mentor group does not match one group of the layout")
        (number,) = members
        state_dict["param_groups"][number]["lr"] = float(group["lr"])
        if decay is None and coefficient > 0:
            decay = float(group["lr"]) / (curriculum.lr * coefficient)
    for saved, live in zip(state_dict["param_groups"], optimizer.param_groups):
        if is_reference_group(live):
            # The lr one flat group would have now: the decay the groups show.
            saved["lr"] = curriculum.lr * (1.0 if decay is None else decay)
    optimizer.load_state_dict(state_dict)


def _load_scheduler(curriculum: Curriculum, saved: Mapping[str, Any]) -> None:
    """The scheduler's saved progress; its per-group lists follow the new layout."""
    scheduler = curriculum.scheduler
    optimizer = curriculum.optimizer
    assert scheduler is not None and optimizer is not None
    state = scheduler.state_dict()
    for key, value in saved.items():
        if key in state and not isinstance(value, list):
            state[key] = value
    state["_last_lr"] = [float(group["lr"]) for group in optimizer.param_groups]
    scheduler.load_state_dict(state)
