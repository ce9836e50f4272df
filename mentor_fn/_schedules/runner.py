"""ScheduleRunner: executes a schedule's phase changes on a Curriculum.

The schedule says, purely, which phase a run is in and which state that phase
trains with; the runner advances a cursor after each optimizer step and each
epoch, and when the state changes (a new phase, a warmup step) it executes the
change through the Curriculum like any other transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._core.messages import check_same_layers
from .._core.plan import Plan, Rebuild
from .._core.state import CurriculumState
from .._core.validation import validate_flag
from .._wrapper.curriculum import Curriculum
from .._wrapper.plan_execution import reference_index
from .cursor import ScheduleCursor
from .saved_schedule import SavedSchedule, check_agreement
from .schedule import Phase, Schedule, apply_phase
from .warmup import WarmupRamp

__all__ = ["ScheduleRunner"]


class ScheduleRunner:
    """Runs a :class:`Schedule` on a :class:`Curriculum`, for custom training loops.

    Creating a runner changes nothing. Call :meth:`start` once to enter the
    first phase (or :meth:`load_state_dict` to resume), then :meth:`step`
    after each optimizer step and :meth:`epoch_end` after each epoch. Each
    returns the plan the Curriculum executed, or None when nothing changed.

    A phase change executes as ``curriculum.update(state,
    reset_optimizer_if_needed=True)``, then ``curriculum.set_lr`` when the phase
    has ``lr`` or ``lr_scale``, then, for ``optimizer="fresh"`` on a built
    Curriculum, ``curriculum.build()``. ``lr_scale`` is relative to the global
    lr in effect: with ``"keep"``, the live lr (the scheduler's current
    value, which goes on from there); with ``"fresh"`` or before ``build()``,
    ``curriculum.lr`` (the base lr a new optimizer and scheduler start from). Each
    step of a warmup updates the Curriculum to the ramped state: a patch (with
    ``coalesce=True``, a rebuild when a coalesced group must split). A step
    with no phase change and no warmup only advances the cursor.

    The runner keeps, per phase, the state the phase's transition produced
    (the next phase starts from it), so it never replays earlier phases.

    Args:
        curriculum: the Curriculum to drive (built or not yet).
        schedule: the schedule.
        initial_state: the state phase 0's transition applies to (default:
            the Curriculum's state when the runner starts).

    Example:
        >>> import torch
        >>> from mentor_fn import Curriculum, freeze, unfreeze
        >>> from mentor_fn._schedules.conditions import after_epochs
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> curriculum = Curriculum(model, 0.1)
        >>> runner = ScheduleRunner(curriculum, Schedule([
        ...     Phase("head", freeze("0"), until=after_epochs(1)), Phase("all", unfreeze("0"))]))
        >>> runner.start()
        NoChange()
        >>> _ = curriculum.build()
        >>> runner.step() is None, runner.phase.name
        (True, 'head')
        >>> type(runner.epoch_end({"loss": 0.5})).__name__, runner.phase.name
        ('Rebuild', 'all')
    """

    def __init__(
        self,
        curriculum: Curriculum,
        schedule: Schedule,
        *,
        initial_state: CurriculumState | None = None,
    ) -> None:
        if not isinstance(curriculum, Curriculum):
            raise TypeError(f"curriculum must be a Curriculum, got {type(curriculum).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        if initial_state is not None:
            if not isinstance(initial_state, CurriculumState):
                raise TypeError(
                    f"initial_state must be a CurriculumState, got {type(initial_state).__name__}"
                )
            check_same_layers(initial_state.layers, curriculum.state.layers, "the curriculum")
        self._curriculum = curriculum
        self._schedule = schedule
        self._given_initial = initial_state
        self._initial: CurriculumState | None = None
        self._cursor: ScheduleCursor | None = None
        # The current phase's target state, and its warmup (None without one).
        self._target: CurriculumState | None = None
        self._ramp: WarmupRamp | None = None

    # Reading ----------------------------------------------------------------------------

    @property
    def curriculum(self) -> Curriculum:
        return self._curriculum

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @property
    def cursor(self) -> ScheduleCursor | None:
        """Where the run stands; None before :meth:`start` or :meth:`load_state_dict`."""
        return self._cursor

    @property
    def phase(self) -> Phase | None:
        """The current phase; None before :meth:`start` or :meth:`load_state_dict`."""
        return None if self._cursor is None else self._schedule.phases[self._cursor.phase]

    @property
    def finished(self) -> bool:
        """Whether the last phase's ``until`` has held."""
        return self._cursor is not None and self._cursor.finished

    @property
    def initial_state(self) -> CurriculumState | None:
        """The state phase 0's transition applied to; None before the run starts."""
        return self._initial

    # Running ------------------------------------------------------------------------------

    def start(self) -> Plan:
        """Enter the first phase.

        On a Curriculum not yet built this only sets the state (and the lr,
        when the phase has one), so that ``build()`` builds phase 0's layout.

        Raises:
            RuntimeError: the runner has already started (or been loaded).
        """
        if self._cursor is not None:
            raise RuntimeError("the ScheduleRunner has already started")
        given = self._given_initial
        initial = self._owned(self._curriculum.state if given is None else given)
        cursor = self._schedule.start()
        target, ramp = self._prepare(cursor.phase, initial)
        executed = self._enter(self._schedule.phases[0], _state_at(0, target, ramp))
        self._initial = initial
        self._commit(cursor, target, ramp)
        return executed

    def step(self) -> Plan | None:
        """Advance after one optimizer step; returns the executed plan or None."""
        cursor = self._cursor
        if cursor is None:
            raise RuntimeError("call start() (or load_state_dict()) before step()")
        new = self._schedule._advance(cursor, 1, False, None)
        if new.phase != cursor.phase:
            return self._change_phase(new)
        ramp = self._ramp
        if ramp is not None and new.steps < ramp.warmup_steps:
            executed = self._curriculum.update(
                ramp.state(new.steps), reset_optimizer_if_needed=True
            )
            self._cursor = new
            return executed
        self._cursor = new
        return None

    def epoch_end(self, metrics: Mapping[str, Any] | None = None) -> Plan | None:
        """Advance after one epoch with its metrics; returns the executed plan or None.

        Raises:
            ValueError: a ``plateau`` of the current phase reads a metric that
                is missing from ``metrics`` (the message lists those given) or NaN.
        """
        cursor = self._cursor
        if cursor is None:
            raise RuntimeError("call start() (or load_state_dict()) before epoch_end()")
        new = self._schedule.advance(cursor, epoch_end=True, metrics=metrics)
        if new.phase != cursor.phase:
            return self._change_phase(new)
        self._cursor = new
        return None

    def _change_phase(self, cursor: ScheduleCursor) -> Plan:
        assert self._target is not None
        target, ramp = self._prepare(cursor.phase, self._target)
        executed = self._enter(self._schedule.phases[cursor.phase], _state_at(0, target, ramp))
        self._commit(cursor, target, ramp)
        return executed

    def _prepare(
        self, index: int, before: CurriculumState
    ) -> tuple[CurriculumState, WarmupRamp | None]:
        """Phase ``index``'s target state from the state before it, and its warmup ramp."""
        phase = self._schedule.phases[index]
        target = apply_phase(phase, before)
        if phase.warmup_steps < 2:  # one warmup step is already at the target
            return target, None
        ramp = WarmupRamp(before, target, phase.warmup_steps)
        return target, ramp if ramp.warming else None

    def _enter(self, phase: Phase, state: CurriculumState) -> Plan:
        curriculum = self._curriculum
        optimizer = curriculum.optimizer
        built = optimizer is not None
        lr = phase.lr
        if lr is not None or phase.lr_scale is not None:
            # Checked before anything changes: set_lr rescales the live lr by
            # new / live, which no ratio can do from 0.
            live = (
                float(optimizer.param_groups[reference_index(optimizer)]["lr"])
                if optimizer is not None
                else curriculum.lr
            )
            if built and live == 0:
                raise RuntimeError(
                    f"phase {phase.name!r} sets the global lr, but the live lr is 0 (the "
                    "scheduler drove it there) and cannot be rescaled; nothing was changed"
                )
            if phase.lr_scale is not None:
                # "keep" goes on from the live lr; a fresh optimizer and
                # scheduler start from the base lr, so that is what scales.
                base = live if phase.optimizer == "keep" else curriculum.lr
                lr = base * phase.lr_scale
        executed = curriculum.update(state, reset_optimizer_if_needed=True)
        if lr is not None:
            curriculum.set_lr(lr)
        if phase.optimizer == "fresh" and built:
            curriculum.build()
            executed = Rebuild(
                (f"phase {phase.name!r} starts with a fresh optimizer and scheduler",)
            )
        return executed

    def _commit(
        self, cursor: ScheduleCursor, target: CurriculumState, ramp: WarmupRamp | None
    ) -> None:
        self._cursor, self._target, self._ramp = cursor, target, ramp

    # Saving and resuming --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the cursor, the initial state, the schedule and its fingerprint.

        Loadable with ``torch.load(weights_only=True)``.

        Raises:
            RuntimeError: the runner has not started.
            TypeError: the schedule holds a user's own callable (not serializable).
        """
        return self.saved().to_dict()

    def saved(self) -> SavedSchedule:
        """Where the run stands, as a value (what :meth:`state_dict` writes out).

        Raises:
            RuntimeError: the runner has not started.
        """
        if self._cursor is None or self._initial is None:
            raise RuntimeError("call start() (or load_state_dict()) before state_dict()")
        return SavedSchedule(self._schedule, self._cursor, self._initial)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], *, allow_schedule_change: bool = False
    ) -> None:
        """Resume at a saved cursor, instead of :meth:`start`.

        The Curriculum's own state comes from its own ``load_state_dict``
        (call it first); this checks that it is the state the schedule means
        at the saved cursor and changes nothing on the Curriculum.

        Raises:
            ValueError: a malformed dict; a schedule other than the saved one
                (unless ``allow_schedule_change``; the cursor must still fit
                the new schedule); a Curriculum whose state is not
                ``schedule.state_at(cursor, initial_state)``. Nothing changes.
        """
        validate_flag(allow_schedule_change, what="allow_schedule_change")
        saved = SavedSchedule.from_dict(state_dict)
        self.load_saved(saved, allow_schedule_change=allow_schedule_change)

    def load_saved(self, saved: SavedSchedule, *, allow_schedule_change: bool = False) -> None:
        """:meth:`load_state_dict` on a value already read (see there)."""
        validate_flag(allow_schedule_change, what="allow_schedule_change")
        if saved.schedule != self._schedule and not allow_schedule_change:
            raise ValueError(
                f"the run was saved with another schedule ({describe_schedule(saved.schedule)}) "
                f"than this runner's ({describe_schedule(self._schedule)}); pass "
                "allow_schedule_change=True to continue with this one"
            )
        cursor = saved.cursor
        self._schedule.validate_cursor(cursor)
        layers = self._curriculum.state.layers
        check_same_layers(saved.initial_state.layers, layers, "the curriculum")
        initial = self._owned(saved.initial_state)
        target = initial
        for index in range(cursor.phase):
            target = apply_phase(self._schedule.phases[index], target)
        target, ramp = self._prepare(cursor.phase, target)
        expected = _state_at(cursor.steps, target, ramp)
        check_agreement(expected, self._curriculum.state, self._schedule.phases[cursor.phase])
        self._initial = initial
        self._commit(cursor, target, ramp)

    def check_state(self, hint: str = "") -> None:
        """Raise ValueError unless the Curriculum's state is the schedule's at the cursor.

        It differs only when the state was changed by other means since the
        runner last set it (the next phase change or warmup step would
        overwrite that change). ``hint`` ends the message.

        Raises:
            RuntimeError: the runner has not started.
        """
        if self._cursor is None or self._target is None:
            raise RuntimeError("call start() (or load_state_dict()) before check_state()")
        expected = _state_at(self._cursor.steps, self._target, self._ramp)
        phase = self._schedule.phases[self._cursor.phase]
        check_agreement(expected, self._curriculum.state, phase, hint=hint)

    def moved_to(self, curriculum: Curriculum, hint: str = "") -> ScheduleRunner:
        """The same run on another Curriculum of the same model, at the same cursor.

        For a Curriculum that replaced this runner's (``Mentee.create_train_objects``
        makes a new one, with the same state).

        Raises:
            RuntimeError: the runner has not started.
            ValueError: the Curriculum's model has other layers, or its state
                is not the schedule's at the cursor (see :meth:`check_state`;
                ``hint`` ends the message).
        """
        if self._cursor is None or self._initial is None:
            raise RuntimeError("call start() (or load_state_dict()) before moved_to()")
        check_same_layers(self._initial.layers, curriculum.state.layers, "the curriculum")
        moved = ScheduleRunner(curriculum, self._schedule)
        moved._initial = self._initial
        moved._cursor, moved._target, moved._ramp = self._cursor, self._target, self._ramp
        moved.check_state(hint)
        return moved

    def _owned(self, state: CurriculumState) -> CurriculumState:
        """``state`` with the layer kinds of the Curriculum's model (a state made
        from layer names lacks them); its rules and norm policy are kept."""
        model_kinds = self._curriculum.state
        return state.with_layer_kinds(
            parameter_owners=model_kinds.parameter_owners, norm_layers=model_kinds.norm_layers
        )


def _state_at(steps: int, target: CurriculumState, ramp: WarmupRamp | None) -> CurriculumState:
    """``schedule.state_at`` after ``steps`` steps in the phase, from the parts kept per phase."""
    return target if ramp is None else ramp.state(steps)


def describe_schedule(schedule: Schedule) -> str:
    """Its phase names and, when it is serializable, its fingerprint (for messages)."""
    names = [phase.name for phase in schedule.phases]
    try:
        return f"fingerprint {schedule.fingerprint()}, phases {names}"
    except TypeError:
        return f"phases {names}, not serializable"
