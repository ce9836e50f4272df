"""The Mentee checkpoint file: its layout, built on save and validated as a whole on read.

This is the one module that knows the keys of a Mentee checkpoint (and of the
plain part of a distributed checkpoint); everything else works with the
values of ``mentor_fn._files.mentee_values``. :func:`write_mentee_checkpoint`
turns a :class:`MenteeCheckpoint` into a file; :func:`read_mentee_checkpoint`
loads one safely and checks every field, with its type (the checks of each
kind of field are ``mentor_fn._files.mentee_fields``'), before anything is built
from it: a damaged or foreign file is one :class:`CheckpointError` naming the
file and the first bad field. The same check runs before a save, so no file
that would not resume is written.

Layout (inside the generic header of ``mentor_fn._files.checkpoint``; plain data
and tensors only)::

    model_class       str, the model's qualified class name
    constructor       {"args": list, "kwargs": {str: ...}}, or None (not plain data)
    model             {str: Tensor}, the model's state dict
    curriculum        Curriculum.state_dict(): format, version, state, recipe,
                      optimizer (None, or param_groups + state by parameter name),
                      scheduler (None or a dict)
    scheduler_recipe  {"name": str, "kwargs": {str: ...}}, or None
    epoch             int >= 0
    history           [{"epoch": int, "train": {...}, "val": {...}, "lr": {...},
                        "frozen": [str], "time": float, "phase": str (with a schedule)}]
    best              {"epoch": int, "metric": str, "mode": "min"|"max", "value": float}, or None
    best_weights      {str: Tensor} with the names and shapes of ``model``, or None
    rng_state         uint8 Tensor (torch's CPU generator), or None (not saved: a
                      converted torch_mentor file; resume leaves the generators as they are)
    optional sections (absent: the default)
    cuda_rng_states   [uint8 Tensor], default []
    python_rng_state  random.getstate(), default None
    numpy_rng_state   {"algorithm", "keys", "position", "has_gauss", "cached_gaussian"}, default None
    schedule          ScheduleRunner.state_dict() of the run fit followed: format, version,
                      schedule (Schedule.to_dict()), fingerprint, cursor, initial_state;
                      its cursor must mean the saved curriculum state. Default None
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from .._core.state import CurriculumState
from . import mentee_fields as fields
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    source_name,
    write_checkpoint_to_file,
)
from .mentee_values import MenteeCheckpoint
from .random_states import RandomStates

__all__ = [
    "DistributedPlainPart",
    "contents_of",
    "is_mentee_contents",
    "mentee_checkpoint_of",
    "read_distributed_plain_part",
    "read_mentee_checkpoint",
    "split_distributed_curriculum",
    "write_distributed_plain_part",
    "write_mentee_checkpoint",
]

Destination = str | os.PathLike[str] | BinaryIO


def contents_of(checkpoint: MenteeCheckpoint) -> dict[str, Any]:
    """The file's contents (without the generic header).

    Raises:
        TypeError: the schedule holds a user's own callable (not serializable).
    """
    constructor = checkpoint.constructor
    recipe = checkpoint.scheduler_recipe
    states = checkpoint.random_states
    contents = {
        "model_class": checkpoint.model_class,
        "constructor": None
        if constructor is None
        else {"args": list(constructor.args), "kwargs": dict(constructor.kwargs)},
        "model": checkpoint.weights,
        "curriculum": checkpoint.curriculum,
        "scheduler_recipe": None
        if recipe is None
        else {"name": recipe.name, "kwargs": dict(recipe.kwargs)},
        "epoch": checkpoint.epoch,
        "history": checkpoint.history,
        "best": checkpoint.best,
        "best_weights": checkpoint.best_weights,
        "rng_state": states.torch_cpu,
        "cuda_rng_states": list(states.cuda),
        "python_rng_state": states.python,
        "numpy_rng_state": states.numpy,
    }
    if checkpoint.schedule is not None:
        contents["schedule"] = checkpoint.schedule.to_dict()
    return contents


def write_mentee_checkpoint(destination: Destination, checkpoint: MenteeCheckpoint) -> None:
    """Write ``checkpoint`` to a path (atomically) or into an open binary file (directly).

    Raises:
        ValueError: a field would make the file fail to resume (named; nothing written).
        TypeError: ``destination`` is neither a path nor a binary file, or the
            schedule is not serializable (nothing written).
        OSError: the file could not be written (e.g. the disk is full).
    """
    contents = contents_of(checkpoint)
    try:
        _read_contents(contents, path="")
    except fields.Malformed as problem:
        raise ValueError(
            f"this checkpoint would not resume, nothing was written: {problem}"
        ) from None
    if isinstance(destination, (str, os.PathLike)):
        save_checkpoint(destination, contents)
    else:
        write_checkpoint_to_file(destination, contents)


def read_mentee_checkpoint(path: str | os.PathLike[str] | BinaryIO) -> MenteeCheckpoint:
    """Load a Mentee checkpoint and check every field before anything is built from it.

    ``path`` may be a binary file object (``open(..., "rb")``, ``io.BytesIO``).

    Raises:
        TypeError: ``path`` is neither a path nor a binary file object.
        CheckpointError: the file is missing, unreadable or foreign, or a field
            is missing or of the wrong type or shape (the first one is named).
    """
    contents = load_checkpoint(path)
    where = source_name(path)
    if not is_mentee_contents(contents):
        raise CheckpointError(
            f"checkpoint {where!r} is a mentor_fn checkpoint file but not a Mentee "
            f"checkpoint (its keys: {', '.join(sorted(map(str, contents))[:12])})"
        )
    return mentee_checkpoint_of(contents, where)


def is_mentee_contents(contents: Mapping[str, Any]) -> bool:
    """Whether a mentor_fn checkpoint's contents are a Mentee checkpoint's (by its keys).

    Two of the keys only a Mentee file has are enough, so that a damaged
    Mentee file (one of them lost) is still read, and refused, as one; a
    ``save_checkpoint`` file of one's own with ``model`` and ``curriculum``
    keys is not taken for one.
    """
    return len(_MENTEE_ONLY_KEYS & set(contents)) >= 2


_MENTEE_ONLY_KEYS = frozenset(
    {"model_class", "constructor", "scheduler_recipe", "best_weights", "rng_state"}
)


def mentee_checkpoint_of(contents: Mapping[str, Any], where: str) -> MenteeCheckpoint:
    """The checked Mentee checkpoint of contents already loaded from ``where``.

    Raises:
        CheckpointError: a field is missing or malformed (the first one is named).
    """
    try:
        return _read_contents(contents, path=where)
    except fields.Malformed as problem:
        raise CheckpointError(f"checkpoint {where!r} is malformed: {problem}") from None


# The plain part of a distributed checkpoint -------------------------------------------


@dataclass(frozen=True)
class DistributedPlainPart:
    """What rank 0 writes beside the DCP shards: curriculum, optimizer state keys, extra."""

    curriculum: Mapping[str, Any]
    """``Curriculum.state_dict()`` with the per-parameter optimizer state left out."""
    optimizer_state_keys: Mapping[str, list[str]]
    """Per parameter name, the keys of its optimizer state (the tensors are in the shards)."""
    extra: dict[str, Any]


def write_distributed_plain_part(path: str | os.PathLike[str], part: DistributedPlainPart) -> None:
    contents = {
        "curriculum": {**part.curriculum, "optimizer_state_keys": dict(part.optimizer_state_keys)},
        "extra": part.extra,
    }
    save_checkpoint(path, contents)


def split_distributed_curriculum(
    section: Mapping[str, Any],
) -> tuple[Mapping[str, Any], int | None]:
    """A Curriculum section without a distributed plain part's state keys, and how many
    parameters those name (None for an ordinary Curriculum state dict)."""
    if "optimizer_state_keys" not in section:
        return section, None
    rest = dict(section)
    keys = rest.pop("optimizer_state_keys")
    return rest, len(keys) if isinstance(keys, Mapping) else 0


def read_distributed_plain_part(path: str | os.PathLike[str]) -> DistributedPlainPart:
    """Load and check the plain part of a distributed checkpoint.

    Raises:
        CheckpointError: missing, unreadable or foreign file, or a malformed field.
    """
    contents = load_checkpoint(path)
    try:
        section = fields.mapping(fields.key(contents, "curriculum", ""), "curriculum")
        curriculum = dict(section)
        keys = fields.mapping(curriculum.pop("optimizer_state_keys", {}), "optimizer_state_keys")
        for name, values in keys.items():
            fields.string_list(values, f"optimizer_state_keys[{name!r}]")
        fields.curriculum_section(curriculum, "curriculum", weights=None)
        extra = fields.mapping(contents.get("extra", {}), "extra")
    except fields.Malformed as problem:
        raise CheckpointError(
            f"{str(path)!r} is not a usable mentor_fn distributed checkpoint: {problem}"
        ) from None
    return DistributedPlainPart(curriculum, dict(keys), dict(extra))


# Reading and checking ----------------------------------------------------------------


def _read_contents(contents: Mapping[str, Any], *, path: str) -> MenteeCheckpoint:
    weights = fields.tensor_mapping(fields.key(contents, "model", ""), "model")
    best_weights = _optional(contents, "best_weights", fields.tensor_mapping)
    if best_weights is not None:
        fields.same_names_and_shapes(best_weights, weights, "best_weights")
    curriculum = fields.curriculum_section(
        fields.key(contents, "curriculum", ""), "curriculum", weights
    )
    optional = {
        name: read(contents.get(name, default), name)
        for name, (default, read) in _OPTIONAL_SECTIONS.items()
    }
    schedule = contents.get("schedule")
    return MenteeCheckpoint(
        model_class=fields.string(fields.key(contents, "model_class", ""), "model_class"),
        constructor=_optional(contents, "constructor", fields.constructor_arguments),
        weights=weights,
        curriculum=curriculum,
        scheduler_recipe=_optional(contents, "scheduler_recipe", fields.scheduler_recipe),
        epoch=fields.integer(fields.key(contents, "epoch", ""), "epoch", minimum=0),
        history=fields.history(fields.key(contents, "history", ""), "history"),
        best=_optional(contents, "best", fields.best),
        best_weights=best_weights,
        random_states=RandomStates(
            torch_cpu=_optional(contents, "rng_state", fields.torch_rng_state),
            cuda=tuple(optional["cuda_rng_states"]),
            python=optional["python_rng_state"],
            numpy=optional["numpy_rng_state"],
        ),
        schedule=None
        if schedule is None
        else fields.saved_schedule(
            schedule, "schedule", CurriculumState.from_dict(curriculum["state"])
        ),
        path=path,
    )


def _optional(contents: Mapping[str, Any], key: str, read: Callable[[Any, str], Any]) -> Any:
    """A required key whose value may be None."""
    value = fields.key(contents, key, "")
    return None if value is None else read(value, key)


_OPTIONAL_SECTIONS: dict[str, tuple[Any, Callable[[Any, str], Any]]] = {
    # key: (value when absent, reader); the schedule is read apart: it must fit the curriculum
    "cuda_rng_states": ([], fields.cuda_rng_states),
    "python_rng_state": (None, fields.python_rng_state),
    "numpy_rng_state": (None, fields.numpy_rng_state),
}
