"""The values a Mentee checkpoint holds, as its reader hands them out.

:class:`MenteeCheckpoint` is the whole file, checked; the small values are
its parts that rebuild something (the constructor call, the scheduler, the
optimizer's groups). The file's layout and its validation live in
``mentor_fn._files.mentee_file``; these are what the rest of the package
works with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from .._core.state import CurriculumState
from .._schedules.saved_schedule import SavedSchedule
from .._wrapper.curriculum import is_reference_group
from .checkpoint import CheckpointError
from .random_states import RandomStates

__all__ = [
    "ConstructorArguments",
    "MenteeCheckpoint",
    "SavedCurriculum",
    "SavedGroup",
    "SchedulerRecipe",
]


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
    """The parameter-less reference group (see :func:`mentor_fn._wrapper.curriculum.is_reference_group`)."""


@dataclass(frozen=True)
class SavedCurriculum:
    """A saved ``Curriculum.state_dict()`` (checked), read as values.

    Example:
        >>> import torch
        >>> from mentor_fn import Curriculum
        >>> curriculum = Curriculum(torch.nn.Sequential(torch.nn.Linear(2, 1)), 0.1)
        >>> _ = curriculum.build()
        >>> saved = SavedCurriculum(curriculum.state_dict())
        >>> saved.optimizer_name, saved.global_lr, [g.parameters for g in saved.groups]
        ('torch.optim.adam.Adam', 0.1, [('0.weight', '0.bias'), ()])
    """

    section: Mapping[str, Any]
    distributed_state_count: int | None = None
    """For a distributed checkpoint's plain part: how many parameters have
    optimizer state (their tensors are in the DCP shards)."""

    @cached_property
    def state(self) -> CurriculumState:
        return CurriculumState.from_dict(self.section["state"])

    @property
    def optimizer_name(self) -> str:
        return str(self.section["recipe"]["optimizer"])

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        return dict(self.section["recipe"]["optimizer_kwargs"])

    @property
    def global_lr(self) -> float:
        return float(self.section["recipe"]["lr"])

    @property
    def coalesce(self) -> bool:
        return bool(self.section["recipe"]["coalesce"])

    @property
    def has_optimizer(self) -> bool:
        return self.section["optimizer"] is not None

    @property
    def has_scheduler_state(self) -> bool:
        return self.section["scheduler"] is not None

    @property
    def scheduler(self) -> Mapping[str, Any] | None:
        """The scheduler's saved state dict, or None."""
        scheduler: Mapping[str, Any] | None = self.section["scheduler"]
        return scheduler

    @property
    def scheduler_classes(self) -> list[str]:
        """Qualified names of the scheduler and its nested ones (empty when unknown)."""
        classes = self.section.get("scheduler_classes")
        return list(classes) if isinstance(classes, list) else []

    @property
    def parameters_with_state(self) -> int:
        """How many parameters have per-parameter optimizer state (moments)."""
        optimizer = self.section["optimizer"]
        if optimizer is None:
            return 0
        if self.distributed_state_count is not None:
            return self.distributed_state_count
        return len(optimizer["state"])

    @property
    def groups(self) -> tuple[SavedGroup, ...]:
        """The optimizer's groups as saved (empty when none was built)."""
        optimizer = self.section["optimizer"]
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


@dataclass(frozen=True)
class MenteeCheckpoint:
    """What a Mentee checkpoint holds (``mentor_fn._files.mentee_file`` has the file's keys)."""

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
    schedule: SavedSchedule | None = None
    """The schedule run that ``fit`` followed, where it stood, and the state it started from."""
    path: str = field(default="", compare=False)
    """The file it was read from ("" when built to be written)."""

    @cached_property
    def saved_curriculum(self) -> SavedCurriculum:
        """The curriculum section, as a value."""
        return SavedCurriculum(self.curriculum)

    @property
    def state(self) -> CurriculumState:
        """The saved curriculum state."""
        return self.saved_curriculum.state

    @property
    def optimizer_name(self) -> str:
        """Qualified name of the optimizer class (e.g. ``torch.optim.adam.Adam``)."""
        return self.saved_curriculum.optimizer_name

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        return self.saved_curriculum.optimizer_kwargs

    @property
    def global_lr(self) -> float:
        return self.saved_curriculum.global_lr

    @property
    def coalesce(self) -> bool:
        return self.saved_curriculum.coalesce

    @property
    def has_optimizer(self) -> bool:
        """Whether an optimizer was built when the file was saved."""
        return self.saved_curriculum.has_optimizer

    @property
    def has_scheduler_state(self) -> bool:
        return self.saved_curriculum.has_scheduler_state

    @property
    def saved_groups(self) -> tuple[SavedGroup, ...]:
        """The optimizer's groups as saved (empty when none was built)."""
        return self.saved_curriculum.groups

    def check_fits(self, layers: Sequence[str], model_state: Mapping[str, Any]) -> None:
        """Raise CheckpointError naming every difference between the file and a model.

        Args:
            layers: the model's layer names.
            model_state: the model's state dict (on any device, ``meta`` included).
        """
        saved_layers = tuple(self.state.layers)
        if saved_layers != tuple(layers):
            model_layers, checkpoint_layers = set(layers), set(saved_layers)
            missing = [name for name in saved_layers if name not in model_layers]
            extra = [name for name in layers if name not in checkpoint_layers]
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


def _dtype_kind(tensor: torch.Tensor) -> str:
    # A model saved in half precision resumes into float32 (load_state_dict
    # casts); integer weights for floating-point parameters are damage.
    if tensor.dtype == torch.bool:
        return "bool"
    if tensor.is_complex():
        return "complex"
    return "float" if tensor.is_floating_point() else "int"
