"""Setting a model's ``requires_grad`` flags as a state says: the one model mutation.

The pure core only derives (``requires_grad_map``); this module, used by the
:class:`~mentor_fn.Curriculum` wrapper and public as
:func:`mentor_fn.apply_requires_grad`, writes the flags.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .._core.groups import walk_for_state, with_norm_layers_of
from .._core.model_walk import ModelLayers
from .._core.state import CurriculumState

__all__ = ["apply_requires_grad", "apply_requires_grad_at", "apply_requires_grad_of_walk"]


def apply_requires_grad(state: CurriculumState, model: nn.Module) -> None:
    """Set ``requires_grad`` on every parameter of ``model`` as ``state`` says.

    A parameter trains when its owning layer does (``state.resolved_trainable()``:
    not frozen, or a normalization layer under the ``"train"`` norm policy).
    The others also lose their ``.grad``, so optimizers skip them (an inert
    group stays inert) and no stale gradient is applied later.
    """
    walked = walk_for_state(state, model)
    apply_requires_grad_of_walk(with_norm_layers_of(state, walked), walked)


def apply_requires_grad_of_walk(state: CurriculumState, walked: ModelLayers) -> list[nn.Parameter]:
    """:func:`apply_requires_grad` on a model already walked (``walk_for_state``).

    Returns the trainable parameters, in traversal order (each once).
    """
    trainable = state.resolved_trainable()
    trainable_parameters: list[nn.Parameter] = []
    for position, parameters in enumerate(walked.parameters):
        if not trainable[position]:
            for parameter in parameters:
                if parameter.requires_grad:
                    parameter.requires_grad_(False)
                parameter.grad = None
        else:
            for parameter in parameters:
                if not parameter.requires_grad:
                    parameter.requires_grad_(True)
            trainable_parameters.extend(parameters)
    return trainable_parameters


def apply_requires_grad_at(
    walked: ModelLayers, positions: Sequence[int], trainable: Sequence[bool]
) -> None:
    """Set the flags of the layers at ``positions`` only: ``trainable[i]`` for ``positions[i]``.

    For a transition that changes a few layers (the others' flags are
    already right); frozen parameters lose their ``.grad``, as in
    :func:`apply_requires_grad`.
    """
    layer_parameters = walked.parameters
    for position, trains in zip(positions, trainable):
        for parameter in layer_parameters[position]:
            if parameter.requires_grad is not trains:
                parameter.requires_grad_(trains)
            if not trains:
                parameter.grad = None
