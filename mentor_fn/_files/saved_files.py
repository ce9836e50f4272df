"""Any file mentor_fn writes, read and told apart by what it holds.

``python -m mentor_fn inspect`` reads every file mentor_fn writes: a Mentee
checkpoint (``Mentee.save``, ``fit``, a converted torch_mentor file), a
``save_checkpoint`` file, a ``torch.save`` of ``Curriculum.state_dict()`` or
``ScheduleRunner.state_dict()`` (alone or in a dict of one's own), and the
plain part of a distributed checkpoint (its folder, or the ``curriculum.pt``
in it). Whatever the file, it is loaded with ``torch.load(weights_only=True)``
and searched for mentor_fn's own sections, each known by its ``format`` key
(a Curriculum, a ScheduleRunner, a CurriculumState) and checked as a whole:
a damaged section is one :class:`CheckpointError` naming the file and the
first bad field.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._core.state import CurriculumState
from .._schedules.saved_schedule import SavedSchedule, SavedScheduleError
from . import mentee_fields as fields
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    describe_load_error,
    describe_open_error,
)
from .mentee_file import is_mentee_contents, mentee_checkpoint_of, split_distributed_curriculum
from .mentee_values import MenteeCheckpoint, SavedCurriculum
from .torch_mentor_file import read_torch_mentor_checkpoint

__all__ = ["SavedFile", "Section", "read_saved_file"]

_CURRICULUM, _RUNNER, _STATE = (
    "mentor_fn.Curriculum",
    "mentor_fn.ScheduleRunner",
    "mentor_fn.CurriculumState",
)
_DISTRIBUTED_PLAIN_FILE = "curriculum.pt"
_DEPTH = 4  # how deep a dict of one's own is searched for sections


@dataclass(frozen=True)
class Section:
    """One mentor_fn section of a file, checked."""

    where: str
    """Its key path in the file (``['curriculum']``), "" for the whole file."""
    value: SavedCurriculum | SavedSchedule | CurriculumState


@dataclass(frozen=True)
class SavedFile:
    """A file mentor_fn wrote, as inspect describes it."""

    path: str
    kind: str
    """What kind of file it is, in words (the first line inspect prints)."""
    mentee: MenteeCheckpoint | None
    """The Mentee checkpoint, for a Mentee file."""
    sections: tuple[Section, ...]
    """The sections found, for any other file."""
    epoch: int | None
    """The file's own top-level ``epoch``, when it has one (a save_checkpoint file's)."""
    weights: Mapping[str, torch.Tensor] | None
    """A state dict found beside a Curriculum section (to count its parameters)."""


def read_saved_file(path: str | os.PathLike[str]) -> SavedFile:
    """Load a file mentor_fn wrote and check what it holds.

    Raises:
        TypeError: ``path`` is not a str or path.
        CheckpointError: the file is missing, unreadable, damaged (the first bad
            field of a section is named), holds no mentor_fn section, or is a
            torch_mentor checkpoint (convert it first).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a checkpoint path must be a str or os.PathLike, got {path!r}")
    target = Path(path)
    where = str(path)
    distributed = target.is_dir()
    if distributed:
        target = target / _DISTRIBUTED_PLAIN_FILE
        if not target.is_file():
            raise CheckpointError(
                f"checkpoint {where!r} is a directory, not a checkpoint file (nor a distributed "
                f"checkpoint: it holds no {_DISTRIBUTED_PLAIN_FILE})"
            )
    loaded = _load(target, where)
    header = isinstance(loaded, Mapping) and loaded.get("format") == CHECKPOINT_FORMAT
    if header and is_mentee_contents(loaded):
        mentee = mentee_checkpoint_of(loaded, where)
        return SavedFile(where, _mentee_kind(mentee), mentee, (), mentee.epoch, mentee.weights)
    sections = tuple(_sections(loaded, where))
    if not sections:
        raise CheckpointError(_foreign(loaded, where))
    kind = _kind(sections, header=header, distributed=distributed)
    epoch = loaded.get("epoch") if isinstance(loaded, Mapping) else None
    return SavedFile(
        where,
        kind,
        None,
        sections,
        epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        _weights_beside(loaded),
    )


