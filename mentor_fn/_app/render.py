"""Terminal rendering: per-layer tables, per-epoch lines and tables, a checkpoint's summary.

What ``python -m mentor_fn inspect`` prints and what the demo prints as it
trains, from a live model or from a checkpoint (read through
``mentor_fn._files.mentee_file``). Text only: no matplotlib here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._core.model_walk import walk_model
from .._core.state import CurriculumState
from .._files.mentee_file import read_mentee_checkpoint
from .._files.mentee_values import MenteeCheckpoint
from .._schedules.text import schedule_lines

__all__ = [
    "LayerRow",
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
    parameters: int


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
    """Rows of the layers that own parameters, from a checkpoint.

    Returns:
        The rows, and whether some counts were estimated from the saved weights
        (layers with no optimizer group: their floating-point buffers count too).
    """
    state = checkpoint.state
    lr_of: dict[str, float] = {}
    known_parameters: set[str] = set()
    reference_lr = None
    for group in checkpoint.saved_groups:
        if group.is_reference:
            reference_lr = group.lr
        for layer in group.layers:
            lr_of[layer] = group.lr
        known_parameters.update(group.parameters)
    fallback = reference_lr if reference_lr is not None else checkpoint.global_lr

    owners = state.parameter_owners
    counts: dict[str, int] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    estimated = False
    for name, tensor in checkpoint.weights.items():
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
    counts: Mapping[str, int],
    *,
    fallback_lr: float,
) -> list[LayerRow]:
    rows = []
    for layer, frozen, coefficient in zip(
        state.layers, state.resolved_frozen(), state.resolved_coefficients()
    ):
        if layer not in state.parameter_owners:
            continue
        lr = None if frozen else lr_of.get(layer, fallback_lr * coefficient)
        rows.append(LayerRow(layer, frozen, coefficient, lr, counts.get(layer, 0)))
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
    body = []
    for row in rows:
        count = 0 if (trainable_column and row.frozen) else row.parameters
        body.append(
            [
                row.layer,
                "yes" if row.frozen else "no",
                f"{row.coefficient:g}",
                _format_lr(row.lr),
                f"{count:,}",
            ]
        )
    total = sum(row.parameters for row in rows)
    trainable = sum(row.parameters for row in rows if not row.frozen)
    body.append(
        [
            "total",
            f"{sum(row.frozen for row in rows)} of {len(rows)}",
            "",
            "",
            f"{trainable:,} of {total:,}" if trainable_column else f"{total:,}",
        ]
    )
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
        frozen = len(record.get("frozen", ()))
        row += [
            f"{owners - frozen}/{owners}",
            _lr_span(record.get("lr", {})),
            f"{record.get('time', 0.0):.1f} s",
        ]
        body.append(row)
    align = "r" + ("l" if with_phase else "") + "r" * (len(header) - 1 - with_phase)
    return text_table(header, body, align)


def inspect_text(path: str | os.PathLike[str]) -> str:
    """The text ``python -m mentor_fn inspect`` prints for a checkpoint: the
    per-layer table, the schedule run (when ``fit`` followed one) and the history.

    Raises:
        CheckpointError: the file is missing, unreadable, foreign or malformed.
    """
    checkpoint = read_mentee_checkpoint(path)
    rows, estimated = saved_layer_rows(checkpoint)
    optimizer = checkpoint.optimizer_name.rpartition(".")[2]
    recipe = checkpoint.scheduler_recipe
    scheduler = "" if recipe is None else recipe.name.rpartition(".")[2]
    lines = [
        f"checkpoint {path}",
        f"model {checkpoint.model_class}, epoch {checkpoint.epoch}, "
        f"{optimizer} at global lr {checkpoint.global_lr:g}"
        + (f", {scheduler}" if scheduler else "")
        + ("" if checkpoint.has_optimizer else " (no optimizer built)"),
    ]
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
    return "\n".join(lines)
