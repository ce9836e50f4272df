"""The demo: does LP-FT beat fine-tuning when a pretrained network gets a new head?

``python -m mentor_fn demo`` (or :func:`run_demo`) pretrains
:class:`DigitsCNN` on scikit-learn's 8x8 digits 0-4, puts a new, randomly
initialised head on it for digits 5-9, and trains that start four ways on
the same 100 labelled images: a linear probe, plain fine-tuning, mentor_fn's
``lp_ft`` recipe, and LP-FT written by hand in plain torch the usual way. It
measures each on held-out images as trained on (in distribution) and rotated
(out of distribution), prints the tables, and writes the ``lp_ft`` run's
checkpoint and timeline figure (fine-tuning's validation curve beside it).
:func:`run_demo_seeds` repeats the protocol over seeds and prints the mean
and spread. docs/demo-protocol.md is the protocol; docs/demo.md the results.
Needs the ``demo`` extra (scikit-learn, matplotlib); nothing is downloaded.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..plot import attach_baseline, plot_timeline
from ..render import epoch_line, layer_table, live_layer_rows
from .data import (
    MISSING_EXTRA,
    PRETRAIN_ROTATION_DEGREES,
    SHIFT_DEGREES,
    SHOTS_PER_CLASS,
    load_tasks,
)
from .experiment import SeedResult, run_seed
from .model import DigitsCNN
from .protocol import (
    ARMS,
    BATCH_SIZE,
    GAMMA,
    HEAD,
    LR,
    LR_RATIO,
    PRETRAIN_EPOCHS,
    PROBE_EPOCHS,
    TRANSFER_EPOCHS,
)
from .report import SeedsSummary, seed_line, seed_lines_header, seed_table, seeds_table, summarize
from .training import Watch, reproducible

__all__ = ["DemoResult", "DigitsCNN", "run_demo", "run_demo_seeds"]

DEFAULT_OUTPUT = "mentor_fn_demo"
DEFAULT_SEED = 0
BASELINE = "fine_tune"
"""The arm whose validation curve the figure draws beside lp_ft's."""


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` measured and wrote."""

    result: SeedResult
    checkpoint: Path
    timeline: Path
    seconds: float


class _Printer:
    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.stream, self.quiet = stream, quiet

    def __call__(self, text: str = "", *, always: bool = False) -> None:
        if always or not self.quiet:
            print(text, file=self.stream, flush=True)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")


def _stage_titles() -> Mapping[str, str]:
    adam = f"Adam at lr {LR:g}, ExponentialLR(gamma={GAMMA:g}), batch {BATCH_SIZE}"
    count = len(ARMS)
    titles = {
        "pretrain": f"\n== pretrain on the source task: everything trainable, {adam}, "
        f"{PRETRAIN_EPOCHS} epochs",
        "probe": f"the backbone frozen throughout (mentor_fn's freeze), the head at lr {LR:g}",
        "fine_tune": f"everything trainable at lr {LR:g}",
        "lp_ft": f'mf.lp_ft("{HEAD}", probe_epochs={PROBE_EPOCHS}) through '
        f"Mentee.fit(schedule=): the head alone, then everything on a fresh optimizer at "
        f"{LR_RATIO:g} x lr",
        "by_hand": "plain torch, the usual way: the optimizer built over "
        "filter(lambda p: p.requires_grad, model.parameters()) during the probe, then "
        f"backbone.requires_grad_(True) and the lr set to {LR * LR_RATIO:g} after "
        f"{PROBE_EPOCHS} epochs",
    }
    for number, (arm, label) in enumerate(ARMS.items(), start=1):
        titles[arm] = f"-- arm {number}/{count}, {label}: {titles[arm]}"
    titles["probe"] = (
        "\n== transfer to the target task: the pretrained backbone under a new, randomly "
        f"initialised head for digits 5-9; every arm starts from these weights and trains "
        f"{TRANSFER_EPOCHS} epochs on the same batches in the same order, {adam}\n"
        + titles["probe"]
    )
    return titles


def _printing_watch(say: _Printer, *, progress: bool) -> Watch:
    titles = _stage_titles()

    def phase(model: DigitsCNN) -> None:
        runner = model.schedule_runner
        assert runner is not None and runner.phase is not None and runner.cursor is not None
        count = len(runner.schedule.phases)
        say(f"phase {runner.cursor.phase + 1}/{count}: {runner.phase.name}")
        say(layer_table(live_layer_rows(model), trainable_column=True))

    def epoch(record: Mapping[str, Any]) -> None:
        say(epoch_line(record, show_time=False))

    return Watch(
        stage=lambda name: say(titles[name]),
        phase=phase,
        epoch=epoch,
        note=say,
        curves=True,
        progress=progress,
    )


def run_demo(
    *,
    output: str | Path = DEFAULT_OUTPUT,
    seed: int = DEFAULT_SEED,
    quiet: bool = False,
    stream: TextIO | None = None,
) -> DemoResult:
    """Run the demo for one seed; write ``demo.ckpt`` and ``timeline.png`` into ``output``.

    Args:
        output: the folder for the checkpoint and the figure (created).
        seed: seeds the data split, initialisation and shuffling.
        quiet: print only the result table and the files written (no
            epochs, no progress bars).
        stream: where to print (stdout by default).

    Raises:
        ImportError: scikit-learn or matplotlib is missing (before any training).
    """
    _check_seed(seed)
    say = _Printer(stream or sys.stdout, quiet)
    with reproducible():
        return _run(Path(output), seed, say, progress=not quiet)


def _run(folder: Path, seed: int, say: _Printer, *, progress: bool) -> DemoResult:
    started = time.perf_counter()
    _require_matplotlib()
    tasks = load_tasks(seed)
    target = tasks.target
    say(
        f"mentor_fn demo, seed {seed}: scikit-learn's 8x8 digits; pretrain on digits 0-4, "
        "transfer to digits 5-9 with a new head\n"
        f"source task: digits 0-4, {len(tasks.source.train)} training images (each rotated "
        f"at random within {PRETRAIN_ROTATION_DEGREES} degrees either way, afresh each "
        f"epoch), {len(tasks.source.val)} validation images\n"
        f"target task: digits 5-9 (new classes), {SHOTS_PER_CLASS} labelled images per digit "
        f"({len(target.train)}), upright; {len(target.test)} held-out images, measured "
        f"upright (ID) and rotated by {SHIFT_DEGREES} degrees (OOD)"
    )
    result = run_seed(seed, _printing_watch(say, progress=progress), tasks)

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "demo.ckpt"
    timeline = folder / "timeline.png"
    model = result.arms["lp_ft"].model
    # The lp_ft run's checkpoint carries fine-tuning's validation metrics epoch
    # by epoch, so that plotting it later shows both runs.
    baseline = ARMS[BASELINE]
    model.history = attach_baseline(model.history, result.arms[BASELINE].model.history, baseline)
    model.save(checkpoint)
    plot_timeline(
        model.history,
        timeline,
        layers=[row.layer for row in live_layer_rows(model)],
        title=f"mentor_fn demo, seed {seed}: lp_ft on digits 5-9 with a new head "
        f"(dashed grey: {baseline})",
    )
    seconds = time.perf_counter() - started
    say("")
    say(
        f"{seed_table(result)}\n"
        f"wrote {checkpoint} and {timeline} in {seconds:.1f} s\n"
        f"next: python -m mentor_fn inspect {checkpoint}",
        always=True,
    )
    return DemoResult(result=result, checkpoint=checkpoint, timeline=timeline, seconds=seconds)


def _require_matplotlib() -> None:
    """Fail before training, not after it, when the figure cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(MISSING_EXTRA) from error


def run_demo_seeds(
    count: int,
    *,
    first_seed: int = DEFAULT_SEED,
    quiet: bool = False,
    stream: TextIO | None = None,
) -> SeedsSummary:
    """Run the demo's protocol for ``count`` consecutive seeds; print mean and spread.

    Writes no files. Without ``quiet``, one line per seed as it finishes (its
    accuracies, arm by arm).

    Args:
        count: how many seeds (>= 2: a spread needs two).
        first_seed: the first seed.
        quiet: print only the table.
        stream: where to print (stdout by default).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ValueError(f"count must be an int >= 2, got {count!r}")
    _check_seed(first_seed)
    say = _Printer(stream or sys.stdout, quiet)
    started = time.perf_counter()
    results = []
    say(seed_lines_header())
    with reproducible():
        for seed in range(first_seed, first_seed + count):
            result = run_seed(seed)
            results.append(result)
            say(seed_line(result))
    summary = summarize(results)
    say("")
    say(
        f"{seeds_table(summary)}\n{count} seeds in {time.perf_counter() - started:.1f} s",
        always=True,
    )
    return summary
