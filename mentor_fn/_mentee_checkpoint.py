"""The Mentee checkpoint file: its layout, built on save and validated as a whole on read.

This is the one module that knows the keys of a Mentee checkpoint (and of the
plain part of a distributed checkpoint); everything else works with the
values below. :func:`write_mentee_checkpoint` turns a :class:`MenteeCheckpoint`
into a file; :func:`read_mentee_checkpoint` loads one safely and checks every
field, with its type, before anything is built from it: a damaged or foreign
file is one :class:`CheckpointError` naming the file and the first bad field.
The same check runs before a save, so no file that would not resume is written.

Layout (inside the generic header of ``mentor_fn._checkpoint``; plain data
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
                        "frozen": [str], "time": float, ...}]
    best              {"epoch": int, "metric": str, "mode": "min"|"max", "value": float}, or None
    best_weights      {str: Tensor} with the names and shapes of ``model``, or None
    rng_state         uint8 Tensor (torch's CPU generator)
    optional sections (absent: the default)
    cuda_rng_states   [uint8 Tensor], default []
    python_rng_state  random.getstate(), default None
    numpy_rng_state   {"algorithm", "keys", "position", "has_gauss", "cached_gaussian"}, default None

A new section (a schedule, its cursor and fingerprint) is one more optional
entry in :data:`_OPTIONAL_SECTIONS` and one more field, checked in the same pass.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, BinaryIO

import torch

from ._checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_checkpoint_to_file
from ._curriculum import is_reference_group
from ._random_states import RandomStates
from ._state import CurriculumState

__all__ = [
    "ConstructorArguments",
    "DistributedPlainPart",
    "MenteeCheckpoint",
    "SavedGroup",
    "SchedulerRecipe",
    "read_distributed_plain_part",
    "read_mentee_checkpoint",
    "write_distributed_plain_part",
    "write_mentee_checkpoint",
]

Destination = str | os.PathLike[str] | BinaryIO


@dataclass(frozen=True)
class ConstructorArguments:
    """The arguments that rebuild the model: ``model_class(*args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class SchedulerRecipe:
    """A ``torch.optim.lr_scheduler`` class by qualified name, and its arguments."""

    name: str
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class SavedGroup:
    """One saved optimizer group: the layers it covers, its parameters by name, its lr."""

    layers: tuple[str, ...]
    parameters: tuple[str, ...]
    lr: float
    is_reference: bool
    """The parameter-less reference group (see :func:`mentor_fn._curriculum.is_reference_group`)."""


@dataclass(frozen=True)
class MenteeCheckpoint:
    """What a Mentee checkpoint holds (see the module docstring for the file's keys)."""

    model_class: str
    constructor: ConstructorArguments | None
    weights: Mapping[str, torch.Tensor]
    curriculum: Mapping[str, Any]
    """``Curriculum.state_dict()``, as :meth:`Curriculum.load_state_dict` takes it."""
    scheduler_recipe: SchedulerRecipe | None
    epoch: int
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_weights: Mapping[str, torch.Tensor] | None
    random_states: RandomStates
    path: str = field(default="", compare=False)
    """The file it was read from ("" when built to be written)."""

    @cached_property
    def state(self) -> CurriculumState:
        """The saved curriculum state."""
        return CurriculumState.from_dict(self.curriculum["state"])

    @property
    def optimizer_name(self) -> str:
        """Qualified name of the optimizer class (e.g. ``torch.optim.adam.Adam``)."""
        return str(self.curriculum["recipe"]["optimizer"])

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        return dict(self.curriculum["recipe"]["optimizer_kwargs"])

    @property
    def global_lr(self) -> float:
        return float(self.curriculum["recipe"]["lr"])

    @property
    def coalesce(self) -> bool:
        return bool(self.curriculum["recipe"]["coalesce"])

    @property
    def has_optimizer(self) -> bool:
        """Whether an optimizer was built when the file was saved."""
        return self.curriculum["optimizer"] is not None

    @property
    def has_scheduler_state(self) -> bool:
        return self.curriculum["scheduler"] is not None

    @property
    def saved_groups(self) -> tuple[SavedGroup, ...]:
        """The optimizer's groups as saved (empty when none was built)."""
        optimizer = self.curriculum["optimizer"]
        if optimizer is None:
            return ()
        return tuple(
            SavedGroup(
                layers=tuple(group.get("layers", ())),
                parameters=tuple(group["params"]),
                lr=float(group["lr"]),
                is_reference=is_reference_group(group),
            )
            for group in optimizer["param_groups"]
        )

    def check_fits(self, layers: Sequence[str], model_state: Mapping[str, Any]) -> None:
        """Raise CheckpointError naming every difference between the file and a model.

        Args:
            layers: the model's layer names.
            model_state: the model's state dict (on any device, ``meta`` included).
        """
        saved_layers = tuple(self.state.layers)
        if saved_layers != tuple(layers):
            missing = [name for name in saved_layers if name not in set(layers)]
            extra = [name for name in layers if name not in set(saved_layers)]
            details = []
            if missing:
                details.append(f"layers missing from the model: {', '.join(missing[:10])}")
            if extra:
                details.append(f"layers not in the checkpoint: {', '.join(extra[:10])}")
            raise CheckpointError(
                f"checkpoint {self.path!r} does not fit this model ("
                + ("; ".join(details) or "same layers in another order")
                + ")"
            )
        saved = self.weights
        missing = [name for name in saved if name not in model_state]
        extra = [name for name in model_state if name not in saved]
        reshaped, retyped = [], []
        for name, tensor in model_state.items():
            if name not in saved or not isinstance(tensor, torch.Tensor):
                continue
            if saved[name].shape != tensor.shape:
                reshaped.append(
                    f"{name} (checkpoint {list(saved[name].shape)}, model {list(tensor.shape)})"
                )
            elif _dtype_kind(saved[name]) != _dtype_kind(tensor):
                retyped.append(f"{name} (checkpoint {saved[name].dtype}, model {tensor.dtype})")
        details = []
        if missing:
            details.append(f"weights missing from the model: {', '.join(missing[:10])}")
        if extra:
            details.append(f"weights not in the checkpoint: {', '.join(extra[:10])}")
        if reshaped:
            details.append(f"shapes differ: {', '.join(reshaped[:10])}")
        if retyped:
            details.append(f"kinds of values differ: {', '.join(retyped[:10])}")
        if details:
            raise CheckpointError(
                f"checkpoint {self.path!r} does not fit this model (" + "; ".join(details) + ")"
            )

    def to_contents(self) -> dict[str, Any]:
        """The file's contents (without the generic header)."""
        constructor = self.constructor
        recipe = self.scheduler_recipe
        states = self.random_states
        return {
            "model_class": self.model_class,
            "constructor": None
            if constructor is None
            else {"args": list(constructor.args), "kwargs": dict(constructor.kwargs)},
            "model": self.weights,
            "curriculum": self.curriculum,
            "scheduler_recipe": None
            if recipe is None
            else {"name": recipe.name, "kwargs": dict(recipe.kwargs)},
            "epoch": self.epoch,
            "history": self.history,
            "best": self.best,
            "best_weights": self.best_weights,
            "rng_state": states.torch_cpu,
            "cuda_rng_states": list(states.cuda),
            "python_rng_state": states.python,
            "numpy_rng_state": states.numpy,
        }


def _dtype_kind(tensor: torch.Tensor) -> str:
    # A model saved in half precision resumes into float32 (load_state_dict
    # casts); integer weights for floating-point parameters are damage.
    if tensor.dtype == torch.bool:
        return "bool"
    if tensor.is_complex():
        return "complex"
    return "float" if tensor.is_floating_point() else "int"


def write_mentee_checkpoint(destination: Destination, checkpoint: MenteeCheckpoint) -> None:
    """Write ``checkpoint`` to a path (atomically) or into an open binary file (directly).

    Raises:
        ValueError: a field would make the file fail to resume (named; nothing written).
        TypeError: ``destination`` is neither a path nor a binary file.
        OSError: the file could not be written (e.g. the disk is full).
    """
    contents = checkpoint.to_contents()
    try:
        _read_contents(contents, path="")
    except _Malformed as problem:
        raise ValueError(
            f"this checkpoint would not resume, nothing was written: {problem}"
        ) from None
    if isinstance(destination, (str, os.PathLike)):
        save_checkpoint(destination, contents)
    else:
        write_checkpoint_to_file(destination, contents)


def read_mentee_checkpoint(path: str | os.PathLike[str]) -> MenteeCheckpoint:
    """Load a Mentee checkpoint and check every field before anything is built from it.

    Raises:
        CheckpointError: the file is missing, unreadable or foreign, or a field
            is missing or of the wrong type or shape (the first one is named).
    """
    contents = load_checkpoint(path)
    if "model_class" not in contents and "model" not in contents:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a mentor_fn checkpoint file but not a Mentee "
            f"checkpoint (its keys: {', '.join(sorted(map(str, contents))[:12])})"
        )
    try:
        return _read_contents(contents, path=str(path))
    except _Malformed as problem:
        raise CheckpointError(f"checkpoint {str(path)!r} is malformed: {problem}") from None


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


