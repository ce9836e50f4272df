"""``models()``: small random module trees with the awkward cases built in."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from torch import nn

__all__ = ["INPUT_WIDTH", "GeneratedModel", "models"]

INPUT_WIDTH = 2
"""Every generated model maps a float tensor ``(batch, 2)`` to ``(batch, 2)``."""


class GeneratedModel(nn.Module):
    """A model drawn by :func:`models`: its forward runs every leaf in tree order.

    The containers (``nn.Module``, ``nn.Sequential``, ``nn.ModuleDict``) only
    arrange names; ``forward`` applies the leaves in depth-first order (a
    shared leaf at each of its places) and adds or multiplies by the root's
    parameters, so every parameter takes part in the output and frozen
    layers sit inside the graph that trains the others.
    """

    def __init__(self) -> None:
        super().__init__()
        # Plain lists are not registered: they only order the forward pass.
        self.program: list[nn.Module | str] = []
        self.frozen_at_start: list[str] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        for step in self.program:
            if isinstance(step, str):  # a root parameter, looked up so copies stay right
                parameter = getattr(self, step)
                hidden = hidden @ parameter if parameter.dim() == 2 else hidden + parameter
            elif isinstance(step, nn.Embedding):
                hidden = hidden @ step(torch.arange(INPUT_WIDTH, device=hidden.device))
            else:
                hidden = step(hidden)
        return hidden

    def extra_repr(self) -> str:
        parts = [f"root parameters: {[name for name, _ in self.named_parameters(recurse=False)]}"]
        if self.frozen_at_start:
            parts.append(f"requires_grad False at start: {self.frozen_at_start}")
        return ", ".join(parts)


_LEAF_KINDS = (
    "linear", "linear", "linear_no_bias", "embedding", "relu",
    "layer_norm", "batch_norm", "batch_norm_no_affine",
)  # fmt: skip


def _leaf(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "embedding":
        return nn.Embedding(INPUT_WIDTH, INPUT_WIDTH)
    if kind == "layer_norm":
        return nn.LayerNorm(INPUT_WIDTH)
    if kind == "batch_norm":
        return nn.BatchNorm1d(INPUT_WIDTH)
    if kind == "batch_norm_no_affine":
        return nn.BatchNorm1d(INPUT_WIDTH, affine=False)  # running stats, no parameter
    return nn.Linear(INPUT_WIDTH, INPUT_WIDTH, bias=kind == "linear")


@st.composite
def models(draw: st.DrawFn, *, max_modules: int = 12) -> GeneratedModel:
    """Small random models for property tests of code that takes any model.

    Nested ``nn.Module`` / ``nn.Sequential`` / ``nn.ModuleDict`` containers
    (up to depth 3) of tiny ``Linear``, ``Embedding``, ``LayerNorm`` and
    ``BatchNorm1d`` layers (running statistics; sometimes without affine
    parameters, so a module with buffers only) and parameterless ``ReLU``,
    with the cases that break naive code: tied weights (one ``Parameter`` in
    two modules), a shared module (one module at two paths), parameters
    registered on the root (before and after the children, one sometimes
    tied to a layer's weight) and parameters with ``requires_grad`` False
    before any Curriculum exists. Every model holds at least one parameter,
    and maps a float tensor of shape ``(batch, 2)`` to ``(batch, 2)``
    (``batch >= 2`` for ``BatchNorm1d`` in training mode). Layer names are
    plain identifiers and digits, so each is also an exact pattern of itself.

    Args:
        max_modules: a bound on the number of modules drawn.

    Example:
        >>> from hypothesis import given
        >>> import mentor_fn as mf
        >>> @given(models())
        ... def test_every_layer_can_be_frozen(model):
        ...     state = mf.CurriculumState.from_model(model).freeze(".*")
        ...     assert not any(mf.requires_grad_map(state, model).values())
        >>> test_every_layer_can_be_frozen()
    """
    matrices: list[nn.Module] = []  # leaves with a 2x2 weight, in creation order: tie-able
    created: list[nn.Module] = []  # every leaf, for sharing
    budget = [max_modules]
    root = GeneratedModel()

    def leaf() -> nn.Module:
        module = _leaf(draw(st.sampled_from(_LEAF_KINDS)))
        if isinstance(module, (nn.Linear, nn.Embedding)):
            matrices.append(module)
        created.append(module)
        return module

    def node(depth: int) -> nn.Module:
        budget[0] -= 1
        if created and draw(st.integers(0, 9)) == 0:
            module = draw(st.sampled_from(created))  # a shared module (a leaf: no cycles)
            root.program.append(module)
            return module
        if depth >= 3 or budget[0] <= 0 or draw(st.booleans()):
            module = leaf()
            root.program.append(module)
            return module
        kind = draw(st.sampled_from(["module", "sequential", "moduledict"]))
        children = [node(depth + 1) for _ in range(draw(st.integers(0, 3)))]
        if kind == "sequential":
            return nn.Sequential(*children)
        if kind == "moduledict":
            return nn.ModuleDict(dict(zip("abc", children)))
        container = nn.Module()
        for number, child in enumerate(children):
            setattr(container, f"m{number}", child)
        return container

    # Root parameters registered before and after the children: they are
    # layers listed first either way.
    root_parameters = draw(st.integers(0, 2))
    before = draw(st.integers(0, root_parameters))
    for number in range(before):
        root.register_parameter(f"p{number}", nn.Parameter(torch.zeros(INPUT_WIDTH)))
    for number in range(draw(st.integers(1, 3))):
        setattr(root, f"c{number}", node(1))
    for number in range(before, root_parameters):
        root.register_parameter(f"p{number}", nn.Parameter(torch.zeros(INPUT_WIDTH)))
    root.program[:0] = [f"p{number}" for number in range(root_parameters)]

    # Tied weights: the later module's weight becomes the earlier one's.
    for _ in range(draw(st.integers(0, 2))):
        if len(matrices) < 2:
            break
        source = draw(st.integers(0, len(matrices) - 1))
        target = draw(st.integers(0, len(matrices) - 2))
        target += target >= source  # two different modules
        matrices[target].weight = matrices[source].weight
    if matrices and draw(st.integers(0, 5)) == 0:
        root.tied = draw(st.sampled_from(matrices)).weight  # a root parameter tied to a layer's
        root.program.append("tied")

    if not any(True for _ in root.parameters()):
        root.head = nn.Linear(INPUT_WIDTH, INPUT_WIDTH)
        root.program.append(root.head)

    # Some parameters frozen by the user before mentor_fn sees the model.
    for name, parameter in root.named_parameters():
        if draw(st.integers(0, 4)) == 0:
            parameter.requires_grad_(False)
            root.frozen_at_start.append(name)
    return root
