"""One seed of the demo: pretrain on digits 0-4, then run the four transfer arms on digits 5-9.

:func:`run_seed` pretrains :class:`DigitsCNN` on the source task (random
rotations within ``PRETRAIN_ROTATION_DEGREES``), measures how well the
pretrained network reads its own validation images upright and under the
shift (the premise: features good under the shift), puts a new, randomly
initialised head on the backbone, and runs every arm of
:mod:`mentor_fn._app.demo.arms` from that start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from .arms import ArmResult, new_head_on, run_arm
from .data import (
    PRETRAIN_ROTATION_DEGREES,
    SHIFT_DEGREES,
    DemoTasks,
    RandomRotation,
    SourceTask,
    load_tasks,
    rotate,
)
from .model import DigitsCNN
from .protocol import ARMS, PRETRAIN_EPOCHS, TRANSFER_EPOCHS
from .training import (
    NO_WATCH,
    Watch,
    accuracy,
    epoch_batches,
    fit_epochs,
    new_model,
    new_train_objects,
)

__all__ = ["Pretrained", "SeedResult", "pretrain", "run_seed"]


@dataclass(frozen=True)
class Pretrained:
    """The pretrained network on its own validation images (digits 0-4), as fractions.

    Attributes:
        upright: as they are.
        shifted: rotated by ``SHIFT_DEGREES``, as the out-of-distribution images are.
    """

    upright: float
    shifted: float


@dataclass(frozen=True)
class SeedResult:
    """What one seed measured: the pretrained network, and each arm (keys of ``ARMS``)."""

    seed: int
    pretrained: Pretrained
    arms: Mapping[str, ArmResult]
    backbone_weights: int
    """How many weights the backbone has (what ``backbone_changed`` counts out of)."""


def pretrain(source: SourceTask, seed: int, watch: Watch = NO_WATCH) -> DigitsCNN:
    """:class:`DigitsCNN` trained on the source task; ``seed`` seeds its weights and batches."""
    torch.manual_seed(seed)
    model = new_model()
    new_train_objects(model)
    rotating = RandomRotation(PRETRAIN_ROTATION_DEGREES, seed)
    batches = epoch_batches(source.train, seed, PRETRAIN_EPOCHS, rotating)
    val = source.val if watch.curves else None
    fit_epochs(model, batches, val, watch, shown=True)
    return model


def run_seed(seed: int, watch: Watch = NO_WATCH, tasks: DemoTasks | None = None) -> SeedResult:
    """Pretrain, then run every arm from one start; ``seed`` seeds everything.

    ``tasks`` are ``load_tasks(seed)``'s, when the caller has them already.

    Raises:
        ImportError: scikit-learn is missing (nothing has trained yet).
    """
    if tasks is None:
        tasks = load_tasks(seed)
    watch.stage("pretrain")
    pretrained = pretrain(tasks.source, seed, watch)
    images, labels = tasks.source.val.tensors
    measured = Pretrained(
        upright=accuracy(pretrained, tasks.source.val),
        shifted=accuracy(pretrained, TensorDataset(rotate(images, SHIFT_DEGREES), labels)),
    )
    watch.note(
        f"pretrained network on its own validation images (digits 0-4): "
        f"{measured.upright:.1%} upright, {measured.shifted:.1%} rotated by {SHIFT_DEGREES} degrees"
    )
    start = new_head_on(pretrained, tasks, seed + 1)
    # One list of epochs for every arm: the same batches in the same order.
    batches = epoch_batches(tasks.target.train, seed + 2, TRANSFER_EPOCHS)
    arms = {arm: run_arm(arm, start, tasks, batches, watch) for arm in ARMS}
    backbone = sum(parameter.numel() for parameter in start.model.backbone.parameters())
    return SeedResult(seed, measured, arms, backbone)
