"""Planning a transition over the groups it touches only: O(changed layers), not O(model).

:func:`~mentor_fn.plan` reads every group of the optimizer and resolves every
layer of both states: linear in the model, which a schedule that changes a
coefficient at every warmup step would pay at every step. A
:class:`~mentor_fn.Curriculum` keeps instead, per optimizer, the groups that
cover each layer (:class:`GroupIndex`), and plans from the layers whose rules
changed (:func:`layer_changes`: the subtrees of the rules that differ between
the two states). Only the groups covering those layers are read.

It relies on what the pure plan checks of every group, established once: the
groups fit the old state (each is mentor_fn's, its layers share the
coefficient it records, every trainable layer that owns parameters has one).
That holds by construction after ``build()`` and a rebuild, is checked with
the pure plan after loading, and every patch keeps it. Then a group that no
changed layer is in needs nothing, and the incremental plan equals the pure
one (property-tested). Where the pure plan would rebuild, the incremental one
hands over to it, for its reasons.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Any

import torch

from .plan import GroupScale, NoChange, Patch, Plan
from .state import CurriculumState

__all__ = ["GroupIndex", "LayerChanges", "layer_changes"]


@dataclass(frozen=True)
class LayerChanges:
    """The layers a transition may change, with what they resolve to before and after.

    Attributes:
        positions: ascending positions in the states' ``layers``.
        names: the layers at those positions.
        old_trainable: whether each trained in the old state.
        new_frozen: whether each is frozen in the new state.
        new_trainable: whether each trains in the new state.
        new_coefficients: each one's coefficient in the new state.
    """

    positions: list[int]
    names: list[str]
    old_trainable: list[bool]
    new_frozen: list[bool]
    new_trainable: list[bool]
    new_coefficients: list[float]


def layer_changes(old: CurriculumState, new: CurriculumState) -> LayerChanges | None:
    """What moving from ``old`` to ``new`` may change, layer by layer; None: anything may.

    O(rules + the subtrees of the rules that differ). None when the states
    differ in more than their rules (layers, layer kinds, norm policy).
    """
    positions = new.changed_positions(old)
    if positions is None:
        return None
    _, old_trainable, _ = old.resolve_at(positions)
    new_frozen, new_trainable, new_coefficients = new.resolve_at(positions)
    layers = new.layers
    return LayerChanges(
        positions,
        [layers[position] for position in positions],
        old_trainable,
        new_frozen,
        new_trainable,
        new_coefficients,
    )


class GroupIndex:
    """The groups of one optimizer that cover each layer, as they were when indexed.

    Args:
        optimizer: an optimizer whose groups fit the curriculum's state (see
            the module's docstring).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        groups = optimizer.param_groups
        self._groups = groups  # the list object: a rebuild in place fills it anew
        self._indexed = list(groups)  # the group dicts themselves
        by_layer: dict[str, list[int]] = {}
        for number, group in enumerate(groups):
            for layer in group.get("layers") or ():
                by_layer.setdefault(layer, []).append(number)
        self._by_layer = by_layer

    def fits(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer`` still holds the indexed list, with as many groups.

        A group added or removed by other code fails this; a group replaced
        in place is caught when a plan touches it.
        """
        groups = optimizer.param_groups
        return groups is self._groups and len(groups) == len(self._indexed)

    def groups_covering(self, layers: Iterable[str]) -> list[dict[str, Any]] | None:
        """The live groups that cover ``layers``; None if one is no longer the indexed one."""
        groups, indexed = self._groups, self._indexed
        numbers = sorted({number for layer in layers for number in self._by_layer.get(layer, ())})
        if any(groups[number] is not indexed[number] for number in numbers):
            return None
        return [groups[number] for number in numbers]

    def plan(self, changes: LayerChanges, owners: Set[str]) -> Plan | None:
        """``plan(layout_of(optimizer), old, new)`` read off the touched groups only.

        Args:
            changes: ``layer_changes(old, new)``.
            owners: the layers that own parameters (``new.parameter_owners``).

        Returns:
            NoChange or Patch, exactly as the pure plan; None where it would
            rebuild (or a touched group is no longer the indexed one): plan in
            full then.
        """
        by_layer = self._by_layer
        targets: dict[int, set[float]] = {}
        changed_in: dict[int, int] = {}
        reactivated: list[str] = []
        for name, trained, trains, coefficient in zip(
            changes.names, changes.old_trainable, changes.new_trainable, changes.new_coefficients
        ):
            numbers = by_layer.get(name)
            if numbers is None:
                if trains and name in owners:
                    return None  # a trainable layer with no group
                continue
            for number in numbers:
                targets.setdefault(number, set()).add(coefficient)
                changed_in[number] = changed_in.get(number, 0) + 1
            if trains and not trained:
                reactivated.append(name)
        groups, indexed = self._groups, self._indexed
        scales: list[GroupScale] = []
        for number in sorted(targets):
            group = groups[number]
            if group is not indexed[number]:
                return None
            current = float(group["coefficient"])
            values = targets[number]
            # The group's unchanged layers keep the coefficient it records.
            if changed_in[number] < len(group["layers"]):
                values.add(current)
            if len(values) > 1:
                return None  # a coalesced group must split
            (target,) = values
            if target != current:
                if current == 0:
                    return None  # 0 -> non-zero: the ratio is undefined
                scales.append(GroupScale(number, current, target))
        if not scales and not reactivated:
            return NoChange()
        return Patch(tuple(scales), tuple(reactivated))
