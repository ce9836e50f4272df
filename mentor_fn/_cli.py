"""``python -m mentor_fn``: the demo, and inspecting and plotting checkpoints.

Commands::

    python -m mentor_fn demo [--epochs N] [--output DIR] [--seed S] [--quiet]
    python -m mentor_fn inspect CHECKPOINT
    python -m mentor_fn plot CHECKPOINT [-o timeline.png]

A usage error, a missing file or a file that is not a mentor_fn checkpoint
prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ._checkpoint import CheckpointError, load_checkpoint
from ._state import CurriculumState

__all__ = ["main"]

PROG = "python -m mentor_fn"


# Text tables --------------------------------------------------------------------


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
    from ._layers import walk_model

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


def saved_layer_rows(contents: Mapping[str, Any]) -> tuple[list[LayerRow], bool]:
    """Rows of the layers that own parameters, from a checkpoint's contents.

    Returns:
        The rows, and whether some counts were estimated from the saved weights
        (layers with no optimizer group: their floating-point buffers count too).
    """
    saved = contents["curriculum"]
    state = CurriculumState.from_dict(saved["state"])
    optimizer = saved.get("optimizer")
    groups = optimizer["param_groups"] if optimizer else []
    lr_of: dict[str, float] = {}
    known_parameters: set[str] = set()
    reference_lr = None
    for group in groups:
        layers = tuple(group.get("layers", ()))
        if not layers and not group["params"]:
            reference_lr = float(group["lr"])
        for layer in layers:
            lr_of[layer] = float(group["lr"])
        known_parameters.update(group["params"])
    fallback = reference_lr if reference_lr is not None else float(saved["recipe"]["lr"])

    owners = state.parameter_owners
    counts: dict[str, int] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    estimated = False
    covered = set(lr_of)
    for name, tensor in contents["model"].items():
        owner = name if name in owners else name.rpartition(".")[0]
        if owner not in owners or not tensor.is_floating_point():
            continue
        if owner not in covered or name in known_parameters:
            # torch.load keeps tied tensors shared: count each storage view once.
            key = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
            )
            if key in seen:
                continue
            seen.add(key)
            counts[owner] = counts.get(owner, 0) + tensor.numel()
            estimated = estimated or owner not in covered
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


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> str:
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
    return _table(["layer", "frozen", "coefficient", "effective lr", last], body, "llrrr")


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


def epoch_line(record: Mapping[str, Any]) -> str:
    """One self-describing line for a history record (printed as epochs finish)."""
    parts = [f"epoch {record['epoch']:>3}"]
    for split in ("train", "val"):
        metrics = record.get(split) or {}
        if metrics:
            values = " ".join(f"{k} {_format_metric(k, v)}" for k, v in metrics.items())
            parts.append(f"{split} {values}")
    parts.append(f"lr {_lr_span(record.get('lr', {}))}")
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
    return _table(header, body, align)


# Commands -----------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint and check the parts inspect and plot read.

    Raises:
        CheckpointError: missing, unreadable or foreign file, or malformed contents.
    """
    contents = load_checkpoint(path)
    try:
        saved = contents["curriculum"]
        CurriculumState.from_dict(saved["state"])
        float(saved["recipe"]["lr"])
        if not isinstance(contents["model"], Mapping):
            raise TypeError("model weights are not a mapping")
        history = contents["history"]
        for record in history:
            int(record["epoch"])
            if not isinstance(record.get("lr", {}), Mapping):
                raise TypeError("a history record's lr is not a mapping")
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} is malformed: {error}") from None
    return contents


