"""Strategies over one model: single-layer writes, states, transition values."""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import hypothesis.strategies as st
from torch import nn

from .._core.model_walk import layer_names
from .._core.state import NORM_POLICIES, CurriculumState
from .._core.transitions import (
    Transition,
    chain,
    freeze,
    layerwise_lr_decay,
    set_lr_coefficient,
    set_norm_policy,
    unfreeze,
)

__all__ = [
    "COEFFICIENTS",
    "DECAYS",
    "TRANSITION_KINDS",
    "Write",
    "patterns",
    "states",
    "transitions",
    "writes",
]

COEFFICIENTS = (0.0, 0.1, 0.3, 0.5, 1.0, 2.0)
"""Coefficients the strategies draw: 0 (the lr stopped), below, at and above 1."""

DECAYS = (0.5, 0.8, 0.9)
"""Decays ``transitions`` draws for ``layerwise_lr_decay``."""

TRANSITION_KINDS = (
    "freeze",
    "unfreeze",
    "set_lr_coefficient",
    "layerwise_lr_decay",
    "set_norm_policy",
    "chain",
)

Operation = Literal["freeze", "unfreeze", "set_lr_coefficient"]


@dataclass(frozen=True)
class Write:
    """One write on exactly one layer (and, as every write, its subtree).

    Attributes:
        operation: ``"freeze"``, ``"unfreeze"`` or ``"set_lr_coefficient"``.
        layer: the layer name.
        coefficient: the coefficient (used by ``set_lr_coefficient`` only).

    Example:
        >>> state = CurriculumState(("backbone", "backbone.0", "head"))
        >>> Write("freeze", "backbone").apply(state).is_frozen("backbone.0")
        True
    """

    operation: Operation
    layer: str
    coefficient: float = 1.0

    @property
    def pattern(self) -> str:
        """The layer name escaped: a pattern that matches this layer only."""
        return re.escape(self.layer)

    @property
    def transition(self) -> Transition:
        """The same write as a mentor_fn transition value."""
        if self.operation == "freeze":
            return freeze(self.pattern)
        if self.operation == "unfreeze":
            return unfreeze(self.pattern)
        return set_lr_coefficient(self.coefficient, self.pattern)

    def apply(self, state: CurriculumState) -> CurriculumState:
        """The write applied with the state's methods."""
        if self.operation == "freeze":
            return state.freeze(self.pattern)
        if self.operation == "unfreeze":
            return state.unfreeze(self.pattern)
        return state.set_lr_coefficient(self.coefficient, self.pattern)


def _layers_of(model_or_layers: nn.Module | Sequence[str]) -> tuple[str, ...]:
    if isinstance(model_or_layers, nn.Module):
        return layer_names(model_or_layers)
    if isinstance(model_or_layers, str):
        raise TypeError("expected a model or a sequence of layer names, got a str")
    return tuple(model_or_layers)


def writes(
    model_or_layers: nn.Module | Sequence[str],
    *,
    min_size: int = 0,
    max_size: int = 6,
    coefficients: Sequence[float] = COEFFICIENTS,
) -> st.SearchStrategy[list[Write]]:
    """Lists of random :class:`Write` values on the layers of a model.

    Example:
        >>> from hypothesis import given
        >>> @given(writes(["encoder", "encoder.0", "head"], min_size=1))
        ... def test_writes_hit_one_layer(drawn):
        ...     assert all(write.layer in ("encoder", "encoder.0", "head") for write in drawn)
        >>> test_writes_hit_one_layer()
    """
    layers = _layers_of(model_or_layers)
    if not layers:
        return st.just([])
    return st.lists(
        st.builds(
            Write,
            st.sampled_from(("freeze", "unfreeze", "set_lr_coefficient")),
            st.sampled_from(layers),
            st.sampled_from(tuple(coefficients)),
        ),
        min_size=min_size,
        max_size=max_size,
    )


def states(model: nn.Module, *, max_writes: int = 6) -> st.SearchStrategy[CurriculumState]:
    """Random states of ``model``, reached from ``CurriculumState.from_model`` by writes.

    Example:
        >>> from hypothesis import given
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> @given(states(model))
        ... def test_roundtrip(state):
        ...     assert CurriculumState.from_dict(state.to_dict()) == state
        >>> test_roundtrip()
    """
    initial = CurriculumState.from_model(model)

    def reach(drawn: list[Write]) -> CurriculumState:
        state = initial
        for write in drawn:
            state = write.apply(state)
        return state

    return writes(initial.layers, max_size=max_writes).map(reach)


