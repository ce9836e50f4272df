"""Registry lookups that lead from a model to one of its parameters, checked in a few dict reads.

While they all still hold, the parameter is still registered where it was:
the kept walk and the step guard rely on this instead of walking the model.
"""

from __future__ import annotations

from torch import nn

from .._core.wrappers import wrapper_types

__all__ = ["Lookup", "lookups_hold", "registration_lookups"]

Lookup = tuple[nn.Module, str, str, object]
"""``(module, "_modules" or "_parameters", key, expected)``: one registry lookup."""


def registration_lookups(
    model: nn.Module, layer: str, parameter: nn.Parameter
) -> tuple[Lookup, ...] | None:
    """The registry lookups that lead from ``model`` to ``parameter`` of ``layer``.

    Every hop from ``model`` (wrappers included) down to the module that
    registers ``parameter``, then the parameter itself. While
    :func:`lookups_hold` says they all still hold, ``layer`` still registers
    ``parameter`` at the same place: checking costs a few dict lookups, not a
    traversal. None if ``layer`` does not register ``parameter``.
    """
    wrappers = wrapper_types()
    lookups: list[Lookup] = []
    current = model

    def descend(key: str) -> bool:
        nonlocal current
        child = current._modules.get(key)
        if child is None:
            return False
        lookups.append((current, "_modules", key, child))
        current = child
        return True

    def through_wrappers() -> bool:
        while True:
            attribute = next((name for kind, name in wrappers if isinstance(current, kind)), None)
            if attribute is None:
                return True
            if not descend(attribute):
                return False

    if not through_wrappers():
        return None
    if layer in current._parameters:  # a parameter of the root is a layer of its own
        key: str | None = layer if current._parameters[layer] is parameter else None
    else:
        for part in layer.split("."):
            if not (descend(part) and through_wrappers()):
                return None
        key = next(
            (name for name, value in current._parameters.items() if value is parameter), None
        )
    if key is None:
        return None
    lookups.append((current, "_parameters", key, parameter))
    return tuple(lookups)


def lookups_hold(lookups: tuple[Lookup, ...]) -> bool:
    """Whether every registry lookup still finds what it found."""
    for module, registry, key, expected in lookups:
        if getattr(module, registry).get(key) is not expected:
            return False
    return True
