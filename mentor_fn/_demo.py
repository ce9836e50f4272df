"""The demo: curriculum fine-tuning of a small CNN on scikit-learn's 8x8 digits.

``python -m mentor_fn demo`` (or :func:`run_demo`) pretrains :class:`DigitsCNN`
on the digits 0-4, then transfers it to the digits 5-9 with few labels, in
three phases driven by the public API:

1. **head only**: the backbone frozen, a fresh optimizer;
2. **top block + layer-wise lr decay**: ``backbone.block3`` unfrozen and the
   blocks' coefficients decayed towards the input, applied as one transition
   on the live curriculum (a rebuild that keeps the head's Adam state and the
   scheduler's progress);
3. **everything, lower lr**: the whole backbone unfrozen (block 1 and 2 keep
   their decayed coefficients) and a new optimizer at a tenth of the lr.

The same pretrained weights are then fine-tuned for the same number of
epochs without a curriculum (everything trainable, one lr), for comparison.
The data ship inside scikit-learn: nothing is downloaded. Needs the ``demo``
extra (scikit-learn, matplotlib).
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn
from torch.nn import functional
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from . import _transitions as transitions
from ._mentee import Mentee
from ._plot import plot_timeline
from ._render import epoch_line, layer_table, live_layer_rows
from ._trainers import Classifier

__all__ = ["DemoResult", "DigitsCNN", "run_demo"]

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TRANSFER_CLASSES = (5, 6, 7, 8, 9)
DEFAULT_EPOCHS = 8
DEFAULT_OUTPUT = "mentor_fn_demo"
DEFAULT_SEED = 0
SHOTS = 20
"""Labelled training images per class in the transfer task (few-shot fine-tuning)."""

BATCH_SIZE = 10
PRETRAIN_LR = 3e-3
HEAD_LR = 3e-2
"""Phase 1 trains only a fresh linear head: a high lr is safe there."""
DECAY = 0.8
"""Layer-wise lr decay per block, from the head down (phase 2 on)."""
FINE_TUNE_LR = 3e-3
"""Phase 3's global lr, and the baseline's (which trains everything from the start)."""
GAMMA = 0.85
"""Every optimizer decays its lr by this factor per epoch (ExponentialLR)."""


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with ReLU, optionally followed by 2x2 max pooling."""

    def __init__(self, channels_in: int, channels_out: int, *, pool: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu(self.conv2(functional.relu(self.conv1(x))))
        return functional.max_pool2d(x, 2) if self.pool else x


class DigitsCNN(Mentee):
    """A small CNN for 8x8 digits: three two-conv blocks and a linear head.

    Layers: ``backbone``, ``backbone.block{1,2,3}``, their ``conv1``/``conv2``,
    and ``head``.
    """

    trainer = Classifier()

    def __init__(self, num_classes: int = 5, width: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            OrderedDict(
                block1=ConvBlock(1, width, pool=True),  # 8x8 -> 4x4
                block2=ConvBlock(width, 2 * width, pool=True),  # 4x4 -> 2x2
                block3=ConvBlock(2 * width, 4 * width, pool=False),
            )
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean(dim=(2, 3)))


@dataclass(frozen=True)
class Phase:
    """One phase of the curriculum: a transition, and whether it starts a new optimizer."""

    name: str
    transition: Callable[[Any], Any]
    lr: float | None
    """Global lr of a fresh optimizer, or None to keep the live one (rebuilt if needed)."""


PHASES = (
    Phase("head only", transitions.freeze("backbone"), HEAD_LR),
    Phase(
        "top block + layer-wise lr decay",
        transitions.chain(
            transitions.unfreeze("backbone.block3"),
            transitions.layerwise_lr_decay(DECAY, patterns=[r"backbone\.block\d", "head"]),
        ),
        None,
    ),
    Phase("everything, lower lr", transitions.unfreeze("backbone"), FINE_TUNE_LR),
)


@dataclass
class DemoResult:
    """What :func:`run_demo` measured and wrote."""

    curriculum_accuracy: float
    baseline_accuracy: float
    pretrain_accuracy: float
    chance: float
    checkpoint: Path
    timeline: Path
    seconds: float
    epochs_per_phase: int
    history: list[dict[str, Any]] = field(repr=False, default_factory=list)


# Data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    train: TensorDataset
    val: TensorDataset


def load_digits_tasks(seed: int) -> tuple[Split, Split]:
    """The pretraining task (digits 0-4) and the few-shot transfer task (digits 5-9).

    Images are scaled to [0, 1], shape ``(1, 8, 8)``. Pretraining: 80% of the
    0-4 images for training, 20% for validation. Transfer: ``SHOTS`` images per
    class for training, all the other 5-9 images for validation; labels 0-4.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the demo needs scikit-learn and matplotlib: pip install 'mentor_fn[demo]'"
        ) from error
    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    x, y = x[order], y[order]

    pretrain = torch.isin(y, torch.tensor(PRETRAIN_CLASSES))
    xa, ya = x[pretrain], y[pretrain]
    cut = int(0.8 * len(ya))
    task_a = Split(TensorDataset(xa[:cut], ya[:cut]), TensorDataset(xa[cut:], ya[cut:]))

    xb, yb = x[~pretrain], y[~pretrain] - TRANSFER_CLASSES[0]
    train_mask = torch.zeros(len(yb), dtype=torch.bool)
    for label in range(len(TRANSFER_CLASSES)):
        train_mask[torch.nonzero(yb == label).flatten()[:SHOTS]] = True
    task_b = Split(
        TensorDataset(xb[train_mask], yb[train_mask]),
        TensorDataset(xb[~train_mask], yb[~train_mask]),
    )
    return task_a, task_b


def _loaders(split: Split, seed: int) -> tuple[DataLoader[Any], DataLoader[Any]]:
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(split.train, batch_size=BATCH_SIZE, shuffle=True, generator=generator)
    val = DataLoader(split.val, batch_size=500)
    return train, val


# Running ------------------------------------------------------------------------


class _Printer:
    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.stream, self.quiet = stream, quiet

    def __call__(self, text: str = "", *, always: bool = False) -> None:
        if always or not self.quiet:
            print(text, file=self.stream, flush=True)


def _fit_epochs(
    model: DigitsCNN,
    train: DataLoader[Any],
    val: DataLoader[Any],
    epochs: int,
    *,
    say: _Printer,
    progress: bool,
    checkpoint: Path | None = None,
    phase: str | None = None,
) -> None:
    for _ in range(epochs):
        record = model.fit(train, val, epochs=1, progress=progress).history[-1]
        if phase is not None:
            record["phase"] = phase
        if checkpoint is not None:
            model.save(checkpoint)
        say(epoch_line(record))


def _new_optimizer(model: DigitsCNN, lr: float) -> None:
    """A fresh Adam with an ExponentialLR schedule: a new phase."""
    model.create_train_objects(
        lr, scheduler=lr_scheduler.ExponentialLR, scheduler_kwargs={"gamma": GAMMA}
    )


def _transfer_model(pretrained: DigitsCNN, seed: int) -> DigitsCNN:
    """A new model for the 5-9 task: the pretrained backbone, a fresh head."""
    torch.manual_seed(seed + 1)
    model = DigitsCNN(num_classes=len(TRANSFER_CLASSES))
    model.backbone.load_state_dict(pretrained.backbone.state_dict())
    return model


def run_demo(
    *,
    epochs: int = DEFAULT_EPOCHS,
    output: str | Path = DEFAULT_OUTPUT,
    seed: int = DEFAULT_SEED,
    quiet: bool = False,
    stream: TextIO | None = None,
) -> DemoResult:
    """Run the demo; write ``demo.ckpt`` and ``timeline.png`` into ``output``.

    Args:
        epochs: epochs per phase (pretraining runs as many; the baseline runs
            as many as the three transfer phases together).
        output: the folder for the checkpoint and the plot (created).
        seed: seeds the data split, initialisation and shuffling.
        quiet: print only the summary (no tables, no progress bars).
        stream: where to print (stdout by default).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    threads = torch.get_num_threads()
    # The model is tiny: one thread is as fast as several, and on a busy
    # machine intra-op threads spin-wait for each other (measured 30x slower).
    torch.set_num_threads(1)
    try:
        return _run(epochs, Path(output), seed, quiet, stream or sys.stdout)
    finally:
        torch.set_num_threads(threads)


def _run(epochs: int, folder: Path, seed: int, quiet: bool, stream: TextIO) -> DemoResult:
    say = _Printer(stream, quiet)
    progress = not quiet
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "demo.ckpt"
    timeline = folder / "timeline.png"

    torch.manual_seed(seed)
    task_a, task_b = load_digits_tasks(seed)
    say(
        f"mentor_fn demo: 8x8 digits (scikit-learn), seed {seed}, {epochs} epochs per phase\n"
        f"pretrain on digits 0-4: {len(task_a.train)} train / {len(task_a.val)} val images; "
        f"transfer to digits 5-9: {SHOTS} labelled images per class "
        f"({len(task_b.train)}), {len(task_b.val)} val images"
    )

    # Pretraining: everything trainable, on the digits 0-4.
    say("\n== pretrain on digits 0-4 (everything trainable)")
    torch.manual_seed(seed)
    pretrained = DigitsCNN(num_classes=len(PRETRAIN_CLASSES))
    _new_optimizer(pretrained, PRETRAIN_LR)
    train_a, val_a = _loaders(task_a, seed)
    _fit_epochs(pretrained, train_a, val_a, epochs, say=say, progress=progress)
    pretrain_accuracy = pretrained.history[-1]["val"]["accuracy"]

    # The curriculum: three phases on the digits 5-9.
    train_b, val_b = _loaders(task_b, seed + 2)
    model = _transfer_model(pretrained, seed)
    for number, phase in enumerate(PHASES, 1):
        # A rebuild keeps the optimizer state of layers that stay trainable and
        # the scheduler's progress; create_train_objects then starts a new phase.
        model.curriculum.update(phase.transition, reset_optimizer_if_needed=True)
        if phase.lr is not None:
            _new_optimizer(model, phase.lr)
        say(f"\n== phase {number}/{len(PHASES)}: {phase.name}")
        say(layer_table(live_layer_rows(model), trainable_column=True))
        _fit_epochs(
            model,
            train_b,
            val_b,
            epochs,
            say=say,
            progress=progress,
            checkpoint=checkpoint,
            phase=phase.name,
        )
    curriculum_accuracy = model.history[-1]["val"]["accuracy"]

    # The same budget without a curriculum: everything trainable at one lr.
    say(f"\n== baseline: the same {len(PHASES) * epochs} epochs without a curriculum")
    baseline = _transfer_model(pretrained, seed)
    _new_optimizer(baseline, FINE_TUNE_LR)
    train_b, val_b = _loaders(task_b, seed + 2)
    _fit_epochs(baseline, train_b, val_b, len(PHASES) * epochs, say=say, progress=progress)
    baseline_accuracy = baseline.history[-1]["val"]["accuracy"]

    plot_timeline(
        model.history,
        timeline,
        layers=[row.layer for row in live_layer_rows(model)],
        title="mentor_fn demo: curriculum fine-tuning of a CNN pretrained on digits 0-4, to digits 5-9",
    )
    seconds = time.perf_counter() - started
    chance = 1 / len(TRANSFER_CLASSES)
    say(
        ("" if quiet else "\n")
        + f"validation accuracy on digits 5-9 after {len(PHASES) * epochs} epochs "
        f"(chance {chance:.0%}):\n"
        f"  with the curriculum     {curriculum_accuracy:6.1%}\n"
        f"  without (one lr, all)   {baseline_accuracy:6.1%}\n"
        f"wrote {checkpoint} and {timeline} in {seconds:.1f} s\n"
        f"next: python -m mentor_fn inspect {checkpoint}",
        always=True,
    )
    return DemoResult(
        curriculum_accuracy=curriculum_accuracy,
        baseline_accuracy=baseline_accuracy,
        pretrain_accuracy=pretrain_accuracy,
        chance=chance,
        checkpoint=checkpoint,
        timeline=timeline,
        seconds=seconds,
        epochs_per_phase=epochs,
        history=list(model.history),
    )
