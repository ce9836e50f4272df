"""Converting a torch_mentor checkpoint into a mentor_fn Mentee file.

The file is read without running code (``mentor_fn._files.torch_mentor_file``),
its model rebuilt as far as conversion needs (``torch_mentor_model``), its
optimizer and scheduler carried into a Curriculum (``torch_mentor_training``),
and the result written as a Mentee checkpoint that ``Mentee.resume_training``
continues. Everything the file holds is either carried or named in the
report as not carried, with why: nothing is dropped silently. The source file
is only ever read.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._core.model_walk import walk_model
from .._core.state import CurriculumState
from .._wrapper.curriculum import Curriculum
from .checkpoint import is_plain_data
from .mentee_file import write_mentee_checkpoint
from .mentee_values import ConstructorArguments, MenteeCheckpoint
from .random_states import RandomStates
from .torch_mentor_file import TorchMentorCheckpoint, read_torch_mentor_checkpoint, stand_ins
from .torch_mentor_model import model_of_file
from .torch_mentor_training import NotCarried, carry_training, torch_mentor_default_lr

__all__ = ["TorchMentorConversion", "convert_torch_mentor_checkpoint"]


@dataclass(frozen=True)
class TorchMentorConversion:
    """What :func:`convert_torch_mentor_checkpoint` did: what it carried, changed and left out."""

    source: str
    destination: str
    torch_mentor_version: str
    """The torch_mentor release whose layout the source has."""
    epoch: int
    fully_unpickled: bool
    """The source was read with full unpickling (``trust=True`` was needed)."""
    carried: tuple[str, ...]
    changed: tuple[str, ...]
    """What the converted file holds differently from torch_mentor's, and why."""
    not_carried: tuple[str, ...]
    """What the converted file does not hold, and why."""

    def __str__(self) -> str:
        read = "by full unpickling, trusted" if self.fully_unpickled else "weights-only"
        lines = [
            f"converted torch_mentor {self.torch_mentor_version} checkpoint {self.source} "
            f"(read {read}) into the Mentee file {self.destination}, epoch {self.epoch}",
            "carried: " + "; ".join(self.carried),
        ]
        lines += [f"changed: {line}" for line in self.changed]
        lines += [f"not carried: {line}" for line in self.not_carried]
        return "\n".join(lines)


def convert_torch_mentor_checkpoint(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    trust: bool = False,
) -> TorchMentorConversion:
    """Turn a torch_mentor checkpoint into a mentor_fn Mentee file that resumes and trains on.

    Carried: the weights, the constructor arguments, the frozen modules and
    lr coefficients (as the :class:`CurriculumState`), the optimizer state
    (Adam's moments by parameter name) and the StepLR scheduler where
    torch_mentor saved them, the per-epoch history (training and validation
    metrics), the best epoch and its weights, and the epoch count. What the
    Mentee file has no place for (a loss object, inference state, software
    and command-line history, the epoch-0 validation, an AMP scaler, the
    batch count) is listed in the returned report, never dropped silently.

    The source is only read, without running code from it: torch's
    weights-only unpickler, with torch_mentor's plain types allowed and every
    other object replaced by an inert stand-in (reported as not carried).

    Args:
        source: the torch_mentor checkpoint (``Mentee.save`` / ``fit``'s file).
        destination: the Mentee file to write (atomically); not the source.
        model: the model the file was saved from (not changed). Without it,
            parameters are told from buffers by rules (see
            ``mentor_fn._files.torch_mentor_model``), which a model with
            floating-point buffers of its own beside parameters may need.
        trust: allow full unpickling for a file the weights-only unpickler
            cannot read; it runs code the file names, so only for files of a
            trusted origin.

    Returns:
        The report: what was carried, changed and not carried.

    Raises:
        TypeError: a path that is not a str or path, a ``model`` that is not an
            ``nn.Module``, a ``trust`` that is not a bool.
        ValueError: ``destination`` is ``source``.
        CheckpointError: the source is missing, damaged, not a torch_mentor
            checkpoint, of an unknown torch_mentor release, malformed (the
            field is named), needs full unpickling without ``trust``, or does
            not fit ``model``. Nothing is written.
        OSError: the destination could not be written.
    """
    for name, path in (("source", source), ("destination", destination)):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path (str or os.PathLike), got {path!r}")
    if _same_file(source, destination):
        raise ValueError(
            f"destination {str(destination)!r} is the source: the torch_mentor file is never "
            "overwritten; name another file"
        )
    saved = read_torch_mentor_checkpoint(source, trust=trust)
    notes = _Notes()
    converted = _convert(saved, model, notes)
    write_mentee_checkpoint(destination, converted)
    return TorchMentorConversion(
        source=str(source),
        destination=str(destination),
        torch_mentor_version=saved.version,
        epoch=converted.epoch,
        fully_unpickled=saved.fully_unpickled,
        carried=tuple(notes.carried),
        changed=tuple(notes.changed),
        not_carried=tuple(notes.not_carried),
    )