def read_distributed_plain_part(path: str | os.PathLike[str]) -> DistributedPlainPart:
    """Load and check the plain part of a distributed checkpoint.

    Raises:
        CheckpointError: missing, unreadable or foreign file, or a malformed field.
    """
    contents = load_checkpoint(path)
    try:
        section = _mapping(_key(contents, "curriculum", ""), "curriculum")
        curriculum = dict(section)
        keys = _mapping(curriculum.pop("optimizer_state_keys", {}), "optimizer_state_keys")
        for name, values in keys.items():
            _string_list(values, f"optimizer_state_keys[{name!r}]")
        _curriculum_section(curriculum, "curriculum", weights=None)
        extra = _mapping(contents.get("extra", {}), "extra")
    except _Malformed as problem:
        raise CheckpointError(
            f"{str(path)!r} is not a usable mentor_fn distributed checkpoint: {problem}"
        ) from None
    return DistributedPlainPart(curriculum, dict(keys), dict(extra))


# Reading and checking ----------------------------------------------------------------


class _Malformed(Exception):
    """A field that is missing or not what the layout says, named as the file holds it."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where} {problem}")


def _read_contents(contents: Mapping[str, Any], *, path: str) -> MenteeCheckpoint:
    weights = _tensor_mapping(_key(contents, "model", ""), "model")
    best_weights = _optional(contents, "best_weights", _tensor_mapping)
    if best_weights is not None:
        _same_names_and_shapes(best_weights, weights, "best_weights")
    optional = {
        name: read(contents.get(name, default), name)
        for name, (default, read) in _OPTIONAL_SECTIONS.items()
    }
    return MenteeCheckpoint(
        model_class=_string(_key(contents, "model_class", ""), "model_class"),
        constructor=_optional(contents, "constructor", _constructor),
        weights=weights,
        curriculum=_curriculum_section(_key(contents, "curriculum", ""), "curriculum", weights),
        scheduler_recipe=_optional(contents, "scheduler_recipe", _scheduler_recipe),
        epoch=_integer(_key(contents, "epoch", ""), "epoch", minimum=0),
        history=_history(_key(contents, "history", ""), "history"),
        best=_optional(contents, "best", _best),
        best_weights=best_weights,
        random_states=RandomStates(
            torch_cpu=_torch_rng_state(_key(contents, "rng_state", ""), "rng_state"),
            cuda=tuple(optional["cuda_rng_states"]),
            python=optional["python_rng_state"],
            numpy=optional["numpy_rng_state"],
        ),
        path=path,
    )


def _shown(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _key(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise _Malformed(f"{where}[{key!r}]" if where else key, "is missing")
    return mapping[key]


def _optional(contents: Mapping[str, Any], key: str, read: Callable[[Any, str], Any]) -> Any:
    """A required key whose value may be None."""
    value = _key(contents, key, "")
    return None if value is None else read(value, key)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise _Malformed(where, f"must be a dict with str keys, got {_shown(value)}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(where, f"must be a str, got {_shown(value)}")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise _Malformed(where, f"must be a list of str, got {_shown(value)}")
    return list(value)


def _integer(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(where, f"must be an int, got {_shown(value)}")
    if minimum is not None and value < minimum:
        raise _Malformed(where, f"must be >= {minimum}, got {value}")
    return value


def _number(value: Any, where: str, *, finite_non_negative: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = float(value)  # a fused / capturable optimizer's tensor lr
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(where, f"must be a number, got {_shown(value)}")
    if finite_non_negative and not (math.isfinite(value) and value >= 0):
        raise _Malformed(where, f"must be finite and >= 0, got {value!r}")
    return float(value)


def _tensor_mapping(value: Any, where: str) -> dict[str, torch.Tensor]:
    for name, tensor in _mapping(value, where).items():
        if not isinstance(tensor, torch.Tensor):
            raise _Malformed(f"{where}[{name!r}]", f"must be a tensor, got {_shown(tensor)}")
    return dict(value)


def _same_names_and_shapes(
    tensors: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], where: str
) -> None:
    for name in weights:
        if name not in tensors:
            raise _Malformed(f"{where}[{name!r}]", "is missing (the model's weights have it)")
    for name, tensor in tensors.items():
        if name not in weights:
            raise _Malformed(f"{where}[{name!r}]", "is not one of the model's weights")
        if tensor.shape != weights[name].shape:
            raise _Malformed(
                f"{where}[{name!r}]",
                f"has shape {list(tensor.shape)}, the model's weight {list(weights[name].shape)}",
            )


def _constructor(value: Any, where: str) -> ConstructorArguments:
    section = _mapping(value, where)
    args = _key(section, "args", where)
    if not isinstance(args, (list, tuple)):
        raise _Malformed(f"{where}['args']", f"must be a list, got {_shown(args)}")
    kwargs = _mapping(_key(section, "kwargs", where), f"{where}['kwargs']")
    return ConstructorArguments(tuple(args), dict(kwargs))


def _scheduler_recipe(value: Any, where: str) -> SchedulerRecipe:
    section = _mapping(value, where)
    name = _string(_key(section, "name", where), f"{where}['name']")
    kwargs = _mapping(_key(section, "kwargs", where), f"{where}['kwargs']")
    return SchedulerRecipe(name, dict(kwargs))


def _curriculum_section(
    value: Any, where: str, weights: Mapping[str, torch.Tensor] | None
) -> Mapping[str, Any]:
    """Check a saved ``Curriculum.state_dict()``; ``weights``: names its optimizer may use."""
    section = _mapping(value, where)
    _string(_key(section, "format", where), f"{where}['format']")
    _integer(_key(section, "version", where), f"{where}['version']")
    try:
        CurriculumState.from_dict(_key(section, "state", where))
    except ValueError as error:
        raise _Malformed(f"{where}['state']", f"is not a curriculum state: {error}") from None
    recipe = _mapping(_key(section, "recipe", where), f"{where}['recipe']")
    inside = f"{where}['recipe']"
    _string(_key(recipe, "optimizer", inside), f"{inside}['optimizer']")
    _mapping(_key(recipe, "optimizer_kwargs", inside), f"{inside}['optimizer_kwargs']")
    _number(_key(recipe, "lr", inside), f"{inside}['lr']", finite_non_negative=True)
    if not isinstance(_key(recipe, "coalesce", inside), bool):
        raise _Malformed(
            f"{inside}['coalesce']", f"must be a bool, got {_shown(recipe['coalesce'])}"
        )
    optimizer = _key(section, "optimizer", where)
    if optimizer is not None:
        _optimizer_section(optimizer, f"{where}['optimizer']", weights)
    scheduler = _key(section, "scheduler", where)
    if scheduler is not None:
        _mapping(scheduler, f"{where}['scheduler']")
    return section


def _optimizer_section(value: Any, where: str, weights: Mapping[str, torch.Tensor] | None) -> None:
    section = _mapping(value, where)
    groups = _key(section, "param_groups", where)
    if not isinstance(groups, list):
        raise _Malformed(f"{where}['param_groups']", f"must be a list, got {_shown(groups)}")
    for number, group in enumerate(groups):
        inside = f"{where}['param_groups'][{number}]"
        _mapping(group, inside)
        for name in _string_list(_key(group, "params", inside), f"{inside}['params']"):
            _known_parameter(name, f"{inside}['params']", weights)
        _number(_key(group, "lr", inside), f"{inside}['lr']")
        if "layers" in group:
            _string_list(group["layers"], f"{inside}['layers']")
    for name, values in _mapping(_key(section, "state", where), f"{where}['state']").items():
        _known_parameter(name, f"{where}['state']", weights)
        _mapping(values, f"{where}['state'][{name!r}]")


def _known_parameter(name: str, where: str, weights: Mapping[str, torch.Tensor] | None) -> None:
    if weights is not None and name not in weights:
        raise _Malformed(where, f"names {name!r}, which is not one of the model's weights")


_SPLITS = ("train", "val")


def _history(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _Malformed(where, f"must be a list, got {_shown(value)}")
    for number, record in enumerate(value):
        inside = f"{where}[{number}]"
        _mapping(record, inside)
        _integer(_key(record, "epoch", inside), f"{inside}['epoch']")
        for split in _SPLITS:
            if record.get(split) is not None:
                for name, metric in _mapping(record[split], f"{inside}[{split!r}]").items():
                    _number(metric, f"{inside}[{split!r}][{name!r}]")
        if "lr" in record:
            for layer, lr in _mapping(record["lr"], f"{inside}['lr']").items():
                _number(lr, f"{inside}['lr'][{layer!r}]")
        if "frozen" in record:
            _string_list(record["frozen"], f"{inside}['frozen']")
        if "time" in record:
            _number(record["time"], f"{inside}['time']")
        if "phase" in record:
            _string(record["phase"], f"{inside}['phase']")
    return value


def _best(value: Any, where: str) -> dict[str, Any]:
    section = _mapping(value, where)
    _integer(_key(section, "epoch", where), f"{where}['epoch']")
    _string(_key(section, "metric", where), f"{where}['metric']")
    if _key(section, "mode", where) not in ("min", "max"):
        raise _Malformed(
            f"{where}['mode']", f"must be 'min' or 'max', got {_shown(section['mode'])}"
        )
    _number(_key(section, "value", where), f"{where}['value']")
    return dict(section)


def _byte_tensor(value: Any, where: str, size: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise _Malformed(where, f"must be a 1-d uint8 tensor, got {_shown(value)}")
    if size is not None and value.numel() != size:
        raise _Malformed(where, f"must hold {size} bytes, got {value.numel()}")
    return value


def _torch_rng_state(value: Any, where: str) -> torch.Tensor:
    return _byte_tensor(value, where, size=torch.get_rng_state().numel())


def _cuda_rng_states(value: Any, where: str) -> list[torch.Tensor]:
    if not isinstance(value, (list, tuple)):
        raise _Malformed(where, f"must be a list, got {_shown(value)}")
    return [_byte_tensor(state, f"{where}[{number}]") for number, state in enumerate(value)]


def _python_rng_state(value: Any, where: str) -> tuple[Any, ...] | None:
    if value is None:
        return None
    try:
        random.Random().setstate(value)  # a scratch generator checks it exactly
    except (TypeError, ValueError, OverflowError) as error:
        raise _Malformed(where, f"is not a state of Python's random ({error})") from None
    return tuple(value)


_NUMPY_KEYS = {"algorithm": str, "position": int, "has_gauss": int, "cached_gaussian": float}


def _numpy_rng_state(value: Any, where: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    section = _mapping(value, where)
    for key, kind in _NUMPY_KEYS.items():
        item = _key(section, key, where)
        if isinstance(item, bool) or not isinstance(item, kind):
            raise _Malformed(f"{where}[{key!r}]", f"must be a {kind.__name__}, got {_shown(item)}")
    keys = _key(section, "keys", where)
    if (
        not isinstance(keys, torch.Tensor)
        or keys.shape != (624,)
        or keys.is_floating_point()
        or keys.is_complex()
    ):
        raise _Malformed(f"{where}['keys']", f"must be 624 integers, got {_shown(keys)}")
    return section


_OPTIONAL_SECTIONS: dict[str, tuple[Any, Callable[[Any, str], Any]]] = {
    # key: (value when absent, reader)
    "cuda_rng_states": ([], _cuda_rng_states),
    "python_rng_state": (None, _python_rng_state),
    "numpy_rng_state": (None, _numpy_rng_state),
}
