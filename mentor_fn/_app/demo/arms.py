"""The demo's four transfer arms, and what is measured after each.

Every arm starts from the same weights (the pretrained backbone and one new,
randomly initialised head for digits 5-9), trains ``TRANSFER_EPOCHS`` epochs
on the same batches in the same order, and is measured the same way:

- ``probe``: a linear probe: the backbone frozen throughout (mentor_fn's
  ``freeze``), the head at the global lr;
- ``fine_tune``: plain fine-tuning: everything trainable at the global lr;
- ``lp_ft``: mentor_fn's ``lp_ft`` recipe through ``Mentee.fit(schedule=)``:
  the probe, then everything on a fresh optimizer at ``LR_RATIO`` of the lr;
- ``by_hand``: LP-FT the usual hand-written way, in plain torch
  (:mod:`mentor_fn._app.demo.hand_written`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data import DemoTasks
from .hand_written import lp_ft_by_hand
from .model import DigitsCNN
from .protocol import ARMS, PROBE_EPOCHS, curriculum_schedule
from .training import (
    Epochs,
    Watch,
    feature_change,
    features,
    fit_epochs,
    head_accuracy,
    new_model,
    new_train_objects,
)

__all__ = ["CURVES", "ArmResult", "Start", "new_head_on", "run_arm"]

CURVES = ("fine_tune", "lp_ft")
"""The arms validated after every epoch when the watch asks for curves: lp_ft's
epochs are printed, and the figure draws fine-tuning's validation beside them."""


@dataclass(frozen=True)
class ArmResult:
    """What one arm reached, measured on the held-out target images.

    Attributes:
        id_accuracy: accuracy on the held-out images as trained on (in distribution).
        ood_accuracy: accuracy on the same images under the shift (out of distribution).
        feature_change_id: :func:`~mentor_fn._app.demo.training.feature_change`
            from the start, on the in-distribution images.
        feature_change_ood: the same on the shifted images.
        backbone_changed: how many of the backbone's weights differ from the
            start (compared exactly: 0 means the backbone never moved).
        model: the trained network.
    """

    id_accuracy: float
    ood_accuracy: float
    feature_change_id: float
    feature_change_ood: float
    backbone_changed: int
    model: DigitsCNN = field(repr=False, compare=False)


@dataclass(frozen=True)
class Start:
    """Where every arm starts: the network, and its features on the held-out images."""

    model: DigitsCNN
    features_id: torch.Tensor
    features_ood: torch.Tensor


def new_head_on(pretrained: DigitsCNN, tasks: DemoTasks, seed: int) -> Start:
    """``pretrained``'s backbone under a new head for the target, initialised from ``seed``."""
    torch.manual_seed(seed)
    model = new_model()
    model.backbone.load_state_dict(pretrained.backbone.state_dict())
    target = tasks.target
    return Start(
        model,
        features(model, target.test.tensors[0]),
        features(model, target.shifted.tensors[0]),
    )


def run_arm(arm: str, start: Start, tasks: DemoTasks, batches: Epochs, watch: Watch) -> ArmResult:
    """Train a copy of ``start`` as ``arm`` says, one epoch per entry of ``batches``; measure it.

    Raises:
        ValueError: ``arm`` is not one of ``ARMS``.
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {', '.join(map(repr, ARMS))}, got {arm!r}")
    model = new_model()
    model.load_state_dict(start.model.state_dict())
    target = tasks.target
    watch.stage(arm)
    if arm == "by_hand":
        lp_ft_by_hand(model, batches, probe_epochs=PROBE_EPOCHS, note=watch.note)
    else:
        if arm == "probe":
            model.freeze("backbone")
        new_train_objects(model)
        if arm == "lp_ft":
            # Zero epochs: fit enters the first phase and trains nothing (no
            # batch is drawn), so the phase's layout is live before its first epoch.
            model.fit(batches[0], epochs=0, schedule=curriculum_schedule(), progress=False)
            watch.phase(model)
        val = target.test if watch.curves and arm in CURVES else None
        fit_epochs(model, batches, val, watch, shown=arm == "lp_ft")
    changed = sum(
        int((now != before).sum())
        for now, before in zip(model.backbone.parameters(), start.model.backbone.parameters())
    )
    features_id = features(model, target.test.tensors[0])
    features_ood = features(model, target.shifted.tensors[0])
    return ArmResult(
        id_accuracy=head_accuracy(model, features_id, target.test.tensors[1]),
        ood_accuracy=head_accuracy(model, features_ood, target.shifted.tensors[1]),
        feature_change_id=feature_change(features_id, start.features_id),
        feature_change_ood=feature_change(features_ood, start.features_ood),
        backbone_changed=changed,
        model=model,
    )
