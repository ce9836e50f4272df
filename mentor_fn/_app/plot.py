"""The curriculum timeline as an image (needs matplotlib, imported lazily).

One figure: the effective lr of each layer over the epochs (log scale), a lane
per layer showing when it was trainable or frozen, and below them the training
and validation metrics. Phases are named from the history records (``fit``
with a schedule names each epoch's phase); for a run that follows a schedule,
the planned end of the current phase is marked when the schedule knows it.
Records that carry a baseline (:func:`attach_baseline`: the validation
metrics a comparison run reached at the same epoch) add its validation curve
to the metric panels, dashed grey. Drawn with matplotlib's object API on the
Agg canvas: no pyplot, no global backend change, so it is safe inside any program. The
image format follows the output's suffix (``.png``, ``.svg``, ``.pdf``,
``.jpg``... whatever matplotlib writes; PNG without a suffix).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._files.checkpoint import CheckpointError
from .._files.saved_files import read_saved_file

__all__ = [
    "BASELINE",
    "ImageFormatError",
    "attach_baseline",
    "default_plot_path",
    "image_format",
    "plot_checkpoint",
    "plot_timeline",
    "runs",
]

Key = TypeVar("Key", bound=Hashable)


class ImageFormatError(ValueError):
    """An output file whose suffix names no image format matplotlib writes."""


TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"
FROZEN_COLOR = "#b0b0b0"
BASELINE_COLOR = "#8c8c8c"
BASELINE = "baseline"
"""The record key of a baseline: ``{"name": str, "val": {metric: value}}``."""


def attach_baseline(
    history: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], name: str
) -> list[dict[str, Any]]:
    """``history``'s records, each with the validation metrics ``baseline`` reached at its epoch.

    The records are copies (plain data, saved with a checkpoint's history);
    an epoch the baseline did not reach, or did not validate, gets none.
    """
    validated = {record["epoch"]: dict(record["val"]) for record in baseline if record.get("val")}
    annotated = []
    for record in history:
        copy = dict(record)
        if record["epoch"] in validated:
            copy[BASELINE] = {"name": name, "val": validated[record["epoch"]]}
        annotated.append(copy)
    return annotated


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plotting needs matplotlib: pip install matplotlib (the 'demo' extra of mentor_fn)"
        ) from error
    return matplotlib, Figure, FigureCanvasAgg


def default_plot_path(checkpoint: str | os.PathLike[str]) -> Path:
    """``CHECKPOINT``'s name with ``_timeline.png``, beside it."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}_timeline.png")


def image_format(output: str | os.PathLike[str]) -> str:
    """The image format ``output``'s suffix names (``"png"`` without a suffix).

    Raises:
        ImageFormatError: a suffix matplotlib writes no format for.
        ImportError: matplotlib is not installed.
    """
    _, Figure, FigureCanvasAgg = _matplotlib()
    suffix = Path(output).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if suffix not in supported:
        raise ImageFormatError(
            f"cannot write {str(output)!r}: '.{suffix}' is not an image format matplotlib "
            f"writes (use one of {', '.join('.' + name for name in sorted(supported))})"
        )
    return suffix


def plot_checkpoint(checkpoint: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Draw the timeline of a checkpoint's history into ``output`` (format by its suffix).

    Raises:
        ImageFormatError: ``output``'s suffix names no image format.
        CheckpointError: the checkpoint is missing, foreign, malformed or has no history.
    """
    image_format(output)  # before reading and drawing anything
    found = read_saved_file(checkpoint)
    saved = found.mentee
    if saved is None:
        raise CheckpointError(
            f"{str(checkpoint)!r} is a {found.kind}: it holds no history to plot (plot draws "
            "the history of a Mentee checkpoint; inspect describes this file)"
        )
    if not saved.history:
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} has no epochs to plot yet")
    state = saved.state
    layers = [layer for layer in state.layers if layer in state.parameter_owners]
    title = f"{saved.model_class.rpartition('.')[2]}: {Path(checkpoint).name}"
    planned = None
    if saved.schedule is not None:
        end = saved.schedule.schedule.planned_end(saved.schedule.cursor, epoch=saved.epoch)
        if end is not None:
            planned = (end, saved.schedule.phase.name)
    return plot_timeline(saved.history, output, layers=layers, title=title, planned_end=planned)


def runs(keys: Sequence[Key]) -> list[tuple[int, int, Key]]:
    """Maximal runs of equal consecutive keys: ``(start, stop, key)``, ``stop`` exclusive.

    Example:
        >>> runs("aab")
        [(0, 2, 'a'), (2, 3, 'b')]
    """
    found = []
    start = 0
    for index in range(1, len(keys) + 1):
        if index == len(keys) or keys[index] != keys[start]:
            found.append((start, index, keys[start]))
            start = index
    return found


def _segments(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, str]]:
    """Runs of epochs ``[start, stop)`` with one phase name (or one frozen set, unlabelled)."""
    if any("phase" in record for record in history):
        return runs([str(record.get("phase", "")) for record in history])
    frozen_sets = [tuple(sorted(record.get("frozen", ()))) for record in history]
    return [(start, stop, "") for start, stop, _ in runs(frozen_sets)]


def _group_label(names: Sequence[str]) -> str:
    """``a.b.{c,d}`` for siblings, else a short list."""
    if len(names) == 1:
        return names[0]
    parents = {name.rpartition(".")[0] for name in names}
    if len(parents) == 1 and len(names) <= 4 and "" not in parents:
        (parent,) = parents
        return f"{parent}.{{{','.join(name.rpartition('.')[2] for name in names)}}}"
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]} and {len(names) - 1} more"


def lane_states(
    history: Sequence[Mapping[str, Any]], layers: Sequence[str]
) -> dict[str, list[bool | None]]:
    """Whether each layer was frozen at each record: True, False, or None where the
    record does not say (no ``frozen`` list, as in histories converted from
    torch_mentor, and no lr for the layer, which only trainable layers have).

    Example:
        >>> lane_states([{"frozen": ["a"], "lr": {"b": 0.1}}, {"lr": {"b": 0.1}}], ["a", "b"])
        {'a': [True, None], 'b': [False, False]}
    """
    return {
        layer: [
            (layer in record["frozen"])
            if "frozen" in record
            else (False if layer in record.get("lr", {}) else None)
            for record in history
        ]
        for layer in layers
    }


def plot_timeline(
    history: Sequence[Mapping[str, Any]],
    output: str | os.PathLike[str],
    *,
    layers: Sequence[str] | None = None,
    title: str | None = None,
    planned_end: tuple[int, str] | None = None,
) -> Path:
    """Draw the curriculum timeline of ``history`` (Mentee.history records) to an image.

    Args:
        history: records with ``epoch``, ``train``, ``val``, ``lr`` (layer ->
            effective lr, trainable layers) and ``frozen`` (frozen layers; a
            record without it, as converted from torch_mentor, shows the
            layers with no lr as not recorded, not as trainable);
            an optional ``phase`` name labels the spans, an optional
            ``baseline`` (see :func:`attach_baseline`) adds a comparison
            run's validation curve.
        output: the image file to write (its folder must exist); the format
            follows its suffix (PNG without one).
        layers: the layers to draw, in order (default: those in the history).
        title: the figure's title.
        planned_end: ``(epoch, phase)``: the epoch count at which the current
            phase ``phase`` ends at the latest (marked past the last record).

    Returns:
        The path written.

    Raises:
        ImageFormatError: ``output``'s suffix names no image format.
    """
    file_format = image_format(output)
    matplotlib, Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    if not history:
        raise ValueError("the history is empty: nothing to plot")
    if layers is None:
        seen: dict[str, None] = {}
        for record in history:
            seen.update(dict.fromkeys(record.get("lr", {})))
            seen.update(dict.fromkeys(record.get("frozen", ())))
        layers = list(seen)
    layers = list(layers)
    count = len(history)
    edges = list(range(count + 1))
    centers = [index + 0.5 for index in range(count)]
    nan = float("nan")
    lr_rows = {
        layer: [float(record.get("lr", {}).get(layer, nan)) for record in history]
        for layer in layers
    }
    frozen_rows = lane_states(history, layers)
    unrecorded = any(None in row for row in frozen_rows.values())

    # Layers with identical lr series share one line (e.g. the convs of one block).
    series: dict[tuple[Any, ...], list[str]] = {}
    for layer in layers:
        key = tuple("nan" if math.isnan(v) else round(v, 15) for v in lr_rows[layer])
        series.setdefault(key, []).append(layer)
    colormap = matplotlib.colormaps["viridis"]
    span = max(len(series) - 1, 1)
    line_color = {}
    for rank, names in enumerate(series.values()):
        for name in names:
            line_color[name] = colormap(0.88 * rank / span)

    metric_names: list[str] = []
    for record in history:
        for split in ("train", "val"):
            for name in record.get(split) or {}:
                if name not in metric_names:
                    metric_names.append(name)
    other_metrics = [name for name in metric_names if name != "loss"]

    lane_height = max(1.1, 0.28 * len(layers))
    heights = [3.2, lane_height, 2.0] + ([2.0] if other_metrics else [])
    figure = Figure(figsize=(11, sum(heights) + 1.3), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    lr_axis, lane_axis, loss_axis = axes[0], axes[1], axes[2]
    if title:
        figure.suptitle(title, fontsize=13, fontweight="bold")

    segments = _segments(history)
    # Alternate light bands mark the phases on every panel.
    for axis in axes:
        for number, (start, stop, _) in enumerate(segments):
            if number % 2:
                axis.axvspan(start, stop, color="#f2f2f2", zorder=0, linewidth=0)
        for start, _, _ in segments[1:]:
            axis.axvline(start, color="#555555", linestyle="--", linewidth=1, zorder=1)

    # 1. Effective lr per layer (log scale); a gap where the layer is frozen.
    drawn = False
    for names in reversed(list(series.values())):
        values = lr_rows[names[0]]
        if all(math.isnan(v) for v in values):
            continue
        lr_axis.stairs(
            values,
            edges,
            baseline=None,
            color=line_color[names[0]],
            linewidth=2.4,
            label=_group_label(names),
            zorder=3,
        )
        drawn = True
    if drawn:
        lr_axis.set_yscale("log")
        lr_axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        lr_axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        lr_axis.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
        lr_axis.legend(
            loc="upper left",
            bbox_to_anchor=(1.005, 1.0),
            fontsize=8.5,
            title="layer (top = fastest)",
            title_fontsize=8.5,
            frameon=False,
        )
    else:
        lr_axis.text(
            0.5, 0.5, "no learning rates recorded", ha="center", transform=lr_axis.transAxes
        )
    lr_axis.set_ylabel("effective lr")
    # Room above the title for the phase names drawn over the lr panel.
    labelled = any(label for _, _, label in segments)
    lr_axis.set_title(
        "effective learning rate per layer (global lr x coefficient; no line = frozen)",
        fontsize=10,
        loc="left",
        pad=20 if labelled else None,
    )
    lr_axis.grid(axis="y", which="major", color="#dddddd", linewidth=0.8, zorder=0)
    for start, stop, label in segments:
        if label:
            lr_axis.text(
                (start + stop) / 2,
                1.015,
                label,
                transform=lr_axis.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=9,
                fontweight="bold",
                color="#333333",
                clip_on=False,
            )

    # 2. One lane per layer: coloured while trainable, hatched grey while frozen.
    lane_order = list(reversed(layers))  # the output layer on top, like the lr lines
    for row, layer in enumerate(lane_order):
        trainable_spans: list[tuple[int, int]] = []
        frozen_spans: list[tuple[int, int]] = []
        unrecorded_spans: list[tuple[int, int]] = []
        for start, stop, is_frozen in runs(frozen_rows[layer]):
            spans = {True: frozen_spans, False: trainable_spans, None: unrecorded_spans}
            spans[is_frozen].append((start, stop - start))
        if unrecorded_spans:
            lane_axis.broken_barh(
                unrecorded_spans,
                (row + 0.12, 0.76),
                facecolors="#f4f4f4",
                edgecolors="#bbbbbb",
                hatch="..",
                linewidth=0.6,
                zorder=2,
            )
        if trainable_spans:
            lane_axis.broken_barh(
                trainable_spans, (row + 0.12, 0.76), facecolors=line_color[layer], zorder=2
            )
        if frozen_spans:
            lane_axis.broken_barh(
                frozen_spans,
                (row + 0.12, 0.76),
                facecolors="white",
                edgecolors=FROZEN_COLOR,
                hatch="////",
                linewidth=0.8,
                zorder=2,
            )
            # One label per phase, so that no phase boundary runs through it.
            labels = [
                (max(start, first), min(start + width, stop))
                for start, width in frozen_spans
                for first, stop, _ in segments
                if max(start, first) < min(start + width, stop)
            ]
            for first, stop in labels:
                start, width = first, stop - first
                if width >= 1.5 or count <= 12:
                    lane_axis.text(
                        start + width / 2,
                        row + 0.5,
                        "frozen",
                        ha="center",
                        va="center",
                        fontsize=7.5,
                        color="#555555",
                        zorder=3,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6},
                    )
    lane_axis.set_ylim(0, len(lane_order))
    lane_axis.set_yticks([row + 0.5 for row in range(len(lane_order))])
    lane_axis.set_yticklabels(lane_order, fontsize=8 if len(layers) <= 16 else 6)
    lane_axis.tick_params(axis="y", length=0)
    lane_axis.set_title(
        "trainable (colour), frozen (hatched)"
        + (" or not recorded (dotted)" if unrecorded else "")
        + ", per layer",
        fontsize=10,
        loc="left",
    )
    for side in ("top", "right", "left"):
        lane_axis.spines[side].set_visible(False)

    # 3. Loss, and 4. the other metrics (accuracy as a percentage).
    _metric_panel(loss_axis, history, centers, "loss")
    loss_axis.set_title("loss", fontsize=10, loc="left")
    if other_metrics:
        metric_axis = axes[3]
        for name in other_metrics:
            _metric_panel(metric_axis, history, centers, name, label_prefix=len(other_metrics) > 1)
        percent = all("acc" in name for name in other_metrics)
        if percent:
            metric_axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0%}"))
        metric_axis.set_title(", ".join(other_metrics), fontsize=10, loc="left")

    bottom = axes[-1]
    end: float = count
    if planned_end is not None:
        end = _mark_planned_end(axes, lr_axis, history, planned_end)
    bottom.set_xlim(0, end)
    located = MaxNLocator(nbins=min(count, 20), integer=True).tick_values(1, count)
    ticks = [int(tick) for tick in located if 1 <= tick <= count]
    positions = [tick - 0.5 for tick in ticks]
    tick_labels = [str(history[tick - 1]["epoch"]) for tick in ticks]
    if end > count:
        positions.append(end - 0.5)
        tick_labels.append(str(planned_end[0]) if planned_end is not None else "")
    bottom.set_xticks(positions)
    bottom.set_xticklabels(tick_labels)
    bottom.set_xlabel("epoch")
    for axis in axes:
        axis.tick_params(axis="x", labelbottom=axis is bottom)

    path = Path(output)
    figure.savefig(path, dpi=110, format=file_format)
    return path


def _mark_planned_end(
    axes: Sequence[Any],
    lr_axis: Any,
    history: Sequence[Mapping[str, Any]],
    planned_end: tuple[int, str],
) -> float:
    """Shade the epochs still planned for the current phase and mark its end;
    returns where the x axis ends."""
    epoch, phase = planned_end
    count = len(history)
    end = count + max(0, epoch - int(history[-1]["epoch"]))
    if end <= count:
        return count
    for axis in axes:
        axis.axvspan(count, end, color="#e8f0fa", zorder=0, linewidth=0)
        axis.axvline(end, color="#1f4e99", linestyle=":", linewidth=1.5, zorder=1)
    lr_axis.text(
        end,
        1.015,
        f"planned end of {phase}",
        transform=lr_axis.get_xaxis_transform(),
        ha="right",
        va="bottom",
        fontsize=8.5,
        color="#1f4e99",
        clip_on=False,
    )
    return end


def _metric_panel(
    axis: Any,
    history: Sequence[Mapping[str, Any]],
    centers: Sequence[float],
    name: str,
    *,
    label_prefix: bool = False,
) -> None:
    for split, color, style, marker in (
        ("train", TRAIN_COLOR, "-", "o"),
        ("val", VAL_COLOR, "--", "s"),
    ):
        points = [
            (x, float((record.get(split) or {})[name]))
            for x, record in zip(centers, history)
            if name in (record.get(split) or {})
        ]
        if not points:
            continue
        xs, ys = zip(*points)
        label = (
            f"{split} {name}"
            if label_prefix
            else ("training" if split == "train" else "validation")
        )
        axis.plot(
            xs,
            ys,
            color=color,
            linestyle=style,
            marker=marker,
            markersize=4,
            linewidth=1.8,
            label=label,
            zorder=3,
        )
    _baseline_curve(axis, history, centers, name, label_prefix=label_prefix)
    axis.grid(axis="y", color="#dddddd", linewidth=0.8, zorder=0)
    axis.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8.5, frameon=False)


def _baseline_curve(
    axis: Any,
    history: Sequence[Mapping[str, Any]],
    centers: Sequence[float],
    name: str,
    *,
    label_prefix: bool,
) -> None:
    """The baseline's validation ``name``, dashed grey, where the records carry it."""
    points = []
    label = None
    for x, record in zip(centers, history):
        baseline = record.get(BASELINE)
        if isinstance(baseline, Mapping) and name in (baseline.get("val") or {}):
            points.append((x, float(baseline["val"][name])))
            what = f"val {name}" if label_prefix else "validation"
            label = f"{what}, {baseline.get('name') or 'baseline'}"
    if not points:
        return
    xs, ys = zip(*points)
    axis.plot(xs, ys, color=BASELINE_COLOR, linestyle="--", linewidth=1.6, label=label, zorder=2)
