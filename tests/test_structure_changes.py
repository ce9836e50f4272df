"""Structure changes after build() are caught, though transitions no longer walk the model.

A transition on a built Curriculum reuses the walk of the model it kept; a
module or parameter replaced since is caught by the optimizer's step guard at
the next step, by the next transition, and by the next rebuild (which walks
the model afresh), always before anything changes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mentor_fn as mf

BATCH = torch.randn(6, 4)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8)))
    model.add_module("head", nn.Linear(8, 2))
    return model


def train_step(curriculum: mf.Curriculum) -> None:
    curriculum.optimizer.zero_grad()
    curriculum.model(BATCH).pow(2).mean().backward()
    curriculum.optimizer.step()


def replace_module(model: nn.Module) -> None:
    model.head = nn.Linear(8, 2)


def replace_parameter(model: nn.Module) -> None:
    model.head.weight = nn.Parameter(model.head.weight.detach().clone())


# The head is not the parameter the guard follows through the registries (the
# first group's): only the registration count can tell.
CHANGES = pytest.mark.parametrize(
    "change", [replace_module, replace_parameter], ids=["module replaced", "parameter replaced"]
)


@CHANGES
def test_the_step_guard_catches_it_at_the_next_step(change):
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.build()
    train_step(curriculum)
    change(curriculum.model)
    with pytest.raises(RuntimeError, match="no longer one of the model's"):
        train_step(curriculum)
    curriculum.build()  # the fix the message gives
    train_step(curriculum)


@CHANGES
def test_the_next_rebuild_catches_it_before_any_change(change):
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.freeze("backbone")
    optimizer = curriculum.build()
    train_step(curriculum)
    change(curriculum.model)
    state, groups = curriculum.state, [dict(group) for group in optimizer.param_groups]
    with pytest.raises(RuntimeError, match="no longer one of the model's"):
        curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    assert curriculum.state == state and curriculum.optimizer is optimizer
    assert [dict(group) for group in optimizer.param_groups] == groups
    assert not any(parameter.requires_grad for parameter in curriculum.model.backbone.parameters())


@CHANGES
def test_the_next_patch_catches_it_too(change):
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.build()
    change(curriculum.model)
    for _ in range(2):  # a walk that failed the check is not kept for the next transition
        with pytest.raises(RuntimeError, match="no longer one of the model's"):
            curriculum.set_lr_coefficient(0.5, "backbone")
    assert curriculum.state.coefficient("backbone.0") == 1.0


def test_a_module_added_after_build_is_caught_by_the_next_transition():
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.build()
    curriculum.model.add_module("extra", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not in the state: 'extra'"):
        curriculum.freeze("head")
    assert not curriculum.state.is_frozen("head")


def test_registrations_elsewhere_cost_one_check_and_change_nothing():
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.freeze("backbone.0")
    curriculum.build()
    train_step(curriculum)
    nn.Linear(3, 3)  # another model: every walk and guard looks again, once
    train_step(curriculum)
    assert isinstance(curriculum.set_lr_coefficient(0.5, "head"), mf.Patch)
    assert isinstance(curriculum.unfreeze("backbone.0", reset_optimizer_if_needed=True), mf.Rebuild)
    train_step(curriculum)
    assert all(parameter.requires_grad for parameter in curriculum.model.parameters())
