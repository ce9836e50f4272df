"""Hypothesis strategies and independent oracles shared by the functional-core tests.

Strategies draw small random ``nn.Module`` trees (nested ``nn.Module`` /
``nn.Sequential`` / ``nn.ModuleDict`` containers of tiny ``Linear`` and
``Embedding`` layers, sometimes a parameterless ``ReLU``, a parameter
registered on the root, tied weights or a shared module) and random sequences
of writes (freeze / unfreeze / set_lr_coefficient on one layer).

The oracles recompute what mentor_fn promises from torch's own traversal
(``named_modules`` / ``named_parameters``) and from a naive replay of writes,
so that the tests do not check the library against itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import hypothesis.strategies as st
import torch
from torch import nn

from mentor_fn import CurriculumState

__all__ = [
    "COEFFICIENTS",
    "Scenario",
    "Write",
    "apply_writes",
    "expected_layer_names",
    "expected_owners",
    "module_trees",
    "replay",
    "resolution",
    "scenarios",
    "writes_for",
]

COEFFICIENTS = (0.0, 0.1, 0.5, 1.0, 2.0)
OPERATIONS = ("freeze", "unfreeze", "set_lr_coefficient")

MAX_DEPTH = 3
MAX_CHILDREN = 3
MAX_MODULES = 12


# Models -------------------------------------------------------------------------


@st.composite
def module_trees(draw: st.DrawFn) -> nn.Module:
    """A random small model; it always holds at least one parameter.

    Every weight is 2x2, so any two weights can be tied.
    """
    weighted: list[nn.Module] = []  # leaves with a weight, in creation order
    created: list[nn.Module] = []  # every leaf, for sharing
    budget = [MAX_MODULES]

    def leaf() -> nn.Module:
        kind = draw(st.sampled_from(["linear", "linear", "linear_no_bias", "embedding", "relu"]))
        if kind == "relu":
            module: nn.Module = nn.ReLU()
        elif kind == "embedding":
            module = nn.Embedding(2, 2)
        else:
            module = nn.Linear(2, 2, bias=kind == "linear")
        if kind != "relu":
            weighted.append(module)
        created.append(module)
        return module

    def node(depth: int) -> nn.Module:
        budget[0] -= 1
        if created and draw(st.integers(0, 9)) == 0:
            return draw(st.sampled_from(created))  # a shared module (a leaf: no cycles)
        if depth >= MAX_DEPTH or budget[0] <= 0 or draw(st.booleans()):
            return leaf()
        kind = draw(st.sampled_from(["module", "sequential", "moduledict"]))
        children = [node(depth + 1) for _ in range(draw(st.integers(0, MAX_CHILDREN)))]
        if kind == "sequential":
            return nn.Sequential(*children)
        if kind == "moduledict":
            return nn.ModuleDict(dict(zip("abc", children)))
        container = nn.Module()
        for number, child in enumerate(children):
            setattr(container, f"m{number}", child)
        return container

    root = nn.Module()
    root_parameters = draw(st.integers(0, 2))
    # Root parameters registered before and after the children: they are
    # layers listed first either way.
    before = draw(st.integers(0, root_parameters))
    for number in range(before):
        root.register_parameter(f"p{number}", nn.Parameter(torch.zeros(2)))
    for number in range(draw(st.integers(1, 3))):
        setattr(root, f"c{number}", node(1))
    for number in range(before, root_parameters):
        root.register_parameter(f"p{number}", nn.Parameter(torch.zeros(2)))

    # Tied weights: the later module's weight becomes the earlier one's.
    for _ in range(draw(st.integers(0, 2))):
        if len(weighted) < 2:
            break
        source = draw(st.integers(0, len(weighted) - 1))
        target = draw(st.integers(0, len(weighted) - 2))
        target += target >= source  # two different modules
        weighted[target].weight = weighted[source].weight
    if weighted and draw(st.integers(0, 5)) == 0:
        root.tied = draw(st.sampled_from(weighted)).weight  # a root parameter tied to a layer's

    if not any(True for _ in root.parameters()):
        root.head = nn.Linear(2, 2)
    return root


# Writes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One write on one layer: ``operation`` is freeze, unfreeze or set_lr_coefficient."""

    operation: str
    layer: str
    coefficient: float

    @property
    def pattern(self) -> str:
        # Layer names are patterns; escaping makes the write hit exactly this layer.
        return re.escape(self.layer)

    def apply(self, state: CurriculumState) -> CurriculumState:
        """Apply the write with the state's methods."""
        if self.operation == "freeze":
            return state.freeze(self.pattern)
        if self.operation == "unfreeze":
            return state.unfreeze(self.pattern)
        return state.set_lr_coefficient(self.coefficient, self.pattern)


def writes_for(
    layers: Sequence[str],
    *,
    min_size: int = 0,
    max_size: int = 6,
    coefficients: Sequence[float] = COEFFICIENTS,
) -> st.SearchStrategy[list[Write]]:
    """Random write sequences on ``layers``."""
    if not layers:
        return st.just([])
    return st.lists(
        st.builds(
            Write,
            st.sampled_from(OPERATIONS),
            st.sampled_from(tuple(layers)),
            st.sampled_from(tuple(coefficients)),
        ),
        min_size=min_size,
        max_size=max_size,
    )


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
    model = draw(module_trees())
    initial = CurriculumState.from_model(model)
    writes_a = draw(writes_for(initial.layers, max_size=max_writes))
    writes_b = draw(writes_for(initial.layers, min_size=min_writes_b, max_size=max_writes))
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


def resolution(state: CurriculumState) -> tuple[tuple[bool, float], ...]:
    """What ``state`` resolves to on every layer, through its public readers."""
    return tuple((state.is_frozen(layer), state.coefficient(layer)) for layer in state.layers)
