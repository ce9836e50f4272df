"""The demo: does a curriculum earn its place when a network moves to a shifted domain?

``python -m mentor_fn demo`` (or :func:`run_demo`) pretrains
:class:`DigitsCNN` on scikit-learn's 8x8 digits, then transfers it to the
same digits rotated by 15 degrees (``ROTATION_DEGREES``, chosen by the premise
rule of docs/demo-protocol.md) from 10 labelled images per digit, twice:
with the ``lp_ft`` curriculum (a linear probe, then full fine-tuning; driven
by ``Mentee.fit(..., schedule=...)``) and with plain fine-tuning, on the same
budget. It prints each epoch and a table of what each transfer gained on the
target task and kept of the source task, and writes the curriculum run's
checkpoint and timeline figure (the baseline's validation curve beside it).
:func:`run_demo_seeds` repeats the protocol over seeds and prints the mean
and spread. The protocol lives in ``mentor_fn._app.demo.protocol``, the data in
``mentor_fn._app.demo.data``, the tables in ``mentor_fn._app.demo.report``. Needs the
``demo`` extra (scikit-learn, matplotlib); nothing is downloaded.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from ..plot import attach_baseline, plot_timeline
from ..render import epoch_line, layer_table, live_layer_rows
from .data import MISSING_EXTRA, ROTATION_DEGREES, SHOTS_PER_CLASS, load_tasks
from .model import DigitsCNN
from .protocol import (
    BATCH_SIZE,
    GAMMA,
    LR,
    LR_RATIO,
    PRETRAIN_EPOCHS,
    PROBE_EPOCHS,
    TRANSFER_EPOCHS,
    SeedResult,
    Watch,
    run_seed,
)
from .report import SeedsSummary, seed_table, seeds_table, summarize

__all__ = ["DemoResult", "DigitsCNN", "run_demo", "run_demo_seeds"]

DEFAULT_OUTPUT = "mentor_fn_demo"
DEFAULT_SEED = 0
BASELINE_NAME = "plain fine-tuning"


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


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    # The model is tiny: one thread is as fast as several, and on a busy
    # machine intra-op threads spin-wait for each other (measured 30x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")


def _stage_titles() -> Mapping[str, str]:
    adam = f"Adam at lr {LR:g}, ExponentialLR(gamma={GAMMA:g}), batch {BATCH_SIZE}"
    return {
        "pretrain": f"== pretrain on the source task: everything trainable, {adam}, "
        f"{PRETRAIN_EPOCHS} epochs",
        "curriculum": f"== transfer with the curriculum: lp_ft('head', probe_epochs="
        f"{PROBE_EPOCHS}) from the pretrained weights, {adam}, {TRANSFER_EPOCHS} epochs "
        f"(fine-tuning on a fresh optimizer at {LR_RATIO:g} x lr)",
        "baseline": f"== transfer without a curriculum ({BASELINE_NAME}): everything "
        f"trainable, {adam}, {TRANSFER_EPOCHS} epochs, the same batches in the same order",
    }


def _printing_watch(say: _Printer, *, progress: bool) -> Watch:
    titles = _stage_titles()

    def stage(name: str) -> None:
        say(f"\n{titles[name]}")

    def phase(model: DigitsCNN) -> None:
        runner = model.schedule_runner
        assert runner is not None and runner.phase is not None and runner.cursor is not None
        count = len(runner.schedule.phases)
        say(f"-- phase {runner.cursor.phase + 1}/{count}: {runner.phase.name}")
        say(layer_table(live_layer_rows(model), trainable_column=True))

    def epoch(record: Mapping[str, Any]) -> None:
        say(epoch_line(record, show_time=False))

    return Watch(stage=stage, phase=phase, epoch=epoch, progress=progress)


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
    with _one_torch_thread():
        return _run(Path(output), seed, say, progress=not quiet)


def _run(folder: Path, seed: int, say: _Printer, *, progress: bool) -> DemoResult:
    started = time.perf_counter()
    _require_matplotlib()
    tasks = load_tasks(seed)
    say(
        f"mentor_fn demo, seed {seed}: scikit-learn's 8x8 digits, split in two halves "
        "(stratified by digit)\n"
        f"source task: the ten digits upright, {len(tasks.source.train)} training / "
        f"{len(tasks.source.val)} validation images\n"
        f"target task: the ten digits rotated by {ROTATION_DEGREES:g} degrees, "
        f"{SHOTS_PER_CLASS} labelled images per digit ({len(tasks.target.train)}), "
        f"{len(tasks.target.val)} validation images"
    )
    result = run_seed(seed, _printing_watch(say, progress=progress))

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "demo.ckpt"
    timeline = folder / "timeline.png"
    model = result.curriculum.model
    # The curriculum's checkpoint carries the baseline's validation metrics
    # epoch by epoch, so that plotting it later shows both runs.
    model.history = attach_baseline(model.history, result.baseline.model.history, BASELINE_NAME)
    model.save(checkpoint)
    plot_timeline(
        model.history,
        timeline,
        layers=[row.layer for row in live_layer_rows(model)],
        title=f"mentor_fn demo, seed {seed}: lp_ft from upright to rotated digits "
        f"(dashed grey: {BASELINE_NAME})",
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

    Writes no files. Without ``quiet``, one line per seed as it finishes.

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
    with _one_torch_thread():
        for seed in range(first_seed, first_seed + count):
            begun = time.perf_counter()
            result = run_seed(seed)
            results.append(result)
            say(
                f"seed {seed}: target val accuracy lp_ft {result.curriculum.after.target:.1%}, "
                f"{BASELINE_NAME} {result.baseline.after.target:.1%} "
                f"({time.perf_counter() - begun:.1f} s)"
            )
    summary = summarize(results)
    say("")
    say(
        f"{seeds_table(summary)}\n{count} seeds in {time.perf_counter() - started:.1f} s",
        always=True,
    )
    return summary
