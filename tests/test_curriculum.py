"""Curriculum: building, patching, rebuilding, saving and loading (example-based).

The randomized invariant check lives in test_curriculum_machine.py.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import mentor_fn as mf
from mentor_fn._wrapper.optimizer_recipe import OptimizerRecipe
from mentor_fn._wrapper.optimizers import build_optimizer
from mentor_fn.testing import check_partition, check_resume


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8)))
    model.add_module("head", nn.Linear(8, 2))
    return model


BATCH = torch.randn(6, 4)


def train_step(curriculum: mf.Curriculum) -> None:
    curriculum.optimizer.zero_grad()
    curriculum.model(BATCH).pow(2).mean().backward()
    curriculum.optimizer.step()


def lrs(curriculum: mf.Curriculum) -> dict[tuple[str, ...], float]:
    return {group["layers"]: group["lr"] for group in curriculum.optimizer.param_groups}


def snapshot(curriculum: mf.Curriculum) -> dict:
    optimizer = curriculum.optimizer
    return {
        "state": curriculum.state,
        "requires_grad": {n: p.requires_grad for n, p in curriculum.model.named_parameters()},
        "optimizer": optimizer,
        "groups": [
            {k: v for k, v in g.items() if k != "params"} | {"params": [id(p) for p in g["params"]]}
            for g in optimizer.param_groups
        ]
        if optimizer
        else None,
        "optimizer_state": {
            id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()
        }
        if optimizer
        else None,
        "scheduler": dict(curriculum.scheduler.state_dict()) if curriculum.scheduler else None,
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert after["state"] == before["state"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["optimizer"] is before["optimizer"]
    assert after["groups"] == before["groups"]
    assert after["optimizer_state"].keys() == before["optimizer_state"].keys()
    for key, values in before["optimizer_state"].items():
        for name, tensor in values.items():
            assert torch.equal(after["optimizer_state"][key][name], tensor)
    assert after["scheduler"] == before["scheduler"]


# Construction and build ------------------------------------------------------------


def test_transitions_before_build_change_only_state_and_flags():
    model = make_model()
    curriculum = mf.Curriculum(model, 1e-3)
    assert curriculum.optimizer is None and curriculum.scheduler is None
    assert curriculum.freeze("backbone") == mf.NoChange()
    assert curriculum.optimizer is None
    assert curriculum.state.is_frozen("backbone.0")
    assert not model.backbone[0].weight.requires_grad
    assert model.head.weight.requires_grad


def test_build_derives_groups_from_state_with_reference_group_last():
    model = make_model()
    curriculum = mf.Curriculum(
        model, 0.1, optimizer=torch.optim.SGD, optimizer_kwargs={"momentum": 0.9}
    )
    curriculum.set_lr_coefficient(0.5, "backbone")
    curriculum.freeze("backbone.0")
    optimizer = curriculum.build()
    assert optimizer is curriculum.optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    groups = optimizer.param_groups
    assert [g["layers"] for g in groups] == [("backbone.2",), ("head",), ()]
    assert [g["lr"] for g in groups] == [0.05, 0.1, 0.1]
    assert [g["coefficient"] for g in groups] == [0.5, 1.0, 1.0]
    assert all(g["momentum"] == 0.9 for g in groups)
    assert groups[-1]["params"] == []
    assert groups[0]["params"] == [model.backbone[2].weight, model.backbone[2].bias]


def test_state_argument_is_checked_against_the_model():
    model = make_model()
    other = mf.CurriculumState(("a", "b"))
    with pytest.raises(ValueError, match="missing from the model: 'a', 'b'"):
        mf.Curriculum(model, 0.1, state=other)
    state = mf.CurriculumState.from_model(model).freeze("head")
    curriculum = mf.Curriculum(model, 0.1, state=state)
    assert curriculum.state == state
    assert not model.head.weight.requires_grad


def test_recipe_is_one_read_only_value():
    curriculum = mf.Curriculum(
        make_model(),
        0.1,
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": 0.9},
        coalesce=True,
    )
    assert curriculum.recipe == OptimizerRecipe(torch.optim.SGD, 0.1, {"momentum": 0.9}, True)
    assert curriculum.lr == 0.1 and curriculum.coalesce
    with pytest.raises(AttributeError):
        curriculum.recipe = OptimizerRecipe(torch.optim.SGD, 0.2)  # type: ignore[misc]


# Structure changes between construction and build ----------------------------------


def test_build_takes_the_model_as_it_is_at_build():
    """Without a state given, the constructor does not walk: build() sees the model's today."""
    model = make_model()
    curriculum = mf.Curriculum(model, 0.1)
    model.add_module("extra", nn.Linear(2, 2))  # a module added
    old_weight = model.head.weight
    model.head.weight = nn.Parameter(old_weight.detach().clone())  # a parameter replaced
    del model.backbone[2].bias  # a parameter deleted
    model.backbone[2].register_parameter("bias", None)
    optimizer = curriculum.build()
    assert curriculum.state.layers == ("backbone", "backbone.0", "backbone.2", "head", "extra")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters()}
    assert id(old_weight) not in held
    before = [p.detach().clone() for p in model.parameters()]
    train_step(curriculum)  # the Sequential runs extra after the head
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_build_catches_a_module_added_after_the_state_was_derived():
    model = make_model()
    curriculum = mf.Curriculum(model, 0.1)
    curriculum.freeze("backbone.0")  # first use: the state is derived from the model now
    model.add_module("extra", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not in the state: 'extra'"):
        curriculum.build()
    assert curriculum.optimizer is None
    given = mf.Curriculum(make_model(), 0.1, state=mf.CurriculumState.from_model(make_model()))
    given.model.add_module("extra", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not in the state: 'extra'"):
        given.build()


def test_build_refreshes_which_layers_own_parameters():
    """A layer that lost its own parameters (its children keep some) needs no group."""
    model = nn.Sequential()
    model.add_module("block", nn.Linear(2, 2))
    model.block.add_module("inner", nn.Linear(2, 2))
    curriculum = mf.Curriculum(model, 0.1)
    assert "block" in curriculum.state.parameter_owners
    del model.block.weight, model.block.bias
    model.block.register_parameter("weight", None)
    model.block.register_parameter("bias", None)
    curriculum.build()
    assert "block" not in curriculum.state.parameter_owners
    assert curriculum.set_lr_coefficient(0.5, "block") == mf.Patch(
        scales=(mf.GroupScale(group=0, old=1.0, new=0.5),), reactivated=()
    )


def test_first_use_sets_the_flags_the_constructor_used_to():
    model = make_model()
    model.head.weight.requires_grad_(False)
    curriculum = mf.Curriculum(model, 0.1)
    optimizer = curriculum.build()
    assert model.head.weight.requires_grad
    assert any(p is model.head.weight for g in optimizer.param_groups for p in g["params"])
    other = make_model()
    other.head.weight.requires_grad_(False)
    assert not mf.Curriculum(other, 0.1).state.is_frozen("head")
    assert other.head.weight.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"optimizer": "adam"}, TypeError, "Optimizer subclass"),
        ({"optimizer_kwargs": {"lr": 0.1}}, ValueError, "global lr"),
        ({"scheduler": 3}, TypeError, "factory"),
        ({"coalesce": 1}, TypeError, "coalesce"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        mf.Curriculum(make_model(), 0.1, **kwargs)


@pytest.mark.parametrize("lr", [float("nan"), -1.0])
def test_bad_lr_is_a_value_error(lr):
    with pytest.raises(ValueError, match="lr must be finite"):
        mf.Curriculum(make_model(), lr)


def test_build_rejects_parameter_in_two_groups():
    shared = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        build_optimizer(
            OptimizerRecipe(torch.optim.Adam, 0.1),
            [{"params": [shared]}, {"params": [nn.Parameter(torch.ones(1)), shared]}],
        )


@pytest.mark.parametrize(
    "replace",
    [
        # what fully_shard does to every parameter, here to the guarded one
        lambda model: setattr(
            model.backbone[0], "weight", nn.Parameter(model.backbone[0].weight.detach().clone())
        ),
        lambda model: setattr(model, "backbone", make_model(seed=1).backbone),
    ],
    ids=["parameter replaced", "module replaced"],
)
def test_step_refuses_an_optimizer_whose_parameters_left_the_model(replace):
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.build()
    train_step(curriculum)  # the guard lets a step on the model's own parameters through
    replace(curriculum.model)
    with pytest.raises(RuntimeError, match="no longer one of the model's"):
        train_step(curriculum)
    curriculum.build()  # the fix the message gives
    train_step(curriculum)


def test_step_guard_sees_through_wrappers():
    model = make_model()
    curriculum = mf.Curriculum(nn.DataParallel(model), 0.1)
    curriculum.build()
    train_step(curriculum)
    model.backbone[0].weight = nn.Parameter(model.backbone[0].weight.detach().clone())
    with pytest.raises(RuntimeError, match="no longer one of the model's"):
        train_step(curriculum)


def test_scheduler_factory_result_is_checked():
    curriculum = mf.Curriculum(make_model(), 0.1, scheduler=lambda optimizer: "not a scheduler")
    with pytest.raises(TypeError, match="LRScheduler"):
        curriculum.build()


def test_everything_frozen_still_builds():
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.freeze(["backbone", "head"])
    optimizer = curriculum.build()
    assert [g["layers"] for g in optimizer.param_groups] == [()]
    plan = curriculum.unfreeze("head", reset_optimizer_if_needed=True)
    assert isinstance(plan, mf.Rebuild)
    assert [g["layers"] for g in curriculum.optimizer.param_groups] == [("head",), ()]


# Schedulers that write absolute values must not erase coefficients ---------------


@pytest.mark.parametrize(
    "factory",
    [
        lambda o: lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=20),
        lambda o: lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=2),
        lambda o: lr_scheduler.LambdaLR(o, lambda epoch: 0.5**epoch),
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2),
    ],
    ids=["onecycle", "cyclic", "lambda", "warm-restarts"],
)
def test_coefficients_survive_schedulers_that_recompute_from_base(factory):
    curriculum = mf.Curriculum(make_model(), 0.1, optimizer=torch.optim.SGD, scheduler=factory)
    curriculum.set_lr_coefficient(0.1, "backbone")
    curriculum.build()
    for step in range(6):
        train_step(curriculum)
        curriculum.scheduler.step()
        if step == 2:
            assert isinstance(curriculum.set_lr_coefficient(0.25, "backbone"), mf.Patch)
        coefficient = 0.1 if step < 2 else 0.25
        learning_rates = lrs(curriculum)
        reference = learning_rates[()]
        assert learning_rates[("head",)] == pytest.approx(reference, rel=1e-12)
        assert learning_rates[("backbone.0",)] == pytest.approx(reference * coefficient, rel=1e-12)


