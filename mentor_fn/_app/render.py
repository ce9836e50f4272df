"""Terminal rendering: per-layer tables, per-epoch lines and tables, a checkpoint's summary.

What ``python -m mentor_fn inspect`` prints and what the demo prints as it
trains, from a live model or from any file mentor_fn writes (read through
``mentor_fn._files.saved_files``). Text only: no matplotlib here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._core.model_walk import walk_model
from .._core.state import CurriculumState
from .._files.mentee_values import MenteeCheckpoint, SavedCurriculum
from .._files.saved_files import SavedFile, Section, read_saved_file
from .._schedules.saved_schedule import SavedSchedule
from .._schedules.text import schedule_lines

__all__ = [
    "LayerRow",
    "curriculum_layer_rows",
    "epoch_line",
    "history_table",
    "inspect_text",
    "layer_table",
    "live_layer_rows",
    "saved_layer_rows",
    "text_table",
]


@dataclass(frozen=True)
class LayerRow:
    """One layer that owns parameters: its curriculum controls and size."""

    layer: str
    frozen: bool
    coefficient: float
    lr: float | None
    """Effective lr (None when frozen or unknown)."""
    parameters: int | None
    """None when unknown (a Curriculum state dict saved without the weights)."""


def live_layer_rows(model: Any) -> list[LayerRow]:
    """Rows of the layers that own parameters, from a live Mentee or Curriculum."""
    curriculum = getattr(model, "curriculum", model)
    state: CurriculumState = curriculum.state
    counts: dict[str, int] = {}
    for layer, _, parameter in walk_model(curriculum.model).named_parameters():
        counts[layer] = counts.get(layer, 0) + parameter.numel()
    lr_of: dict[str, float] = {}
    if curriculum.optimizer is not None:
        for group in curriculum.optimizer.param_groups:
            for layer in group.get("layers", ()):
                lr_of[layer] = float(group["lr"])
    return _rows(state, lr_of, counts, fallback_lr=curriculum.lr)


def saved_layer_rows(checkpoint: MenteeCheckpoint) -> tuple[list[LayerRow], bool]:
    """Rows of the layers that own parameters, from a Mentee checkpoint.

    Returns:
        The rows, and whether some counts were estimated from the saved weights
        (layers with no optimizer group: their floating-point buffers count too).
    """
    return curriculum_layer_rows(checkpoint.saved_curriculum, checkpoint.weights)


def curriculum_layer_rows(
    saved: SavedCurriculum, weights: Mapping[str, Any] | None
) -> tuple[list[LayerRow], bool]:
    """Rows of the layers that own parameters, from a saved Curriculum state dict.

    ``weights``: the model's state dict saved beside it, to count parameters
    (None: the counts are unknown).

    Returns:
        The rows, and whether some counts were estimated from the weights.
    """
    state = saved.state
    lr_of: dict[str, float] = {}
    known_parameters: set[str] = set()
    reference_lr = None
    for group in saved.groups:
        if group.is_reference:
            reference_lr = group.lr
        for layer in group.layers:
            lr_of[layer] = group.lr
        known_parameters.update(group.parameters)
    fallback = reference_lr if reference_lr is not None else saved.global_lr
    if weights is None:
        return _rows(state, lr_of, None, fallback_lr=fallback), False

    owners = state.parameter_owners
    counts: dict[str, int] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    estimated = False
    for name, tensor in weights.items():
        owner = name if name in owners else name.rpartition(".")[0]
        if owner not in owners or not tensor.is_floating_point():
            continue
        if owner not in lr_of or name in known_parameters:
            # torch.load keeps tied tensors shared: count each storage view once.
            key = (
                tensor.untyped_storage().data_ptr(),
                int(tensor.storage_offset()),
                tuple(tensor.shape),
            )
            if key in seen:
                continue
            seen.add(key)
            counts[owner] = counts.get(owner, 0) + tensor.numel()
            estimated = estimated or owner not in lr_of
    return _rows(state, lr_of, counts, fallback_lr=fallback), estimated


def _rows(
    state: CurriculumState,
    lr_of: Mapping[str, float],
    counts: Mapping[str, int] | None,
    *,
    fallback_lr: float | None,
) -> list[LayerRow]:
    rows = []
    for layer, frozen, coefficient in zip(
        state.layers, state.resolved_frozen(), state.resolved_coefficients()
    ):
        if layer not in state.parameter_owners:
            continue
        lr = lr_of.get(layer, None if fallback_lr is None else fallback_lr * coefficient)
        count = None if counts is None else counts.get(layer, 0)
        rows.append(LayerRow(layer, frozen, coefficient, None if frozen else lr, count))
    return rows


def _format_lr(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.2e}"


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> str:
    """Aligned columns; ``align`` has one letter per column, ``l`` or ``r``."""
    rows = [list(header), *map(list, rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(row, widths, align)
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def layer_table(rows: Sequence[LayerRow], *, trainable_column: bool = False) -> str:
    """The per-layer table: layer, frozen, coefficient, effective lr, parameters.

    With ``trainable_column`` the last column counts trainable parameters only
    (0 for a frozen layer).
    """
    last = "trainable params" if trainable_column else "parameters"
    known = all(row.parameters is not None for row in rows)
    body = []
    for row in rows:
        count = 0 if (trainable_column and row.frozen) else row.parameters
        body.append(
            [
                row.layer,
                "yes" if row.frozen else "no",
                f"{row.coefficient:g}",
                _format_lr(row.lr),
                "?" if count is None else f"{count:,}",
            ]
        )
    total = sum(row.parameters or 0 for row in rows)
    trainable = sum(row.parameters or 0 for row in rows if not row.frozen)
    if not known:
        counted = "?"
    elif trainable_column:
        counted = f"{trainable:,} of {total:,}"
    else:
        counted = f"{total:,}"
    body.append(["total", f"{sum(row.frozen for row in rows)} of {len(rows)}", "", "", counted])
    return text_table(["layer", "frozen", "coefficient", "effective lr", last], body, "llrrr")


def _format_metric(name: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if "acc" in name:
        return f"{value:.1%}"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def _lr_span(learning_rates: Mapping[str, float]) -> str:
    if not learning_rates:
        return "-"
    low, high = min(learning_rates.values()), max(learning_rates.values())
    return _format_lr(low) if math.isclose(low, high) else f"{low:.1e}..{high:.1e}"


def epoch_line(record: Mapping[str, Any], *, show_time: bool = True) -> str:
    """One self-describing line for a history record (printed as epochs finish).

    The record's phase, when it has one, follows the epoch number. Without
    ``show_time`` the line leaves out the epoch's wall time, so that a run
    prints the same text each time it runs.
    """
    parts = [f"epoch {record['epoch']:>3}"]
    if "phase" in record:
        parts.append(str(record["phase"]))
    for split in ("train", "val"):
        metrics = record.get(split) or {}
        if metrics:
            values = " ".join(f"{k} {_format_metric(k, v)}" for k, v in metrics.items())
            parts.append(f"{split} {values}")
    parts.append(f"lr {_lr_span(record.get('lr', {}))}")
    if show_time:
        parts.append(f"{record.get('time', 0.0):.1f} s")
    return " | ".join(parts)


def history_table(history: Sequence[Mapping[str, Any]], owners: int) -> str:
    """The per-epoch history: metrics, trainable layers, lr range, time."""
    if not history:
        return "(no epochs trained yet)"
    with_phase = any("phase" in record for record in history)
    columns: list[tuple[str, str]] = []
    for split in ("train", "val"):
        for record in history:
            for name in record.get(split) or {}:
                if (split, name) not in columns:
                    columns.append((split, name))
    header = ["epoch", *(["phase"] if with_phase else [])]
    header += [f"{split} {name}" for split, name in columns]
    header += ["trainable", "effective lr", "time"]
    body = []
    for record in history:
        row = [str(record["epoch"])]
        if with_phase:
            row.append(str(record.get("phase", "")))
        for split, name in columns:
            value = (record.get(split) or {}).get(name)
            row.append("" if value is None else _format_metric(name, value))
        # A converted torch_mentor history does not say what was frozen.
        trainable = f"{owners - len(record['frozen'])}/{owners}" if "frozen" in record else "?"
        row += [
            trainable,
            _lr_span(record.get("lr", {})),
            f"{record['time']:.1f} s" if "time" in record else "-",
        ]
        body.append(row)
    align = "r" + ("l" if with_phase else "") + "r" * (len(header) - 1 - with_phase)
    return text_table(header, body, align)


def inspect_text(path: str | os.PathLike[str]) -> str:
    """The text ``python -m mentor_fn inspect`` prints for any file mentor_fn writes.

    The first line says what kind of file it is. A Mentee checkpoint gets the
    per-layer table, the schedule run (when ``fit`` followed one) and the
    history; any other file (a ``save_checkpoint`` file, a ``torch.save`` of
    ``Curriculum.state_dict()`` or ``ScheduleRunner.state_dict()``, a
    distributed checkpoint's plain part) a description of each mentor_fn
    section it holds: a Curriculum's state table with its optimizer and
    scheduler, a schedule run, a curriculum state.

    Raises:
        CheckpointError: the file is missing, unreadable, foreign or malformed.
    """
    saved = read_saved_file(path)
    if saved.mentee is not None:
        return "\n".join([f"{saved.kind} {path}", *_mentee_lines(saved.mentee)])
    lines = [f"{saved.kind}: {path}"]
    if saved.epoch is not None:
        lines.append(f"epoch {saved.epoch}")
    for section in saved.sections:
        lines += ["", *_section_lines(section, saved)]
    return "\n".join(lines)


def _mentee_lines(checkpoint: MenteeCheckpoint) -> list[str]:
    rows, estimated = saved_layer_rows(checkpoint)
    optimizer = checkpoint.optimizer_name.rpartition(".")[2]
    recipe = checkpoint.scheduler_recipe
    scheduler = "" if recipe is None else recipe.name.rpartition(".")[2]
    lines = [
        f"model {checkpoint.model_class}, epoch {checkpoint.epoch}, "
        f"{optimizer} at global lr {checkpoint.global_lr:g}"
        + (f", {scheduler}" if scheduler else "")
        + ("" if checkpoint.has_optimizer else " (no optimizer built)"),
    ]
    policy = checkpoint.state.norm_policy
    if policy != "stats":
        lines.append(f"norm policy {policy!r}")
    best = checkpoint.best
    if best:
        value = _format_metric(best["metric"], best["value"])
        lines.append(f"best epoch {best['epoch']}: {best['metric']} {value}")
    lines += [
        "",
        "layers that own parameters (effective lr: what the next epoch would use):",
        layer_table(rows),
    ]
    if estimated:
        lines.append(
            "(layers with no optimizer group: parameters counted from the saved weights, "
            "floating-point buffers included)"
        )
    if checkpoint.schedule is not None:
        lines += ["", *schedule_lines(checkpoint.schedule, epoch=checkpoint.epoch)]
    lines += ["", "history:", history_table(checkpoint.history, len(rows))]
    return lines


def _section_lines(section: Section, saved: SavedFile) -> list[str]:
    where = section.where or "the file"
    value = section.value
    if isinstance(value, SavedCurriculum):
        return _curriculum_lines(value, where, saved.weights)
    if isinstance(value, SavedSchedule):
        lines = schedule_lines(value, epoch=saved.epoch or 0)
        if saved.epoch is None:  # the planned end counts from the run's epoch
            lines = [line for line in lines if not line.startswith("  planned end")]
        return [f"ScheduleRunner state dict ({where}):", *lines]
    rows = _rows(value, {}, None, fallback_lr=None)
    policy = "" if value.norm_policy == "stats" else f", norm policy {value.norm_policy!r}"
    return [f"curriculum state ({where}){policy}:", layer_table(rows)]


def _curriculum_lines(
    saved: SavedCurriculum, where: str, weights: Mapping[str, Any] | None
) -> list[str]:
    optimizer = saved.optimizer_name.rpartition(".")[2]
    lines = [f"Curriculum state dict ({where}): {optimizer} at global lr {saved.global_lr:g}"]
    groups = [group for group in saved.groups if not group.is_reference]
    if saved.has_optimizer:
        lines.append(
            f"optimizer: {len(groups)} group(s)"
            + (" (coalesced)" if saved.coalesce else "")
            + f", {saved.parameters_with_state} parameter(s) with optimizer state"
        )
    else:
        lines.append("optimizer: not built when saved")
    scheduler = saved.scheduler
    if scheduler is not None:
        classes = [name.rpartition(".")[2] for name in saved.scheduler_classes] or ["scheduler"]
        steps = scheduler.get("last_epoch")
        lines.append(
            f"scheduler: {' + '.join(classes)}"
            + (f", {steps} step(s) taken" if isinstance(steps, int) else "")
        )
    policy = saved.state.norm_policy
    if policy != "stats":
        lines.append(f"norm policy {policy!r}")
    rows, estimated = curriculum_layer_rows(saved, weights)
    lines += ["layers that own parameters:", layer_table(rows)]
    if weights is None:
        lines.append("(parameters: '?', the file holds no weights beside the state dict)")
    elif estimated:
        lines.append(
            "(layers with no optimizer group: parameters counted from the saved weights, "
            "floating-point buffers included)"
        )
    return lines