def _load(target: Path, where: str) -> Any:
    try:
        handle = open(target, "rb")  # noqa: SIM115 (closed below; its errors told apart first)
    except OSError as error:
        raise CheckpointError(f"checkpoint {where!r} {describe_open_error(error)}") from None
    with handle:
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many kinds for a bad file
            problem = describe_load_error(error)
    _refuse_torch_mentor(target, where)
    raise CheckpointError(f"checkpoint {where!r} {problem}")


def _refuse_torch_mentor(target: Path, where: str) -> None:
    """Raise the advice to convert when the file is a torch_mentor checkpoint
    (whose software history weights-only loading refuses)."""
    try:
        version = read_torch_mentor_checkpoint(target).version
    except CheckpointError:
        return
    raise CheckpointError(
        f"{where!r} is a torch_mentor {version} checkpoint, not one of mentor_fn's: convert it "
        f"first (python -m mentor_fn convert {where} NEW_FILE), then inspect NEW_FILE"
    )


def _sections(value: Any, where: str, key: str = "", depth: int = 0) -> Iterator[Section]:
    if not isinstance(value, Mapping):
        return
    kind = value.get("format")
    if kind in (_CURRICULUM, _RUNNER, _STATE):
        yield Section(key, _checked(kind, value, where, key or "the file"))
        return
    if depth >= _DEPTH:
        return
    for name, item in value.items():
        if isinstance(item, Mapping):
            yield from _sections(item, where, f"{key}[{name!r}]", depth + 1)


def _checked(kind: str, value: Mapping[str, Any], where: str, key: str) -> Any:
    try:
        if kind == _CURRICULUM:
            section, state_keys = split_distributed_curriculum(value)
            fields.curriculum_section(section, key, weights=None)
            return SavedCurriculum(section, distributed_state_count=state_keys)
        if kind == _RUNNER:
            try:
                return SavedSchedule.from_dict(value)
            except SavedScheduleError as error:
                inside = f"{key}[{error.field!r}]" if error.field else key
                raise fields.Malformed(inside, f"is not readable: {error.problem}") from None
        try:
            return CurriculumState.from_dict(value)
        except (TypeError, ValueError) as error:
            raise fields.Malformed(key, f"is not a curriculum state: {error}") from None
    except fields.Malformed as problem:
        raise CheckpointError(f"checkpoint {where!r} is malformed: {problem}") from None


def _mentee_kind(mentee: MenteeCheckpoint) -> str:
    # Only a conversion writes a Mentee file without torch's generator state.
    if mentee.random_states.torch_cpu is None:
        return "Mentee checkpoint (converted from torch_mentor)"
    return "Mentee checkpoint"


def _kind(sections: tuple[Section, ...], *, header: bool, distributed: bool) -> str:
    if distributed or any(
        isinstance(s.value, SavedCurriculum) and s.value.distributed_state_count is not None
        for s in sections
    ):
        return "distributed checkpoint (its plain part; the tensors are in the DCP shards)"
    names = {
        SavedCurriculum: "Curriculum.state_dict()",
        SavedSchedule: "ScheduleRunner.state_dict()",
        CurriculumState: "CurriculumState.to_dict()",
    }
    held = " and ".join(dict.fromkeys(names[type(s.value)] for s in sections))
    if header:
        return f"save_checkpoint file holding {held}"
    if len(sections) == 1 and not sections[0].where:
        return f"{held} saved with torch.save"
    return f"torch.save file holding {held}"


def _weights_beside(loaded: Any) -> Mapping[str, torch.Tensor] | None:
    """A state dict of tensors at the file's top level (``{"model": model.state_dict()}``)."""
    if not isinstance(loaded, Mapping):
        return None
    for value in loaded.values():
        if (
            isinstance(value, Mapping)
            and value
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
        ):
            return value
    return None


def _foreign(loaded: Any, where: str) -> str:
    if isinstance(loaded, Mapping) and {"class_name", "state_dict"} <= set(loaded):
        return (
            f"{where!r} is a torch_mentor checkpoint, not one of mentor_fn's: convert it first "
            f"(python -m mentor_fn convert {where} NEW_FILE)"
        )
    shown = (
        f"a dict with keys {sorted(map(str, loaded))[:8]}"
        if isinstance(loaded, Mapping)
        else f"a {type(loaded).__name__}"
    )
    return (
        f"{where!r} is not a mentor_fn checkpoint, nor any file mentor_fn writes: it holds "
        f"{shown}, and no Mentee checkpoint, Curriculum, ScheduleRunner or CurriculumState "
        "state dict"
    )
