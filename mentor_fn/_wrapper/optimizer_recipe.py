"""OptimizerRecipe: what it takes to make an optimizer again, as one value.

A curriculum rebuilds its optimizer at phase changes and on resume, so it
needs the optimizer's class, its global lr, its other keyword arguments,
whether groups are coalesced and which parameters get no weight decay,
together, and as plain data in checkpoints.

A ``no_weight_decay`` rule that is a callable has no plain form: the plain
data records its name (``{"callable": "module.qualname"}``), and loading it
needs the same callable again (see :meth:`OptimizerRecipe.from_dict`).
Saving never fails on it, so a run with such a rule can be checkpointed.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from .._core.validation import validate_flag, validate_lr
from .._core.weight_decay import NoWeightDecayRule, WeightDecayRules, weight_decay_rules
from .qualified_names import class_in_namespace, qualified_name

__all__ = ["OptimizerRecipe"]

_KEYS = ("optimizer", "optimizer_kwargs", "lr", "coalesce")
_OPTIONAL_KEYS = ("no_weight_decay",)  # written only when set: older files and readers agree


@dataclass(frozen=True)
class OptimizerRecipe:
    """An optimizer class, its global lr, its other arguments, and the group layout.

    Attributes:
        optimizer_class: a ``torch.optim.Optimizer`` subclass.
        lr: the global learning rate (finite, >= 0).
        kwargs: the optimizer's other keyword arguments (never ``lr`` or
            ``params``), read-only.
        coalesce: one group per distinct coefficient instead of one per layer.
        no_weight_decay: rules naming the parameters that get no weight decay
            (see :func:`~mentor_fn.param_groups`); the weight decay of the
            others is ``kwargs["weight_decay"]`` (:attr:`weight_decay`), or
            the optimizer's default.

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
    no_weight_decay: tuple[NoWeightDecayRule, ...] = ()
    rules: WeightDecayRules = field(init=False, repr=False, compare=False)

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
        validate_flag(self.coalesce, what="coalesce")
        rules = weight_decay_rules(self.no_weight_decay)
        object.__setattr__(self, "no_weight_decay", tuple(self.no_weight_decay))
        object.__setattr__(self, "rules", rules)
        if rules and not _takes_weight_decay(optimizer_class):
            raise ValueError(
                f"no_weight_decay {list(self.no_weight_decay)!r} needs an optimizer with "
                f"weight decay, but {optimizer_class.__name__} takes no weight_decay argument"
            )

    @property
    def weight_decay(self) -> float | None:
        """``kwargs["weight_decay"]``: the decay of parameters no rule excludes (None: the default)."""
        value = self.kwargs.get("weight_decay")
        return None if value is None else float(value)

    def with_lr(self, lr: float) -> OptimizerRecipe:
        """The same recipe at another global lr."""
        return replace(self, lr=lr)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the class by qualified name, the kwargs as a dict.

        ``no_weight_decay`` is written only when there are rules (so a recipe
        without them has the same plain data as before they existed): string
        rules as they are, a callable as ``{"callable": its qualified name}``.
        """
        data: dict[str, Any] = {
            "optimizer": qualified_name(self.optimizer_class),
            "optimizer_kwargs": dict(self.kwargs),
            "lr": self.lr,
            "coalesce": self.coalesce,
        }
        if self.no_weight_decay:
            data["no_weight_decay"] = [
                rule if isinstance(rule, str) else {"callable": callable_name(rule)}
                for rule in self.no_weight_decay
            ]
        return data

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        optimizer_class: type[torch.optim.Optimizer] | None = None,
        callables: Sequence[Callable[..., bool]] = (),
    ) -> OptimizerRecipe:
        """Rebuild a recipe from :meth:`to_dict` output, validating every field.

        Args:
            data: the plain data.
            optimizer_class: the class to use; the saved name must be its
                qualified name. Without it, the name must be one of
                ``torch.optim``'s own classes (nothing is imported).
            callables: the callable ``no_weight_decay`` rules to use for the
                saved ones, which are recorded by name only: the same
                qualified names, in the same order (what the saving run
                passed, passed again).

        Raises:
            ValueError: a missing or malformed field, an optimizer name
                that is not ``optimizer_class`` (or not in ``torch.optim``),
                or callable rules that are not ``callables``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an optimizer recipe must be a mapping, got {type(data).__name__}")
        missing = [key for key in _KEYS if key not in data]
        if missing:
            raise ValueError(f"the optimizer recipe lacks {', '.join(map(repr, missing))}")
        extra = sorted(str(key) for key in data if key not in _KEYS + _OPTIONAL_KEYS)
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
        rules = _saved_rules(data.get("no_weight_decay", []), callables)
        try:
            return cls(found, lr, kwargs, coalesce, rules)  # type: ignore[arg-type]
        except TypeError as error:
            raise ValueError(f"malformed optimizer recipe: {error}") from None

    def __repr__(self) -> str:
        kwargs = ", ".join(f"{key}={value!r}" for key, value in self.kwargs.items())
        return (
            f"OptimizerRecipe({self.optimizer_class.__name__}, lr={self.lr:g}"
            + (f", {kwargs}" if kwargs else "")
            + (", coalesce=True" if self.coalesce else "")
            + (f", no_weight_decay={list(self.no_weight_decay)!r}" if self.no_weight_decay else "")
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
            and self.no_weight_decay == other.no_weight_decay
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


def callable_name(rule: object) -> str:
    """``module.qualname`` of a function, or of an object's class (a callable instance)."""
    qualname = getattr(rule, "__qualname__", None)
    if not isinstance(qualname, str):
        return qualified_name(type(rule))
    return f"{getattr(rule, '__module__', None)}.{qualname}"


def _saved_rules(saved: object, callables: Sequence[Callable[..., bool]]) -> tuple[Any, ...]:
    """The rules recorded as ``saved``, the callables among them taken from ``callables``."""
    if not isinstance(saved, list) or not all(
        isinstance(rule, str)
        or (
            isinstance(rule, Mapping)
            and set(rule) == {"callable"}
            and isinstance(rule["callable"], str)
        )
        for rule in saved
    ):
        raise ValueError(
            "recipe 'no_weight_decay' must be a list of str rules and {'callable': name} "
            f"entries, got {saved!r:.200}"
        )
    saved_names = [rule["callable"] for rule in saved if not isinstance(rule, str)]
    given_names = [callable_name(rule) for rule in callables]
    if saved_names != given_names:
        raise ValueError(
            f"recipe 'no_weight_decay': the saved run's callable rules are {saved_names}, but "
            f"this Curriculum has {given_names}; a callable is saved by name only, so pass the "
            "same callables again (no_weight_decay=...) to load it"
        )
    given = iter(callables)
    return tuple(rule if isinstance(rule, str) else next(given) for rule in saved)


def _takes_weight_decay(optimizer_class: type[torch.optim.Optimizer]) -> bool:
    try:
        parameters = inspect.signature(optimizer_class).parameters
    except (TypeError, ValueError):  # no signature to read: let the optimizer decide
        return True
    return "weight_decay" in parameters or any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()
    )