def test_patch_preserves_accumulated_decay():
    curriculum = mf.Curriculum(
        make_model(),
        1.0,
        optimizer=torch.optim.SGD,
        scheduler=lambda o: lr_scheduler.StepLR(o, 1, 0.5),
    )
    curriculum.build()
    for _ in range(3):
        train_step(curriculum)
        curriculum.scheduler.step()
    assert lrs(curriculum)[("head",)] == 0.125
    curriculum.set_lr_coefficient(0.1, "head")
    assert lrs(curriculum)[("head",)] == pytest.approx(0.0125)
    assert curriculum.scheduler.base_lrs[2] == pytest.approx(0.1)
    assert curriculum.optimizer.param_groups[2]["initial_lr"] == pytest.approx(0.1)


# Patch and rebuild paths ------------------------------------------------------------------


def test_freezing_after_build_is_nochange_and_drops_grads():
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.build()
    train_step(curriculum)
    head = curriculum.model.head
    assert head.weight.grad is not None
    assert curriculum.freeze("head") == mf.NoChange()
    assert head.weight.grad is None and not head.weight.requires_grad
    before = head.weight.detach().clone()
    train_step(curriculum)
    assert torch.equal(head.weight, before)


def test_unfreeze_on_fast_path_gives_fresh_optimizer_state():
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.build()
    train_step(curriculum)
    curriculum.freeze("head")
    train_step(curriculum)
    head_weight = curriculum.model.head.weight
    assert curriculum.optimizer.state[head_weight]
    plan = curriculum.unfreeze("head")
    assert plan == mf.Patch(scales=(), reactivated=("head",))
    assert (
        head_weight not in curriculum.optimizer.state or not curriculum.optimizer.state[head_weight]
    )
    train_step(curriculum)
    assert int(curriculum.optimizer.state[head_weight]["step"]) == 1
    assert int(curriculum.optimizer.state[curriculum.model.backbone[0].weight]["step"]) == 3


