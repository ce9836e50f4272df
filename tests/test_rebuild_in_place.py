"""A rebuild keeps the optimizer and scheduler objects: new groups and state inside them.

For every torch optimizer (for-loop, foreach and fused implementations) and
every torch lr scheduler: after a rebuild ``curriculum.optimizer`` and
``curriculum.scheduler`` are the same objects, and the run is bit-for-bit the
run through a rebuild into a new optimizer (the fallback a Curriculum takes
for an optimizer that keeps its groups' contents in attributes of its own,
which the reference run uses on purpose). Frameworks that hold the objects
(or their ``param_groups`` list, or hooks registered on them) keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch_features import ADAFACTOR

import mentor_fn as mf

LR = 0.05
_data = torch.Generator().manual_seed(3)
INPUTS = torch.randn(8, 4, generator=_data)
TARGETS = torch.randn(8, 2, generator=_data)


def make_model() -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6)))
    model.add_module("head", nn.Linear(6, 2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def caching(optimizer_class: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """The same optimizer, keeping its first group's parameter list as LBFGS keeps ``_params``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        optimizer_class.__init__(self, *args, **kwargs)
        self._cached_params = self.param_groups[0]["params"]

    return type(f"Caching{optimizer_class.__name__}", (optimizer_class,), {"__init__": __init__})


def train(curriculum: mf.Curriculum, steps: int) -> None:
    for _ in range(steps):
        optimizer = curriculum.optimizer
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(curriculum.model(INPUTS), TARGETS)
        loss.backward()
        optimizer.step()
        scheduler = curriculum.scheduler
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            scheduler.step(1.0)  # never improves: reduces every step (patience 0)
        elif scheduler is not None:
            scheduler.step()


PHASE_2 = mf.chain(mf.unfreeze("backbone.0"), mf.freeze("backbone.2"))


def run(
    optimizer_class: type[torch.optim.Optimizer],
    kwargs: dict[str, Any],
    scheduler: Callable[[torch.optim.Optimizer], Any] | None,
    *,
    in_place: bool,
    coalesce: bool = False,
) -> dict[str, Any]:
    """Three phases, two rebuilds, steps in between; what the run ends with.

    With ``coalesce``, the rebuilds put parameters with state and newly
    trainable ones in one group: a fused optimizer steps the latter apart.
    """
    model = make_model()
    curriculum = mf.Curriculum(
        model,
        LR,
        optimizer=optimizer_class if in_place else caching(optimizer_class),
        optimizer_kwargs=kwargs,
        scheduler=scheduler,
        coalesce=coalesce,
    )
    curriculum.freeze("backbone.0")
    curriculum.set_lr_coefficient(0.5, "backbone.2")
    optimizer = curriculum.build()
    held_scheduler, groups_list = curriculum.scheduler, optimizer.param_groups
    train(curriculum, 3)
    # backbone.0 has no group (a rebuild); backbone.2 stops training; the head slows
    # down, and backbone.0 with it (coalesced: one group, the head's parameters with
    # state and backbone.0's without).
    phase_2 = mf.chain(PHASE_2, mf.set_lr_coefficient(0.25, ["backbone.0", "head"]))
    for transition in (phase_2, mf.unfreeze(".*")):
        plan = curriculum.update(transition, reset_optimizer_if_needed=True)
        assert isinstance(plan, mf.Rebuild)
        assert curriculum.scheduler is held_scheduler
        if held_scheduler is not None:
            assert held_scheduler.optimizer is curriculum.optimizer
        if in_place:
            assert plan.new_objects == ()
            assert curriculum.optimizer is optimizer
            assert curriculum.optimizer.param_groups is groups_list
        else:
            assert len(plan.new_objects) == 1 and "_cached_params" in plan.new_objects[0]
            assert curriculum.optimizer is not optimizer
            optimizer = curriculum.optimizer
        train(curriculum, 3)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    optimizer = curriculum.optimizer
    return {
        "parameters": {
            name: parameter.detach().clone() for name, parameter in model.named_parameters()
        },
        "state": {
            names[id(parameter)]: dict(values)
            for parameter, values in optimizer.state.items()
            if values
        },
        "groups": [
            {key: value for key, value in group.items() if key != "params"}
            | {"params": [names[id(parameter)] for parameter in group["params"]]}
            for group in optimizer.param_groups
        ],
        "scheduler": None
        if curriculum.scheduler is None
        else _scheduler_lists(curriculum.scheduler),
    }


