"""A schedule run in words: its phases, and where the run stands (what ``inspect`` prints).

Transitions and conditions are written from their plain-data form as calls
(``freeze('backbone')``, ``any_of(plateau('val_loss', ...), after_epochs(6))``),
so a kind registered by a user reads the same way as mentor_fn's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._core.transitions import transition_to_dict
from .saved_schedule import SavedSchedule
from .schedule import Phase

__all__ = ["call_text", "phase_text", "schedule_lines"]


def call_text(data: Mapping[str, Any]) -> str:
    """A ``to_dict()`` form with a ``kind`` as a call: the first field positional.

    Example:
        >>> call_text({"kind": "set_lr_coefficient", "coefficient": 0.5, "patterns": ["head"]})
        "set_lr_coefficient(0.5, 'head')"
        >>> call_text({"kind": "chain", "transitions": [{"kind": "freeze", "patterns": ["a"]}]})
        "chain(freeze('a'))"
    """
    arguments = []
    fields = [(name, value) for name, value in data.items() if name != "kind"]
    for position, (name, value) in enumerate(fields):
        if value is None:
            continue
        if isinstance(value, list) and all(isinstance(item, Mapping) for item in value):
            arguments += [call_text(item) for item in value]  # chain, any_of, all_of
            continue
        text = _value_text(value)
        arguments.append(text if position == 0 or name == "patterns" else f"{name}={text}")
    return f"{data.get('kind', '?')}({', '.join(arguments)})"


def _value_text(value: Any) -> str:
    if isinstance(value, Mapping) and "kind" in value:
        return call_text(value)
    if isinstance(value, list) and len(value) == 1:
        return _value_text(value[0])
    if isinstance(value, list):
        return "[" + ", ".join(map(_value_text, value)) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def phase_text(phase: Phase) -> str:
    """``name: transition, options; until condition`` (the phase must be serializable)."""
    parts = [call_text(transition_to_dict(phase.transition))]
    if phase.lr is not None:
        parts.append(f"lr {phase.lr:g}")
    if phase.lr_scale is not None:
        parts.append(f"lr x{phase.lr_scale:g}")
    if phase.optimizer == "fresh":
        parts.append("fresh optimizer")
    if phase.warmup_steps:
        parts.append(f"warmup {phase.warmup_steps} steps")
    until = "to the end" if phase.until is None else f"until {call_text(phase.until.to_dict())}"
    return f"{phase.name}: {', '.join(parts)}; {until}"


def schedule_lines(saved: SavedSchedule, *, epoch: int) -> list[str]:
    """The phases (the current one marked) and where the run stands after ``epoch`` epochs."""
    schedule, cursor = saved.schedule, saved.cursor
    count = len(schedule.phases)
    lines = [f"schedule: {count} phase(s), fingerprint {saved.fingerprint[:16]}"]
    for index, phase in enumerate(schedule.phases):
        marker = ">" if index == cursor.phase else " "
        lines.append(f"{marker} {index + 1}. {phase_text(phase)}")
    phase = saved.phase
    where = (
        f"{_plural(cursor.epochs, 'epoch')} and {_plural(cursor.steps, 'optimizer step')} "
        "in the phase"
    )
    if cursor.finished:
        lines.append(
            f"now: finished; the last phase {phase.name!r} ended at its until, and training "
            f"stays in it ({where})"
        )
        return lines
    lines.append(f"now: phase {phase.name!r} ({cursor.phase + 1} of {count}), {where}")
    if phase.warmup_steps > 1 and cursor.steps < phase.warmup_steps:
        lines.append(f"  warmup: step {cursor.steps} of {phase.warmup_steps} done")
    if phase.until is not None:
        progress = phase.until.describe(
            cursor.progress, phase_epochs=cursor.epochs, phase_steps=cursor.steps
        )
        lines.append(f"  until: {progress}")
    planned = schedule.planned_end(cursor, epoch=epoch)
    if planned is not None:
        lines.append(f"  planned end of the phase: after epoch {planned} at the latest")
    return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
