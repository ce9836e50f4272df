"""param_groups, requires_grad_map and apply_requires_grad."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import expected_owners, scenarios
from torch import nn

from mentor_fn import (
    CurriculumState,
    apply_requires_grad,
    param_groups,
    requires_grad_map,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(3))
        self.backbone = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x + self.cls_token))


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.body = nn.Linear(3, 3)
        self.head = nn.Linear(3, 5)
        self.head.weight = self.embed.weight


def summary(groups):
    return [
        (group["layers"], group["lr"], group["coefficient"], len(group["params"]))
        for group in groups
    ]


# param_groups ------------------------------------------------------------------------


def test_one_group_per_trainable_owning_layer_in_layer_order():
    model = Net()
    state = CurriculumState.from_model(model)
    assert state.layers == ("cls_token", "backbone", "backbone.0", "backbone.2", "head")
    groups = param_groups(state, model, 0.1)
    # "backbone" owns no parameter directly: no group.
    assert summary(groups) == [
        (("cls_token",), 0.1, 1.0, 1),
        (("backbone.0",), 0.1, 1.0, 2),
        (("backbone.2",), 0.1, 1.0, 2),
        (("head",), 0.1, 1.0, 2),
    ]
    assert all(set(group) == {"params", "lr", "layers", "coefficient"} for group in groups)
    assert groups[0]["params"][0] is model.cls_token
    assert groups[3]["params"] == [model.head.weight, model.head.bias]


def test_lr_is_global_lr_times_coefficient_and_frozen_layers_get_no_group():
    model = Net()
    state = (
        CurriculumState.from_model(model)
        .set_lr_coefficient(0.5, "backbone")
        .set_lr_coefficient(0.0, "cls_token")
        .freeze("backbone.2")
    )
    assert summary(param_groups(state, model, 0.2)) == [
        (("cls_token",), 0.0, 0.0, 1),
        (("backbone.0",), 0.2 * 0.5, 0.5, 2),
        (("head",), 0.2, 1.0, 2),
    ]


def test_coalesce_merges_equal_coefficients_in_order_of_first_appearance():
    model = Net()
    state = (
        CurriculumState.from_model(model)
        .set_lr_coefficient(0.5, "cls_token")
        .set_lr_coefficient(0.5, "head")
        .freeze("backbone.0")
    )
    groups = param_groups(state, model, 1.0, coalesce=True)
    assert summary(groups) == [
        (("cls_token", "head"), 0.5, 0.5, 3),
        (("backbone.2",), 1.0, 1.0, 2),
    ]
    assert groups[0]["params"] == [model.cls_token, model.head.weight, model.head.bias]
    all_trainable = param_groups(CurriculumState.from_model(model), model, 1.0, coalesce=True)
    assert summary(all_trainable) == [
        (("cls_token", "backbone.0", "backbone.2", "head"), 1.0, 1.0, 7)
    ]


def test_everything_frozen_gives_no_groups():
    model = Net()
    state = CurriculumState.from_model(model).freeze(".*")
    assert param_groups(state, model, 0.1) == []
    assert param_groups(state, model, 0.1, coalesce=True) == []


def test_tied_weight_is_in_exactly_one_group():
    model = TiedLM()
    state = CurriculumState.from_model(model)
    groups = param_groups(state, model, 0.1)
    assert summary(groups) == [
        (("embed",), 0.1, 1.0, 1),
        (("body",), 0.1, 1.0, 2),
        (("head",), 0.1, 1.0, 1),
    ]
    assert groups[0]["params"] == [model.embed.weight]
    assert groups[2]["params"] == [model.head.bias]
    # The tied weight follows its owner, the embedding.
    frozen_head = state.freeze("head")
    assert [g["layers"] for g in param_groups(frozen_head, model, 0.1)] == [("embed",), ("body",)]
    assert requires_grad_map(frozen_head, model)["embed.weight"] is True
    apply_requires_grad(state.freeze("embed"), model)
    assert not model.head.weight.requires_grad and model.head.bias.requires_grad


@pytest.mark.parametrize(
    "make",
    [
        lambda groups: torch.optim.SGD(groups, lr=1.0),
        lambda groups: torch.optim.SGD(groups, lr=1.0, momentum=0.9),
        lambda groups: torch.optim.Adam(groups),
        lambda groups: torch.optim.AdamW(groups),
        lambda groups: torch.optim.RMSprop(groups),
        lambda groups: torch.optim.Adagrad(groups),
    ],
    ids=["SGD", "SGD-momentum", "Adam", "AdamW", "RMSprop", "Adagrad"],
)
@pytest.mark.parametrize("coalesce", [False, True])
def test_groups_are_accepted_by_torch_optimizers(make, coalesce):
    model = Net()
    state = (
        CurriculumState.from_model(model)
        .set_lr_coefficient(0.5, "backbone")
        .set_lr_coefficient(0.0, "head")
        .freeze("cls_token")
    )
    apply_requires_grad(state, model)
    groups = param_groups(state, model, 0.01, coalesce=coalesce)
    optimizer = make(groups)
    assert [(g["layers"], g["lr"], g["coefficient"]) for g in optimizer.param_groups] == [
        (g["layers"], g["lr"], g["coefficient"]) for g in groups
    ]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()
    after = dict(model.named_parameters())
    # Frozen and zero-coefficient parameters do not move; the others do.
    for name in ("cls_token", "head.weight", "head.bias"):
        assert torch.equal(after[name], before[name]), name
    for name in ("backbone.0.weight", "backbone.2.bias"):
        assert not torch.equal(after[name], before[name]), name


def test_sgd_step_uses_each_layers_lr():
    model = Net()
    state = CurriculumState.from_model(model).set_lr_coefficient(0.25, "backbone.0")
    optimizer = torch.optim.SGD(param_groups(state, model, 0.1))
    model(torch.randn(4, 3)).sum().backward()
    before = {name: (p.detach().clone(), p.grad.clone()) for name, p in model.named_parameters()}
    optimizer.step()
    for name, parameter in model.named_parameters():
        value, grad = before[name]
        lr = 0.1 * (0.25 if name.startswith("backbone.0.") else 1.0)
        # SGD's add_(grad, alpha=-lr) may round once (a fused multiply-add on
        # vectorised CPU kernels) where this formula rounds twice: an ulp apart
        # at most, so two float32 ulps relative (values pass 1.0, where an ulp
        # is 1.2e-7); a wrong coefficient is off by 0.075 x grad.
        torch.testing.assert_close(parameter.detach(), value - lr * grad, rtol=2.4e-7, atol=1e-7)


@pytest.mark.parametrize("lr", [-0.1, math.nan, math.inf])
def test_invalid_lr_value(lr):
    model = Net()
    with pytest.raises(ValueError, match=re.escape(f"lr must be finite and >= 0, got {lr!r}")):
        param_groups(CurriculumState.from_model(model), model, lr)


@pytest.mark.parametrize("lr", [True, "0.1", None])
def test_lr_not_a_number(lr):
    model = Net()
    with pytest.raises(TypeError, match="lr must be a real number"):
        param_groups(CurriculumState.from_model(model), model, lr)


def test_state_of_another_model_is_rejected_naming_the_difference():
    model = Net()
    other = CurriculumState(("cls_token", "backbone", "backbone.0", "tail"))
    for derive in (
        lambda: param_groups(other, model, 0.1),
        lambda: requires_grad_map(other, model),
        lambda: apply_requires_grad(other, model),
    ):
        with pytest.raises(
            ValueError,
            match=r"missing from the model: 'tail'.*not in the state: 'backbone\.2', 'head'",
        ):
            derive()
    with pytest.raises(TypeError, match="CurriculumState"):
        param_groups(model, model, 0.1)


def test_wrapped_model_gives_the_same_groups():
    model = Net()
    state = CurriculumState.from_model(model).freeze("head")
    bare = param_groups(state, model, 0.1)
    wrapped = param_groups(state, nn.DataParallel(model), 0.1)
    assert summary(wrapped) == summary(bare)
    assert all(
        a is b for g, h in zip(bare, wrapped) for a, b in zip(g["params"], h["params"], strict=True)
    )


@given(scenarios(), st.booleans(), st.sampled_from([0.1, 1e-3, 1.0]))
def test_groups_partition_the_trainable_parameters(scenario, coalesce, lr):
    model, state = scenario.model, scenario.b
    owners = expected_owners(model)
    groups = param_groups(state, model, lr, coalesce=coalesce)

    grouped = [p for group in groups for p in group["params"]]
    assert len(grouped) == len({id(p) for p in grouped})  # each parameter once
    trainable = {pid for pid, owner in owners.items() if not state.is_frozen(owner)}
    assert {id(p) for p in grouped} == trainable

    for group in groups:
        assert isinstance(group["layers"], tuple)
        for parameter in group["params"]:
            owner = owners[id(parameter)]
            assert owner in group["layers"]
            assert group["lr"] == lr * state.coefficient(owner)
        assert {state.coefficient(layer) for layer in group["layers"]} == {group["coefficient"]}

    layers = [layer for group in groups for layer in group["layers"]]
    trainable_owners = [
        layer
        for layer in state.layers
        if layer in set(owners.values()) and not state.is_frozen(layer)
    ]
    assert sorted(layers, key=state.layers.index) == trainable_owners
    if coalesce:
        coefficients = [group["coefficient"] for group in groups]
        assert len(coefficients) == len(set(coefficients))
        for group in groups:
            assert list(group["layers"]) == sorted(group["layers"], key=state.layers.index)
        firsts = [state.layers.index(group["layers"][0]) for group in groups]
        assert firsts == sorted(firsts)
    else:
        assert all(len(group["layers"]) == 1 for group in groups)
        assert layers == sorted(layers, key=state.layers.index)

    if groups:
        torch.optim.SGD(groups)  # a real optimizer accepts them


# requires_grad ---------------------------------------------------------------------------


def test_requires_grad_map_names_every_parameter_once():
    model = Net()
    state = CurriculumState.from_model(model).freeze("backbone").unfreeze("backbone.2")
    assert requires_grad_map(state, model) == {
        "cls_token": True,
        "backbone.0.weight": False,
        "backbone.0.bias": False,
        "backbone.2.weight": True,
        "backbone.2.bias": True,
        "head.weight": True,
        "head.bias": True,
    }


def test_requires_grad_map_is_pure():
    model = Net()
    requires_grad_map(CurriculumState.from_model(model).freeze(".*"), model)
    assert all(p.requires_grad for p in model.parameters())


def test_apply_requires_grad_sets_flags_and_drops_grads_of_frozen_parameters():
    model = Net()
    model(torch.randn(2, 3)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    state = CurriculumState.from_model(model).freeze("backbone")
    assert apply_requires_grad(state, model) is None
    for name, parameter in model.named_parameters():
        frozen = name.startswith("backbone.")
        assert parameter.requires_grad is not frozen, name
        assert (parameter.grad is None) is frozen, name

    # Unfreezing restores the flags; the next backward fills grads again.
    apply_requires_grad(state.unfreeze("backbone"), model)
    assert all(p.requires_grad for p in model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@given(scenarios())
def test_requires_grad_follows_the_owning_layer(scenario):
    model, state = scenario.model, scenario.b
    owners = expected_owners(model)
    expected = {
        name: not state.is_frozen(owners[id(parameter)])
        for name, parameter in model.named_parameters()
    }
    assert requires_grad_map(state, model) == expected
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    apply_requires_grad(state, model)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad is expected[name], name
        assert (parameter.grad is None) is (not expected[name]), name
