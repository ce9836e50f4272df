"""Curriculum.load_state_dict refuses what does not fit, naming the field, before any change.

Each case takes a real saved state dict (after real optimizer and scheduler
steps, through ``torch.save`` / ``torch.load(weights_only=True)``), spoils one
field, and loads it into a Curriculum that was built and stepped: the load
must raise ValueError naming the field and leave the model's flags, the state,
the optimizer, its groups and state, and the scheduler as they were.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler
from torch_features import ADAFACTOR

import mentor_fn as mf

LR = 0.1


def make_model(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 8)))
    model.add_module("head", nn.Linear(8, 2))
    return model


BATCH = torch.randn(6, 4)
STEP_LR = lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5)


def train(curriculum: mf.Curriculum, steps: int = 3) -> None:
    for _ in range(steps):
        curriculum.optimizer.zero_grad()
        curriculum.model(BATCH).pow(2).mean().backward()
        curriculum.optimizer.step()
        if isinstance(curriculum.scheduler, lr_scheduler.ReduceLROnPlateau):
            curriculum.scheduler.step(1.0)
        elif curriculum.scheduler is not None:
            curriculum.scheduler.step()


def saved(
    *,
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
    kwargs: dict[str, Any] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = STEP_LR,
    width: int = 8,
) -> dict[str, Any]:
    curriculum = mf.Curriculum(
        make_model(width), LR, optimizer=optimizer, optimizer_kwargs=kwargs, scheduler=scheduler
    )
    curriculum.set_lr_coefficient(0.5, "backbone")
    curriculum.build()
    train(curriculum)
    buffer = io.BytesIO()
    torch.save(curriculum.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def target(
    *,
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
    kwargs: dict[str, Any] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = STEP_LR,
) -> mf.Curriculum:
    """A Curriculum that was built and stepped, with a frozen layer: it has much to lose."""
    curriculum = mf.Curriculum(
        make_model(), 0.2, optimizer=optimizer, optimizer_kwargs=kwargs, scheduler=scheduler
    )
    curriculum.freeze("head")
    curriculum.build()
    train(curriculum, 2)
    return curriculum


def snapshot(curriculum: mf.Curriculum) -> dict[str, Any]:
    optimizer = curriculum.optimizer
    return {
        "state": curriculum.state,
        "lr": curriculum.lr,
        "flags": {name: p.requires_grad for name, p in curriculum.model.named_parameters()},
        "optimizer": optimizer,
        "scheduler": curriculum.scheduler,
        "groups": [
            dict(group, params=[id(p) for p in group["params"]]) for group in optimizer.param_groups
        ],
        "optimizer_state": {
            id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for p, s in optimizer.state.items()
        },
        "scheduler_state": copy.deepcopy(curriculum.scheduler.state_dict())
        if curriculum.scheduler
        else None,
    }


def assert_unchanged(before: dict[str, Any], curriculum: mf.Curriculum) -> None:
    after = snapshot(curriculum)
    for key in ("state", "lr", "flags", "groups", "scheduler_state"):
        assert after[key] == before[key], key
    assert after["optimizer"] is before["optimizer"]
    assert after["scheduler"] is before["scheduler"]
    assert after["optimizer_state"].keys() == before["optimizer_state"].keys()
    for key, values in before["optimizer_state"].items():
        for name, value in values.items():
            assert torch.equal(
                torch.as_tensor(after["optimizer_state"][key][name]), torch.as_tensor(value)
            )


def refused(state_dict: Any, match: str, curriculum: mf.Curriculum | None = None) -> mf.Curriculum:
    curriculum = curriculum or target()
    before = snapshot(curriculum)
    with pytest.raises(ValueError, match=match):
        curriculum.load_state_dict(state_dict)
    assert_unchanged(before, curriculum)
    return curriculum


def test_a_good_state_dict_loads():
    curriculum = target()
    curriculum.load_state_dict(saved())
    assert curriculum.lr == LR
    train(curriculum)


@pytest.mark.parametrize("field", ["state", "recipe", "optimizer", "scheduler"])
def test_a_missing_field_is_named(field):
    state_dict = saved()
    del state_dict[field]
    refused(state_dict, f"'{field}' missing")


def test_state_none_is_named():
    refused({**saved(), "state": None}, r"field 'state': .*must be a mapping, got NoneType")


def test_a_malformed_recipe_is_named():
    state_dict = saved()
    state_dict["recipe"] = {**state_dict["recipe"], "lr": "fast"}
    refused(state_dict, r"field 'recipe': recipe 'lr' must be a number")


@pytest.mark.parametrize(
    ("rules", "match"),
    [
        ("bias", r"'no_weight_decay' must be a list of str rules"),
        ([{"function": "f"}], r"'no_weight_decay' must be a list of str rules"),
        (["(unclosed"], r"neither a kind .* nor a valid regex"),
        (
            [{"callable": "mine.rule"}],
            r"callable rules are \['mine.rule'\], but this Curriculum has \[\]",
        ),
    ],
)
def test_malformed_or_unavailable_weight_decay_rules_are_named(rules, match):
    state_dict = saved()
    state_dict["recipe"] = {**state_dict["recipe"], "no_weight_decay": rules}
    refused(state_dict, rf"field 'recipe': .*{match}")


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10), r"lacks \['T_max', 'eta_min'\]"),
        (
            lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
            r"has \['step_size'\] it does not know",
        ),
    ],
    ids=["CosineAnnealingLR", "ExponentialLR"],
)
def test_a_step_lr_state_does_not_load_into_another_scheduler(factory, match):
    state_dict = saved()
    refused(
        state_dict,
        r"field 'scheduler': the state was saved from torch\.optim\.lr_scheduler\.StepLR",
        target(scheduler=factory),
    )
    # A state dict that names no class (saved before classes were recorded): its fields tell.
    del state_dict["scheduler_classes"]
    refused(state_dict, f"field 'scheduler' is not the state .*{match}", target(scheduler=factory))


def test_a_lambda_state_does_not_load_into_a_multiplicative_scheduler():
    """Same fields, other class: told apart by the recorded class names."""
    state_dict = saved(scheduler=lambda o: lr_scheduler.LambdaLR(o, lambda step: 0.9**step))
    multiplicative = target(scheduler=lambda o: lr_scheduler.MultiplicativeLR(o, lambda step: 0.9))
    refused(
        state_dict,
        r"saved from torch\.optim\.lr_scheduler\.LambdaLR.*MultiplicativeLR",
        multiplicative,
    )


@pytest.mark.parametrize(
    ("junk", "match"),
    [
        ({"anything": 1}, r"field 'scheduler' is not the state"),
        ({"base_lrs": "0.1"}, r"field 'scheduler.base_lrs': expected a list, got a str"),
        ({"base_lrs": [0.1]}, r"field 'scheduler.base_lrs': expected 4 entries"),
        ({"gamma": None}, r"field 'scheduler.gamma': expected a number, got None"),
        ({"last_epoch": True}, r"field 'scheduler.last_epoch': expected a number, got a bool"),
    ],
    ids=["foreign keys", "str for a list", "a list of another length", "None", "bool for int"],
)
def test_junk_scheduler_state_is_named(junk, match):
    state_dict = saved()
    if "anything" in junk:
        state_dict["scheduler"] = junk
    else:
        state_dict["scheduler"] = {**state_dict["scheduler"], **junk}
    refused(state_dict, match)


def test_scheduler_state_of_an_older_torch_without_new_bookkeeping_loads():
    state_dict = saved()
    if "_is_initial" not in state_dict["scheduler"]:
        pytest.skip("this torch saves no _is_initial: its own states are the older form")
    del state_dict["scheduler"]["_is_initial"]
    state_dict["scheduler"]["verbose"] = False  # what torch < 2.7 saved
    curriculum = target()
    curriculum.load_state_dict(state_dict)
    train(curriculum)


@pytest.mark.parametrize(
    ("optimizer", "kwargs", "key"),
    [
        (torch.optim.Adam, {}, "exp_avg"),
        (torch.optim.SGD, {"momentum": 0.9}, "momentum_buffer"),
        (torch.optim.RMSprop, {"centered": True}, "square_avg"),
        (torch.optim.Adagrad, {}, "sum"),
    ],
)
def test_optimizer_state_of_other_shapes_is_named(optimizer, kwargs, key):
    """Same layer names, wider first layer: the moments do not fit the parameters."""
    state_dict = saved(optimizer=optimizer, kwargs=kwargs, width=16)
    refused(
        state_dict,
        r"field 'optimizer\.state\.backbone\.0\.weight\.\w+' has shape \(16, 4\), but parameter "
        r"'backbone\.0\.weight' has shape \(8, 4\)",
        target(optimizer=optimizer, kwargs=kwargs),
    )
    assert key in state_dict["optimizer"]["state"]["backbone.0.weight"]


def test_optimizer_state_names_of_unknown_parameters_are_named():
    state_dict = saved()
    state = state_dict["optimizer"]["state"]
    state["backbone.9.weight"] = state.pop("backbone.0.weight")
    refused(
        state_dict, r"field 'optimizer.state' names unknown parameters: \['backbone.9.weight'\]"
    )


def test_a_layout_leaving_a_trainable_parameter_out_is_named():
    state_dict = saved()
    groups = state_dict["optimizer"]["param_groups"]
    groups[0]["params"] = groups[0]["params"][1:]
    refused(state_dict, r"leaves out parameters of trainable layers: \['backbone.0.weight'\]")


def test_a_layout_without_reference_group_is_named():
    state_dict = saved()
    state_dict["optimizer"]["param_groups"].pop()
    state_dict["scheduler"] = None
    refused(state_dict, "no reference group", target(scheduler=None))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("lr", "0.1", r"param_groups\[0\]\.lr': expected a number, got a str"),
        ("betas", (0.9,), r"param_groups\[0\]\.betas': expected 2 entries"),
        ("amsgrad", 0, r"param_groups\[0\]\.amsgrad': expected a bool, got a number"),
        ("coefficient", -1.0, r"param_groups\[0\]\.coefficient': expected a finite number >= 0"),
        ("layers", ["nope"], r"param_groups\[0\]\.layers' names unknown layers"),
        ("layers", None, r"param_groups\[0\]\.layers': expected the list of layer names"),
        (
            "applies_weight_decay",
            1,
            r"param_groups\[0\]\.applies_weight_decay': expected a bool \(which weight-decay half",
        ),
    ],
)
def test_group_values_of_the_wrong_kind_are_named(key, value, match):
    state_dict = saved()
    state_dict["optimizer"]["param_groups"][0][key] = value
    refused(state_dict, match)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": STEP_LR,
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[1, 3], gamma=0.3),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.3, total_iters=3),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=5),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda step: 0.9**step),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda step: 0.9),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=2),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=20),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.LinearLR(o, 0.5, total_iters=2), lr_scheduler.ExponentialLR(o, 0.9)], [2]
    ),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(o, 0.5, total_iters=2), lr_scheduler.ExponentialLR(o, 0.9)]
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_torch_scheduler_round_trips(name):
    """The checks accept every scheduler's own state, mid-schedule."""
    state_dict = saved(
        optimizer=torch.optim.SGD, kwargs={"momentum": 0.9}, scheduler=SCHEDULERS[name]
    )
    curriculum = target(
        optimizer=torch.optim.SGD, kwargs={"momentum": 0.9}, scheduler=SCHEDULERS[name]
    )
    curriculum.load_state_dict(state_dict)
    train(curriculum)
    curriculum.load_state_dict(state_dict)  # loading leaves the state dict as it was


def test_reduce_lr_on_plateau_round_trips():
    factory = lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0)
    source = mf.Curriculum(make_model(), LR, scheduler=factory)
    source.build()
    for metric in (1.0, 1.0, 1.0):
        source.optimizer.step()
        source.scheduler.step(metric)
    curriculum = target(scheduler=factory)
    curriculum.load_state_dict(copy.deepcopy(source.state_dict()))
    assert curriculum.scheduler.num_bad_epochs == source.scheduler.num_bad_epochs


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        (torch.optim.SGD, {"momentum": 0.9, "fused": True}),
        (torch.optim.Adam, {"amsgrad": True}),
        (torch.optim.NAdam, {}),
        (torch.optim.RAdam, {}),
        (torch.optim.Adadelta, {}),
        (torch.optim.Adamax, {}),
        (torch.optim.ASGD, {}),
        (torch.optim.Rprop, {}),
        (ADAFACTOR, {}),
    ],
)
def test_every_optimizers_own_state_passes_the_shape_check(optimizer, kwargs):
    curriculum = target(optimizer=optimizer, kwargs=kwargs)
    curriculum.load_state_dict(saved(optimizer=optimizer, kwargs=kwargs))
    train(curriculum)
