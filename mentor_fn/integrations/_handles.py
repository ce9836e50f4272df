"""Stable handles on a Curriculum's optimizer and scheduler, for frameworks that keep references.

Lightning (its ``LightningOptimizer`` and ``lr_scheduler_configs``), the
transformers ``Trainer`` and accelerate's ``AcceleratedOptimizer`` hold on to
the optimizer and scheduler they were handed, for the whole run. A
``Curriculum`` replaces those objects at a fresh phase (``build()``) and on
loading a state dict, and may at a rebuild. A handle forwards every call to
whatever object the Curriculum holds at that moment, so the framework's
references never go stale, whichever of those happened.

The handles' state dicts are the run's (see ``CurriculumRun``): the
curriculum's own, with optimizer state keyed by parameter name and the
scheduler's state inside, and the schedule's cursor. Both frameworks save
``optimizer.state_dict()`` into their checkpoints and, on resume, call
``optimizer.load_state_dict()`` after building the optimizer and before
training; loading through the handle restores the curriculum's layout and
its optimizer state in one go, so nothing is ever loaded by position into
another phase's layout.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from .._wrapper.curriculum import Curriculum
from .._wrapper.plan_execution import reference_index
from ._forwarding import ForwardingOptimizer

__all__ = ["LiveOptimizer", "LivePlateauScheduler", "LiveScheduler", "scheduler_handle"]

_SCHEDULER_FORMAT = "mentor_fn.integrations.LiveScheduler"


class CurriculumRun(Protocol):
    """What a handle needs of the run it forwards to (``_run.CurriculumRun`` is one).

    A protocol, not an import: the run module imports the handles, so the
    handles name what they use instead of importing the run back.
    """

    @property
    def curriculum(self) -> Curriculum: ...

    @property
    def attached(self) -> bool: ...

    @property
    def attach_hint(self) -> str: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None: ...


class LiveOptimizer(ForwardingOptimizer):
    """The optimizer a :class:`~mentor_fn.Curriculum` holds now, whichever object that is.

    ``param_groups``, ``state``, ``defaults``, :meth:`step` and
    :meth:`zero_grad` are the live optimizer's. :meth:`state_dict` and
    :meth:`load_state_dict` save and restore the whole run (curriculum and
    schedule cursor). Step hooks registered on the handle survive phase changes.
    """

    def __init__(self, run: CurriculumRun) -> None:
        # Not Optimizer.__init__: groups and state belong to the live optimizer.
        self._run = run
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable[..., Any]] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable[..., Any]] = (
            OrderedDict()
        )
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable[..., Any]] = (
            OrderedDict()
        )

    @property
    def run(self) -> CurriculumRun:
        """The run whose optimizer this handle is."""
        return self._run

    @property
    def live(self) -> torch.optim.Optimizer:
        """The Curriculum's optimizer right now.

        Raises:
            RuntimeError: the Curriculum has not been built yet.
        """
        optimizer = self._run.curriculum.optimizer
        if optimizer is None:
            raise RuntimeError(
                "the curriculum has no optimizer yet: the training run has not started"
            )
        return optimizer

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step the live optimizer (with the handle's step hooks around it).

        Raises:
            RuntimeError: the adapter's callback does not drive the run (it was
                left out of the framework's callbacks); nothing has changed.
        """
        if not self._run.attached:
            raise RuntimeError(
                "the curriculum's optimizer is being stepped, but its CurriculumCallback is not "
                "driving the run, so no phase would ever change: " + self._run.attach_hint
            )
        arguments: tuple[Any, ...] = () if closure is None else (closure,)
        keywords: dict[str, Any] = {}
        for hook in list(self._optimizer_step_pre_hooks.values()):
            changed = hook(self, arguments, keywords)
            if changed is not None:
                arguments, keywords = changed
        result = self.live.step(*arguments, **keywords)
        for hook in list(self._optimizer_step_post_hooks.values()):
            hook(self, arguments, keywords)
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.live.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise TypeError(
            "the curriculum derives the param groups from its state: change the state "
            "(curriculum.update, unfreeze, set_lr_coefficient) instead of adding a group"
        )

    def state_dict(self) -> dict[str, Any]:
        """The run's state: the curriculum's (optimizer state by parameter name,
        scheduler included) and the schedule's cursor. Plain data and tensors."""
        for hook in list(self._optimizer_state_dict_pre_hooks.values()):
            hook(self)
        state = self._run.state_dict()
        for hook in list(self._optimizer_state_dict_post_hooks.values()):
            changed = hook(self, state)
            if changed is not None:
                state = changed
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the curriculum's layout and state, then the cursor.

        Raises:
            ValueError: not a run's state dict (for example torch's own optimizer
                state dict, saved by a run without mentor_fn), or one that does
                not fit this curriculum or schedule.
        """
        for hook in list(self._optimizer_load_state_dict_pre_hooks.values()):
            changed = hook(self, state_dict)
            if changed is not None:
                state_dict = changed
        self._run.load_state_dict(state_dict)
        for hook in list(self._optimizer_load_state_dict_post_hooks.values()):
            hook(self)

    def __repr__(self) -> str:
        return f"LiveOptimizer({self._run.curriculum!r})"


class LiveScheduler(LRScheduler):
    """The scheduler a :class:`~mentor_fn.Curriculum` holds now, whichever object that is.

    :meth:`step` steps the live scheduler (nothing without one: a constant
    lr); other attributes (``last_epoch``, ``base_lrs``...) are read from it.
    Its state travels in the optimizer handle's state dict (the curriculum
    saves the scheduler with the optimizer), so :meth:`state_dict` is only a
    marker that :meth:`load_state_dict` checks.
    """

    def __init__(
        self,
        run: CurriculumRun,
        optimizer: torch.optim.Optimizer,
        *,
        reports_reference: bool = False,
    ) -> None:
        # Not LRScheduler.__init__: it would write initial lrs into the live groups.
        self._run = run
        self.optimizer = optimizer
        self._reports_reference = reports_reference

    @property
    def live(self) -> Any:
        """The Curriculum's scheduler right now (None: no scheduler factory)."""
        return self._run.curriculum.scheduler

    def step(self, *args: Any, **kwargs: Any) -> None:
        live = self.live
        if live is not None:
            live.step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:  # type: ignore[override]
        """The live scheduler's last lr of each group; with ``reports_reference``, only the
        run's lr (the reference group's), for frameworks that log ``get_last_lr()[0]``."""
        live_optimizer = self._run.curriculum.optimizer
        assert live_optimizer is not None
        if self._reports_reference:
            groups = live_optimizer.param_groups
            return [float(groups[reference_index(live_optimizer)]["lr"])]
        live = self.live
        if live is None:
            return [group["lr"] for group in live_optimizer.param_groups]
        return list(live.get_last_lr())

    def get_lr(self) -> list[float]:  # type: ignore[override]
        live = self.live
        if live is None or self._reports_reference:
            return self.get_last_lr()
        return list(live.get_lr())

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": _SCHEDULER_FORMAT,
            "note": "the scheduler's state is saved with the optimizer's (mentor_fn Curriculum)",
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check the marker; the optimizer handle's load has restored the scheduler.

        Raises:
            ValueError: another scheduler's state dict (a run without mentor_fn).
        """
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != _SCHEDULER_FORMAT:
            raise ValueError(
                "not a mentor_fn scheduler handle's state dict (was the checkpoint saved by a "
                f"run without the curriculum callback?): keys {sorted(state_dict, key=repr)}"
                if isinstance(state_dict, Mapping)
                else f"not a mentor_fn scheduler handle's state dict: {state_dict!r}"
            )

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the handle lacks: read them from the live scheduler.
        if name.startswith("__") or name in ("_run", "optimizer", "_reports_reference"):
            raise AttributeError(name)
        live = self.live
        if live is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (no scheduler)")
        return getattr(live, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.live!r})"


class LivePlateauScheduler(LiveScheduler, ReduceLROnPlateau):
    """:class:`LiveScheduler` for a ``ReduceLROnPlateau``: frameworks recognize it by type
    and step it with the monitored metric."""


def scheduler_handle(
    run: CurriculumRun, optimizer: torch.optim.Optimizer, *, reports_reference: bool = False
) -> LiveScheduler:
    """The handle for the run's scheduler, of the kind frameworks expect for it.

    ``optimizer`` is what the handle says it is attached to (frameworks check
    that it is the optimizer they were given): the run's optimizer handle, or
    under DeepSpeed the optimizer the engine is built with.
    ``reports_reference``: its ``get_last_lr()`` is ``[the run's lr]`` (see
    :meth:`LiveScheduler.get_last_lr`).
    """
    kind = (
        LivePlateauScheduler
        if isinstance(run.curriculum.scheduler, ReduceLROnPlateau)
        else LiveScheduler
    )
    return kind(run, optimizer, reports_reference=reports_reference)
