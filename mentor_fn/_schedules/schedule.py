"""Schedules: a curriculum over time, as data.

A :class:`Schedule` is a tuple of :class:`Phase` values, each a transition and
the condition that ends it. Where a run stands is a :class:`ScheduleCursor`,
another value. Everything here is pure: ``advance`` moves a cursor, and
``state_at`` says which :class:`CurriculumState` a cursor means. Executing the
phase changes on a live optimizer is :class:`ScheduleRunner`'s job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from torch import nn

from .._core.selection import select_layers
from .._core.state import CurriculumState
from .._core.transitions import (
    TRANSITION_KINDS,
    Chain,
    Transition,
    transition_from_dict,
    transition_to_dict,
)
from .._core.validation import validate_flag, validate_non_negative_int, validate_positive
from .conditions import Condition, condition_from_dict
from .cursor import FORMAT_VERSION, ScheduleCursor, check_format_header
from .warmup import warmup_state

__all__ = ["Phase", "Schedule", "apply_phase", "fingerprint_of"]

_SCHEDULE_FORMAT = "mentor_fn.Schedule"
_PHASE_FIELDS = ("name", "transition", "until", "lr", "lr_scale", "optimizer", "warmup_steps")


@dataclass(frozen=True)
class Phase:
    """One phase of a schedule: a transition, and the condition that ends it.

    Args:
        name: unique in its schedule, non-empty.
        transition: applied to the state the previous phase ended with.
        until: the condition ending the phase; None runs it to the end of
            training (only the last phase may do that).
        lr: the global lr from this phase on.
        lr_scale: the global lr from this phase on, relative to the one in
            effect when the phase starts (``lr`` and ``lr_scale`` exclude each other).
        optimizer: ``"keep"`` (state and scheduler progress carry over) or
            ``"fresh"`` (a new optimizer and scheduler, like ``Curriculum.build()``).
        warmup_steps: ramp the coefficients of the layers this phase makes
            trainable from 1/n of their target to the target over n optimizer steps.
    """

    name: str
    transition: Transition
    _: KW_ONLY
    until: Condition | None = None
    lr: float | None = None
    optimizer: str = "keep"
    warmup_steps: int = 0
    lr_scale: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(
                f"Phase name must be a str, got {type(self.name).__name__}: {self.name!r}"
            )
        if not self.name:
            raise ValueError("Phase name must be a non-empty str, got ''")
        where = f"Phase {self.name!r}"
        if not callable(self.transition):
            raise TypeError(
                f"{where}: transition must be a callable state -> state, got "
                f"{type(self.transition).__name__}: {self.transition!r}"
            )
        if self.until is not None and not isinstance(self.until, Condition):
            raise TypeError(
                f"{where}: until must be a condition (after_epochs, after_steps, plateau, any_of, "
                f"all_of) or None, got {type(self.until).__name__}: {self.until!r}"
            )
        if self.lr is not None and self.lr_scale is not None:
            raise ValueError(f"{where}: give lr or lr_scale, not both")
        for field_name in ("lr", "lr_scale"):
            value = getattr(self, field_name)
            if value is not None:
                object.__setattr__(
                    self, field_name, validate_positive(value, what=f"{where}: {field_name}")
                )
        if not isinstance(self.optimizer, str):
            raise TypeError(f"{where}: optimizer must be 'keep' or 'fresh', got {self.optimizer!r}")
        if self.optimizer not in ("keep", "fresh"):
            raise ValueError(
                f"{where}: optimizer must be 'keep' or 'fresh', got {self.optimizer!r}"
            )
        steps = validate_non_negative_int(self.warmup_steps, what=f"{where}: warmup_steps")
        object.__setattr__(self, "warmup_steps", steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; TypeError if the transition is a user's own callable."""
        return {
            "name": self.name,
            "transition": transition_to_dict(self.transition),
            "until": None if self.until is None else self.until.to_dict(),
            "lr": self.lr,
            "lr_scale": self.lr_scale,
            "optimizer": self.optimizer,
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Phase:
        """Rebuild a phase from :meth:`to_dict` output (ValueError naming a bad field)."""
        if not isinstance(data, Mapping) or set(data) != set(_PHASE_FIELDS):
            keys = sorted(data, key=repr) if isinstance(data, Mapping) else data
            raise ValueError(f"malformed phase dict: {keys!r}, expected the fields {_PHASE_FIELDS}")
        until = data["until"]
        try:
            return cls(
                data["name"],
                transition_from_dict(data["transition"]),
                until=None if until is None else condition_from_dict(until),
                lr=data["lr"],
                lr_scale=data["lr_scale"],
                optimizer=data["optimizer"],
                warmup_steps=data["warmup_steps"],
            )
        except TypeError as error:
            raise ValueError(f"malformed phase dict: {error}") from None


@dataclass(frozen=True, init=False)
class Schedule:
    """Phases of a curriculum, each a transition and the condition ending it.

    Validated eagerly: at least one phase, unique non-empty names, and an
    ``until`` on every phase but the last (which runs to the end of training
    when its own ``until`` is None).

    Example:
        >>> from mentor_fn._schedules.conditions import after_epochs
        >>> from mentor_fn._core.transitions import freeze, unfreeze
        >>> schedule = Schedule([Phase("head", freeze("body"), until=after_epochs(1)),
        ...                      Phase("all", unfreeze("body"))])
        >>> cursor = schedule.advance(schedule.start(), epoch_end=True)
        >>> schedule.phases[cursor.phase].name
        'all'
        >>> schedule.state_at(cursor, CurriculumState(("body", "head"))).is_frozen("body")
        False
    """

    phases: tuple[Phase, ...]

    def __init__(self, phases: Iterable[Phase]) -> None:
        if isinstance(phases, (str, Phase)) or not isinstance(phases, Iterable):
            raise TypeError(f"Schedule takes a sequence of Phase values, got {phases!r}")
        checked = tuple(phases)
        if not checked:
            raise ValueError("a Schedule needs at least one phase")
        names: set[str] = set()
        for position, phase in enumerate(checked):
            if not isinstance(phase, Phase):
                raise TypeError(
                    f"phase {position} of the schedule must be a Phase, got "
                    f"{type(phase).__name__}: {phase!r}"
                )
            if phase.name in names:
                raise ValueError(f"duplicate phase name {phase.name!r}: names must be unique")
            names.add(phase.name)
            if phase.until is None and position < len(checked) - 1:
                raise ValueError(
                    f"phase {phase.name!r} has no until but is not the last phase: it would "
                    "never end"
                )
        object.__setattr__(self, "phases", checked)

    # Pure progress -------------------------------------------------------------------

    def start(self) -> ScheduleCursor:
        """The cursor at the start of the first phase."""
        until = self.phases[0].until
        return ScheduleCursor(0, 0, 0, None if until is None else until.start())

    def advance(
        self,
        cursor: ScheduleCursor,
        *,
        steps: int = 0,
        epoch_end: bool = False,
        metrics: Mapping[str, Any] | None = None,
    ) -> ScheduleCursor:
        """The cursor after ``steps`` optimizer steps and, if ``epoch_end``, an epoch end.

        The phase's condition is evaluated once, after both; when it holds the
        cursor moves to the next phase (at zero epochs and steps, with a fresh
        progress), at most one phase per call and never backwards. When the
        last phase's condition holds, the cursor is ``finished``.

        Raises:
            ValueError: a plateau's metric is missing from ``metrics`` or NaN,
                ``metrics`` given without ``epoch_end``, or a negative ``steps``.
        """
        self._check_fits(cursor)
        validate_non_negative_int(steps, what="steps")
        validate_flag(epoch_end, what="epoch_end")
        if metrics is not None:
            if not isinstance(metrics, Mapping):
                raise TypeError(f"metrics must be a mapping of name -> number, got {metrics!r}")
            if not epoch_end:
                raise ValueError("metrics are read at epoch ends only: pass epoch_end=True")
        return self._advance(cursor, steps, epoch_end, metrics)

    def _advance(
        self,
        cursor: ScheduleCursor,
        steps: int,
        epoch_end: bool,
        metrics: Mapping[str, Any] | None,
    ) -> ScheduleCursor:
        """:meth:`advance` on checked arguments (the runner's per-step path)."""
        epochs, total_steps = cursor.epochs + epoch_end, cursor.steps + steps
        until = self.phases[cursor.phase].until
        if cursor.finished or until is None:
            return ScheduleCursor(
                cursor.phase, epochs, total_steps, cursor.progress, cursor.finished
            )
        progress, holds = until.advance(
            cursor.progress,
            phase_epochs=epochs,
            phase_steps=total_steps,
            epoch_end=epoch_end,
            metrics=metrics,
        )
        if not holds:
            return ScheduleCursor(cursor.phase, epochs, total_steps, progress)
        following = cursor.phase + 1
        if following == len(self.phases):
            return ScheduleCursor(cursor.phase, epochs, total_steps, progress, True)
        until = self.phases[following].until
        return ScheduleCursor(following, 0, 0, None if until is None else until.start())

    def phase_at(self, cursor: ScheduleCursor) -> Phase:
        """The phase ``cursor`` is in."""
        self._check_fits(cursor)
        return self.phases[cursor.phase]

    def planned_end(self, cursor: ScheduleCursor, *, epoch: int) -> int | None:
        """The run's epoch count at which the current phase ends at the latest.

        ``epoch`` is the number of epochs the run has done so far. Known when
        the phase's condition bounds its epochs (``after_epochs(n)``: the
        phase's first epoch + n; ``any_of``: its earliest bounded child);
        None otherwise, for a phase running to the end, or once finished.
        """
        self._check_fits(cursor)
        until = self.phases[cursor.phase].until
        if cursor.finished or until is None or until.max_epochs is None:
            return None
        return epoch - cursor.epochs + until.max_epochs

    def state_at(self, cursor: ScheduleCursor, initial_state: CurriculumState) -> CurriculumState:
        """The state a run at ``cursor`` trains with.

        Phases are cumulative: phase k's transition applies to the state phase
        k-1 ended with (its transition's result: a warmup cut short by the end
        of its phase does not carry over), phase 0's to ``initial_state``.
        Within a warmup of n steps, after s < n steps in the phase, the layers
        the phase made trainable (and that own parameters) have their target
        coefficient times ``min(1, (s + 1) / n)``.
        """
        self._check_fits(cursor)
        if not isinstance(initial_state, CurriculumState):
            raise TypeError(
                f"initial_state must be a CurriculumState, got {type(initial_state).__name__}"
            )
        state = initial_state
        for phase in self.phases[: cursor.phase]:
            state = apply_phase(phase, state)
        phase = self.phases[cursor.phase]
        target = apply_phase(phase, state)
        return warmup_state(state, target, steps=cursor.steps, warmup_steps=phase.warmup_steps)

    def validate_cursor(self, cursor: ScheduleCursor) -> None:
        """Raise ValueError unless ``cursor`` can be a cursor of this schedule."""
        self._check_fits(cursor)
        phase = self.phases[cursor.phase]
        if cursor.finished and (phase.until is None or cursor.phase != len(self.phases) - 1):
            raise ValueError(f"a cursor in phase {phase.name!r} cannot be finished")
        if phase.until is None:
            if cursor.progress is not None:
                raise ValueError(
                    f"phase {phase.name!r} has no condition, the cursor holds progress "
                    f"{cursor.progress!r}"
                )
        else:
            phase.until.validate_progress(cursor.progress)

    def _check_fits(self, cursor: ScheduleCursor) -> None:
        if not isinstance(cursor, ScheduleCursor):
            raise TypeError(f"expected a ScheduleCursor, got {type(cursor).__name__}: {cursor!r}")
        if cursor.phase >= len(self.phases):
            raise ValueError(
                f"cursor phase {cursor.phase} is out of range for a schedule of "
                f"{len(self.phases)} phases"
            )

    # Checking patterns ---------------------------------------------------------------

    def check(self, model_or_layers: nn.Module | CurriculumState | Iterable[str]) -> None:
        """Check every phase's patterns against a model's layers, all at once.

        Applies the transitions in order to a fresh state of the model (or of
        the given layers, or to the given state), testing each pattern of each
        transition separately (inside ``chain`` too), and raises one ValueError
        listing every pattern that matches nothing or is not a valid regex,
        with its phase and the closest layer names. A transition with a bad
        pattern is skipped so that the later ones are still checked.
        """
        if isinstance(model_or_layers, nn.Module):
            state = CurriculumState.from_model(model_or_layers)
        elif isinstance(model_or_layers, CurriculumState):
            state = model_or_layers
        else:
            state = CurriculumState(model_or_layers)
        problems: list[str] = []
        for phase in self.phases:
            state = _checked_apply(phase.transition, state, phase.name, problems)
        if problems:
            raise ValueError(
                f"the schedule has {len(problems)} pattern problem(s):\n  " + "\n  ".join(problems)
            )

    # Plain data -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data with a format name and version.

        Raises:
            TypeError: a phase's transition is a user's own callable.
        """
        return {
            "format": _SCHEDULE_FORMAT,
            "version": FORMAT_VERSION,
            "phases": [phase.to_dict() for phase in self.phases],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`to_dict` output (ValueError naming a bad field)."""
        check_format_header(data, _SCHEDULE_FORMAT, ("phases",))
        phases = data["phases"]
        if not isinstance(phases, (list, tuple)):
            raise ValueError(f"malformed Schedule dict: 'phases' must be a list, got {phases!r}")
        made = []
        for position, phase in enumerate(phases):
            try:
                made.append(Phase.from_dict(phase))
            except ValueError as error:
                raise ValueError(f"malformed Schedule dict: phases[{position}]: {error}") from None
        return cls(made)

    def fingerprint(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`to_dict` (TypeError if not serializable)."""
        return fingerprint_of(self.to_dict())


def fingerprint_of(schedule_dict: Mapping[str, Any]) -> str:
    """:meth:`Schedule.fingerprint` of the schedule whose :meth:`Schedule.to_dict` this is."""
    text = json.dumps(schedule_dict, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def apply_phase(phase: Phase, state: CurriculumState) -> CurriculumState:
    """``phase.transition(state)``, checking that it returned a state."""
    new = phase.transition(state)
    if not isinstance(new, CurriculumState):
        raise TypeError(
            f"the transition of phase {phase.name!r} must return a CurriculumState, "
            f"{phase.transition!r} returned {type(new).__name__}"
        )
    return new


# Helpers ---------------------------------------------------------------------------------


def _checked_apply(
    transition: Transition, state: CurriculumState, phase: str, problems: list[str]
) -> CurriculumState:
    if isinstance(transition, Chain):
        for child in transition.transitions:
            state = _checked_apply(child, state, phase, problems)
        return state
    # Only mentor_fn's own values are known to keep their patterns in ``patterns``.
    patterns = getattr(transition, "patterns", None)
    if type(transition) in TRANSITION_KINDS.values() and patterns:
        found = len(problems)
        for pattern in patterns:
            try:
                select_layers(state.layers, pattern)
            except ValueError as error:
                problems.append(f"phase {phase!r}: {error}")
        if len(problems) > found:
            return state
    try:
        new = transition(state)
    except ValueError as error:
        problems.append(f"phase {phase!r}: {error}")
        return state
    return new if isinstance(new, CurriculumState) else state
