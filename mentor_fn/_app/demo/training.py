"""What every run of the demo shares: its batches, its optimizer, its epochs, its measures.

A run reports as it goes through a :class:`Watch` (the demo prints it; the
tests and ``--seeds`` ignore it), and runs inside :func:`reproducible`: one
torch thread and torch's deterministic algorithms, so a seed gives the same
numbers on every run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from .data import CLASSES, DTYPE
from .model import DigitsCNN
from .protocol import BATCH_SIZE, EVALUATION_BATCH_SIZE, GAMMA, LR

__all__ = [
    "NO_WATCH",
    "Epochs",
    "Watch",
    "accuracy",
    "epoch_batches",
    "feature_change",
    "features",
    "fit_epochs",
    "head_accuracy",
    "new_model",
    "new_train_objects",
    "reproducible",
]


def _ignore(*_: Any) -> None:
    pass


@dataclass(frozen=True)
class Watch:
    """What a run reports as it goes; nothing by default.

    Attributes:
        stage: called with ``"pretrain"`` or an arm's key as each run begins.
        phase: called with the model when the curriculum enters a phase
            (before the phase's first epoch: its layout and lrs are live).
        epoch: called with each history record of the runs it should show
            (pretraining and lp_ft) as the epoch ends.
        note: called with a line of text a run has to say (the hand-written
            arm says what its optimizer holds when it "unfreezes").
        curves: validate after every epoch of the runs shown or drawn
            (pretraining, lp_ft, and fine-tuning for the figure). The measures
            do not need it, and it changes no weight: a run without curves
            ends exactly where a run with them does, only sooner.
        progress: show fit's progress bars.
    """

    stage: Callable[[str], None] = _ignore
    phase: Callable[[DigitsCNN], None] = _ignore
    epoch: Callable[[Mapping[str, Any]], None] = _ignore
    note: Callable[[str], None] = _ignore
    curves: bool = False
    progress: bool = False


NO_WATCH = Watch()
"""Reports nothing (the tests and ``--seeds`` run so)."""


@contextmanager
def reproducible() -> Iterator[None]:
    """One torch thread and deterministic algorithms inside; the caller's settings after.

    One thread: the model is tiny, so one thread is as fast as several, and on
    a busy machine intra-op threads spin-wait for each other (measured 30x
    slower); and the sums inside each kernel then run in one order.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


def new_model() -> DigitsCNN:
    """A :class:`DigitsCNN` for the demo's tasks, initialised in float64 from the global generator.

    Built with float64 as torch's default dtype, not built in float32 and
    converted: float32 initialisation rounds differently on different CPU
    kernels (``uniform_(a, b)`` differs by an ulp between torch's generic and
    vectorised kernels), and training turns a 1e-8 difference into a
    different run.
    """
    default = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        return DigitsCNN(num_classes=CLASSES)
    finally:
        torch.set_default_dtype(default)


Batch = tuple[torch.Tensor, torch.Tensor]
Epochs = Sequence[Sequence[Batch]]
"""The batches of each epoch of a run, in order: what every arm is given."""


def epoch_batches(
    data: TensorDataset, seed: int, epochs: int, collate: Callable[[Any], Any] | None = None
) -> Epochs:
    """``epochs`` epochs of shuffled batches of ``BATCH_SIZE``, in an order ``seed`` alone decides.

    A DataLoader with a generator of its own, iterated once per epoch, and
    its batches kept: runs given the same epochs train on the same batches in
    the same order, whatever else draws random numbers and however often a
    training loop calls ``iter()`` on what it is given (a DataLoader draws
    from its generator at each ``iter()``, and ``Mentee.fit``'s progress bar
    calls it twice an epoch, so handing fit and a plain loop one loader
    would give them different batches).
    """
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        data, batch_size=BATCH_SIZE, shuffle=True, generator=generator, collate_fn=collate
    )
    return [list(loader) for _ in range(epochs)]


def _evaluation_batches(data: TensorDataset) -> DataLoader[Any]:
    """``data`` in batches of ``EVALUATION_BATCH_SIZE``, in order (validation)."""
    return DataLoader(data, batch_size=EVALUATION_BATCH_SIZE)


def new_train_objects(model: DigitsCNN) -> None:
    """Adam at the global lr, decayed by GAMMA per epoch: every mentor_fn run starts so."""
    model.create_train_objects(
        LR, scheduler=lr_scheduler.ExponentialLR, scheduler_kwargs={"gamma": GAMMA}
    )


def fit_epochs(
    model: DigitsCNN,
    train: Epochs,
    val: TensorDataset | None,
    watch: Watch,
    *,
    shown: bool,
) -> None:
    """One epoch of ``Mentee.fit`` per entry of ``train``, validated on ``val`` unless it
    is None; ``shown`` runs report each epoch and phase to ``watch``."""
    val_batches = None if val is None else _evaluation_batches(val)
    # One epoch per call: the watcher sees each record as it ends, and the
    # curriculum's next phase (entered at the epoch end) before it trains.
    phase = _phase_name(model)
    epochs = len(train)
    for done, batches in enumerate(train, start=1):
        model.fit(batches, val_batches, epochs=1, progress=watch.progress)
        if shown:
            watch.epoch(model.history[-1])
        entered = _phase_name(model)
        if entered != phase and done < epochs and shown:
            watch.phase(model)
        phase = entered


def _phase_name(model: DigitsCNN) -> str | None:
    runner = model.schedule_runner
    return None if runner is None or runner.phase is None else runner.phase.name


def features(model: DigitsCNN, images: torch.Tensor) -> torch.Tensor:
    """What ``model``'s head sees for ``images`` (:meth:`DigitsCNN.features`), in eval mode."""
    with _evaluating(model):
        return torch.cat([model.features(chunk) for chunk in images.split(EVALUATION_BATCH_SIZE)])


def accuracy(model: DigitsCNN, data: TensorDataset) -> float:
    """The fraction of ``data``'s images ``model`` classifies correctly (in eval mode)."""
    images, labels = data.tensors
    return head_accuracy(model, features(model, images), labels)


def head_accuracy(model: DigitsCNN, seen: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``labels`` ``model``'s head gets right from the features ``seen``."""
    with _evaluating(model):
        predicted = model.head(seen).argmax(dim=-1)
    return float((predicted == labels).double().mean())


def feature_change(now: torch.Tensor, before: torch.Tensor) -> float:
    """How far features moved, relative to where they were: ``sum ||now - before|| / sum ||before||``.

    Rows are images (:func:`features`); 0 for a backbone that did not train.
    """
    return float((now - before).norm(dim=1).sum() / before.norm(dim=1).sum())


@contextmanager
def _evaluating(model: DigitsCNN) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)
