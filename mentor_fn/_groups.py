"""Deriving optimizer param groups and requires_grad flags from a state (pure).

Setting the flags on a model is not pure: that lives in ``_requires_grad``,
beside the wrapper.

One traversal of the model, with the state's resolved values looked up by
position: linear in the number of layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ._layers import ModelLayers, check_same_layers, walk_model
from ._state import CurriculumState, validate_coefficient

__all__ = [
    "groups_of_walk",
    "is_reference_group",
    "param_groups",
    "requires_grad_map",
    "resolved_coefficients",
    "resolved_frozen",
    "unit_groups_of_walk",
    "walk_for_state",
]


def walk_for_state(state: CurriculumState, model: nn.Module) -> ModelLayers:
    """Walk ``model`` and check that its layers are the state's."""
    if not isinstance(state, CurriculumState):
        raise TypeError(f"expected a CurriculumState, got {type(state).__name__}")
    walked = walk_model(model)
    check_same_layers(state.layers, walked.layers, "the model")
    return walked


def resolved_frozen(state: CurriculumState) -> tuple[bool, ...]:
    """``state.resolved_frozen()``; without frozen rules, all False at once.

    A fresh state (the one a Curriculum derives at its first use) has no rule:
    every layer resolves to the default, and saying so directly saves a pass
    over the layers at every first build.
    """
    return state.resolved_frozen() if state.frozen else (False,) * len(state.layers)


def resolved_coefficients(state: CurriculumState) -> tuple[float, ...]:
    """``state.resolved_coefficients()``; without coefficient rules, all 1.0 at once."""
    return state.resolved_coefficients() if state.coefficients else (1.0,) * len(state.layers)


def validate_lr(lr: object) -> float:
    """Return ``lr`` as a float; it must be real, finite and >= 0 (like a coefficient)."""
    return validate_coefficient(lr, what="lr")


def param_groups(
    state: CurriculumState, model: nn.Module, lr: float, *, coalesce: bool = False
) -> list[dict[str, Any]]:
    """Optimizer param groups for ``model`` under ``state``.

    One group per non-frozen layer that owns at least one parameter, in layer
    order, with ``lr = lr * coefficient``. Each group also carries ``layers``
    (the tuple of layer names it covers) and ``coefficient``; torch keeps such
    extra keys, and :func:`layout_of` reads them back. With ``coalesce=True``,
    layers of equal coefficient share one group (ordered by first appearance):
    fewer groups, faster optimizer steps.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> state = CurriculumState.from_model(model).set_lr_coefficient(0.5, "0")
        >>> optimizer = torch.optim.SGD(param_groups(state, model, lr=0.1))
        >>> [(group["layers"], group["lr"]) for group in optimizer.param_groups]
        [(('0',), 0.05), (('1',), 0.1)]
    """
    global_lr = validate_lr(lr)
    return groups_of_walk(state, walk_for_state(state, model), global_lr, coalesce=coalesce)


def groups_of_walk(
    state: CurriculumState,
    walked: ModelLayers,
    global_lr: float,
    *,
    coalesce: bool = False,
) -> list[dict[str, Any]]:
    """:func:`param_groups` on a model already walked (``walk_for_state``), lr validated."""
    template = {"params": [], "lr": global_lr, "layers": (), "coefficient": 1.0}
    groups, coefficients = unit_groups_of_walk(state, walked, coalesce=coalesce, template=template)
    for group, coefficient in zip(groups, coefficients):
        group["lr"] = global_lr * coefficient
        group["coefficient"] = coefficient
    return groups


def unit_groups_of_walk(
    state: CurriculumState,
    walked: ModelLayers,
    *,
    coalesce: bool,
    template: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[float]]:
    """The groups of :func:`groups_of_walk` as copies of ``template``, and their coefficients.

    Each group is ``template.copy()`` with its own ``params`` and ``layers``;
    every other key (``lr``, ``coefficient``, an optimizer's defaults) is the
    template's. So an optimizer's full group is one allocation of the right
    size, never resized when the template has both keys already: this runs
    once per layer. The second list holds each group's coefficient in
    ``state``, for the caller to apply.
    """
    frozen = resolved_frozen(state)
    coefficients = resolved_coefficients(state)
    layers = walked.layers
    new_group = template.copy
    groups: list[dict[str, Any]] = []
    if coalesce:
        by_coefficient: dict[float, dict[str, Any]] = {}
        for position, parameters in enumerate(walked.parameters):
            if not parameters or frozen[position]:
                continue
            coefficient = coefficients[position]
            group = by_coefficient.get(coefficient)
            if group is None:
                group = new_group()
                group["params"] = []
                group["layers"] = []
                by_coefficient[coefficient] = group
                groups.append(group)
            group["params"].extend(parameters)
            group["layers"].append(layers[position])
        for group in groups:
            group["layers"] = tuple(group["layers"])
        return groups, list(by_coefficient)
    group_coefficients: list[float] = []
    for position, parameters in enumerate(walked.parameters):
        if parameters and not frozen[position]:
            group = new_group()
            group["params"] = list(parameters)
            group["layers"] = (layers[position],)
            groups.append(group)
            group_coefficients.append(coefficients[position])
    return groups, group_coefficients


def is_reference_group(group: Mapping[str, Any]) -> bool:
    """Whether an optimizer group (live, or saved with parameter names) is the reference group.

    A Curriculum's optimizer ends with one group that covers no layer and
    holds no parameter; it follows the scheduler like one flat group at the
    global lr would, and every other group's lr is proportional to its.
    """
    layers = group.get("layers")
    return layers is not None and len(layers) == 0 and not group.get("params")


def requires_grad_map(state: CurriculumState, model: nn.Module) -> dict[str, bool]:
    """Parameter name -> whether it should require grad (its owner is not frozen)."""
    walked = walk_for_state(state, model)
    frozen = dict(zip(walked.layers, state.resolved_frozen()))
    return {name: not frozen[layer] for layer, name, _ in walked.named_parameters()}
