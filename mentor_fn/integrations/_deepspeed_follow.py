"""Keeping a DeepSpeed engine's ZeRO optimizer in step with a Curriculum's optimizer.

The curriculum keeps its own optimizer (never stepped, no state): its groups,
lrs and coefficients are what one process would have. The follower derives
the ZeRO groups from it (:func:`zero_layout`), copies the lrs across after
every change, and re-initializes the ZeRO optimizer when the groups' contents
change (:func:`reinitialize`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import Curriculum, Plan, Rebuild
from .._wrapper.optimizers import build_optimizer
from ._deepspeed_zero import ZeroGroup, reinitialize, same_groups, zero_layout

__all__ = ["EngineFollower", "build_client_optimizer", "hyperparameters"]

_REINITIALIZED = (
    "engine.optimizer: DeepSpeed's ZeRO optimizer flattens and partitions its groups when it "
    "is built, so a new one replaced it in the same engine (state carried)"
)


def hyperparameters(group: Mapping[str, Any]) -> dict[str, Any]:
    """A param group's keys but ``params``."""
    return {key: value for key, value in group.items() if key != "params"}


class EngineFollower:
    """The ZeRO groups of a curriculum's optimizer, and the engine that holds them.

    Args:
        curriculum: the curriculum whose optimizer the engine follows.
    """

    def __init__(self, curriculum: Curriculum) -> None:
        self._curriculum = curriculum
        self.engine: Any = None
        """The DeepSpeed engine, once attached."""
        self.layout: tuple[ZeroGroup, ...] = ()
        """The ZeRO groups, in the order of the ZeRO optimizer's."""
        # The curriculum's optimizer, state and recipe that the layout was
        # derived from. Each is replaced, never changed, by a transition: a
        # new optimizer is a fresh phase, a new state or recipe a change the
        # engine has not followed yet.
        self._followed: tuple[object, object, object] = (None, None, None)

    def _current(self) -> tuple[object, object, object]:
        curriculum = self._curriculum
        return (curriculum.optimizer, curriculum.state, curriculum.recipe)

    def in_step(self) -> bool:
        """Whether the engine follows the curriculum as it is now (compared by identity)."""
        return all(a is b for a, b in zip(self._current(), self._followed, strict=True))

    def client_groups(self, layout: tuple[ZeroGroup, ...] | None = None) -> list[dict[str, Any]]:
        """The ZeRO groups as group dicts: ``layout``, or the one the curriculum derives now.
        They become the followed layout.

        Raises:
            ValueError: no parameter is trainable (ZeRO needs at least one).
        """
        optimizer = self._curriculum.optimizer
        assert optimizer is not None
        if layout is None:
            layout = zero_layout(optimizer.param_groups, None)
        if not layout:
            raise ValueError(
                "no parameter is trainable in the curriculum's state: a ZeRO optimizer needs at "
                "least one (unfreeze a layer before starting)"
            )
        self.layout, self._followed = layout, self._current()
        return self._group_dicts(layout)

    def follow(self, plan: Plan | None) -> Plan | None:
        """Make the engine follow the curriculum; the plan executed on both.

        Lrs are copied into the ZeRO groups in place; a change of the groups'
        contents re-initializes the ZeRO optimizer and returns a Rebuild that
        says so.

        Raises:
            RuntimeError: no parameter is trainable any more (the curriculum has
                changed already; the engine keeps its last layout).
        """
        if self.engine is None:
            return plan
        if self.in_step():
            self.sync()
            return plan
        optimizer = self._curriculum.optimizer
        assert optimizer is not None
        fresh = optimizer is not self._followed[0]
        layout = zero_layout(optimizer.param_groups, None if fresh else self.layout)
        if not fresh and same_groups(layout, self.layout):
            self._followed = self._current()
            self.sync()
            return plan
        if not layout:
            raise RuntimeError(
                "no parameter is trainable any more: a ZeRO optimizer needs at least one, so the "
                "engine cannot follow this state (the curriculum has changed; unfreeze a layer)"
            )
        self.reinitialize(layout, carry=not fresh)
        reasons = plan.reasons if isinstance(plan, Rebuild) else ()
        objects = plan.new_objects if isinstance(plan, Rebuild) else ()
        return Rebuild(
            (
                *reasons,
                "the set of trainable parameters changed, which DeepSpeed's ZeRO optimizer "
                "cannot follow in place",
            ),
            (*objects, _REINITIALIZED),
        )

    def reinitialize(self, layout: tuple[ZeroGroup, ...], *, carry: bool) -> None:
        """A new ZeRO optimizer over ``layout`` (see :func:`reinitialize`); lrs copied."""
        recipe = self._curriculum.recipe
        groups = self._group_dicts(layout)
        reinitialize(
            self.engine,
            layout,
            [hyperparameters(group) for group in groups],
            make_optimizer=lambda groups: build_optimizer(recipe, groups),
            carry=carry,
        )
        self.layout, self._followed = layout, self._current()
        self.sync()

    def sync(self) -> None:
        """Copy each curriculum group's lr into its ZeRO groups (O(groups))."""
        optimizer = self._curriculum.optimizer
        assert optimizer is not None
        sources = optimizer.param_groups
        for group, target in zip(self.layout, self.engine.optimizer.param_groups, strict=True):
            target["lr"] = sources[group.source]["lr"]

    def _group_dicts(self, layout: tuple[ZeroGroup, ...]) -> list[dict[str, Any]]:
        optimizer = self._curriculum.optimizer
        assert optimizer is not None
        return [
            {
                **hyperparameters(optimizer.param_groups[group.source]),
                "params": list(group.parameters),
            }
            for group in layout
        ]


def build_client_optimizer(
    curriculum: Curriculum, groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """The curriculum's optimizer class over ``groups`` (linear time, torch's defaults filled)."""
    return build_optimizer(curriculum.recipe, groups)
