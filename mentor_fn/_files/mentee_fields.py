"""Validators of a Mentee checkpoint's fields, one per kind of field.

Each takes a value as loaded and the field's name as the file holds it
(``curriculum['optimizer']['param_groups'][0]``), and returns the value
checked or raises :class:`Malformed` naming that field. Which key holds what
is ``mentor_fn._files.mentee_file``'s knowledge; what a valid value of each
kind looks like is this module's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import torch

from .._core.state import CurriculumState
from .._schedules.saved_schedule import SavedSchedule, SavedScheduleError, check_agreement
from .mentee_values import ConstructorArguments, SchedulerRecipe

__all__ = [
    "Malformed",
    "best",
    "constructor_arguments",
    "cuda_rng_states",
    "curriculum_section",
    "history",
    "integer",
    "key",
    "mapping",
    "number",
    "numpy_rng_state",
    "python_rng_state",
    "same_names_and_shapes",
    "saved_schedule",
    "scheduler_recipe",
    "shown",
    "string",
    "string_list",
    "tensor_mapping",
    "torch_rng_state",
]


class Malformed(Exception):
    """A field that is missing or not what the layout says, named as the file holds it."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where} {problem}")


def shown(value: Any) -> str:
    """A value, briefly: its type and a short repr (a tensor's dtype and shape)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def key(section: Mapping[str, Any], name: str, where: str) -> Any:
    """``section[name]``; ``where`` names ``section`` ("" for the file's top level)."""
    if name not in section:
        raise Malformed(f"{where}[{name!r}]" if where else name, "is missing")
    return section[name]


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(name, str) for name in value):
        raise Malformed(where, f"must be a dict with str keys, got {shown(value)}")
    return value


def string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Malformed(where, f"must be a str, got {shown(value)}")
    return value


def string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise Malformed(where, f"must be a list of str, got {shown(value)}")
    return list(value)


