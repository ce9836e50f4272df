"""Curriculum.set_lr: the global lr rescaled on a live optimizer and scheduler.

The expected lrs come from a plain torch run, never from mentor_fn: one
parameter, one flat group at the original global lr, the same scheduler
factory, stepped in lockstep and never touched. After ``set_lr(new)`` at a
point where that flat run's lr is ``live``, a flat run rescaled the same way
has every lr-like value ``new / live`` times the untouched one's (for every
scheduler whose output is proportional to its lr-like values), so every
group must hold ``flat x new / live x coefficient``, then and after every
further scheduler step.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import mentor_fn as mf

LR = 0.1
NEW_LR = 0.03
METRICS = (3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5)

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda step: 1.0 / (1.0 + step)),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=6),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=20),
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    # eps=0: its default eps is an absolute threshold, not proportional to the lr.
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(
        o, factor=0.5, patience=1, eps=0.0
    ),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o,
        [
            lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=3),
            lr_scheduler.ExponentialLR(o, 0.8),
        ],
        milestones=[3],
    ),
}
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4)), nn.Tanh(), nn.Linear(4, 2)
    )


INPUTS, TARGETS = torch.randn(5, 3), torch.randn(5, 2)


class FlatReference:
    """One parameter, one flat group at the original global lr, the same scheduler factory."""

    def __init__(self, name: str) -> None:
        self.parameter = nn.Parameter(torch.zeros(1))
        self.optimizer = torch.optim.SGD([self.parameter], lr=LR, momentum=0.9)
        self.scheduler = SCHEDULERS[name](self.optimizer)

    def step(self, metric: float) -> None:
        self.parameter.grad = torch.zeros(1)
        self.optimizer.step()
        if isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def values(self) -> dict[str, float]:
        group = self.optimizer.param_groups[0]
        return {key: float(group[key]) for key in LR_KEYS if key in group}


def step(curriculum: mf.Curriculum, metric: float) -> None:
    optimizer = curriculum.optimizer
    optimizer.zero_grad()
    nn.functional.mse_loss(curriculum.model(INPUTS), TARGETS).backward()
    optimizer.step()
    if isinstance(curriculum.scheduler, lr_scheduler.ReduceLROnPlateau):
        curriculum.scheduler.step(metric)
    else:
        curriculum.scheduler.step()


def assert_invariant(curriculum: mf.Curriculum, reference: FlatReference, scale: float) -> None:
    expected = reference.values()
    for group in curriculum.optimizer.param_groups:
        for key, value in expected.items():
            assert float(group[key]) == pytest.approx(
                value * scale * group["coefficient"], rel=1e-12, abs=1e-15
            ), (group["layers"], key)
    last = curriculum.scheduler.get_last_lr()
    flat_last = reference.scheduler.get_last_lr()[0]
    for group, value in zip(curriculum.optimizer.param_groups, last, strict=True):
        assert float(value) == pytest.approx(flat_last * scale * group["coefficient"], rel=1e-12)


def new_curriculum(name: str) -> mf.Curriculum:
    curriculum = mf.Curriculum(
        make_model(),
        LR,
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": 0.9},
        scheduler=SCHEDULERS[name],
    )
    curriculum.set_lr_coefficient(0.1, "0")
    curriculum.freeze("0.2")
    return curriculum


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_set_lr_keeps_every_group_at_its_coefficient_of_the_rescaled_flat_run(name):
    curriculum = new_curriculum(name)
    curriculum.build()
    reference = FlatReference(name)
    scale = 1.0
    for number, metric in enumerate(METRICS):
        if number == 4:
            live = reference.values()["lr"]
            curriculum.set_lr(NEW_LR)
            scale = NEW_LR / live
            assert curriculum.lr == NEW_LR
            reference_group = curriculum.optimizer.param_groups[-1]
            assert reference_group["lr"] == pytest.approx(NEW_LR, rel=1e-12)
        if number == 6:  # a rebuild and a patch after it derive from the rescaled values
            curriculum.unfreeze("0.2", reset_optimizer_if_needed=True)
            assert isinstance(curriculum.set_lr_coefficient(0.25, "0"), mf.Patch)
        assert_invariant(curriculum, reference, scale)
        step(curriculum, metric)
        reference.step(metric)
        assert_invariant(curriculum, reference, scale)


def test_before_build_set_lr_is_the_lr_build_uses():
    curriculum = new_curriculum("StepLR")
    curriculum.set_lr(NEW_LR)
    assert curriculum.lr == NEW_LR and curriculum.recipe.lr == NEW_LR
    optimizer = curriculum.build()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(
        [NEW_LR * 0.1, NEW_LR, NEW_LR]
    )


@pytest.mark.parametrize(
    ("lr", "error"),
    [
        (0.0, ValueError),
        (-0.1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("0.1", TypeError),
        (True, TypeError),
    ],
)
def test_bad_lrs_are_refused_before_any_change(lr, error):
    curriculum = new_curriculum("StepLR")
    curriculum.build()
    before = [dict(group, params=None) for group in curriculum.optimizer.param_groups]
    scheduler_before = curriculum.scheduler.state_dict()
    with pytest.raises(error, match="lr"):
        curriculum.set_lr(lr)
    assert [dict(group, params=None) for group in curriculum.optimizer.param_groups] == before
    assert curriculum.scheduler.state_dict() == scheduler_before
    assert curriculum.lr == LR
    unbuilt = new_curriculum("StepLR")
    with pytest.raises(error, match="lr"):
        unbuilt.set_lr(lr)
    assert unbuilt.lr == LR


def test_a_live_lr_driven_to_zero_cannot_be_rescaled():
    curriculum = mf.Curriculum(
        make_model(), LR, scheduler=lambda o: lr_scheduler.LambdaLR(o, lambda step: 0.0)
    )
    curriculum.build()
    before = [dict(group, params=None) for group in curriculum.optimizer.param_groups]
    with pytest.raises(RuntimeError, match="reference group's lr is 0"):
        curriculum.set_lr(NEW_LR)
    assert [dict(group, params=None) for group in curriculum.optimizer.param_groups] == before
    assert curriculum.lr == LR
    curriculum.set_lr_coefficient(0.5, "2")  # the curriculum is still usable


def test_the_new_lr_is_saved_and_resumed_bit_for_bit():
    original = new_curriculum("CosineAnnealingLR")
    original.build()
    for metric in METRICS[:3]:
        step(original, metric)
    original.set_lr(NEW_LR)
    buffer = io.BytesIO()
    torch.save({"curriculum": original.state_dict(), "model": original.model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["curriculum"]["recipe"]["lr"] == NEW_LR

    resumed = mf.Curriculum(
        make_model(),
        1.0,
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": 0.9},
        scheduler=SCHEDULERS["CosineAnnealingLR"],
    )
    resumed.model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["curriculum"])
    assert resumed.lr == NEW_LR and resumed.recipe == original.recipe
    for metric in METRICS[3:8]:
        step(original, metric)
        step(resumed, metric)
    for a, b in zip(original.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert [g["lr"] for g in original.optimizer.param_groups] == [
        g["lr"] for g in resumed.optimizer.param_groups
    ]