class _Notes:
    def __init__(self) -> None:
        self.carried: list[str] = []
        self.changed: list[str] = []
        self.not_carried: list[str] = []


def _same_file(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> bool:
    first, second = Path(source), Path(destination)
    try:
        return first.samefile(second)
    except OSError:
        return first.resolve() == second.resolve()


def _convert(
    saved: TorchMentorCheckpoint, model: nn.Module | None, notes: _Notes
) -> MenteeCheckpoint:
    where = saved.path
    module_layers = list(saved["layer_names"])
    built = model_of_file(saved.weights, module_layers, model=model, where=where)
    walked = walk_model(built)
    root_layers = frozenset(walked.layers) - set(module_layers)
    state = _curriculum_state(
        saved, walked.layers, walked.parameter_owners, walked.norm_layers, notes
    )
    notes.carried.append(f"weights ({len(saved.weights)} tensors)")

    curriculum: dict[str, Any]
    recipe = None
    optimizer_state = saved.get("optimizer_state")
    if optimizer_state is None:
        curriculum = Curriculum(built, torch_mentor_default_lr, state=state).state_dict()
        if saved.get("lr_scheduler_state") is not None:
            notes.not_carried.append("lr_scheduler_state: saved without an optimizer state")
    else:
        carried_state = state
        if any(isinstance(g.get("_mentor_layer"), str) for g in optimizer_state["param_groups"]):
            # torch_mentor's per-layer groups cover modules only: parameters of
            # the model itself never trained. Frozen, they stay so.
            carried_state = state.freeze(sorted(root_layers)) if root_layers else state
        try:
            training = carry_training(
                optimizer_state,
                saved.get("lr_scheduler_state"),
                model=built,
                state=carried_state,
            )
        except NotCarried as problem:
            notes.not_carried.append(f"the optimizer and scheduler state: {problem}")
            curriculum = Curriculum(built, torch_mentor_default_lr, state=state).state_dict()
        else:
            curriculum, recipe = training.curriculum, training.scheduler_recipe
            notes.carried.append(
                "the optimizer state (Adam, moments by parameter name)"
                + (", the StepLR scheduler" if recipe is not None else "")
            )
            notes.changed.extend(training.notes)
            if carried_state is not state:
                notes.changed.append(
                    f"{', '.join(sorted(root_layers))}: parameters of the model itself, which "
                    "torch_mentor's per-layer optimizer groups left out (they never trained), "
                    "are frozen layers here; unfreeze(..., reset_optimizer_if_needed=True) "
                    "trains them"
                )
    history, best, best_weights = _history(saved, notes)
    _list_the_rest(saved, notes)
    return MenteeCheckpoint(
        model_class=saved.model_class,
        constructor=_constructor(saved, notes),
        weights=saved.weights if model is None else built.state_dict(),
        curriculum=curriculum,
        scheduler_recipe=recipe,
        epoch=saved.epoch,
        history=history,
        best=best,
        best_weights=best_weights,
        random_states=RandomStates(torch_cpu=None),
    )


def _curriculum_state(
    saved: TorchMentorCheckpoint,
    layers: tuple[str, ...],
    owners: frozenset[str],
    norm_layers: frozenset[str],
    notes: _Notes,
) -> CurriculumState:
    known = set(layers)
    frozen = {}
    for name in saved["frozen_modules"]:
        if name in known:
            frozen[name] = True
        else:
            notes.not_carried.append(
                f"frozen_modules entry {name!r}: not a layer (a module holding parameters); "
                "what it froze trains here"
            )
    coefficients = {}
    for name, value in saved.get("lr_coefficients", {}).items():
        number = float(value)
        if name in known and math.isfinite(number) and number >= 0:
            coefficients[name] = number
        else:
            notes.not_carried.append(
                f"lr_coefficients entry {name!r}: {value!r} "
                + ("is not a layer" if name not in known else "is not a finite number >= 0")
            )
    notes.carried.append(
        f"the curriculum: frozen {sorted(frozen) or 'nothing'}, lr coefficients "
        f"{coefficients or 'none'}"
    )
    return CurriculumState(
        layers,
        frozen=frozen,
        coefficients=coefficients,
        parameter_owners=owners,
        norm_layers=norm_layers,
    )


def _constructor(saved: TorchMentorCheckpoint, notes: _Notes) -> ConstructorArguments | None:
    params = dict(saved["constructor_params"])
    if is_plain_data(params):
        notes.carried.append(f"the constructor arguments {params}")
        return ConstructorArguments((), params)
    notes.not_carried.append(
        f"constructor_params {_shown_objects(params)}: not plain data, so Mentee.resume cannot "
        "rebuild the model by itself: build it and load the weights (mentor_fn.load_checkpoint)"
    )
    return None


def _history(
    saved: TorchMentorCheckpoint, notes: _Notes
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, Mapping[str, torch.Tensor] | None]:
    validated = dict(saved["validate_history"])
    history = []
    for epoch, metrics in enumerate(saved["train_history"], start=1):
        history.append(
            {
                "epoch": epoch,
                "train": _metrics(metrics, f"train_history[{epoch - 1}]", notes),
                "val": _metrics(validated.get(epoch, {}), f"validate_history[{epoch}]", notes),
            }
        )
    if history:
        notes.carried.append(f"the history of {len(history)} epoch(s) (training and validation)")
        notes.not_carried.append(
            "per-epoch effective lrs, frozen layers and times: torch_mentor does not record them"
        )
    if 0 in validated:
        notes.not_carried.append(
            f"the validation before training (epoch 0: {_metrics(validated[0], '', None)}): "
            "mentor_fn's history starts at epoch 1"
        )
    for epoch in sorted(e for e in validated if e > len(history)):
        notes.not_carried.append(f"validate_history[{epoch}]: no trained epoch {epoch}")
    best_epoch = saved["best_epoch_so_far"]
    best_metrics = validated.get(best_epoch) or {}
    if best_epoch < 0 or not best_metrics:
        return history, None, None
    principal = next(iter(best_metrics))  # torch_mentor's rule: the first metric, maximised
    value = best_metrics[principal]
    if not _is_number(value):
        notes.not_carried.append(f"the best epoch ({best_epoch}): its metric is not a number")
        return history, None, None
    best = {"epoch": best_epoch, "metric": principal, "mode": "max", "value": float(value)}
    weights = dict(saved["best_weights_so_far"])
    same = set(weights) == set(saved.weights) and all(
        weights[name].shape == saved.weights[name].shape for name in weights
    )
    if not same:
        notes.not_carried.append("best_weights_so_far: not the model's weights")
        return history, best, None
    notes.carried.append(
        f"the best epoch ({best_epoch}, {principal} {float(value):g}) and its weights"
    )
    return history, best, weights


def _metrics(metrics: Any, where: str, notes: _Notes | None) -> dict[str, float]:
    kept = {}
    for name, value in dict(metrics).items():
        if name == _MEMFAILS:
            continue  # said once, in _list_the_rest
        if isinstance(name, str) and _is_number(value):
            kept[name] = float(value)
        elif notes is not None:
            notes.not_carried.append(f"{where}[{name!r}]: {_shown(value)} is not a number")
    return kept


_MEMFAILS = "memfails"  # torch_mentor adds it to every epoch's metrics


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _list_the_rest(saved: TorchMentorCheckpoint, notes: _Notes) -> None:
    """What the Mentee file has no place for, when the file holds it."""
    loss = saved["default_loss_fn"]
    if loss is not None:
        notes.not_carried.append(
            f"default_loss_fn ({_shown(loss)}): the loss comes from the trainer "
            "(self.trainer = Classifier()) or from training_step"
        )
    for key, why in (
        ("inference_state", "mentor_fn keeps no inference state: save it beside the model"),
        ("output_schema", "a method of the model's class, not part of the file"),
        ("preprocessing_info", "a method of the model's class, not part of the file"),
    ):
        value = saved[key]
        if value:
            shown = sorted(map(str, value))[:8] if isinstance(value, Mapping) else _shown(value)
            notes.not_carried.append(f"{key} {shown}: {why}")
    notes.not_carried.append(
        "software_history and argv_history (versions and command lines per epoch): "
        "mentor_fn keeps no provenance record"
    )
    records = [*saved["train_history"], *dict(saved["validate_history"]).values()]
    if any(_MEMFAILS in record for record in records):
        notes.not_carried.append(
            "memfails in every epoch's metrics (batches torch_mentor skipped for lack of "
            "memory): mentor_fn's fit skips none"
        )
    if saved.get("total_train_iterations"):
        notes.not_carried.append(
            f"total_train_iterations ({saved['total_train_iterations']} batches): "
            "mentor_fn counts epochs"
        )
    if saved.get("grad_scaler_state") is not None:
        notes.not_carried.append("grad_scaler_state: mentor_fn's fit does not train with AMP")
    notes.not_carried.append(
        "random number generator states: torch_mentor does not save them (the resumed run "
        "draws from the generators as they are)"
    )


def _shown(value: Any) -> str:
    found = list(stand_ins(value))
    if found:
        return "a " + ", ".join(sorted({stand_in.global_name for _, stand_in in found}))
    return type(value).__name__


def _shown_objects(params: Mapping[str, Any]) -> str:
    odd = [name for name, value in params.items() if not is_plain_data(value)]
    return f"{odd} ({', '.join(_shown(params[name]) for name in odd)})"
