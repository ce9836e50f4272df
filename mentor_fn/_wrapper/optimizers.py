"""Building optimizers in linear time, and their state keyed by parameter name.

torch's constructor adds groups one at a time and re-checks every earlier
group for duplicates (quadratic in groups), and ``Optimizer.load_state_dict``
scans a list per saved entry (quadratic in parameters). Here both are linear:
the optimizer is constructed on one flat group (torch validates every
parameter once), then split into the derived groups, with one set-based
duplicate check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import torch

from .optimizer_recipe import OptimizerRecipe

__all__ = [
    "build_optimizer",
    "fresh_state",
    "load_optimizer_state",
    "optimizer_on_one_group",
    "optimizer_state_by_name",
    "prime_optimizer_state",
]


def build_optimizer(
    recipe: OptimizerRecipe, groups: Sequence[Mapping[str, Any]]
) -> torch.optim.Optimizer:
    """``recipe.optimizer_class(groups, lr=recipe.lr, **recipe.kwargs)`` in linear time.

    Every group gets the optimizer's defaults for the keys it does not set,
    exactly as torch's ``add_param_group`` would.

    Raises:
        ValueError: a parameter appears in more than one group.
    """
    all_parameters = list(chain.from_iterable([group["params"] for group in groups]))
    if len(set(map(id, all_parameters))) != len(all_parameters):
        seen: set[int] = set()
        for number, group in enumerate(groups):
            for parameter in group["params"]:
                if id(parameter) in seen:
                    raise ValueError(
                        f"a parameter of shape {tuple(parameter.shape)} appears in more than "
                        f"one parameter group (again in group {number})"
                    )
                seen.add(id(parameter))
    optimizer = optimizer_on_one_group(recipe, all_parameters, group_count=len(groups))
    # {**template, **group, "params": ...}, faster: this runs once per group.
    template = optimizer.param_groups[0]
    split = []
    for group in groups:
        merged = template.copy()
        merged.update(group)
        merged["params"] = list(group["params"])
        split.append(merged)
    optimizer.param_groups = split
    return optimizer


def optimizer_on_one_group(
    recipe: OptimizerRecipe, parameters: Sequence[torch.Tensor], *, group_count: int = 1
) -> torch.optim.Optimizer:
    """The recipe's optimizer on one flat group of ``parameters`` (each once).

    torch validates every parameter once (and Adagrad initialises its state).
    A caller that splits it replaces ``param_groups`` with ``group_count``
    groups, each with its own keys and this group's values (the optimizer's
    defaults) for the others, as ``add_param_group`` would make them; a
    scratch optimizer (probes, fresh state) keeps its one group.

    Raises:
        ValueError: several groups for LBFGS, which supports only one.
    """
    if group_count > 1 and issubclass(recipe.optimizer_class, torch.optim.LBFGS):
        raise ValueError("torch.optim.LBFGS supports a single parameter group only")
    return recipe.optimizer_class(
        [{"params": parameters}],
        lr=recipe.lr,  # type: ignore[call-arg]  # every torch optimizer takes lr
        **recipe.kwargs,
    )


def fresh_state(
    recipe: OptimizerRecipe, parameters: Sequence[torch.Tensor]
) -> dict[torch.Tensor, dict[str, Any]]:
    """The per-parameter state a new optimizer gives ``parameters``.

    Empty for lazy optimizers (Adam, SGD, ...); Adagrad initialises its sums in
    the constructor, so "fresh" means what its constructor writes.
    """
    if not parameters:
        return {}
    scratch = optimizer_on_one_group(recipe, list(parameters))
    return {
        parameter: scratch.state[parameter]
        for parameter in parameters
        if parameter in scratch.state
    }


def optimizer_state_by_name(
    optimizer: torch.optim.Optimizer, names: Mapping[int, str]
) -> dict[str, Any]:
    """The optimizer's groups and per-parameter state, parameters named.

    ``names`` maps ``id(parameter)`` to its name. Tensors are referenced, not
    copied, as in ``Optimizer.state_dict``.
    """
    groups = []
    for group in optimizer.param_groups:
        entry = {key: value for key, value in group.items() if key != "params"}
        entry["params"] = [names[id(parameter)] for parameter in group["params"]]
        groups.append(entry)
    state = {
        names[id(parameter)]: dict(values)
        for parameter, values in optimizer.state.items()
        if id(parameter) in names and values
    }
    return {"param_groups": groups, "state": state}


def load_optimizer_state(
    recipe: OptimizerRecipe, saved: Mapping[str, Any], parameters: Mapping[str, torch.Tensor]
) -> torch.optim.Optimizer:
    """A new optimizer in exactly the saved layout, with the saved state.

    Linear in the number of parameters. Saved tensors are copied (cast to each
    parameter's dtype and device as ``Optimizer.load_state_dict`` does), so the
    new optimizer shares no memory with ``saved``.

    Raises:
        ValueError: malformed data, or names that are not parameters of the model.
    """
    if not isinstance(saved, Mapping) or set(saved) != {"param_groups", "state"}:
        raise ValueError("malformed optimizer state: expected keys 'param_groups' and 'state'")
    unknown = [
        name
        for group in saved["param_groups"]
        for name in group.get("params", ())
        if name not in parameters
    ]
    unknown += [name for name in saved["state"] if name not in parameters]
    if unknown:
        raise ValueError(f"optimizer state names unknown parameters: {unknown[:8]}")
    groups = [
        {**group, "params": [parameters[name] for name in group["params"]]}
        for group in saved["param_groups"]
    ]
    optimizer = build_optimizer(recipe, groups)
    group_of = {
        id(parameter): group for group in optimizer.param_groups for parameter in group["params"]
    }
    for name, values in saved["state"].items():
        parameter = parameters[name]
        group = group_of.get(id(parameter), {})
        keeps_step_on_host = not (group.get("fused") or group.get("capturable"))
        optimizer.state[parameter] = {
            key: _cast(value, parameter, keep_as_is=key == "step" and keeps_step_on_host)
            for key, value in values.items()
        }
    return optimizer


def prime_optimizer_state(
    optimizer: torch.optim.Optimizer, parameters: Sequence[torch.Tensor]
) -> None:
    """Give ``parameters`` the optimizer state a step would, without moving anything.

    Loaders that write saved values into existing state in place (DCP, a
    framework's sharded checkpoint) need that state to exist first. One step
    at lr 0 on zero gradients, for ``parameters`` only (frozen ones included,
    which is why their flags are set for it); flags, gradients and lrs are
    restored afterwards, and no parameter moves.
    """
    priming = {id(parameter) for parameter in parameters}
    if not priming:
        return
    flags = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            flags.append((parameter, parameter.requires_grad, parameter.grad))
            if id(parameter) in priming:
                parameter.requires_grad_(True)
                parameter.grad = torch.zeros_like(parameter)
            else:
                parameter.grad = None
    learning_rates = [group["lr"] for group in optimizer.param_groups]
    try:
        for group in optimizer.param_groups:
            lr = group["lr"]
            group["lr"] = torch.zeros_like(lr) if isinstance(lr, torch.Tensor) else 0.0
        with torch.no_grad():
            optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, learning_rates, strict=True):
            group["lr"] = lr
        for parameter, flag, grad in flags:
            parameter.requires_grad_(flag)
            parameter.grad = grad


def _cast(value: Any, parameter: torch.Tensor, *, keep_as_is: bool) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if keep_as_is:
        return value.clone()
    if value.is_floating_point():
        return value.to(dtype=parameter.dtype, device=parameter.device, copy=True)
    return value.to(device=parameter.device, copy=True)
