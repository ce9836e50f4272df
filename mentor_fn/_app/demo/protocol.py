"""The demo's protocol: pretrain on upright digits, transfer to rotated ones, two ways.

For one seed, :func:`run_seed`:

1. **pretrains** :class:`DigitsCNN` on the source task (the ten upright
   digits), everything trainable;
2. **transfers with a curriculum**: the pretrained network (backbone and
   head: the labels are the same) follows ``lp_ft("head", probe_epochs=4)``
   through ``Mentee.fit(..., schedule=...)``: a linear probe, then full
   fine-tuning on a fresh optimizer at a tenth of the lr;
3. **transfers without one** (the baseline): the same pretrained network,
   everything trainable, for the same epochs, at the same global lr, under
   the same scheduler, on the same batches in the same order;

and measures, for both transfers, the validation accuracy on the target task
(what the transfer gains) and on the source task (what it keeps). Every
number of the protocol is a constant below; they were fixed before any
result was seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from ..._schedules.recipes import lp_ft
from ..._schedules.schedule import Schedule
from .data import DemoTasks, Split, load_tasks
from .model import DigitsCNN

__all__ = [
    "Accuracies",
    "SeedResult",
    "Transfer",
    "Watch",
    "accuracy",
    "curriculum_schedule",
    "run_seed",
]

BATCH_SIZE = 10
LR = 3e-3
"""The global lr of every run (lp_ft's fine-tuning phase runs at LR_RATIO of it)."""
GAMMA = 0.85
"""Every optimizer's lr decays by this factor per epoch (ExponentialLR)."""
PRETRAIN_EPOCHS = 10
TRANSFER_EPOCHS = 12
PROBE_EPOCHS = 4
LR_RATIO = 0.1
"""lp_ft's default: full fine-tuning at a tenth of the global lr."""
HEAD = "head"


def curriculum_schedule() -> Schedule:
    """The curriculum under test: lp_ft with the recipe's defaults."""
    return lp_ft(HEAD, probe_epochs=PROBE_EPOCHS)


def _ignore(*_: Any) -> None:
    pass


@dataclass(frozen=True)
class Watch:
    """What a run reports as it goes (the demo prints it); nothing by default.

    Attributes:
        stage: called with ``"pretrain"``, ``"curriculum"`` or ``"baseline"``
            as each run begins.
        phase: called with the model when the curriculum enters a phase
            (before the phase's first epoch: its layout and lrs are live).
        epoch: called with each history record as its epoch ends.
        progress: show fit's progress bars.
    """

    stage: Callable[[str], None] = _ignore
    phase: Callable[[DigitsCNN], None] = _ignore
    epoch: Callable[[Mapping[str, Any]], None] = _ignore
    progress: bool = False


@dataclass(frozen=True)
class Accuracies:
    """Validation accuracy on each task, as fractions."""

    target: float
    source: float


@dataclass(frozen=True)
class Transfer:
    """One transfer run: the accuracies after it, and the trained model."""

    after: Accuracies
    model: DigitsCNN = field(repr=False, compare=False)


@dataclass(frozen=True)
class SeedResult:
    """What one seed measured."""

    seed: int
    pretrained: Accuracies
    """The pretrained network before any transfer (its target accuracy: what
    the rotation costs it)."""
    curriculum: Transfer
    baseline: Transfer

    def forgetting(self, run: Transfer) -> float:
        """Source accuracy lost by a transfer: pretrained minus after, a fraction."""
        return self.pretrained.source - run.after.source


def run_seed(seed: int, watch: Watch = Watch()) -> SeedResult:
    """Pretrain, then transfer with and without the curriculum; ``seed`` seeds everything.

    Raises:
        ImportError: scikit-learn is missing (nothing has trained yet).
    """
    tasks = load_tasks(seed)
    watch.stage("pretrain")
    pretrained = _pretrain(tasks.source, seed, watch)
    before = _accuracies(pretrained, tasks)
    watch.stage("curriculum")
    curriculum = _transfer(pretrained, tasks, seed, watch, schedule=curriculum_schedule())
    watch.stage("baseline")
    baseline = _transfer(pretrained, tasks, seed, watch, schedule=None)
    return SeedResult(seed, before, curriculum, baseline)


def accuracy(model: DigitsCNN, data: TensorDataset) -> float:
    """The fraction of ``data``'s images ``model`` classifies correctly (in eval mode)."""
    images, labels = data.tensors
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            predicted = model(images).argmax(dim=-1)
    finally:
        model.train(training)
    return float((predicted == labels).float().mean())


def _accuracies(model: DigitsCNN, tasks: DemoTasks) -> Accuracies:
    return Accuracies(
        target=accuracy(model, tasks.target.val), source=accuracy(model, tasks.source.val)
    )


def _new_train_objects(model: DigitsCNN) -> None:
    """Adam at the global lr, decayed by GAMMA per epoch: every run starts so."""
    model.create_train_objects(
        LR, scheduler=lr_scheduler.ExponentialLR, scheduler_kwargs={"gamma": GAMMA}
    )


def _loaders(split: Split, seed: int) -> tuple[DataLoader[Any], DataLoader[Any]]:
    # Each loader has a generator of its own: two runs given the same seed see the same
    # batches in the same order, whatever else draws random numbers.
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(split.train, batch_size=BATCH_SIZE, shuffle=True, generator=generator)
    return train, DataLoader(split.val, batch_size=len(split.val))


def _fit_epochs(
    model: DigitsCNN,
    loaders: tuple[DataLoader[Any], DataLoader[Any]],
    epochs: int,
    watch: Watch,
) -> None:
    train, val = loaders
    # One epoch per call: the watcher sees each record as it ends, and the
    # curriculum's next phase (entered at the epoch end) before it trains.
    phase = _phase_name(model)
    for done in range(1, epochs + 1):
        model.fit(train, val, epochs=1, progress=watch.progress)
        watch.epoch(model.history[-1])
        entered = _phase_name(model)
        if entered != phase and done < epochs:
            watch.phase(model)
        phase = entered


def _phase_name(model: DigitsCNN) -> str | None:
    runner = model.schedule_runner
    return None if runner is None or runner.phase is None else runner.phase.name


def _pretrain(source: Split, seed: int, watch: Watch) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    _new_train_objects(model)
    _fit_epochs(model, _loaders(source, seed), PRETRAIN_EPOCHS, watch)
    return model


def _transfer(
    pretrained: DigitsCNN,
    tasks: DemoTasks,
    seed: int,
    watch: Watch,
    *,
    schedule: Schedule | None,
) -> Transfer:
    model = DigitsCNN()
    model.load_state_dict(pretrained.state_dict())
    _new_train_objects(model)
    loaders = _loaders(tasks.target, seed + 1)
    if schedule is not None:
        # Zero epochs: fit enters the first phase and trains nothing (no batch
        # is drawn), so the phase's layout is live before its first epoch.
        model.fit(loaders[0], epochs=0, schedule=schedule, progress=False)
        watch.phase(model)
    _fit_epochs(model, loaders, TRANSFER_EPOCHS, watch)
    return Transfer(_accuracies(model, tasks), model)