def _scheduler_lists(scheduler: Any) -> dict[str, Any]:
    """The scheduler's state and its children's, without functions (LambdaLR's lambdas)."""
    state = {key: value for key, value in scheduler.state_dict().items() if key != "_schedulers"}
    state.pop("lr_lambdas", None)
    children = getattr(scheduler, "_schedulers", None) or []
    return {"own": state, "children": [_scheduler_lists(child) for child in children]}


def assert_same(first: Any, second: Any, where: str = "run") -> None:
    if isinstance(first, torch.Tensor):
        assert isinstance(second, torch.Tensor), where
        assert first.dtype == second.dtype and torch.equal(first, second), where
    elif isinstance(first, dict):
        assert isinstance(second, dict) and first.keys() == second.keys(), where
        for key in first:
            assert_same(first[key], second[key], f"{where}[{key!r}]")
    elif isinstance(first, (list, tuple)):
        assert type(first) is type(second) and len(first) == len(second), where
        for number, (one, other) in enumerate(zip(first, second)):
            assert_same(one, other, f"{where}[{number}]")
    else:
        assert first == second or (first != first and second != second), (where, first, second)


# Every torch optimizer ----------------------------------------------------------------------

OPTIMIZERS = [
    (torch.optim.SGD, {"momentum": 0.9}),
    (torch.optim.SGD, {"momentum": 0.9, "foreach": True}),
    (torch.optim.SGD, {"momentum": 0.9, "fused": True}),
    (torch.optim.Adam, {}),
    (torch.optim.Adam, {"foreach": True}),
    (torch.optim.Adam, {"fused": True}),
    (torch.optim.AdamW, {}),
    (torch.optim.AdamW, {"foreach": True}),
    (torch.optim.AdamW, {"fused": True}),
    (torch.optim.Adamax, {}),
    (torch.optim.Adamax, {"foreach": True}),
    (torch.optim.NAdam, {}),
    (torch.optim.NAdam, {"foreach": True}),
    (torch.optim.RAdam, {}),
    (torch.optim.RAdam, {"foreach": True}),
    (torch.optim.RMSprop, {"momentum": 0.5, "centered": True}),
    (torch.optim.RMSprop, {"momentum": 0.5, "foreach": True}),
    (torch.optim.Adagrad, {"initial_accumulator_value": 0.1}),
    (torch.optim.Adagrad, {"foreach": True}),
    (torch.optim.Adagrad, {"fused": True}),
    (torch.optim.Adadelta, {}),
    (torch.optim.Adadelta, {"foreach": True}),
    (torch.optim.ASGD, {"t0": 2}),
    (torch.optim.ASGD, {"foreach": True}),
    (torch.optim.Rprop, {}),
    (torch.optim.Rprop, {"foreach": True}),
    (ADAFACTOR, {}),
    (ADAFACTOR, {"foreach": True}),
]


def _id(case: tuple[type, dict[str, Any]]) -> str:
    optimizer_class, kwargs = case
    form = "fused" if kwargs.get("fused") else "foreach" if kwargs.get("foreach") else "for-loop"
    return f"{optimizer_class.__name__}-{form}"


@pytest.mark.parametrize("coalesce", [False, True], ids=["per-layer", "coalesced"])
@pytest.mark.parametrize("case", OPTIMIZERS, ids=[_id(case) for case in OPTIMIZERS])
def test_every_optimizer_is_rebuilt_in_place_bit_for_bit(case, coalesce):
    optimizer_class, kwargs = case
    scheduler = lambda optimizer: lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    in_place = run(optimizer_class, kwargs, scheduler, in_place=True, coalesce=coalesce)
    new_objects = run(optimizer_class, kwargs, scheduler, in_place=False, coalesce=coalesce)
    assert_same(in_place, new_objects)


# Every torch lr scheduler -------------------------------------------------------------------


def _inverse_decay(epoch: int) -> float:
    return 1.0 / (1.0 + 0.5 * epoch)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, 5], gamma=0.3),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=4),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=5),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=12, power=1.5),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(
        o, base_lr=0.01, max_lr=0.2, step_size_up=2, mode="triangular2"
    ),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=20),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, _inverse_decay),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda epoch: 0.9),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o,
        [
            lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=2),
            lr_scheduler.ExponentialLR(o, gamma=0.9),
        ],
        milestones=[4],
    ),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [
            lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
            lr_scheduler.ExponentialLR(o, gamma=0.9),
        ]
    ),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(
        o, factor=0.5, patience=0, min_lr=0.001, eps=0.0
    ),
}


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.SGD])
def test_every_scheduler_is_rebuilt_in_place_bit_for_bit(name, optimizer_class):
    kwargs = {"momentum": 0.9} if optimizer_class is torch.optim.SGD else {}
    in_place = run(optimizer_class, kwargs, SCHEDULERS[name], in_place=True)
    new_objects = run(optimizer_class, kwargs, SCHEDULERS[name], in_place=False)
    assert_same(in_place, new_objects)
    groups = len(in_place["groups"])

    def lengths(lists: dict[str, Any]) -> None:
        for key in ("base_lrs", "_last_lr", "min_lrs", "max_lrs", "base_momentums"):
            values = lists["own"].get(key)
            if isinstance(values, list):
                assert len(values) == groups, (name, key)
        for child in lists["children"]:
            lengths(child)

    lengths(in_place["scheduler"])


