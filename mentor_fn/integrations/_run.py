"""A curriculum run inside someone else's training loop: what both framework adapters share.

The framework owns the loop; the run owns the :class:`~mentor_fn.Curriculum`,
the optional :class:`~mentor_fn.ScheduleRunner` driving it, and the handles
the framework is given in place of the optimizer and scheduler. The adapters
only translate the framework's events into :meth:`CurriculumRun.step` (after
each optimizer step) and :meth:`CurriculumRun.epoch_end` (with the epoch's
metrics), and save and load the run through the optimizer handle.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import torch

from .. import Curriculum, Plan, Schedule, ScheduleRunner, apply_requires_grad
from ._handles import LiveOptimizer, LiveScheduler, scheduler_handle

__all__ = ["CurriculumRun", "plain_metrics"]

_FORMAT_NAME, _FORMAT_VERSION = "mentor_fn.integrations.CurriculumRun", 1
_FIELDS = ("curriculum", "schedule", "extra")


class CurriculumRun:
    """A Curriculum, the schedule run on it (optional), and stable handles on its
    optimizer and scheduler.

    Args:
        curriculum: the curriculum of the model the framework trains.
        schedule: phases to run; None leaves every change to the user.
        attach_hint: what the user must do for the adapter's callback to drive
            the run (the optimizer handle refuses to step until it does).
        reports_reference: the scheduler handle reports the run's lr only
            (``get_last_lr() == [reference lr]``), for frameworks that log
            ``get_last_lr()[0]`` as the run's lr.
    """

    def __init__(
        self,
        curriculum: Curriculum,
        schedule: Schedule | None = None,
        *,
        attach_hint: str = "add the adapter's CurriculumCallback to the framework's callbacks",
        reports_reference: bool = False,
    ) -> None:
        if not isinstance(curriculum, Curriculum):
            raise TypeError(f"curriculum must be a mentor_fn.Curriculum, got {curriculum!r}")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a mentor_fn.Schedule or None, got {schedule!r}")
        self._curriculum = curriculum
        self._runner = None if schedule is None else ScheduleRunner(curriculum, schedule)
        self._optimizer = LiveOptimizer(self)
        self._scheduler: LiveScheduler | None = None
        self._started = False
        self._attached = False
        self._attach_hint = attach_hint
        self._reports_reference = reports_reference
        self.extra: dict[str, Any] = {}
        """Plain data an adapter saves and restores with the run (its own bookkeeping)."""

    @property
    def curriculum(self) -> Curriculum:
        return self._curriculum

    @property
    def runner(self) -> ScheduleRunner | None:
        return self._runner

    @property
    def attached(self) -> bool:
        """Whether the adapter's callback drives the run now (between train begin and end)."""
        return self._attached

    @property
    def attach_hint(self) -> str:
        return self._attach_hint

    def attach(self) -> None:
        """The callback drives the run from now on: the optimizer handle may step."""
        self._attached = True

    def detach(self) -> None:
        """Training ended: the optimizer handle refuses to step until the next attach."""
        self._attached = False

    @property
    def optimizer(self) -> LiveOptimizer:
        """The handle to give the framework as its optimizer."""
        return self._optimizer

    @property
    def scheduler(self) -> LiveScheduler:
        """The handle to give the framework as its scheduler (a constant lr without one).

        Its kind (``ReduceLROnPlateau`` or not) is the curriculum's scheduler's,
        known once the run has started.
        """
        if self._scheduler is None:
            if not self._started:
                raise RuntimeError("start() the run before asking for its scheduler handle")
            self._scheduler = scheduler_handle(
                self, self._optimizer, reports_reference=self._reports_reference
            )
        return self._scheduler

    def start(self) -> None:
        """Enter the schedule's first phase and build a fresh optimizer and scheduler.

        Called again (a second ``fit``/``train`` with the same run), it
        continues where the run stands and only sets the model's
        ``requires_grad`` flags from the curriculum's state again.
        """
        if self._started:
            apply_requires_grad(self._curriculum.state, self._curriculum.model)
            return
        if self._runner is not None:
            self._runner.start()
        self._curriculum.build()
        self._started = True

    def step(self) -> Plan | None:
        """After each optimizer step: the executed plan, or None."""
        if self._runner is None:
            return None
        return self._runner.step()

    def epoch_end(self, metrics: Mapping[str, Any]) -> Plan | None:
        """After each epoch, with its metrics: the executed plan, or None."""
        if self._runner is None:
            return None
        return self._runner.epoch_end(metrics)

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors, loadable with ``torch.load(weights_only=True)``."""
        return {
            "format": _FORMAT_NAME,
            "version": _FORMAT_VERSION,
            "curriculum": self._curriculum.state_dict(),
            "schedule": None if self._runner is None else self._runner.state_dict(),
            "extra": dict(self.extra),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the curriculum first, then the schedule's cursor.

        Raises:
            ValueError: not a run's state dict, a schedule saved without one
                here (or the reverse), or contents that do not fit.
        """
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != _FORMAT_NAME:
            keys = sorted(state_dict, key=repr) if isinstance(state_dict, Mapping) else state_dict
            raise ValueError(
                "not the state dict of a mentor_fn curriculum run (a checkpoint saved without the "
                f"curriculum callback?): got {keys!r}"
            )
        if state_dict.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"malformed curriculum run state dict (version {state_dict.get('version')!r}, "
                f"fields {sorted(state_dict)}); this reads version {_FORMAT_VERSION} with the "
                f"fields {_FIELDS}"
            )
        self.load_fields(state_dict)

    def load_fields(self, fields: Mapping[str, Any]) -> None:
        """Restore the fields of a :meth:`state_dict` (``curriculum``, ``schedule``,
        ``extra``), kept by the caller in a file of its own (a DeepSpeed run file).

        Raises:
            ValueError: a field missing or malformed, a schedule saved without
                one here (or the reverse), or contents that do not fit.
        """
        missing = [field for field in _FIELDS if field not in fields]
        if missing:
            raise ValueError(
                f"malformed curriculum run state: the fields {missing} are missing; this reads "
                f"the fields {_FIELDS}"
            )
        saved_schedule, extra = fields["schedule"], fields["extra"]
        if not isinstance(extra, Mapping):
            raise ValueError(f"malformed curriculum run state dict: 'extra' is {extra!r}")
        if (saved_schedule is None) != (self._runner is None):
            raise ValueError(
                "the checkpoint was saved with a schedule and this run has none"
                if self._runner is None
                else "the checkpoint was saved without a schedule and this run has one"
            )
        self._curriculum.load_state_dict(fields["curriculum"])
        if self._runner is not None:
            self._runner.load_state_dict(saved_schedule)
        self.extra = dict(extra)
        self._started = True


def plain_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a framework's metrics, as floats (one-element tensors too).

    Other entries (strings, lists, tensors of several values) are left out:
    conditions read numbers only.
    """
    plain: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        plain[str(name)] = float(value)
    return plain
