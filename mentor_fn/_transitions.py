"""Transition values: ``t(state) -> state``, composable with :func:`chain`.

``freeze(p)(state) == state.freeze(p)``; the values are small frozen
dataclasses, so they compare, hash and print, and can be stored in a schedule
of phases. Patterns and coefficients are validated when the value is made,
layers when it is applied.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from ._layers import Patterns, normalize_patterns
from ._state import CurriculumState, validate_coefficient

__all__ = [
    "Transition",
    "chain",
    "freeze",
    "layerwise_lr_decay",
    "set_lr_coefficient",
    "unfreeze",
]

Transition = Callable[[CurriculumState], CurriculumState]


@dataclass(frozen=True)
class Freeze:
    """Freeze the subtrees of the layers matching ``patterns``."""

    patterns: tuple[str, ...]

    def __call__(self, state: CurriculumState) -> CurriculumState:
        return state.freeze(self.patterns)


@dataclass(frozen=True)
class Unfreeze:
    """Make the subtrees of the layers matching ``patterns`` trainable."""

    patterns: tuple[str, ...]

    def __call__(self, state: CurriculumState) -> CurriculumState:
        return state.unfreeze(self.patterns)


@dataclass(frozen=True)
class SetLrCoefficient:
    """Set the lr coefficient of the subtrees of the layers matching ``patterns``."""

    coefficient: float
    patterns: tuple[str, ...]

    def __call__(self, state: CurriculumState) -> CurriculumState:
        return state.set_lr_coefficient(self.coefficient, self.patterns)


@dataclass(frozen=True)
class LayerwiseLrDecay:
    """Coefficient ``decay ** (n - 1 - i)`` for the i-th of n selected layers."""

    decay: float
    patterns: tuple[str, ...] | None

    def __call__(self, state: CurriculumState) -> CurriculumState:
        selected = state.layers if self.patterns is None else state.select(self.patterns)
        count = len(selected)
        return state.set_coefficients(
            {layer: self.decay ** (count - 1 - rank) for rank, layer in enumerate(selected)}
        )


@dataclass(frozen=True)
class Chain:
    """Apply ``transitions`` left to right."""

    transitions: tuple[Transition, ...]

    def __call__(self, state: CurriculumState) -> CurriculumState:
        for transition in self.transitions:
            state = transition(state)
        return state


def freeze(patterns: Patterns) -> Freeze:
    """Transition freezing the matched layers: ``freeze(p)(s) == s.freeze(p)``."""
    return Freeze(normalize_patterns(patterns))


def unfreeze(patterns: Patterns) -> Unfreeze:
    """Transition unfreezing the matched layers: ``unfreeze(p)(s) == s.unfreeze(p)``."""
    return Unfreeze(normalize_patterns(patterns))


def set_lr_coefficient(coefficient: float, patterns: Patterns) -> SetLrCoefficient:
    """Transition setting a coefficient: ``set_lr_coefficient(c, p)(s) == s.set_lr_coefficient(c, p)``."""
    return SetLrCoefficient(validate_coefficient(coefficient), normalize_patterns(patterns))


def layerwise_lr_decay(decay: float, *, patterns: Patterns | None = None) -> LayerwiseLrDecay:
    """Layer-wise lr decay (LLRD) as one transition.

    The i-th of the n layers (all layers, or those matching ``patterns``, in
    layer order) gets coefficient ``decay ** (n - 1 - i)``: the last layer
    (the output) learns at the global lr, each earlier one ``decay`` times
    slower. The result equals the seed's loop of ``set_lr_coefficient`` calls
    in layer order; frozen flags are unchanged.

    Args:
        decay: in (0, 1].
        patterns: restrict the decay to these layers (others keep their rules).

    Example:
        >>> state = CurriculumState(("embed", "block", "head"))
        >>> layerwise_lr_decay(0.5)(state).resolved_coefficients()
        (0.25, 0.5, 1.0)
    """
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
        raise TypeError(f"decay must be a real number, got {type(decay).__name__}: {decay!r}")
    if not (math.isfinite(decay) and 0 < decay <= 1):
        raise ValueError(f"decay must be in (0, 1], got {decay!r}")
    return LayerwiseLrDecay(
        float(decay), None if patterns is None else normalize_patterns(patterns)
    )


def chain(*transitions: Transition) -> Chain:
    """Compose transitions, applied left to right.

    Example:
        >>> phase = chain(freeze("backbone"), unfreeze("backbone.layer4"))
        >>> phase(CurriculumState(("backbone", "backbone.layer4", "head"))).frozen
        mappingproxy({'backbone': True, 'backbone.layer4': False})
    """
    for transition in transitions:
        if not callable(transition):
            raise TypeError(
                f"chain takes transitions (callables state -> state), got "
                f"{type(transition).__name__}: {transition!r}"
            )
    return Chain(tuple(transitions))