# What holding the objects keeps ---------------------------------------------------------------


def test_references_and_hooks_held_by_other_code_stay_valid():
    curriculum = mf.Curriculum(make_model(), LR, scheduler=lambda o: lr_scheduler.StepLR(o, 1, 0.5))
    curriculum.freeze("backbone")
    optimizer = curriculum.build()
    groups, state, scheduler = optimizer.param_groups, optimizer.state, curriculum.scheduler
    stepped = []
    optimizer.register_step_post_hook(lambda *args: stepped.append(True))
    train(curriculum, 2)
    head = curriculum.model.head.weight
    moments = optimizer.state[head]["exp_avg"].clone()
    curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    assert curriculum.optimizer is optimizer and curriculum.scheduler is scheduler
    assert optimizer.param_groups is groups and optimizer.state is state
    assert [group["layers"] for group in groups] == [
        ("backbone.0",),
        ("backbone.2",),
        ("head",),
        (),
    ]
    assert torch.equal(state[head]["exp_avg"], moments)
    assert curriculum.model.backbone[0].weight not in state
    assert len(scheduler.base_lrs) == len(groups)
    train(curriculum, 1)
    assert stepped == [True] * 3  # the hook registered before the rebuild still runs


def test_a_refused_rebuild_changes_nothing_and_keeps_the_objects():
    curriculum = mf.Curriculum(make_model(), LR)
    curriculum.freeze("backbone.0")
    optimizer = curriculum.build()
    train(curriculum, 2)
    groups = [dict(group) for group in optimizer.param_groups]
    with pytest.raises(RuntimeError, match="rebuilt"):
        curriculum.unfreeze("backbone.0")
    assert curriculum.optimizer is optimizer
    assert [dict(group) for group in optimizer.param_groups] == groups
    assert curriculum.state.is_frozen("backbone.0")
    assert not curriculum.model.backbone[0].weight.requires_grad


def test_the_step_guard_follows_rebuilds_in_place():
    """One guard per optimizer, always watching its current groups."""
    curriculum = mf.Curriculum(make_model(), LR)
    curriculum.freeze("backbone")
    optimizer = curriculum.build()
    for transition in (mf.unfreeze("backbone"), mf.freeze("head"), mf.unfreeze("head")):
        curriculum.update(transition, reset_optimizer_if_needed=True)
        train(curriculum, 1)
    assert curriculum.optimizer is optimizer
    model = curriculum.model
    model.backbone[0].weight = nn.Parameter(model.backbone[0].weight.detach().clone())
    with pytest.raises(RuntimeError, match="no longer one of the model's"):
        train(curriculum, 1)


def test_a_new_phase_still_makes_new_objects():
    curriculum = mf.Curriculum(make_model(), LR, scheduler=lambda o: lr_scheduler.StepLR(o, 1))
    optimizer = curriculum.build()
    scheduler = curriculum.scheduler
    assert curriculum.build() is not optimizer
    assert curriculum.scheduler is not scheduler
    train(curriculum, 1)  # the old optimizer's hooks are gone from the new one's way


def test_an_optimizer_that_keeps_its_groups_contents_is_rebuilt_as_a_new_object():
    curriculum = mf.Curriculum(make_model(), LR, optimizer=caching(torch.optim.SGD))
    curriculum.freeze("backbone")
    optimizer = curriculum.build()
    train(curriculum, 1)
    plan = curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    assert plan.reasons and plan.new_objects == (
        "optimizer: CachingSGD keeps its groups' contents in _cached_params, so a new "
        "optimizer replaces it (references to the old one are stale)",
    )
    assert curriculum.optimizer is not optimizer
    train(curriculum, 1)
    before = [parameter.detach().clone() for parameter in curriculum.model.backbone.parameters()]
    train(curriculum, 1)
    after = list(curriculum.model.backbone.parameters())
    assert all(not torch.equal(one, other) for one, other in zip(before, after))
