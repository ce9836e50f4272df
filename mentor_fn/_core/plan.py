"""Planning the move of a live optimizer from one state to the next (pure).

``plan(layout, old, new)`` decides whether the optimizer needs nothing
(:class:`NoChange`), can be patched in place (:class:`Patch`: scale some
groups' lrs, give re-activated parameters fresh state) or must be rebuilt
(:class:`Rebuild`, with human-readable reasons).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .groups import DECAY_KEY
from .messages import short_list
from .state import CurriculumState

__all__ = [
    "GroupLayout",
    "GroupScale",
    "NoChange",
    "Patch",
    "Plan",
    "Rebuild",
    "layout_of",
    "plan",
]


@dataclass(frozen=True)
class GroupLayout:
    """What one live optimizer group covers.

    Attributes:
        layers: the layer names of the group, or None for a group that was not
            derived by mentor_fn (no ``layers`` key).
        coefficient: the coefficient the group's lr currently reflects, or None.
        applies_weight_decay: which half of its layers' parameters the group
            holds when groups are split by weight decay (True: those that
            decay; False: those the ``no_weight_decay`` rules exclude), or
            None when they are not split.
    """

    layers: tuple[str, ...] | None
    coefficient: float | None
    applies_weight_decay: bool | None = None

    def describe(self, number: int) -> str:
        """``optimizer group 3``, with its half when split: ``(no-decay half)``."""
        if self.applies_weight_decay is None:
            return f"optimizer group {number}"
        half = "decay" if self.applies_weight_decay else "no-decay"
        return f"optimizer group {number} ({half} half)"


@dataclass(frozen=True)
class GroupScale:
    """Scale group ``group`` from coefficient ``old`` to ``new`` (``lr *= new / old``)."""

    group: int
    old: float
    new: float

    @property
    def ratio(self) -> float:
        return self.new / self.old


@dataclass(frozen=True)
class NoChange:
    """The optimizer needs no change (requires_grad flags are still applied)."""


@dataclass(frozen=True)
class Patch:
    """Change the optimizer in place.

    Attributes:
        scales: groups whose lr-like values scale by ``new / old``, inert groups
            of frozen layers included, so a later unfreeze has the right lr.
        reactivated: layers trainable again whose parameters get fresh
            optimizer state.
    """

    scales: tuple[GroupScale, ...] = ()
    reactivated: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rebuild:
    """The optimizer must be rebuilt from the derived groups; ``reasons`` says why.

    Attributes:
        reasons: why, human-readable.
        new_objects: what an executed rebuild replaced with new objects, each
            with the reason; empty when the optimizer and the scheduler were
            rebuilt in place (the same objects, new groups and state inside),
            always so for a plan not yet executed.
    """

    reasons: tuple[str, ...]
    new_objects: tuple[str, ...] = ()


Plan = NoChange | Patch | Rebuild


def layout_of(
    optimizer: torch.optim.Optimizer | Iterable[Mapping[str, Any]],
) -> tuple[GroupLayout, ...]:
    """The layout of a live optimizer (or of a list of group dicts).

    Reads the ``layers`` and ``coefficient`` keys that :func:`param_groups`
    puts in every group, and ``applies_weight_decay`` where groups are split
    by weight decay.
    """
    groups = optimizer.param_groups if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    layout = []
    for group in groups:
        layers = group.get("layers")
        coefficient = group.get("coefficient")
        applies = group.get(DECAY_KEY)
        layout.append(
            GroupLayout(
                tuple(layers) if layers is not None else None,
                float(coefficient) if coefficient is not None else None,
                bool(applies) if applies is not None else None,
            )
        )
    return tuple(layout)


def plan(layout: Iterable[GroupLayout], old: CurriculumState, new: CurriculumState) -> Plan:
    """How to move an optimizer with ``layout``, derived under ``old``, to ``new``.

    * :class:`Patch` when every layer that owns parameters and trains in
      ``new`` (``new.resolved_trainable()``) already has a group, every
      group's layers still share one coefficient, and no changed group goes
      from coefficient 0 to non-zero;
    * :class:`NoChange` when such a patch would do nothing;
    * :class:`Rebuild` otherwise, with the reasons.

    Groups split by weight decay: a layer may be in two groups when one holds
    its decay half and the other its no-decay half; each half is scaled on
    its own, so a coefficient change patches both, and the halves of a
    frozen layer stay in place, inert, like any group of a frozen layer.

    Raises:
        ValueError: ``old`` and ``new`` are states of different layers.
    """
    if not isinstance(old, CurriculumState) or not isinstance(new, CurriculumState):
        raise TypeError("plan(layout, old, new) takes two CurriculumState values")
    if old.layers != new.layers:
        raise ValueError("plan: old and new states have different layers")
    groups = tuple(layout)
    index = new.layer_positions
    new_trainable = new.resolved_trainable()
    new_coefficients = new.resolved_coefficients()
    old_trainable = old.resolved_trainable()

    reasons: list[str] = []
    # layer -> the half of its first group (None: not split); a layer seen in
    # both halves is in ``split``, so a third group is caught too.
    half_of: dict[str, bool | None] = {}
    split: set[str] = set()
    scales: list[GroupScale] = []
    for number, group in enumerate(groups):
        if group.layers is None or group.coefficient is None:
            reasons.append(
                f"optimizer group {number} was not derived by mentor_fn "
                "(it has no 'layers'/'coefficient' keys)"
            )
            continue
        applies = group.applies_weight_decay
        coefficients = set()
        for layer in group.layers:
            position = index.get(layer)
            if position is None:
                reasons.append(f"{group.describe(number)} covers unknown layer {layer!r}")
                continue
            if layer in half_of:
                first = half_of[layer]
                if applies is None or first is None or first == applies or layer in split:
                    reasons.append(
                        f"layer {layer!r} is in two optimizer groups"
                        + (
                            f" of the same weight-decay half (again in {group.describe(number)})"
                            if applies is not None and applies == first
                            else ""
                        )
                    )
                split.add(layer)
            else:
                half_of[layer] = applies
            coefficients.add(new_coefficients[position])
        if len(coefficients) > 1:
            detail = ", ".join(
                f"{layer} -> {new_coefficients[index[layer]]:g}"
                for layer in group.layers
                if layer in index
            )
            reasons.append(
                f"{group.describe(number)} covers layers whose coefficients now differ "
                f"({detail}); it must be split"
            )
        elif len(coefficients) == 1:
            target = coefficients.pop()
            if target != group.coefficient:
                if group.coefficient == 0:
                    reasons.append(
                        f"{group.describe(number)} ({short_list(group.layers, limit=6)}) goes "
                        f"from coefficient 0 to {target:g}: the ratio is undefined"
                    )
                else:
                    scales.append(GroupScale(number, group.coefficient, target))

    owners = new.parameter_owners
    missing = [
        layer
        for position, layer in enumerate(new.layers)
        if new_trainable[position] and layer in owners and layer not in half_of
    ]
    if missing:
        reasons.append(
            f"trainable layer(s) with no optimizer group: {short_list(missing, limit=6)} "
            "(frozen when the optimizer was built, or the optimizer has no per-layer groups)"
        )
    if reasons:
        return Rebuild(tuple(reasons))

    reactivated = tuple(
        layer
        for position, layer in enumerate(new.layers)
        if not old_trainable[position] and new_trainable[position] and layer in half_of
    )
    if not scales and not reactivated:
        return NoChange()
    return Patch(tuple(scales), reactivated)
