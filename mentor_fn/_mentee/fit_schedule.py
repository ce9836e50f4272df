"""A schedule driving ``Mentee.fit``: which run a fit call follows, and resuming one.

A Mentee holds at most one schedule run (a :class:`ScheduleRunner`), started
by ``fit(..., schedule=...)`` or restored by ``resume_training`` from the
checkpoint's schedule section. Every later ``fit`` continues it. The rules,
each checked before anything changes:

- a different schedule is refused (``CheckpointError`` for a run resumed from
  a checkpoint, ``ValueError`` otherwise) unless ``allow_schedule_change=True``:
  then the new schedule continues from the same cursor, which must fit it;
- while a schedule drives the model, the curriculum state is the schedule's:
  a change made by hand in between is refused, naming the layers
  (``detach_schedule()`` hands the state back to the user).
"""

from __future__ import annotations

from dataclasses import dataclass

from .._core.validation import validate_flag
from .._files.checkpoint import CheckpointError
from .._files.mentee_values import MenteeCheckpoint
from .._schedules.runner import ScheduleRunner, describe_schedule
from .._schedules.schedule import Schedule
from .._wrapper.curriculum import Curriculum

__all__ = [
    "FitSchedule",
    "check_fit_metrics",
    "check_resume_schedule",
    "check_serializable",
    "choose_fit_schedule",
    "resumed_runner",
]

_SPLITS = ("train_", "val_")

_HAND_CHANGE = (
    "The state was changed by hand while a schedule drives fit: undo the change, or call "
    "model.detach_schedule() to go on without the schedule"
)


@dataclass(frozen=True)
class FitSchedule:
    """What one ``fit`` call follows: a run to continue, a schedule to start, or neither."""

    runner: ScheduleRunner | None = None
    """The run to continue, on the model's current Curriculum."""
    start: Schedule | None = None
    """A schedule to start from its first phase."""

    @property
    def schedule(self) -> Schedule | None:
        return self.runner.schedule if self.runner is not None else self.start

    @property
    def first_phase(self) -> int:
        """The index of the phase the call starts in."""
        cursor = None if self.runner is None else self.runner.cursor
        return 0 if cursor is None else cursor.phase


def check_schedule_arguments(schedule: object, allow_schedule_change: object) -> None:
    """TypeError / ValueError for ``schedule`` and ``allow_schedule_change`` arguments."""
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule must be a mentor_fn.Schedule or None, got {type(schedule).__name__}"
        )
    validate_flag(allow_schedule_change, what="allow_schedule_change")
    if allow_schedule_change and schedule is None:
        raise ValueError("allow_schedule_change=True goes with the new schedule: pass schedule=...")


def choose_fit_schedule(
    current: ScheduleRunner | None,
    schedule: Schedule | None,
    curriculum: Curriculum,
    *,
    allow_schedule_change: bool,
    resumed: bool,
) -> FitSchedule:
    """What a fit call on a model holding ``current`` follows; nothing changes here.

    Args:
        current: the model's schedule run, or None.
        schedule: fit's ``schedule`` argument.
        curriculum: the model's Curriculum (a run moves onto it).
        allow_schedule_change: fit's argument.
        resumed: whether ``current`` came from a checkpoint (for the error's type).

    Raises:
        TypeError: a bad argument type.
        ValueError: another schedule without ``allow_schedule_change`` (a
            ``CheckpointError`` for a resumed run); a new schedule whose phases
            do not fit the cursor or the state; a state changed by hand.
    """
    check_schedule_arguments(schedule, allow_schedule_change)
    if current is None:
        return FitSchedule(start=schedule)
    if current.curriculum is curriculum:
        current.check_state(_HAND_CHANGE)
        runner = current
    else:
        runner = current.moved_to(curriculum, _HAND_CHANGE)
    if schedule is None or schedule == current.schedule:
        return FitSchedule(runner=runner)
    if not allow_schedule_change:
        error = CheckpointError if resumed else ValueError
        raise error(
            f"this model's run follows a schedule ({describe_schedule(current.schedule)}) and "
            f"fit was given another ({describe_schedule(schedule)}): pass "
            "allow_schedule_change=True to continue the run with the new schedule from the "
            "same cursor, or call model.detach_schedule() first to start it from its first phase"
        )
    switched = ScheduleRunner(curriculum, schedule)
    switched.load_saved(runner.saved(), allow_schedule_change=True)
    return FitSchedule(runner=switched)