def inspect_checkpoint(path: str | os.PathLike[str]) -> str:
    """The text ``python -m mentor_fn inspect`` prints."""
    contents = read_checkpoint(path)
    saved = contents["curriculum"]
    rows, estimated = saved_layer_rows(contents)
    recipe = saved["recipe"]
    optimizer = recipe["optimizer"].rpartition(".")[2]
    scheduler = (contents.get("scheduler_recipe") or {}).get("name", "")
    lines = [
        f"checkpoint {path}",
        f"model {contents.get('model_class', '?')}, epoch {contents.get('epoch', '?')}, "
        f"{optimizer} at global lr {recipe['lr']:g}"
        + (f", {scheduler.rpartition('.')[2]}" if scheduler else "")
        + ("" if saved.get("optimizer") else " (no optimizer built)"),
    ]
    best = contents.get("best")
    if best:
        lines.append(
            f"best epoch {best['epoch']}: {best['metric']} {_format_metric(best['metric'], best['value'])}"
        )
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
    lines += ["", "history:", history_table(contents["history"], len(rows))]
    return "\n".join(lines)


def default_plot_path(checkpoint: str | os.PathLike[str]) -> Path:
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}_timeline.png")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _parser() -> _Parser:
    from ._demo import DEFAULT_EPOCHS, DEFAULT_OUTPUT, DEFAULT_SEED

    parser = _Parser(
        prog=PROG,
        description="mentor_fn: curriculum learning for PyTorch. Run the demo, or "
        "inspect and plot a checkpoint written by Mentee.save / fit.",
    )
    parser.add_argument("--version", action="version", version=f"mentor_fn {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="curriculum fine-tuning of a small CNN on scikit-learn's 8x8 digits",
        description="Pretrain a small CNN on the digits 0-4, transfer it to the digits 5-9 "
        "in three curriculum phases, compare with plain fine-tuning on the same budget, "
        "and write a checkpoint and a timeline PNG. Needs: pip install 'mentor_fn[demo]'.",
    )
    demo.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        help=f"epochs per phase (default {DEFAULT_EPOCHS})",
    )
    demo.add_argument(
        "--output",
        "-o",
        default=DEFAULT_OUTPUT,
        metavar="DIR",
        help=f"folder for demo.ckpt and timeline.png (default ./{DEFAULT_OUTPUT})",
    )
    demo.add_argument("--seed", type=_int, default=DEFAULT_SEED, help="random seed (default 0)")
    demo.add_argument(
        "--quiet", "-q", action="store_true", help="print only the summary, no progress bars"
    )

    inspect = commands.add_parser(
        "inspect",
        help="the per-layer table and the per-epoch history of a checkpoint",
        description="Print the per-layer curriculum state (frozen, coefficient, effective lr, "
        "parameters) and the per-epoch history of a checkpoint.",
    )
    inspect.add_argument("checkpoint", metavar="CHECKPOINT")

    plot = commands.add_parser(
        "plot",
        help="a PNG of the curriculum timeline of a checkpoint",
        description="Draw the curriculum timeline of a checkpoint: effective lr per layer "
        "over epochs (frozen spans shown) above the training and validation metrics. "
        "Needs matplotlib.",
    )
    plot.add_argument("checkpoint", metavar="CHECKPOINT")
    plot.add_argument(
        "-o",
        "--output",
        metavar="PNG",
        default=None,
        help="output file (default: CHECKPOINT's name with _timeline.png, beside it)",
    )
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors raise SystemExit(2))."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.error("choose a command: demo, inspect or plot")
    try:
        if arguments.command == "demo":
            from ._demo import run_demo

            run_demo(
                epochs=arguments.epochs,
                output=arguments.output,
                seed=arguments.seed,
                quiet=arguments.quiet,
            )
        elif arguments.command == "inspect":
            print(inspect_checkpoint(arguments.checkpoint))
        else:
            from ._plot import plot_checkpoint

            output = arguments.output or default_plot_path(arguments.checkpoint)
            written = plot_checkpoint(arguments.checkpoint, output)
            print(f"wrote {written}")
    except CheckpointError as error:
        _fail(f"{PROG} {arguments.command}: error: {error}")
    except ImportError as error:
        _fail(f"{PROG} {arguments.command}: error: {error}")
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        _fail(f"{PROG} {arguments.command}: error: {where}{error.strerror or error}")
    except KeyboardInterrupt:
        print(f"{PROG} {arguments.command}: interrupted", file=sys.stderr)
        return 130
    return 0