def patterns(
    model_or_layers: nn.Module | Sequence[str],
) -> st.SearchStrategy[str | tuple[str, ...]]:
    """Layer patterns that match at least one layer: what users write.

    Exact names (escaped), every layer below one (``backbone\\..+``),
    numbered siblings (``blocks\\.\\d+``), an alternation of two layers,
    everything (``.*``); a single str or a tuple of one or two of them.

    Example:
        >>> from hypothesis import given
        >>> from mentor_fn import select_layers
        >>> layers = ("blocks", "blocks.0", "blocks.1", "head")
        >>> @given(patterns(layers))
        ... def test_they_match(drawn):
        ...     assert select_layers(layers, drawn)
        >>> test_they_match()
    """
    return _patterns_for(_layers_of(model_or_layers))


# Strategies depend on the layer names only: one per model architecture, so
# that a state machine drawing from them in every run builds them once.
@functools.lru_cache(maxsize=64)
def _patterns_for(layers: tuple[str, ...]) -> st.SearchStrategy[str | tuple[str, ...]]:
    if not layers:
        raise ValueError("the model has no layers: no pattern can match")
    exact = [re.escape(layer) for layer in layers]
    regexes = [".*"]
    for layer in layers:
        if any(other.startswith(layer + ".") for other in layers):
            regexes.append(re.escape(layer) + r"\..+")
        parent, _, last = layer.rpartition(".")
        if last.isdigit():
            regexes.append(re.escape(parent) + r"\.\d+" if parent else r"\d+")
    single = st.one_of(
        st.sampled_from(exact),
        st.sampled_from(sorted(set(regexes))),
        st.tuples(st.sampled_from(exact), st.sampled_from(exact)).map("|".join),
    )
    return st.one_of(single, st.lists(single, min_size=1, max_size=2).map(tuple))


def transitions(
    model: nn.Module,
    *,
    kinds: Collection[str] = TRANSITION_KINDS,
    coefficients: Sequence[float] = COEFFICIENTS,
) -> st.SearchStrategy[Transition]:
    """Random mentor_fn transition values whose patterns match ``model``'s layers.

    ``freeze(p)``, ``unfreeze(p)``, ``set_lr_coefficient(c, p)``,
    ``layerwise_lr_decay(d)`` (on every layer or on patterns),
    ``set_norm_policy(policy)`` (``"stats"``, ``"eval"``, ``"train"``) and
    ``chain`` of two or three of the others, with patterns from
    :func:`patterns`.
    They print as the values they are (``Freeze(patterns=('head',))``).

    Args:
        model: the model whose layers the patterns match.
        kinds: the kinds to draw, among ``TRANSITION_KINDS``.
        coefficients: the coefficients ``set_lr_coefficient`` draws.

    Example:
        >>> from hypothesis import given
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> @given(transitions(model))
        ... def test_applies(transition):
        ...     transition(CurriculumState.from_model(model))
        >>> test_applies()
    """
    unknown = set(kinds) - set(TRANSITION_KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {TRANSITION_KINDS}, got {kinds!r}")
    return _transitions_for(
        layer_names(model),
        tuple(kind for kind in TRANSITION_KINDS if kind in kinds),
        tuple(coefficients),
    )


@functools.lru_cache(maxsize=64)
def _transitions_for(
    layers: tuple[str, ...], kinds: tuple[str, ...], coefficients: tuple[float, ...]
) -> st.SearchStrategy[Transition]:
    matching = _patterns_for(layers)
    simple: dict[str, st.SearchStrategy[Transition]] = {
        "freeze": st.builds(freeze, matching),
        "unfreeze": st.builds(unfreeze, matching),
        "set_lr_coefficient": st.builds(
            set_lr_coefficient, st.sampled_from(tuple(coefficients)), matching
        ),
        "layerwise_lr_decay": st.builds(
            layerwise_lr_decay,
            st.sampled_from(DECAYS),
            patterns=st.none() | matching,
        ),
        "set_norm_policy": st.builds(set_norm_policy, st.sampled_from(NORM_POLICIES)),
    }
    drawn = [simple[kind] for kind in TRANSITION_KINDS if kind in kinds and kind in simple]
    if "chain" in kinds:
        parts = st.one_of(*simple.values())
        drawn.append(st.lists(parts, min_size=2, max_size=3).map(lambda ts: chain(*ts)))
    return st.one_of(drawn)
