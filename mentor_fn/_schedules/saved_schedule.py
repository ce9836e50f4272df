"""SavedSchedule: a schedule run as a checkpoint holds it.

The schedule (its plain-data form), its fingerprint, the cursor and the state
phase 0's transition applied to: all a :class:`ScheduleRunner` needs to
resume, validated as a whole when read, each problem named by its field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._core.state import CurriculumState
from .cursor import ScheduleCursor
from .schedule import Phase, Schedule, fingerprint_of

__all__ = ["SavedSchedule", "SavedScheduleError", "check_agreement"]

FORMAT_NAME, FORMAT_VERSION = "mentor_fn.ScheduleRunner", 1
_FIELDS = ("cursor", "initial_state", "fingerprint", "schedule")


class SavedScheduleError(ValueError):
    """A saved schedule run that cannot be read; ``field`` names the bad field ("" for the whole)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class SavedSchedule:
    """A schedule run: the schedule, where the run stands, and the state it started from.

    Example:
        >>> from mentor_fn._schedules.conditions import after_epochs
        >>> from mentor_fn._core.transitions import freeze, unfreeze
        >>> schedule = Schedule([Phase("head", freeze("body"), until=after_epochs(1)),
        ...                      Phase("all", unfreeze("body"))])
        >>> saved = SavedSchedule(schedule, schedule.start(), CurriculumState(("body", "head")))
        >>> SavedSchedule.from_dict(saved.to_dict()) == saved, saved.state().is_frozen("body")
        (True, True)
    """

    schedule: Schedule
    cursor: ScheduleCursor
    initial_state: CurriculumState
    """The state phase 0's transition applied to."""

    @property
    def fingerprint(self) -> str:
        """The schedule's fingerprint (TypeError if it is not serializable)."""
        return self.schedule.fingerprint()

    @property
    def phase(self) -> Phase:
        """The phase the run is in."""
        return self.schedule.phases[self.cursor.phase]

    def state(self) -> CurriculumState:
        """The state the run trains with: ``schedule.state_at(cursor, initial_state)``."""
        return self.schedule.state_at(self.cursor, self.initial_state)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, loadable with ``torch.load(weights_only=True)``.

        Raises:
            TypeError: the schedule holds a user's own callable (not serializable).
        """
        schedule = self.schedule.to_dict()
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "cursor": self.cursor.to_dict(),
            "initial_state": self.initial_state.to_dict(),
            "fingerprint": fingerprint_of(schedule),
            "schedule": schedule,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SavedSchedule:
        """Read :meth:`to_dict` output, checking every field and that they fit together.

        Raises:
            SavedScheduleError: naming the first bad field: a malformed
                schedule, cursor or state, a fingerprint that is not the
                schedule's, or a cursor that is no cursor of the schedule.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT_NAME:
            raise SavedScheduleError(
                "", "not a mentor_fn ScheduleRunner state dict (format key missing or wrong)"
            )
        if data.get("version") != FORMAT_VERSION or set(data) != {"format", "version", *_FIELDS}:
            raise SavedScheduleError(
                "",
                f"malformed ScheduleRunner state dict (version {data.get('version')!r}, "
                f"fields {sorted(data, key=repr)}); this reads version {FORMAT_VERSION} "
                f"with the fields {_FIELDS}",
            )
        schedule = _read("schedule", Schedule.from_dict, data)
        cursor = _read("cursor", ScheduleCursor.from_dict, data)
        initial = _read("initial_state", CurriculumState.from_dict, data)
        fingerprint = data["fingerprint"]
        if not isinstance(fingerprint, str):
            raise SavedScheduleError(
                "fingerprint", f"must be a str, got {type(fingerprint).__name__}"
            )
        if fingerprint != schedule.fingerprint():
            raise SavedScheduleError(
                "fingerprint",
                f"{fingerprint!r} is not the fingerprint of the saved schedule "
                f"({schedule.fingerprint()!r}): the file was altered",
            )
        try:
            schedule.validate_cursor(cursor)
        except ValueError as error:
            raise SavedScheduleError(
                "cursor", f"does not fit the saved schedule: {error}"
            ) from None
        return cls(schedule, cursor, initial)


def _read(field: str, read: Any, data: Mapping[str, Any]) -> Any:
    try:
        return read(data[field])
    except (TypeError, ValueError) as error:
        raise SavedScheduleError(field, str(error)) from None


def check_agreement(
    expected: CurriculumState, actual: CurriculumState, phase: Phase, *, hint: str = ""
) -> None:
    """Raise ValueError, naming what differs, unless ``actual`` is ``expected`` as a whole.

    The whole state is compared: every layer's resolved frozen flag and
    coefficient, the norm policy, and the layer kinds (which layers own
    parameters, which are normalization layers). ``hint`` ends the message
    (by default: load the curriculum's state first).
    """
    expected_values = zip(expected.resolved_frozen(), expected.resolved_coefficients())
    actual_values = zip(actual.resolved_frozen(), actual.resolved_coefficients())
    differences = [
        f"{layer!r}: the schedule has frozen={want[0]} coefficient={want[1]:g}, the curriculum "
        f"frozen={have[0]} coefficient={have[1]:g}"
        for layer, want, have in zip(expected.layers, expected_values, actual_values)
        if want != have
    ]
    parts = [f"{len(differences)} layer(s) differ"] if differences else []
    if expected.norm_policy != actual.norm_policy:
        differences.insert(
            0,
            f"the norm policy: the schedule has {expected.norm_policy!r}, the curriculum "
            f"{actual.norm_policy!r}",
        )
        parts.append("the norm policy differs")
    for kind in ("parameter_owners", "norm_layers"):
        want, have = getattr(expected, kind), getattr(actual, kind)
        if want != have:
            differences.append(
                f"{kind}: the schedule's state has {sorted(want ^ have)[:5]} "
                + ("where the curriculum's has not" if want - have else "differently")
            )
            parts.append(f"{kind} differ")
    if differences:
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise ValueError(
            f"the curriculum's state is not the schedule's state in phase {phase.name!r} at the "
            f"cursor ({', '.join(parts)}: {shown}). "
            + (hint or "Load the curriculum's own state dict from the same checkpoint first")
        )
