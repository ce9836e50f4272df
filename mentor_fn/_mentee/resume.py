"""Resume: the model and its training objects, rebuilt from a checked checkpoint.

``Mentee.resume`` and ``Mentee.resume_training`` read the file through
``mentor_fn._files.mentee_file`` (every field checked first), then build the
model here: on the ``meta`` device first, so that constructor arguments that
would allocate absurd memory are refused before any real allocation; then for
real, its weights loaded; then the Curriculum, in the exact saved layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .._core.model_walk import layer_names
from .._core.weight_decay import NoWeightDecayRule
from .._files.checkpoint import CheckpointError
from .._files.mentee_values import MenteeCheckpoint
from .._wrapper.curriculum import Curriculum
from .construction import registered_model_class
from .train_objects import scheduler_factory, torch_class

__all__ = ["model_from", "resumed_curriculum"]


def model_from(checkpoint: MenteeCheckpoint, model_class: type[nn.Module] | None) -> nn.Module:
    """The model a checkpoint describes, its weights loaded; nothing else restored.

    The class is built on the ``meta`` device first and compared with the
    saved weights, so arguments that would allocate absurd memory are refused
    before any real allocation. A constructor that cannot run on ``meta``
    (data-dependent code, ``.item()``) is built for real and then compared.

    Args:
        checkpoint: the checked checkpoint.
        model_class: the class to build; None for the saved one (it must be
            defined in this process).

    Raises:
        CheckpointError: the class is unknown, its arguments were not saved,
            its constructor fails, or the model does not fit the file.
    """
    where = checkpoint.path
    if model_class is None:
        model_class = registered_model_class(checkpoint.model_class)
        if model_class is None:
            raise CheckpointError(
                f"checkpoint {where!r} holds a {checkpoint.model_class}, which is not "
                "defined in this process: import it, or call YourClass.resume(path)"
            )
    constructor = checkpoint.constructor
    if constructor is None:
        raise CheckpointError(
            f"checkpoint {where!r}: the constructor arguments of {checkpoint.model_class} "
            "were not plain data and could not be saved: build the model yourself and "
            "load the weights (mentor_fn.load_checkpoint)"
        )
    try:
        with torch.device("meta"):
            probe: nn.Module | None = model_class(*constructor.args, **constructor.kwargs)
    except Exception:
        probe = None  # checked after the real build instead
    if probe is not None:
        checkpoint.check_fits(layer_names(probe), probe.state_dict())
        del probe
    try:
        model = model_class(*constructor.args, **constructor.kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as error:
        shown = ", ".join(
            [*map(repr, constructor.args), *(f"{k}={v!r}" for k, v in constructor.kwargs.items())]
        )
        raise CheckpointError(
            f"checkpoint {where!r}: {model_class.__name__}({shown}) failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    checkpoint.check_fits(layer_names(model), model.state_dict())
    try:
        model.load_state_dict(checkpoint.weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {where!r}: the weights do not load: {error}") from None
    return model


def resumed_curriculum(
    model: nn.Module,
    checkpoint: MenteeCheckpoint,
    *,
    with_optimizer: bool = True,
    optimizer: type[torch.optim.Optimizer] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    no_weight_decay: Iterable[NoWeightDecayRule] | None = None,
) -> Curriculum:
    """The Curriculum of a checkpoint on ``model``: the saved state and, when the
    file has them, the optimizer in its exact saved layout and the scheduler.

    Args:
        model: the model built by :func:`model_from` (moved to its device).
        checkpoint: the checked checkpoint.
        with_optimizer: False builds the state alone (``Mentee.resume``).
        optimizer: the optimizer class, when it is not one of ``torch.optim``'s.
        scheduler: the scheduler factory, when it was not a scheduler class.
        no_weight_decay: the weight-decay rules, when the run used callables
            (by default the file's rules, which hold strings only).

    Raises:
        CheckpointError: the file needs the optimizer class or scheduler
            factory passed, or its curriculum does not load.
    """
    where = checkpoint.path
    recipe = checkpoint.scheduler_recipe
    try:
        if not (with_optimizer and checkpoint.has_optimizer):
            return Curriculum(model, checkpoint.global_lr, state=checkpoint.state)
        factory = scheduler
        if factory is None and recipe is not None:
            factory = scheduler_factory(recipe, where)
        if factory is None and checkpoint.has_scheduler_state:
            raise CheckpointError(
                f"checkpoint {where!r} was trained with a custom scheduler factory: "
                "pass it again as resume_training(path, scheduler=...)"
            )
        curriculum = Curriculum(
            model,
            checkpoint.global_lr,
            optimizer=optimizer or torch_class(torch.optim, checkpoint.optimizer_name, where),
            optimizer_kwargs=checkpoint.optimizer_kwargs,
            scheduler=factory,
            coalesce=checkpoint.coalesce,
            no_weight_decay=() if no_weight_decay is None else no_weight_decay,
        )
        curriculum.load_state_dict(checkpoint.curriculum)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {where!r} cannot be resumed: {error}") from None
    return curriculum
