"""Project-only test helpers: scenarios built on ``mentor_fn.testing``, and naive oracles.

The strategies themselves (models, writes, states, transitions) are the
public ones in :mod:`mentor_fn.testing`. What stays here is what only this
project's tests need: :func:`scenarios` (a model and two states reached by
writes) and the oracles, which recompute what mentor_fn promises from
torch's own traversal (``named_modules`` / ``named_parameters``) and from a
naive replay of writes and transitions, so that the tests do not check the
library against itself.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
from torch import nn

from mentor_fn import CurriculumState
from mentor_fn.testing import Write, models, writes

__all__ = [
    "Scenario",
    "apply_writes",
    "expected_layer_names",
    "expected_owners",
    "replay",
    "replay_transition",
    "resolution",
    "scenarios",
]


def apply_writes(state: CurriculumState, writes: Sequence[Write]) -> CurriculumState:
    for write in writes:
        state = write.apply(state)
    return state


@dataclass
class Scenario:
    """A model, its initial state, and two states reached by writes (``b`` after ``a``)."""

    model: nn.Module
    initial: CurriculumState
    writes_a: list[Write]
    writes_b: list[Write]
    a: CurriculumState
    b: CurriculumState

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return (
            f"Scenario(layers={self.initial.layers}, writes_a={self.writes_a}, "
            f"writes_b={self.writes_b}, model={self.model})"
        )


@st.composite
def scenarios(draw: st.DrawFn, *, max_writes: int = 6, min_writes_b: int = 0) -> Scenario:
    """A random model with a state ``a`` (writes from the start) and ``b`` (more writes on ``a``)."""
    model = draw(models())
    initial = CurriculumState.from_model(model)
    writes_a = draw(writes(initial.layers, max_size=max_writes))
    writes_b = draw(writes(initial.layers, min_size=min_writes_b, max_size=max_writes))
    a = apply_writes(initial, writes_a)
    b = apply_writes(a, writes_b)
    return Scenario(model, initial, writes_a, writes_b, a, b)


# Oracles --------------------------------------------------------------------------


def _registers_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def expected_layer_names(model: nn.Module) -> tuple[str, ...]:
    """Layer names of a bare model, from torch's own traversal.

    Root parameters first, then every module in ``named_modules()`` order (a
    shared module once) with a module registering a parameter at or below its
    path in that de-duplicated traversal.
    """
    root_parameters = [name for name, _ in model.named_parameters(recurse=False)]
    modules = list(model.named_modules())[1:]
    registering = [name for name, module in modules if _registers_parameters(module)]
    return (
        *root_parameters,
        *(
            name
            for name, _ in modules
            if any(path == name or path.startswith(name + ".") for path in registering)
        ),
    )


def expected_owners(model: nn.Module) -> dict[int, str]:
    """Owning layer of each parameter (by id) of a bare model.

    The first registration in traversal order: root parameters (by name), then
    the modules in ``named_modules()`` order.
    """
    owners: dict[int, str] = {}
    for name, parameter in model.named_parameters(recurse=False):
        owners.setdefault(id(parameter), name)
    for name, module in list(model.named_modules())[1:]:
        for parameter in module.parameters(recurse=False):
            owners.setdefault(id(parameter), name)
    return owners


def replay(
    layers: Sequence[str], writes: Sequence[Write]
) -> tuple[dict[str, bool], dict[str, float]]:
    """Naive resolution: each write sets its layer and every dotted descendant."""
    frozen = dict.fromkeys(layers, False)
    coefficients = dict.fromkeys(layers, 1.0)
    for write in writes:
        for layer in layers:
            if layer == write.layer or layer.startswith(write.layer + "."):
                if write.operation == "freeze":
                    frozen[layer] = True
                elif write.operation == "unfreeze":
                    frozen[layer] = False
                else:
                    coefficients[layer] = write.coefficient
    return frozen, coefficients


def replay_transition(
    layers: Sequence[str],
    frozen: Mapping[str, bool],
    coefficients: Mapping[str, float],
    transition: Any,
    *,
    owners: Collection[str] | None = None,
    norms: Collection[str] = (),
) -> tuple[dict[str, bool], dict[str, float]]:
    """Naive resolution of a transition value (as ``mentor_fn.testing.transitions`` draws).

    Patterns select layers by ``re.fullmatch``; a write sets the selected
    layer and every dotted descendant; ``layerwise_lr_decay`` ranks the
    selected layers that own parameters (``owners``; every layer when None)
    or have no selected layer below them, a normalization layer (``norms``)
    joining the rank before it, and writes ``decay ** (n - 1 - i)`` on the
    layers of the i-th of the n ranks in layer order (ancestors first, so a
    descendant's own value wins); ``set_norm_policy`` changes neither;
    ``chain`` replays its parts left to right.
    """
    frozen, coefficients = dict(frozen), dict(coefficients)
    kind = type(transition).__name__
    if kind == "Chain":
        for part in transition.transitions:
            frozen, coefficients = replay_transition(
                layers, frozen, coefficients, part, owners=owners, norms=norms
            )
        return frozen, coefficients

    def selected(patterns: Sequence[str] | None) -> list[str]:
        if patterns is None:
            return list(layers)
        return [layer for layer in layers if any(re.fullmatch(p, layer) for p in patterns)]

    def write(target: dict[str, Any], chosen: str, value: Any) -> None:
        for layer in layers:
            if layer == chosen or layer.startswith(chosen + "."):
                target[layer] = value

    if kind in ("Freeze", "Unfreeze"):
        for chosen in selected(transition.patterns):
            write(frozen, chosen, kind == "Freeze")
    elif kind == "SetLrCoefficient":
        for chosen in selected(transition.patterns):
            write(coefficients, chosen, transition.coefficient)
    elif kind == "SetNormPolicy":
        pass  # neither frozen flags nor coefficients change
    elif kind == "LayerwiseLrDecay":
        chosen_layers = selected(transition.patterns)
        ranked = [
            layer
            for layer in chosen_layers
            if (owners is None or layer in owners)
            or not any(other.startswith(layer + ".") for other in chosen_layers)
        ]
        ranks: list[list[str]] = []
        for layer in ranked:
            if layer in norms and any(other not in norms for other in ranked):
                if ranks:
                    ranks[-1].append(layer)
                else:  # a leading norm layer joins the first rank
                    later = next(other for other in ranked if other not in norms)
                    ranks.append([layer, later])
            elif not ranks or layer not in ranks[-1]:
                ranks.append([layer])
        for rank, members in enumerate(ranks):
            for chosen in members:
                write(coefficients, chosen, transition.decay ** (len(ranks) - 1 - rank))
    else:
        raise TypeError(f"the oracle cannot replay {transition!r}")
    return frozen, coefficients


def resolution(state: CurriculumState) -> tuple[tuple[bool, float], ...]:
    """What ``state`` resolves to on every layer, through its public readers."""
    return tuple((state.is_frozen(layer), state.coefficient(layer)) for layer in state.layers)
