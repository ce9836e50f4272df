"""The ``"eval"`` norm policy, enforced with forward hooks that follow the live state.

Under ``norm_policy="eval"`` a normalization module with running statistics
(BatchNorm, SyncBatchNorm, InstanceNorm with ``track_running_stats``) inside a
frozen layer computes as in eval mode whatever ``model.train()`` says: its
running statistics never change and it normalizes with them. Nothing about the
model is changed for good: no module is swapped (``state_dict`` keys stay),
``track_running_stats`` is not flipped (``model.eval()`` keeps working as
usual), and ``module.training`` is only lowered for the duration of the
module's own forward, then restored, also when the forward raises.

The hooks are installed once per model, the first time a state with the
``"eval"`` policy is applied to it. Each attach (a Curriculum calls it
whenever its state is set) writes into one small per-model record which of
the hooked layers compute as in eval mode now, and which curriculum said so;
the hooks read only that record. A Mentee that replaces its Curriculum (a new
phase) keeps one set of hooks, following the newest curriculum; once that
curriculum is gone, the hooks do nothing.

Reading one attribute of an object the hooks hold (never a global registry)
keeps them cheap in eager mode and traceable by ``torch.compile``: dynamo
guards on that record, so a forward compiled under one state is recompiled
when a transition changes which layers are lowered, and only then.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from torch import nn

from .._core.state import CurriculumState
from .._core.weight_decay import is_normalization

__all__ = ["attach_norm_policy", "modules_with_running_statistics"]


class HasState(Protocol):
    @property
    def state(self) -> CurriculumState: ...


class _Record:
    """What one model's hooks read: the layers lowered to eval mode now, and by whom."""

    __slots__ = ("curriculum", "hooked", "layers", "lowered")

    def __init__(self, layers: tuple[str, ...]) -> None:
        self.layers = layers  # the layers of the hooked modules
        self.hooked = frozenset(layers)
        self.lowered: frozenset[str] = frozenset()
        self.curriculum: weakref.ReferenceType[HasState] | None = None

    def follow(
        self, curriculum: HasState, changed: Iterable[tuple[str, bool]] | None = None
    ) -> None:
        """Take ``curriculum``'s current state; forget it (lower nothing) once it is gone.

        ``changed``: the layers that may have changed since its previous
        state, with whether each is frozen now (that state's norm policy and
        layers were the same); None: read the whole state.
        """
        current = self.curriculum
        if current is None or current() is not curriculum:

            def forget(reference: weakref.ReferenceType[HasState]) -> None:
                if self.curriculum is reference:
                    self.lowered = frozenset()

            self.curriculum = weakref.ref(curriculum, forget)
            changed = None
        if changed is None:
            lowered = _lowered_layers(curriculum.state, self.layers)
        elif curriculum.state.norm_policy != "eval":
            return  # nothing was lowered under the previous state, nothing is now
        else:
            updates = [(layer, frozen) for layer, frozen in changed if layer in self.hooked]
            if not updates:
                return
            now = set(self.lowered)
            for layer, frozen in updates:
                if frozen:
                    now.add(layer)
                else:
                    now.discard(layer)
            lowered = frozenset(now)
        # A new object only when it differs: compiled code guards on it.
        if lowered != self.lowered:
            self.lowered = lowered


# model -> its hooks' record, by weak reference to the model (the record holds
# no reference to the model, nor, but weakly, to the curriculum).
_RECORDS: weakref.WeakKeyDictionary[nn.Module, _Record] = weakref.WeakKeyDictionary()


def _lowered_layers(state: CurriculumState, layers: tuple[str, ...]) -> frozenset[str]:
    """Which of ``layers`` compute as in eval mode under ``state``: frozen ones under "eval"."""
    if state.norm_policy != "eval":
        return frozenset()
    frozen, positions = state.resolved_frozen(), state.layer_positions
    return frozenset(
        layer
        for layer in layers
        if (position := positions.get(layer)) is not None and frozen[position]
    )


def modules_with_running_statistics(
    named_modules: Iterable[tuple[str, nn.Module]], layers: Iterable[str]
) -> list[tuple[nn.Module, str]]:
    """Normalization modules that keep running statistics, each with its layer.

    ``named_modules`` yields ``(path, module)`` with paths as layer names spell
    them (wrappers looked through). A module's layer is the nearest
    ancestor-or-self path among ``layers`` (a BatchNorm without affine
    parameters is no layer of its own: its parent governs it); modules under
    no layer are left out (nothing can freeze them).
    """
    known = set(layers)
    found = []
    for path, module in named_modules:
        if not (is_normalization(module) and getattr(module, "running_mean", None) is not None):
            continue
        head = path
        while head and head not in known:
            head = head.rpartition(".")[0]
        if head:
            found.append((module, head))
    return found


def attach_norm_policy(
    model: nn.Module,
    curriculum: HasState,
    modules: Callable[[], list[tuple[nn.Module, str]]],
    changed: Iterable[tuple[str, bool]] | None = None,
) -> None:
    """Make the model's norm hooks follow ``curriculum``'s current state.

    Call it whenever the curriculum's state is set. Hooks are installed only
    when that state has the ``"eval"`` policy (they cost an attribute read and
    a set lookup per forward of each such module); once installed they stay,
    and do nothing under the other policies or once the curriculum is gone.

    Args:
        model: the bare model (hooks are keyed by it).
        curriculum: has a ``state`` attribute: its current state.
        modules: lists the modules to hook with their layers (called only
            when the hooks are installed).
        changed: when the curriculum's previous state had the same layers
            and norm policy, the layers that may differ, each with whether it
            is frozen now (what a transition changed): only those are read.
    """
    record = _RECORDS.get(model)
    if record is None:
        if curriculum.state.norm_policy != "eval":
            return
        hooked = modules()
        record = _Record(tuple(dict.fromkeys(layer for _, layer in hooked)))
        for module, layer in hooked:
            before, after = _hooks_for(record, layer)
            module.register_forward_pre_hook(before)
            module.register_forward_hook(after, always_call=True)
        _RECORDS[model] = record
        changed = None
    record.follow(curriculum, changed)


def _hooks_for(record: _Record, layer: str) -> tuple[Callable[..., None], Callable[..., None]]:
    # What the pre-hook lowered, the post-hook raises again: a cell per hooked
    # module, so nothing is written onto the user's module.
    lowered = [False]

    def before(module: nn.Module, args: Any) -> None:
        if module.training and layer in record.lowered:
            module.training = False
            lowered[0] = True

    def after(module: nn.Module, args: Any, output: Any) -> None:
        if lowered[0]:
            lowered[0] = False
            module.training = True

    return before, after