def check_fit_metrics(schedule: Schedule, first_phase: int, *, has_val_data: bool) -> None:
    """Refuse a schedule whose phases (from ``first_phase`` on) read a metric fit cannot report.

    fit reports ``train_<name>`` for every metric of the training steps and
    ``val_<name>`` for those of the validation steps (with validation data).

    Raises:
        ValueError: naming the phase and the metric.
    """
    for phase in schedule.phases[first_phase:]:
        for metric in () if phase.until is None else phase.until.metrics:
            if not metric.startswith(_SPLITS):
                raise ValueError(
                    f"phase {phase.name!r} reads the metric {metric!r}, but fit reports its "
                    "metrics as train_<name> and val_<name> (e.g. 'val_loss', 'train_loss')"
                )
            if metric.startswith("val_") and not has_val_data:
                raise ValueError(
                    f"phase {phase.name!r} reads the metric {metric!r}, but fit has no val_data "
                    "to report it: pass val_data, or read a training metric such as 'train_loss'"
                )


def check_serializable(schedule: Schedule) -> None:
    """Raise TypeError now, before training, when checkpoints could not hold the schedule."""
    try:
        schedule.to_dict()
    except TypeError as error:
        raise TypeError(
            f"fit(checkpoint_path=...) saves the schedule with every checkpoint, but it is not "
            f"serializable: {error}"
        ) from None


def check_resume_schedule(
    checkpoint: MenteeCheckpoint, schedule: Schedule | None, allow_schedule_change: bool
) -> None:
    """Refuse, before anything is built, a schedule other than the checkpoint's.

    Raises:
        TypeError: a bad argument type.
        CheckpointError: the file holds no schedule but one was given, or
            another schedule without ``allow_schedule_change``.
    """
    check_schedule_arguments(schedule, allow_schedule_change)
    if schedule is None:
        return
    saved = checkpoint.schedule
    if saved is None:
        raise CheckpointError(
            f"checkpoint {checkpoint.path!r} holds no schedule run: resume without schedule=, "
            "then start the schedule with fit(..., schedule=...)"
        )
    if schedule != saved.schedule and not allow_schedule_change:
        raise CheckpointError(
            f"checkpoint {checkpoint.path!r} was saved with another schedule "
            f"({describe_schedule(saved.schedule)}) than the one given "
            f"({describe_schedule(schedule)}); pass allow_schedule_change=True to continue "
            "the saved run with the new schedule from the saved cursor"
        )


def resumed_runner(
    curriculum: Curriculum, checkpoint: MenteeCheckpoint, schedule: Schedule | None
) -> ScheduleRunner | None:
    """The checkpoint's schedule run on ``curriculum`` (loaded from the same file),
    following ``schedule`` (checked by :func:`check_resume_schedule`) or the saved one.

    Raises:
        CheckpointError: the cursor does not fit the given schedule, or the
            state is not the schedule's at it.
    """
    saved = checkpoint.schedule
    if saved is None:
        return None
    runner = ScheduleRunner(curriculum, saved.schedule if schedule is None else schedule)
    try:
        runner.load_saved(saved, allow_schedule_change=True)
    except ValueError as error:
        raise CheckpointError(
            f"checkpoint {checkpoint.path!r}: the schedule run cannot continue with the given "
            f"schedule: {error}"
        ) from None
    return runner