def test_unfreeze_fresh_state_for_adagrad_is_its_initial_state():
    curriculum = mf.Curriculum(make_model(), 0.1, optimizer=torch.optim.Adagrad)
    curriculum.build()
    train_step(curriculum)
    curriculum.freeze("head")
    curriculum.unfreeze("head")
    state = curriculum.optimizer.state[curriculum.model.head.weight]
    assert float(state["step"]) == 0 and torch.equal(state["sum"], torch.zeros_like(state["sum"]))
    train_step(curriculum)


def test_rebuild_needed_but_not_allowed_changes_nothing():
    curriculum = mf.Curriculum(
        make_model(), 0.1, scheduler=lambda o: lr_scheduler.StepLR(o, 1, 0.5)
    )
    curriculum.freeze("backbone")
    curriculum.build()
    train_step(curriculum)
    curriculum.scheduler.step()
    before = snapshot(curriculum)
    with pytest.raises(RuntimeError, match=r"backbone\.0.*reset_optimizer_if_needed=True"):
        curriculum.unfreeze("backbone")
    assert_same_snapshot(before, snapshot(curriculum))
    with pytest.raises(RuntimeError, match="coefficient 0"):
        curriculum.set_lr_coefficient(0.0, "head")
        curriculum.set_lr_coefficient(1.0, "head")


