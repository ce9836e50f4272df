"""The ``"eval"`` norm policy, enforced with forward hooks that read the live state.

Under ``norm_policy="eval"`` a normalization module with running statistics
(BatchNorm, SyncBatchNorm, InstanceNorm with ``track_running_stats``) inside a
frozen layer computes as in eval mode whatever ``model.train()`` says: its
running statistics never change and it normalizes with them. Nothing about the
model is changed for good: no module is swapped (``state_dict`` keys stay),
``track_running_stats`` is not flipped (``model.eval()`` keeps working as
usual), and ``module.training`` is only lowered for the duration of the
module's own forward, then restored, also when the forward raises.

The hooks are installed once per model, the first time a state with the
``"eval"`` policy is applied to it, and ask the model's current curriculum
for its state at each forward: a Mentee that replaces its Curriculum (a new
phase) keeps one set of hooks, reading the newest state.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from torch import nn

from ._state import CurriculumState
from ._weight_decay import is_normalization

__all__ = ["attach_norm_policy", "modules_with_running_statistics"]


class HasState(Protocol):
    @property
    def state(self) -> CurriculumState: ...


# model -> the curriculum that last attached to it, by weak reference (a strong
# one would keep the model alive through the curriculum: a key never freed).
_SOURCES: weakref.WeakKeyDictionary[nn.Module, weakref.ReferenceType[HasState]] = (
    weakref.WeakKeyDictionary()
)
# model -> the hook handles, so that they are installed once.
_HOOKS: weakref.WeakKeyDictionary[nn.Module, list[Any]] = weakref.WeakKeyDictionary()


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
) -> None:
    """Make ``curriculum`` the one whose live state the model's norm hooks read.

    Hooks are installed only when the curriculum's state has the ``"eval"``
    policy (they cost a few attribute reads per forward of each such module);
    once installed they stay, and do nothing under the other policies or once
    the curriculum is gone.

    Args:
        model: the bare model (hooks are keyed by it).
        curriculum: has a ``state`` attribute: the live state.
        modules: lists the modules to hook with their layers (called only
            when the hooks are installed).
    """
    _SOURCES[model] = weakref.ref(curriculum)
    if model in _HOOKS or curriculum.state.norm_policy != "eval":
        return
    handles: list[Any] = []
    model_reference = weakref.ref(model)
    for module, layer in modules():
        before, after = _hooks_for(model_reference, layer)
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after, always_call=True))
    _HOOKS[model] = handles


def _hooks_for(
    model_reference: weakref.ReferenceType[nn.Module], layer: str
) -> tuple[Callable[..., None], Callable[..., None]]:
    # What the pre-hook lowered, the post-hook raises again: a cell per hooked
    # module, so nothing is written onto the user's module.
    lowered = [False]

    def before(module: nn.Module, args: Any) -> None:
        if not module.training:
            return
        model = model_reference()
        reference = _SOURCES.get(model) if model is not None else None
        curriculum = reference() if reference is not None else None
        if curriculum is None:
            return
        state = curriculum.state
        if state.norm_policy != "eval":
            return
        position = state.layer_positions.get(layer)
        if position is not None and state.resolved_frozen()[position]:
            module.training = False
            lowered[0] = True

    def after(module: nn.Module, args: Any, output: Any) -> None:
        if lowered[0]:
            lowered[0] = False
            module.training = True

    return before, after
