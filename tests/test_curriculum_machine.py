"""Curriculum under random runs: the invariant (docs/design.md), checked after every step.

This project's own use of :class:`mentor_fn.testing.CurriculumMachine`: the
public machine drives a live :class:`mentor_fn.Curriculum` on a tiny model
with random transitions (freeze / unfreeze / set_lr_coefficient /
layerwise_lr_decay / chain, with and without ``reset_optimizer_if_needed``,
through ``update`` and the shortcut methods), optimizer steps on real
gradients, scheduler steps, new phases (``build()``) and save/resume round
trips into a freshly constructed model and Curriculum, and checks the
invariant after every step: flags (1), partition (2), lrs against a flat
one-parameter reference optimizer with its own scheduler from the same
factory (3), bit-for-bit resume (4), plus fresh optimizer state for
re-activated parameters and kept state for the others, and refused rebuilds
that change nothing. It runs once per torch lr scheduler, with and without
``coalesce``, on Adam, SGD with momentum and Adagrad (whose constructor writes
per-parameter state).

On top of the machine's checks, this subclass keeps an independent model of
the curriculum, so the library is not checked against itself:

* the resolved frozen flag and coefficient of every layer, replayed naively
  from the transition values (a write on a layer sets its whole dotted
  subtree; ``tests/strategies.py``'s ``replay_transition``);
* the plan every transition must take, from the live optimizer's groups and
  the design's rule (a trainable layer with no group, a group whose layers'
  coefficients now differ, a group going from coefficient 0 to non-zero
  need a rebuild; a changed coefficient or a re-activated layer a patch).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import settings
from hypothesis.stateful import invariant, run_state_machine_as_test
from strategies import replay_transition
from torch import nn
from torch.nn import functional as F
from torch.optim import lr_scheduler

import mentor_fn as mf
from mentor_fn.testing import CurriculumMachine

# The model ------------------------------------------------------------------------

LR = 0.1
# The Tanh owns nothing, so it is not a layer: "backbone.1.1" does not exist.
LAYERS = ("backbone", "backbone.0", "backbone.1", "backbone.1.0", "backbone.1.2", "head")
OWNERS = ("backbone.0", "backbone.1.0", "backbone.1.2", "head")

_data = torch.Generator().manual_seed(7)
INPUTS = torch.randn(8, 3, generator=_data)
TARGETS = torch.randn(8, 2, generator=_data)


def make_model(seed: int) -> nn.Module:
    """backbone (a Linear and a nested Sequential of two Linears) and a head."""
    model = nn.Sequential(
        OrderedDict(
            backbone=nn.Sequential(
                nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
            ),
            head=nn.Linear(4, 2),
        )
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


# Schedulers and optimizers --------------------------------------------------------

SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def _cycles_momentum(optimizer: torch.optim.Optimizer) -> bool:
    # OneCycleLR / CyclicLR cycle momentum only on optimizers that have one.
    return "momentum" in optimizer.defaults or "betas" in optimizer.defaults


def _inverse_decay(epoch: int) -> float:
    return 1.0 / (1.0 + 0.5 * epoch)


def _every_other(epoch: int) -> float:
    return 0.8 if epoch % 2 else 1.0


ONE_CYCLE_STEPS = 24

SCHEDULERS: dict[str, SchedulerFactory] = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8),
    # eta_min 0: with eta_min > 0 the cosine schedules are not proportional to the base lr.
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=3, T_mult=2
    ),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, _inverse_decay),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, _every_other),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=3),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=12, power=1.5),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(
        o, max_lr=0.5, total_steps=ONE_CYCLE_STEPS, cycle_momentum=_cycles_momentum(o)
    ),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(
        o,
        base_lr=0.01,
        max_lr=0.2,
        step_size_up=3,
        mode="triangular2",
        cycle_momentum=_cycles_momentum(o),
    ),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o,
        [
            lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=2),
            lr_scheduler.ExponentialLR(o, gamma=0.9),
        ],
        milestones=[3],
    ),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [
            lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
            lr_scheduler.ExponentialLR(o, gamma=0.9),
        ]
    ),
    # eps=0: torch skips a reduction smaller than eps (an absolute threshold),
    # which would make small groups stop decaying before the flat reference does.
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(
        o, factor=0.5, patience=0, min_lr=0.0, eps=0.0
    ),
}

# How many scheduler steps a schedule allows after construction (None: unbounded).
MAX_SCHEDULER_STEPS = {"OneCycleLR": ONE_CYCLE_STEPS - 1}

OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "Adam": (torch.optim.Adam, {}),
    "SGD": (torch.optim.SGD, {"momentum": 0.9}),
    "Adagrad": (torch.optim.Adagrad, {"initial_accumulator_value": 0.1, "lr_decay": 0.01}),
}


@dataclass(frozen=True)
class Variant:
    scheduler: str
    optimizer: str
    coalesce: bool

    @property
    def id(self) -> str:
        return f"{self.scheduler}-{self.optimizer}-{'coalesce' if self.coalesce else 'per_layer'}"


# Every scheduler on Adam, and on SGD or Adagrad in turn, each once with coalesce.
VARIANTS = tuple(
    variant
    for number, name in enumerate(SCHEDULERS)
    for variant in (
        Variant(name, "Adam", coalesce=number % 2 == 0),
        Variant(name, "SGD" if number % 2 else "Adagrad", coalesce=number % 2 == 1),
    )
)


# The machine ----------------------------------------------------------------------


class ProjectMachine(CurriculumMachine):
    """The public machine, plus an independent oracle of the state and of each plan."""

    lr = LR
    variant: ClassVar[Variant]

    def __init__(self) -> None:
        super().__init__()
        self.frozen = dict.fromkeys(LAYERS, False)
        self.coefficients = dict.fromkeys(LAYERS, 1.0)
        self.models_made = 0

    def make_model(self) -> nn.Module:
        # Each model starts from other weights: a resume must replace them all.
        self.models_made += 1
        return make_model(seed=self.models_made)

    def loss(self, model: nn.Module) -> torch.Tensor:
        return F.mse_loss(model(INPUTS), TARGETS)

    def apply_transition(self, transition, *, reset, shortcut=False):
        new_frozen, new_coefficients = replay_transition(
            LAYERS, self.frozen, self.coefficients, transition, owners=OWNERS
        )
        expected = self.expected_plan(new_frozen, new_coefficients) if self.built else mf.NoChange
        result = super().apply_transition(transition, reset=reset, shortcut=shortcut)
        if result is None:
            assert expected is mf.Rebuild and not reset, f"refused, but the oracle says {expected}"
            return result
        assert type(result) is expected, (result, expected)
        self.frozen, self.coefficients = new_frozen, new_coefficients
        return result

    def expected_plan(
        self, new_frozen: dict[str, bool], new_coefficients: dict[str, float]
    ) -> type:
        """The design's plan rule, read off the live optimizer's groups."""
        grouped: set[str] = set()
        patch = False
        for group in self.curriculum.optimizer.param_groups[:-1]:
            coefficients = {new_coefficients[layer] for layer in group["layers"]}
            if len(coefficients) > 1:
                return mf.Rebuild  # a coalesced group must split
            (target,) = coefficients
            if target != group["coefficient"]:
                if group["coefficient"] == 0:
                    return mf.Rebuild  # 0 -> non-zero: the ratio is undefined
                patch = True
            grouped.update(group["layers"])
        for layer in OWNERS:
            if not new_frozen[layer]:
                if layer not in grouped:
                    return mf.Rebuild
                if self.frozen[layer]:
                    patch = True  # re-activated: fresh state
        return mf.Patch if patch else mf.NoChange

    @invariant()
    def state_matches_the_replayed_transitions(self) -> None:
        state = self.curriculum.state
        assert state.layers == LAYERS
        for layer in LAYERS:
            assert state.is_frozen(layer) == self.frozen[layer], layer
            assert state.coefficient(layer) == self.coefficients[layer], layer
        expected = mf.requires_grad_map(state, self.curriculum.model)
        for name, trainable in expected.items():
            assert trainable == (not self.frozen[name.rpartition(".")[0]]), name


def machine_for(variant: Variant) -> type[ProjectMachine]:
    optimizer_class, kwargs = OPTIMIZERS[variant.optimizer]
    factory = SCHEDULERS[variant.scheduler]
    return type(
        f"CurriculumMachine_{variant.id}",
        (ProjectMachine,),
        {
            "variant": variant,
            "optimizer_class": optimizer_class,
            "optimizer_kwargs": kwargs,
            "coalesce": variant.coalesce,
            "max_scheduler_steps": MAX_SCHEDULER_STEPS.get(variant.scheduler),
            "make_scheduler": lambda self, optimizer: factory(optimizer),
        },
    )


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda variant: variant.id)
def test_curriculum_invariant(variant: Variant) -> None:
    run_state_machine_as_test(
        machine_for(variant), settings=settings(max_examples=25, stateful_step_count=50)
    )
