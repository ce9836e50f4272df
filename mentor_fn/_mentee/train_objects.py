"""The scheduler a Mentee trains with, as a checkpoint records it and as resume rebuilds it.

``create_train_objects`` takes a ``torch.optim.lr_scheduler`` class (recorded
by qualified name with its arguments, so a checkpoint can rebuild it) or any
factory (which resume must be given again). Classes are found by name in
torch's own namespaces only: nothing is ever imported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch.optim import lr_scheduler as torch_schedulers

from .._files.checkpoint import CheckpointError
from .._files.mentee_values import SchedulerRecipe
from .._wrapper.qualified_names import class_in_namespace, qualified_name

__all__ = ["scheduler_factory", "scheduler_recipe", "torch_class"]

SchedulerArgument = type[torch_schedulers.LRScheduler] | Callable[[Any], Any] | None


def scheduler_recipe(
    scheduler: SchedulerArgument,
    scheduler_kwargs: Mapping[str, Any] | None,
    *,
    step_size: int,
    gamma: float,
) -> SchedulerRecipe | None:
    """The recipe of ``create_train_objects``' scheduler argument; None for a factory.

    Raises:
        ValueError: ``scheduler_kwargs`` with a factory.
        TypeError: neither a scheduler class nor a callable.
    """
    if scheduler is None:
        return SchedulerRecipe(
            qualified_name(torch_schedulers.StepLR), {"step_size": step_size, "gamma": gamma}
        )
    if isinstance(scheduler, type) and issubclass(scheduler, torch_schedulers.LRScheduler):
        return SchedulerRecipe(qualified_name(scheduler), dict(scheduler_kwargs or {}))
    if callable(scheduler):
        if scheduler_kwargs:
            raise ValueError("scheduler_kwargs go with a scheduler class, not a factory")
        return None
    raise TypeError(f"scheduler must be an LRScheduler class or a factory, got {scheduler!r}")


def scheduler_factory(recipe: SchedulerRecipe, path: str = "") -> Callable[[Any], Any]:
    """A factory ``optimizer -> scheduler`` from a recipe.

    Raises:
        CheckpointError: the recipe names no class of ``torch.optim.lr_scheduler``.
    """
    scheduler_class = torch_class(torch_schedulers, recipe.name, path)
    kwargs = dict(recipe.kwargs)
    return lambda optimizer: scheduler_class(optimizer, **kwargs)


def torch_class(namespace: Any, name: str, path: str) -> Any:
    """A class of torch's own namespace by qualified name: never imports anything.

    Raises:
        CheckpointError: naming the checkpoint ``path`` and the class.
    """
    found = class_in_namespace(namespace, name)
    if found is None:
        raise CheckpointError(
            f"checkpoint {path!r} names {name!r}, which is not in {namespace.__name__}: "
            "pass the class or factory to resume_training"
        )
    return found