def test_rebuild_keeps_state_of_layers_trainable_before_and_after_and_scheduler_progress():
    curriculum = mf.Curriculum(
        make_model(), 0.1, scheduler=lambda o: lr_scheduler.StepLR(o, 1, 0.5)
    )
    curriculum.freeze("backbone")
    curriculum.build()
    for _ in range(2):
        train_step(curriculum)
        curriculum.scheduler.step()
    head_weight = curriculum.model.head.weight
    moments = curriculum.optimizer.state[head_weight]["exp_avg"].clone()
    old_scheduler = curriculum.scheduler
    plan = curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    assert isinstance(plan, mf.Rebuild)
    assert curriculum.scheduler is old_scheduler
    assert curriculum.scheduler.optimizer is curriculum.optimizer
    assert torch.equal(curriculum.optimizer.state[head_weight]["exp_avg"], moments)
    assert curriculum.model.backbone[0].weight not in curriculum.optimizer.state
    assert all(lr == pytest.approx(0.025) for lr in lrs(curriculum).values())
    train_step(curriculum)
    curriculum.scheduler.step()
    assert all(lr == pytest.approx(0.0125) for lr in lrs(curriculum).values())
    assert len(curriculum.scheduler.base_lrs) == len(curriculum.optimizer.param_groups)


def test_zero_to_nonzero_rebuild_restores_the_scheduled_lr():
    curriculum = mf.Curriculum(
        make_model(),
        1.0,
        optimizer=torch.optim.SGD,
        scheduler=lambda o: lr_scheduler.ExponentialLR(o, 0.5),
    )
    curriculum.set_lr_coefficient(0.0, ["backbone", "head"])
    curriculum.build()
    for _ in range(3):
        train_step(curriculum)
        curriculum.scheduler.step()
    assert all(lr == 0 for layers, lr in lrs(curriculum).items() if layers)
    curriculum.set_lr_coefficient(0.5, "head", reset_optimizer_if_needed=True)
    assert lrs(curriculum)[("head",)] == pytest.approx(0.0625)


