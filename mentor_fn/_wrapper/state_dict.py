"""A Curriculum's state dict: writing it, and reading it back before anything changes.

:meth:`Curriculum.state_dict` and :meth:`Curriculum.load_state_dict` are thin:
the wrapper passes its values in and commits what comes back. Everything that
can fail (a malformed field, another model, another optimizer or scheduler,
callable weight-decay rules that were not passed again) fails here, while the
Curriculum is still untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .._core.model_walk import ModelLayers
from .._core.state import CurriculumState
from .load_checks import (
    check_saved_layout,
    check_saved_optimizer,
    check_saved_scheduler,
    scheduler_classes,
)
from .optimizer_recipe import OptimizerRecipe
from .optimizers import load_optimizer_state, optimizer_state_by_name

__all__ = ["Restored", "curriculum_state_dict", "restore", "saved_state"]

FORMAT_NAME = "mentor_fn.Curriculum"
FORMAT_VERSION = 1
_FIELDS = ("state", "recipe", "optimizer", "scheduler")


def curriculum_state_dict(
    state: CurriculumState,
    *,
    recipe: OptimizerRecipe,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    walked: ModelLayers | None,
) -> dict[str, Any]:
    """The plain data of a Curriculum (see :meth:`Curriculum.state_dict`).

    ``walked`` names the optimizer's parameters (the bare model's names); it
    is needed only when there is an optimizer.
    """
    optimizer_state = None
    if optimizer is not None:
        assert walked is not None
        names = {id(parameter): name for _, name, parameter in walked.named_parameters()}
        optimizer_state = optimizer_state_by_name(optimizer, names)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "state": state.to_dict(),
        "recipe": recipe.to_dict(),
        "optimizer": optimizer_state,
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scheduler_classes": None if scheduler is None else scheduler_classes(scheduler),
    }


def saved_state(state_dict: object) -> CurriculumState:
    """The curriculum state a state dict holds, after checking its format and fields.

    Raises:
        ValueError: not a Curriculum state dict, another version, a field
            missing, or a malformed ``state`` field.
    """
    if not isinstance(state_dict, Mapping) or state_dict.get("format") != FORMAT_NAME:
        raise ValueError("not a mentor_fn Curriculum state dict (format key missing or wrong)")
    if state_dict.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"unsupported Curriculum state dict version {state_dict.get('version')!r}; "
            f"this mentor_fn reads version {FORMAT_VERSION}"
        )
    missing = [field for field in _FIELDS if field not in state_dict]
    if missing:
        raise ValueError(
            f"malformed Curriculum state dict: field(s) {', '.join(map(repr, missing))} missing"
        )
    try:
        return CurriculumState.from_dict(state_dict["state"])
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"field 'state': {error}") from None


@dataclass(frozen=True)
class Restored:
    """What loading a state dict gives a Curriculum to commit.

    Attributes:
        recipe: the saved recipe (lr, kwargs, layout, weight-decay rules).
        optimizer: the optimizer in its saved layout and state, or None.
        scheduler: the scheduler with its saved state, or None.
    """

    recipe: OptimizerRecipe
    optimizer: torch.optim.Optimizer | None
    scheduler: Any


def restore(
    state_dict: Mapping[str, Any],
    *,
    state: CurriculumState,
    walked: ModelLayers,
    recipe: OptimizerRecipe,
    make_scheduler: Callable[[torch.optim.Optimizer], Any] | None,
) -> Restored:
    """Rebuild the saved recipe, optimizer and scheduler; nothing live is touched.

    Args:
        state_dict: passed :func:`saved_state` already; ``state`` is its state
            with the layer kinds of the model as ``walked``.
        state: the state being loaded.
        walked: the model, walked.
        recipe: the live Curriculum's recipe: its optimizer class, and its
            callable ``no_weight_decay`` rules (saved by name only).
        make_scheduler: the Curriculum's scheduler factory (checked), or None.

    Raises:
        ValueError: naming the field (see :meth:`Curriculum.load_state_dict`).
    """
    try:
        saved_recipe = OptimizerRecipe.from_dict(
            state_dict["recipe"],
            optimizer_class=recipe.optimizer_class,
            callables=[rule for rule in recipe.no_weight_decay if not isinstance(rule, str)],
        )
    except ValueError as error:
        raise ValueError(f"field 'recipe': {error}") from None
    saved_optimizer, saved_scheduler = state_dict["optimizer"], state_dict["scheduler"]
    if saved_optimizer is None and saved_scheduler is not None:
        raise ValueError("field 'scheduler': scheduler state without optimizer state")
    if saved_scheduler is not None and make_scheduler is None:
        raise ValueError(
            "field 'scheduler': the state dict holds scheduler state, but this Curriculum "
            "has no scheduler factory"
        )
    if saved_optimizer is not None and saved_scheduler is None and make_scheduler is not None:
        raise ValueError(
            "field 'scheduler': the state dict holds no scheduler state, but this "
            "Curriculum has a scheduler factory"
        )
    saved_classes = state_dict.get("scheduler_classes")
    if saved_classes is not None and not (
        isinstance(saved_classes, list) and all(isinstance(c, str) for c in saved_classes)
    ):
        raise ValueError(
            f"field 'scheduler_classes': expected a list of class names, got {saved_classes!r}"
        )
    if saved_optimizer is None:
        return Restored(saved_recipe, None, None)
    named = list(walked.named_parameters())
    parameters = {name: parameter for _, name, parameter in named}
    check_saved_optimizer(saved_optimizer, parameters, saved_recipe)
    trainable = dict(zip(state.layers, state.resolved_trainable()))
    check_saved_layout(
        saved_optimizer["param_groups"],
        state.layers,
        [name for layer, name, _ in named if trainable[layer]],
    )
    optimizer = load_optimizer_state(saved_recipe, saved_optimizer, parameters)
    scheduler = None
    if saved_scheduler is not None:
        assert make_scheduler is not None
        scheduler = make_scheduler(optimizer)
        check_saved_scheduler(saved_scheduler, scheduler, saved_classes=saved_classes)
        # A copy: some schedulers (CyclicLR) pop fields from what they load.
        scheduler.load_state_dict(copy.deepcopy(saved_scheduler))
        # Constructing the scheduler rewrote lrs; the saved values win.
        for group, saved_group in zip(
            optimizer.param_groups, saved_optimizer["param_groups"], strict=True
        ):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
    return Restored(saved_recipe, optimizer, scheduler)
