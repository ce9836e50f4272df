"""Warmup: the coefficients of newly trainable layers ramped up over a phase's first steps.

A phase with ``warmup_steps=n`` trains its newly trainable layers at 1/n of
their target coefficient on its first step, 2/n on the second, ..., the
target from step n on. Pure: a ramp is computed once per phase from the
states before and after the phase's transition.
"""

from __future__ import annotations

from .._core.layer_tree import layer_tree
from .._core.state import CurriculumState

__all__ = ["WarmupRamp", "warmup_state"]


class WarmupRamp:
    """The coefficients a warmup of ``warmup_steps`` writes, computed once per phase.

    The warming layers are those whose parameters do not train in ``before``
    and train in ``target`` (frozen, then not; a norm layer that trains inside
    a frozen subtree under the ``"train"`` norm policy is not one), among the
    layers that own parameters. A coefficient write applies to a whole
    subtree, so every other layer below a warming one is written as well,
    with its own target coefficient: only the warming layers ramp.
    """

    __slots__ = ("kept", "target", "warming", "warmup_steps")

    def __init__(self, before: CurriculumState, target: CurriculumState, warmup_steps: int) -> None:
        owners, layers = target.parameter_owners, target.layers
        trained, trains = before.resolved_trainable(), target.resolved_trainable()
        coefficients = target.resolved_coefficients()
        self.target, self.warmup_steps = target, warmup_steps
        self.warming = {
            position: coefficients[position]
            for position, layer in enumerate(layers)
            if trains[position] and not trained[position] and layer in owners
        }
        self.kept = {
            position: coefficients[position]
            for position in layer_tree(layers).subtrees(self.warming)
            if position not in self.warming
        }

    def state(self, steps: int) -> CurriculumState:
        """The state after ``steps`` optimizer steps in the phase.

        The warming layers are at ``min(1, (steps + 1) / warmup_steps)`` times
        their target coefficient.
        """
        if not self.warming or steps + 1 >= self.warmup_steps:
            return self.target
        ramp = (steps + 1) / self.warmup_steps
        values = {position: coefficient * ramp for position, coefficient in self.warming.items()}
        values.update(self.kept)
        return self.target.set_coefficients(values)


def warmup_state(
    before: CurriculumState, target: CurriculumState, *, steps: int, warmup_steps: int
) -> CurriculumState:
    """``target`` after ``steps`` steps of a ``warmup_steps`` warmup from ``before``.

    Example:
        >>> before = CurriculumState(("body", "head")).freeze("body")
        >>> ramped = warmup_state(before, before.unfreeze("body"), steps=0, warmup_steps=4)
        >>> ramped.coefficient("body"), ramped.coefficient("head")
        (0.25, 1.0)
    """
    if steps + 1 >= warmup_steps:
        return target
    return WarmupRamp(before, target, warmup_steps).state(steps)
