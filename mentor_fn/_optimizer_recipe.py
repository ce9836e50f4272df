"""OptimizerRecipe: what it takes to make an optimizer again, as one value.

A curriculum rebuilds its optimizer at phase changes and on resume, so it
needs the optimizer's class, its global lr, its other keyword arguments and
whether groups are coalesced, together, and as plain data in checkpoints.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from ._groups import validate_lr
from ._qualified_names import class_in_namespace, qualified_name

__all__ = ["OptimizerRecipe"]

_KEYS = ("optimizer", "optimizer_kwargs", "lr", "coalesce")


@dataclass(frozen=True)
class OptimizerRecipe:
    """An optimizer class, its global lr, its other arguments, and the group layout.

    Attributes:
        optimizer_class: a ``torch.optim.Optimizer`` subclass.
        lr: the global learning rate (finite, >= 0).
        kwargs: the optimizer's other keyword arguments (never ``lr`` or
            ``params``), read-only.
        coalesce: one group per distinct coefficient instead of one per layer.

    Example:
        >>> import torch
        >>> recipe = OptimizerRecipe(torch.optim.SGD, 0.1, {"momentum": 0.9})
        >>> recipe.to_dict()["optimizer"]
        'torch.optim.sgd.SGD'
        >>> OptimizerRecipe.from_dict(recipe.to_dict()) == recipe
        True
    """

    optimizer_class: type[torch.optim.Optimizer]
    lr: float
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    coalesce: bool = False

    def __post_init__(self) -> None:
        optimizer_class = self.optimizer_class
        if not (
            isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)
        ):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer subclass, got {optimizer_class!r}"
            )
        object.__setattr__(self, "lr", validate_lr(self.lr))
        object.__setattr__(self, "kwargs", MappingProxyType(_checked_kwargs(self.kwargs)))
        if not isinstance(self.coalesce, bool):
            raise TypeError(f"coalesce must be a bool, got {self.coalesce!r}")

    def with_lr(self, lr: float) -> OptimizerRecipe:
        """The same recipe at another global lr."""
        return replace(self, lr=lr)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the class by qualified name, the kwargs as a dict."""
        return {
            "optimizer": qualified_name(self.optimizer_class),
            "optimizer_kwargs": dict(self.kwargs),
            "lr": self.lr,
            "coalesce": self.coalesce,
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        optimizer_class: type[torch.optim.Optimizer] | None = None,
    ) -> OptimizerRecipe:
        """Rebuild a recipe from :meth:`to_dict` output, validating every field.

        Args:
            data: the plain data.
            optimizer_class: the class to use; the saved name must be its
                qualified name. Without it, the name must be one of
                ``torch.optim``'s own classes (nothing is imported).

        Raises:
            ValueError: a missing or malformed field, or an optimizer name
                that is not ``optimizer_class`` (or not in ``torch.optim``).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an optimizer recipe must be a mapping, got {type(data).__name__}")
        missing = [key for key in _KEYS if key not in data]
        if missing:
            raise ValueError(f"the optimizer recipe lacks {', '.join(map(repr, missing))}")
        extra = sorted(str(key) for key in data if key not in _KEYS)
        if extra:
            raise ValueError(f"the optimizer recipe has unknown keys {extra}")
        name = data["optimizer"]
        if not isinstance(name, str):
            raise ValueError(f"recipe 'optimizer' must be a class name (str), got {name!r}")
        if optimizer_class is not None:
            if qualified_name(optimizer_class) != name:
                raise ValueError(
                    f"the recipe names optimizer {name}, but {qualified_name(optimizer_class)} "
                    "was given"
                )
            found: type | None = optimizer_class
        else:
            found = class_in_namespace(torch.optim, name)
            if found is None:
                raise ValueError(
                    f"recipe 'optimizer' {name!r} is not a class of torch.optim: "
                    "pass the optimizer class explicitly"
                )
        lr = data["lr"]
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise ValueError(f"recipe 'lr' must be a number, got {lr!r}")
        kwargs = data["optimizer_kwargs"]
        if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
            raise ValueError(
                f"recipe 'optimizer_kwargs' must be a dict of str keys, got {kwargs!r}"
            )
        coalesce = data["coalesce"]
        if not isinstance(coalesce, bool):
            raise ValueError(f"recipe 'coalesce' must be a bool, got {coalesce!r}")
        try:
            return cls(found, lr, kwargs, coalesce)  # type: ignore[arg-type]
        except TypeError as error:
            raise ValueError(f"malformed optimizer recipe: {error}") from None

    def __repr__(self) -> str:
        kwargs = ", ".join(f"{key}={value!r}" for key, value in self.kwargs.items())
        return (
            f"OptimizerRecipe({self.optimizer_class.__name__}, lr={self.lr:g}"
            + (f", {kwargs}" if kwargs else "")
            + (", coalesce=True" if self.coalesce else "")
            + ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OptimizerRecipe):
            return NotImplemented
        return (
            self.optimizer_class is other.optimizer_class
            and self.lr == other.lr
            and dict(self.kwargs) == dict(other.kwargs)
            and self.coalesce == other.coalesce
        )


def _checked_kwargs(kwargs: object) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"optimizer_kwargs must be a mapping, got {kwargs!r}")
    for key in kwargs:
        if not isinstance(key, str):
            raise TypeError(f"optimizer_kwargs keys must be str, got {key!r}")
    if "lr" in kwargs:
        raise ValueError("pass the global lr on its own, not in optimizer_kwargs")
    if "params" in kwargs:
        raise ValueError("optimizer_kwargs must not contain 'params': groups are derived")
    return dict(kwargs)
