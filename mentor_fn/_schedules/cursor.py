"""ScheduleCursor: where a run stands in a schedule, as an immutable value.

The cursor is all a schedule needs to say which phase a run is in and which
state it trains with (``Schedule.state_at``), and it is plain data, so a
checkpoint holds it and a resumed run continues from it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .conditions import Progress

__all__ = ["FORMAT_VERSION", "ScheduleCursor", "check_format_header"]

FORMAT_VERSION = 1
"""The version of the plain-data forms of a cursor and of a schedule."""
_CURSOR_FORMAT = "mentor_fn.ScheduleCursor"
_FIELDS = ("phase", "epochs", "steps", "progress", "finished")


@dataclass(frozen=True)
class ScheduleCursor:
    """Where a run stands in a schedule: an immutable value.

    Attributes:
        phase: the index of the current phase.
        epochs: epochs done in the phase.
        steps: optimizer steps done in the phase.
        progress: the phase condition's progress (plain data).
        finished: the last phase's ``until`` has held; the run stays in the
            last phase and its state (epochs and steps still count, for warmup).

    Example:
        >>> cursor = ScheduleCursor(1, epochs=2, steps=40, progress=(0.25, 1))
        >>> ScheduleCursor.from_dict(cursor.to_dict()) == cursor
        True
    """

    phase: int
    epochs: int = 0
    steps: int = 0
    progress: Progress = None
    finished: bool = False

    def __post_init__(self) -> None:
        for name in ("phase", "epochs", "steps"):
            value = getattr(self, name)
            if type(value) is not int:
                raise TypeError(f"ScheduleCursor.{name} must be an int >= 0, got {value!r}")
            if value < 0:
                raise ValueError(f"ScheduleCursor.{name} must be an int >= 0, got {value!r}")
        if type(self.finished) is not bool:
            raise TypeError(f"ScheduleCursor.finished must be a bool, got {self.finished!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the progress's tuples become lists), with a format version."""
        return {
            "format": _CURSOR_FORMAT,
            "version": FORMAT_VERSION,
            "phase": self.phase,
            "epochs": self.epochs,
            "steps": self.steps,
            "progress": _to_plain(self.progress),
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleCursor:
        """Rebuild a cursor from :meth:`to_dict` output (ValueError naming a bad field)."""
        check_format_header(data, _CURSOR_FORMAT, _FIELDS)
        try:
            return cls(
                data["phase"],
                data["epochs"],
                data["steps"],
                _from_plain(data["progress"]),
                data["finished"],
            )
        except TypeError as error:
            raise ValueError(f"malformed {_CURSOR_FORMAT} dict: {error}") from None


def check_format_header(data: Any, format_name: str, fields: tuple[str, ...]) -> None:
    """Raise ValueError unless ``data`` is a ``format_name`` dict of this version with ``fields``."""
    if not isinstance(data, Mapping) or data.get("format") != format_name:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"not a {format_name} dict: format is {found!r}")
    version = data.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(
            f"unsupported {format_name} version {version!r}; this reads {FORMAT_VERSION}"
        )
    expected = {"format", "version", *fields}
    if set(data) != expected:
        raise ValueError(
            f"malformed {format_name} dict: fields {sorted(data, key=repr)}, "
            f"expected {sorted(expected)}"
        )


def _to_plain(progress: Progress) -> Any:
    if isinstance(progress, tuple):
        return [_to_plain(item) for item in progress]
    return progress


def _from_plain(data: Any) -> Progress:
    if isinstance(data, (list, tuple)):
        return tuple(_from_plain(item) for item in data)
    if data is None or isinstance(data, (bool, int, float)):
        return data
    raise ValueError(f"malformed cursor progress: {data!r} is not None, a number or a list")