def test_coalesced_group_split_needs_rebuild():
    curriculum = mf.Curriculum(make_model(), 0.1, coalesce=True)
    curriculum.build()
    assert [g["layers"] for g in curriculum.optimizer.param_groups] == [
        ("backbone.0", "backbone.2", "head"),
        (),
    ]
    assert isinstance(
        curriculum.set_lr_coefficient(0.5, ["backbone.0", "backbone.2", "head"]), mf.Patch
    )
    with pytest.raises(RuntimeError, match="must be split"):
        curriculum.set_lr_coefficient(0.1, "head")
    curriculum.set_lr_coefficient(0.1, "head", reset_optimizer_if_needed=True)
    assert lrs(curriculum) == {
        ("backbone.0", "backbone.2"): pytest.approx(0.05),
        ("head",): pytest.approx(0.01),
        (): 0.1,
    }


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        (torch.optim.Adam, {}),
        (torch.optim.Adam, {"foreach": True}),
        (torch.optim.Adam, {"fused": True}),
        (torch.optim.AdamW, {"fused": True}),
        (torch.optim.SGD, {"momentum": 0.9}),
        (torch.optim.SGD, {"momentum": 0.9, "fused": True}),
        (torch.optim.RMSprop, {"foreach": True}),
        (torch.optim.Adagrad, {}),
        (torch.optim.Adagrad, {"fused": True}),
    ],
)
def test_optimizers_match_a_hand_built_torch_optimizer(optimizer, kwargs):
    """Same updates as torch's own constructor on the same groups, through a patch."""
    ours_model, theirs_model = make_model(), make_model()
    curriculum = mf.Curriculum(ours_model, 0.05, optimizer=optimizer, optimizer_kwargs=kwargs)
    curriculum.set_lr_coefficient(0.5, "backbone")
    curriculum.build()
    state = curriculum.state
    theirs = optimizer(mf.param_groups(state, theirs_model, 0.05), lr=0.05, **kwargs)
    for step in range(4):
        if step == 2:
            curriculum.set_lr_coefficient(0.25, "backbone")
            for group in theirs.param_groups:
                if group["layers"][0].startswith("backbone"):
                    group["lr"] = 0.05 * 0.25
        train_step(curriculum)
        theirs.zero_grad()
        theirs_model(BATCH).pow(2).mean().backward()
        theirs.step()
    for ours_parameter, their_parameter in zip(ours_model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(ours_parameter, their_parameter, rtol=1e-6, atol=1e-7)


# Saving and loading ------------------------------------------------------------------


def save_and_load(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_is_keyed_by_parameter_name():
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.freeze("backbone.0")
    curriculum.build()
    train_step(curriculum)
    saved = save_and_load(curriculum.state_dict())
    assert saved["recipe"] == {
        "optimizer": "torch.optim.adam.Adam",
        "optimizer_kwargs": {},
        "lr": 0.1,
        "coalesce": False,
    }
    assert [g["params"] for g in saved["optimizer"]["param_groups"]] == [
        ["backbone.2.weight", "backbone.2.bias"],
        ["head.weight", "head.bias"],
        [],
    ]
    assert set(saved["optimizer"]["state"]) == {
        "backbone.2.weight",
        "backbone.2.bias",
        "head.weight",
        "head.bias",
    }
    assert mf.CurriculumState.from_dict(saved["state"]) == curriculum.state


def test_resume_into_fresh_model_continues_bit_for_bit():
    factory = lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=30)
    original = mf.Curriculum(make_model(), 0.1, scheduler=factory)
    original.set_lr_coefficient(0.1, "backbone")
    original.build()
    for _ in range(3):
        train_step(original)
        original.scheduler.step()
    original.freeze("backbone.0")  # an inert group, kept in the saved layout
    saved = save_and_load(
        {"curriculum": original.state_dict(), "model": original.model.state_dict()}
    )

    resumed_model = make_model(seed=1)
    resumed_model.load_state_dict(saved["model"])
    resumed = mf.Curriculum(resumed_model, 123.0, scheduler=factory)
    resumed.load_state_dict(saved["curriculum"])
    assert resumed.state == original.state
    assert resumed.lr == 0.1
    assert [g["layers"] for g in resumed.optimizer.param_groups] == [
        g["layers"] for g in original.optimizer.param_groups
    ]
    assert not resumed_model.backbone[0].weight.requires_grad
    for _ in range(4):
        for curriculum in (original, resumed):
            train_step(curriculum)
            curriculum.scheduler.step()
    for a, b in zip(original.model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    assert lrs(original) == lrs(resumed)


def test_load_into_never_built_curriculum_and_unbuilt_state_dict():
    unbuilt = mf.Curriculum(make_model(), 0.1)
    unbuilt.freeze("head")
    fresh = mf.Curriculum(make_model(), 0.1)
    fresh.load_state_dict(save_and_load(unbuilt.state_dict()))
    assert fresh.optimizer is None and fresh.state == unbuilt.state
    assert not fresh.model.head.weight.requires_grad


def test_load_rejects_other_layers_and_other_optimizer_without_changes():
    source = mf.Curriculum(make_model(), 0.1)
    source.build()
    saved = save_and_load(source.state_dict())
    other_model = nn.Sequential(nn.Linear(4, 2))
    target = mf.Curriculum(other_model, 0.1)
    with pytest.raises(ValueError, match="missing from the model: 'backbone'"):
        target.load_state_dict(saved)
    assert target.optimizer is None
    sgd = mf.Curriculum(make_model(), 0.1, optimizer=torch.optim.SGD)
    with pytest.raises(ValueError, match=r"field 'recipe'.*torch\.optim\.adam\.Adam"):
        sgd.load_state_dict(saved)
    with pytest.raises(ValueError, match="not a mentor_fn Curriculum state dict"):
        sgd.load_state_dict({"optimizer": {}})
    with pytest.raises(ValueError, match="version 99"):
        sgd.load_state_dict({**saved, "version": 99})


def test_update_accepts_states_and_transitions_and_rejects_others():
    curriculum = mf.Curriculum(make_model(), 0.1)
    curriculum.build()
    target = curriculum.state.set_lr_coefficient(0.5, "head")
    assert isinstance(curriculum.update(target), mf.Patch)
    assert curriculum.state == target
    plan = curriculum.update(
        mf.chain(mf.freeze("backbone"), mf.set_lr_coefficient(0.2, "backbone"))
    )
    assert isinstance(plan, mf.Patch)
    with pytest.raises(TypeError, match="CurriculumState or a transition"):
        curriculum.update(3)
    with pytest.raises(TypeError, match="must return a CurriculumState"):
        curriculum.update(lambda state: None)
    with pytest.raises(ValueError, match="matches no layer"):
        curriculum.freeze("nope")


# Weight decay by parameter kind ---------------------------------------------------------------


def make_normed_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module(
        "backbone", nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8))
    )
    model.add_module("head", nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 2)))
    return model


