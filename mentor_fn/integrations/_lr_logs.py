"""The learning rates an adapter logs: the run's lr, and the lr of each layer given its own.

A curriculum's optimizer holds one group per layer (or per coefficient) and a
last, parameter-less reference group at the global lr, which the scheduler
moves like one flat group would. Frameworks log "the" learning rate as the
first group's; under layer-wise decay that is the embeddings' lr at a
fraction of the run's, which misreads as the run's. The adapters log the
reference group's lr under the framework's usual key instead, and one key per
coefficient rule of the state (the layers a ``set_lr_coefficient``,
``layerwise_lr_decay`` or a warmup gave their own coefficient) that some
trainable parameter takes its lr from: ``<key>/<layer>``. Layers without a
rule train at the reference lr.
"""

from __future__ import annotations

import functools

from .._core.state import CurriculumState
from .._wrapper.curriculum import Curriculum
from .._wrapper.plan_execution import reference_index

__all__ = ["effective_rules", "layer_lrs", "reference_lr"]


def reference_lr(curriculum: Curriculum) -> float:
    """The run's lr now: the reference group's (the global lr under the scheduler).

    Raises:
        RuntimeError: the curriculum has not been built.
    """
    optimizer = curriculum.optimizer
    if optimizer is None:
        raise RuntimeError("the curriculum has no optimizer yet: the training run has not started")
    return float(optimizer.param_groups[reference_index(optimizer)]["lr"])


def layer_lrs(curriculum: Curriculum, *, prefix: str) -> dict[str, float]:
    """``{prefix/layer: lr}`` for each coefficient rule some trainable parameter's lr comes from.

    Example:
        >>> import torch
        >>> import mentor_fn as mf
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> curriculum = mf.Curriculum(model, 0.1, optimizer=torch.optim.SGD)
        >>> _ = curriculum.build()
        >>> _ = curriculum.set_lr_coefficient(0.5, "0")
        >>> layer_lrs(curriculum, prefix="lr")
        {'lr/0': 0.05}
    """
    state = curriculum.state
    lr = reference_lr(curriculum)
    coefficients = state.coefficients
    return {f"{prefix}/{layer}": lr * coefficients[layer] for layer in effective_rules(state)}


@functools.lru_cache(maxsize=4)
def effective_rules(state: CurriculumState) -> tuple[str, ...]:
    """The coefficient rules (their layers, in rule order) that the coefficient of some
    trainable layer owning parameters resolves at: the nearest rule on the layer or an
    ancestor. One pass over the layers, cached per state (a state changes only at a
    transition; a warmup makes one per step while it lasts)."""
    rules = state.coefficients
    if not rules:
        return ()
    owners = state.parameter_owners
    found: set[str] = set()
    for layer, trains in zip(state.layers, state.resolved_trainable()):
        if not trains or layer not in owners:
            continue
        path = layer
        while path not in rules and "." in path:
            path = path.rsplit(".", 1)[0]
        if path in rules:
            found.add(path)
    return tuple(layer for layer in rules if layer in found)