def integer(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed(where, f"must be an int, got {shown(value)}")
    if minimum is not None and value < minimum:
        raise Malformed(where, f"must be >= {minimum}, got {value}")
    return value


def number(value: Any, where: str, *, finite_non_negative: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        value = float(value)  # a fused / capturable optimizer's tensor lr
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(where, f"must be a number, got {shown(value)}")
    if finite_non_negative and not (math.isfinite(value) and value >= 0):
        raise Malformed(where, f"must be finite and >= 0, got {value!r}")
    return float(value)


def tensor_mapping(value: Any, where: str) -> dict[str, torch.Tensor]:
    for name, tensor in mapping(value, where).items():
        if not isinstance(tensor, torch.Tensor):
            raise Malformed(f"{where}[{name!r}]", f"must be a tensor, got {shown(tensor)}")
    return dict(value)


def same_names_and_shapes(
    tensors: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], where: str
) -> None:
    for name in weights:
        if name not in tensors:
            raise Malformed(f"{where}[{name!r}]", "is missing (the model's weights have it)")
    for name, tensor in tensors.items():
        if name not in weights:
            raise Malformed(f"{where}[{name!r}]", "is not one of the model's weights")
        if tensor.shape != weights[name].shape:
            raise Malformed(
                f"{where}[{name!r}]",
                f"has shape {list(tensor.shape)}, the model's weight {list(weights[name].shape)}",
            )


def constructor_arguments(value: Any, where: str) -> ConstructorArguments:
    section = mapping(value, where)
    args = key(section, "args", where)
    if not isinstance(args, (list, tuple)):
        raise Malformed(f"{where}['args']", f"must be a list, got {shown(args)}")
    kwargs = mapping(key(section, "kwargs", where), f"{where}['kwargs']")
    return ConstructorArguments(tuple(args), dict(kwargs))


def scheduler_recipe(value: Any, where: str) -> SchedulerRecipe:
    section = mapping(value, where)
    name = string(key(section, "name", where), f"{where}['name']")
    kwargs = mapping(key(section, "kwargs", where), f"{where}['kwargs']")
    return SchedulerRecipe(name, dict(kwargs))


def curriculum_section(
    value: Any, where: str, weights: Mapping[str, torch.Tensor] | None
) -> Mapping[str, Any]:
    """Check a saved ``Curriculum.state_dict()``; ``weights``: names its optimizer may use."""
    section = mapping(value, where)
    string(key(section, "format", where), f"{where}['format']")
    integer(key(section, "version", where), f"{where}['version']")
    try:
        CurriculumState.from_dict(key(section, "state", where))
    except ValueError as error:
        raise Malformed(f"{where}['state']", f"is not a curriculum state: {error}") from None
    recipe = mapping(key(section, "recipe", where), f"{where}['recipe']")
    inside = f"{where}['recipe']"
    string(key(recipe, "optimizer", inside), f"{inside}['optimizer']")
    mapping(key(recipe, "optimizer_kwargs", inside), f"{inside}['optimizer_kwargs']")
    number(key(recipe, "lr", inside), f"{inside}['lr']", finite_non_negative=True)
    if not isinstance(key(recipe, "coalesce", inside), bool):
        raise Malformed(f"{inside}['coalesce']", f"must be a bool, got {shown(recipe['coalesce'])}")
    optimizer = key(section, "optimizer", where)
    if optimizer is not None:
        _optimizer_section(optimizer, f"{where}['optimizer']", weights)
    scheduler = key(section, "scheduler", where)
    if scheduler is not None:
        mapping(scheduler, f"{where}['scheduler']")
    return section


def _optimizer_section(value: Any, where: str, weights: Mapping[str, torch.Tensor] | None) -> None:
    section = mapping(value, where)
    groups = key(section, "param_groups", where)
    if not isinstance(groups, list):
        raise Malformed(f"{where}['param_groups']", f"must be a list, got {shown(groups)}")
    for index, group in enumerate(groups):
        inside = f"{where}['param_groups'][{index}]"
        mapping(group, inside)
        for name in string_list(key(group, "params", inside), f"{inside}['params']"):
            _known_parameter(name, f"{inside}['params']", weights)
        number(key(group, "lr", inside), f"{inside}['lr']")
        if "layers" in group:
            string_list(group["layers"], f"{inside}['layers']")
    for name, values in mapping(key(section, "state", where), f"{where}['state']").items():
        _known_parameter(name, f"{where}['state']", weights)
        mapping(values, f"{where}['state'][{name!r}]")


def _known_parameter(name: str, where: str, weights: Mapping[str, torch.Tensor] | None) -> None:
    if weights is not None and name not in weights:
        raise Malformed(where, f"names {name!r}, which is not one of the model's weights")


_SPLITS = ("train", "val")


def history(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise Malformed(where, f"must be a list, got {shown(value)}")
    for index, record in enumerate(value):
        inside = f"{where}[{index}]"
        mapping(record, inside)
        integer(key(record, "epoch", inside), f"{inside}['epoch']")
        for split in _SPLITS:
            if record.get(split) is not None:
                for name, metric in mapping(record[split], f"{inside}[{split!r}]").items():
                    number(metric, f"{inside}[{split!r}][{name!r}]")
        if "lr" in record:
            for layer, lr in mapping(record["lr"], f"{inside}['lr']").items():
                number(lr, f"{inside}['lr'][{layer!r}]")
        if "frozen" in record:
            string_list(record["frozen"], f"{inside}['frozen']")
        if "time" in record:
            number(record["time"], f"{inside}['time']")
        if "phase" in record:
            string(record["phase"], f"{inside}['phase']")
    return value


def best(value: Any, where: str) -> dict[str, Any]:
    section = mapping(value, where)
    integer(key(section, "epoch", where), f"{where}['epoch']")
    string(key(section, "metric", where), f"{where}['metric']")
    if key(section, "mode", where) not in ("min", "max"):
        raise Malformed(f"{where}['mode']", f"must be 'min' or 'max', got {shown(section['mode'])}")
    number(key(section, "value", where), f"{where}['value']")
    return dict(section)


def _byte_tensor(value: Any, where: str, size: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise Malformed(where, f"must be a 1-d uint8 tensor, got {shown(value)}")
    if size is not None and value.numel() != size:
        raise Malformed(where, f"must hold {size} bytes, got {value.numel()}")
    return value


def torch_rng_state(value: Any, where: str) -> torch.Tensor:
    return _byte_tensor(value, where, size=torch.get_rng_state().numel())


def cuda_rng_states(value: Any, where: str) -> list[torch.Tensor]:
    if not isinstance(value, (list, tuple)):
        raise Malformed(where, f"must be a list, got {shown(value)}")
    return [_byte_tensor(state, f"{where}[{index}]") for index, state in enumerate(value)]


def python_rng_state(value: Any, where: str) -> tuple[Any, ...] | None:
    if value is None:
        return None
    try:
        random.Random().setstate(value)  # a scratch generator checks it exactly
    except (TypeError, ValueError, OverflowError) as error:
        raise Malformed(where, f"is not a state of Python's random ({error})") from None
    return tuple(value)


_NUMPY_KEYS = {"algorithm": str, "position": int, "has_gauss": int, "cached_gaussian": float}


def numpy_rng_state(value: Any, where: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    section = mapping(value, where)
    for name, kind in _NUMPY_KEYS.items():
        item = key(section, name, where)
        if isinstance(item, bool) or not isinstance(item, kind):
            raise Malformed(f"{where}[{name!r}]", f"must be a {kind.__name__}, got {shown(item)}")
    keys = key(section, "keys", where)
    if (
        not isinstance(keys, torch.Tensor)
        or keys.shape != (624,)
        or keys.is_floating_point()
        or keys.is_complex()
    ):
        raise Malformed(f"{where}['keys']", f"must be 624 integers, got {shown(keys)}")
    return section


def saved_schedule(value: Any, where: str, state: CurriculumState) -> SavedSchedule:
    """A saved schedule run that fits the saved curriculum ``state``."""
    try:
        saved = SavedSchedule.from_dict(mapping(value, where))
    except SavedScheduleError as error:
        inside = f"{where}[{error.field!r}]" if error.field else where
        raise Malformed(inside, f"is not readable: {error.problem}") from None
    if saved.initial_state.layers != state.layers:
        raise Malformed(
            f"{where}['initial_state']", "has other layers than the saved curriculum state"
        )
    try:
        check_agreement(saved.state(), state, saved.phase)
    except ValueError as error:
        raise Malformed(
            f"{where}['cursor']", f"does not fit the saved curriculum: {error}"
        ) from None
    return saved