def halves(curriculum: mf.Curriculum) -> list[tuple[tuple[str, ...], object, float, float]]:
    return [
        (g["layers"], g.get("applies_weight_decay"), g["weight_decay"], g["lr"])
        for g in curriculum.optimizer.param_groups
    ]


def decaying_curriculum(model: nn.Module, **kwargs) -> mf.Curriculum:
    return mf.Curriculum(
        model,
        0.1,
        optimizer=torch.optim.AdamW,
        weight_decay=0.05,
        no_weight_decay=("bias", "norm"),
        **kwargs,
    )


def test_build_splits_each_layer_into_its_decay_halves():
    curriculum = decaying_curriculum(make_normed_model())
    curriculum.set_lr_coefficient(0.5, "backbone")
    curriculum.build()
    assert curriculum.recipe.weight_decay == 0.05
    assert curriculum.recipe.no_weight_decay == ("bias", "norm")
    assert halves(curriculum) == [
        (("backbone.0",), True, 0.05, 0.05),
        (("backbone.0",), False, 0.0, 0.05),
        (("backbone.1",), False, 0.0, 0.05),
        (("backbone.3",), True, 0.05, 0.05),
        (("backbone.3",), False, 0.0, 0.05),
        (("head.0",), False, 0.0, 0.1),
        (("head.1",), True, 0.05, 0.1),
        (("head.1",), False, 0.0, 0.1),
        ((), None, 0.05, 0.1),
    ]
    check_partition(curriculum.optimizer, curriculum.state, curriculum.model)


def test_a_rebuild_keeps_the_halves_their_decay_and_their_state():
    curriculum = decaying_curriculum(
        make_normed_model(), scheduler=lambda o: lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
    )
    curriculum.freeze("backbone")
    curriculum.build()
    train_step(curriculum)
    curriculum.scheduler.step()
    head_state = {
        k: v.clone() for k, v in curriculum.optimizer.state[curriculum.model.head[1].weight].items()
    }
    assert isinstance(curriculum.unfreeze("backbone", reset_optimizer_if_needed=True), mf.Rebuild)
    assert halves(curriculum) == [
        (("backbone.0",), True, 0.05, 0.05),
        (("backbone.0",), False, 0.0, 0.05),
        (("backbone.1",), False, 0.0, 0.05),
        (("backbone.3",), True, 0.05, 0.05),
        (("backbone.3",), False, 0.0, 0.05),
        (("head.0",), False, 0.0, 0.05),
        (("head.1",), True, 0.05, 0.05),
        (("head.1",), False, 0.0, 0.05),
        ((), None, 0.05, 0.05),
    ]
    kept = curriculum.optimizer.state[curriculum.model.head[1].weight]
    assert all(torch.equal(kept[key], value) for key, value in head_state.items())
    assert curriculum.set_lr_coefficient(0.1, "head.1") == mf.Patch(
        (mf.GroupScale(6, 1.0, 0.1), mf.GroupScale(7, 1.0, 0.1))
    )
    check_partition(curriculum.optimizer, curriculum.state, curriculum.model)


def test_weight_decay_is_optimizer_kwargs_weight_decay_given_once():
    recipe = mf.Curriculum(make_model(), 0.1, weight_decay=0.01).recipe
    assert recipe == OptimizerRecipe(torch.optim.Adam, 0.1, {"weight_decay": 0.01})
    assert "no_weight_decay" not in recipe.to_dict()  # plain data as before rules existed
    with pytest.raises(ValueError, match="same setting: give it once"):
        mf.Curriculum(make_model(), 0.1, weight_decay=0.01, optimizer_kwargs={"weight_decay": 0.0})
    with pytest.raises(ValueError, match="Rprop takes no weight_decay argument"):
        mf.Curriculum(make_model(), 0.1, optimizer=torch.optim.Rprop, no_weight_decay=("bias",))
    with pytest.raises(TypeError, match=r"write \('bias',\)"):
        mf.Curriculum(make_model(), 0.1, no_weight_decay="bias")


def test_a_regex_that_matches_nothing_is_refused_at_build_before_any_change():
    curriculum = mf.Curriculum(make_model(), 0.1, no_weight_decay=(r"backbone\.0\.bais",))
    with pytest.raises(ValueError, match=r"'backbone\\\\.0\\\\.bais' match no parameter"):
        curriculum.build()
    assert curriculum.optimizer is None


def resumed_run(rules, *, load_rules=None) -> tuple[mf.Curriculum, mf.Curriculum]:
    """A run with ``rules``, and a fresh Curriculum (given ``load_rules``) that loaded it."""
    curriculum = mf.Curriculum(
        make_normed_model(),
        0.1,
        optimizer=torch.optim.AdamW,
        weight_decay=0.05,
        no_weight_decay=rules,
    )
    curriculum.freeze("backbone")
    curriculum.build()
    train_step(curriculum)
    buffer = io.BytesIO()
    torch.save(curriculum.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = mf.Curriculum(
        make_normed_model(1),
        0.1,
        optimizer=torch.optim.AdamW,
        no_weight_decay=rules if load_rules is None else load_rules,
    )
    fresh.load_state_dict(saved)
    return curriculum, fresh


def is_bias(name, parameter, module):
    return name.endswith("bias")


def test_string_rules_are_saved_and_a_resumed_rebuild_splits_alike():
    original, resumed = resumed_run(("bias", "norm"), load_rules=())
    assert resumed.recipe == original.recipe
    for curriculum in (original, resumed):
        curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    assert halves(resumed) == halves(original)


def test_a_callable_rule_is_saved_by_name_and_needed_again_to_load():
    original, resumed = resumed_run(("norm", is_bias))
    assert original.state_dict()["recipe"]["no_weight_decay"] == [
        "norm",
        {"callable": f"{__name__}.is_bias"},
    ]
    assert resumed.recipe == original.recipe
    state_dict = original.state_dict()
    fresh = mf.Curriculum(make_normed_model(1), 0.1, optimizer=torch.optim.AdamW)
    with pytest.raises(
        ValueError,
        match=r"callable rules are \['test_curriculum\.is_bias'\], but this Curriculum has \[\]",
    ):
        fresh.load_state_dict(state_dict)
    assert fresh.optimizer is None and fresh.recipe.no_weight_decay == ()


def test_resume_with_split_groups_and_frozen_statistics_is_exact():
    def make_run():
        curriculum = mf.Curriculum(
            make_normed_model(),
            0.1,
            optimizer=torch.optim.AdamW,
            weight_decay=0.05,
            no_weight_decay=("1d", is_bias),
            scheduler=lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
        )
        curriculum.update(mf.chain(mf.freeze("backbone"), mf.set_norm_policy("eval")))
        curriculum.build()
        return curriculum

    def step(curriculum):
        curriculum.model.train()
        train_step(curriculum)
        curriculum.scheduler.step()

    def unfreeze_top(curriculum):
        curriculum.unfreeze("backbone.3", reset_optimizer_if_needed=True)

    def train_norms(curriculum):
        curriculum.update(mf.set_norm_policy("train"), reset_optimizer_if_needed=True)

    check_resume(make_run, [step, unfreeze_top, step, train_norms, step])
