"""The "eval" norm policy's hooks: frozen layers' running statistics never move.

The hooks follow what the last attach said (a Curriculum attaches whenever its
state is set), so each test attaches after changing the state it holds.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mentor_fn import CurriculumState, layer_names
from mentor_fn._wrapper.norm_hooks import attach_norm_policy, modules_with_running_statistics


@dataclass
class Holder:
    """What the hooks read: an object with the live ``state`` (as a Curriculum has)."""

    state: CurriculumState


def make_model() -> nn.Module:
    model = nn.Sequential()
    model.add_module(
        "backbone",
        nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4, affine=False)),
    )
    model.add_module("head", nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
    return model


def attach(model: nn.Module, holder: Holder) -> None:
    attach_norm_policy(
        model,
        holder,
        lambda: modules_with_running_statistics(model.named_modules(), holder.state.layers),
    )


def statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: buffer.clone()
        for name, buffer in model.named_buffers()
        if "running" in name or "num_batches" in name
    }


def test_a_batchnorm_without_parameters_is_governed_by_its_parent_layer():
    model = make_model()
    found = modules_with_running_statistics(model.named_modules(), layer_names(model))
    assert [layer for _, layer in found] == ["backbone.1", "backbone", "head.1"]


def test_under_eval_frozen_statistics_stay_and_the_rest_update():
    model = make_model()
    holder = Holder(CurriculumState.from_model(model).freeze("backbone").set_norm_policy("eval"))
    attach(model, holder)
    before = statistics(model)
    model.train()
    model(torch.randn(8, 4))
    after = statistics(model)
    for name in before:
        if name.startswith("backbone."):
            assert torch.equal(before[name], after[name]), name
        else:
            assert not torch.equal(before[name], after[name]), name
    # train() is what the user asked for, before and after the forward.
    assert all(module.training for module in model.modules())


def test_frozen_norms_normalize_with_their_running_statistics():
    model = make_model()
    holder = Holder(CurriculumState.from_model(model).freeze("backbone").set_norm_policy("eval"))
    attach(model, holder)
    inputs = torch.randn(8, 4)
    model.train()
    hooked = model.backbone(inputs)
    model.eval()
    assert torch.equal(hooked, model.backbone(inputs))


def test_stats_and_train_policies_and_unfrozen_layers_update_statistics():
    model = make_model()
    state = CurriculumState.from_model(model).freeze("backbone")
    holder = Holder(state.set_norm_policy("eval"))
    attach(model, holder)
    for live in (
        state,
        state.set_norm_policy("train"),
        state.set_norm_policy("eval").unfreeze("backbone"),
    ):
        holder.state = live
        attach(model, holder)  # as a Curriculum does whenever its state is set
        before = statistics(model)
        model.train()(torch.randn(8, 4))
        after = statistics(model)
        assert not torch.equal(before["backbone.1.running_mean"], after["backbone.1.running_mean"])


def test_a_raising_forward_leaves_the_training_flag_as_it_was():
    model = make_model()
    holder = Holder(CurriculumState.from_model(model).freeze("backbone").set_norm_policy("eval"))
    attach(model, holder)
    model.train()
    with pytest.raises(RuntimeError):
        model(torch.randn(8, 5))  # wrong width: the Linear raises before the norms
    with pytest.raises(RuntimeError):
        model.backbone[1](torch.randn(8, 5))  # the norm itself raises
    assert model.backbone[1].training


def test_hooks_are_installed_once_and_follow_the_newest_curriculum():
    model = make_model()
    first = Holder(CurriculumState.from_model(model).freeze("backbone").set_norm_policy("eval"))
    attach(model, first)
    hooks = len(model.backbone[1]._forward_pre_hooks)
    second = Holder(first.state.unfreeze("backbone"))
    attach(model, second)
    assert len(model.backbone[1]._forward_pre_hooks) == hooks == 1
    before = statistics(model)
    model.train()(torch.randn(8, 4))
    assert not torch.equal(before["backbone.1.running_mean"], model.backbone[1].running_mean)


def test_no_hooks_unless_the_eval_policy_is_used_and_none_after_the_curriculum_is_gone():
    model = make_model()
    attach(model, Holder(CurriculumState.from_model(model).freeze("backbone")))
    assert not model.backbone[1]._forward_pre_hooks
    holder = Holder(CurriculumState.from_model(model).freeze("backbone").set_norm_policy("eval"))
    attach(model, holder)
    del holder
    gc.collect()
    before = statistics(model)
    model.train()(torch.randn(8, 4))
    assert not torch.equal(before["backbone.1.running_mean"], model.backbone[1].running_mean)


def test_state_dict_keys_and_eval_are_untouched():
    model = make_model()
    keys = list(model.state_dict())
    attach(
        model, Holder(CurriculumState.from_model(model).freeze("backbone").set_norm_policy("eval"))
    )
    assert list(model.state_dict()) == keys
    assert all(
        module.track_running_stats
        for module in model.modules()
        if isinstance(module, nn.BatchNorm1d)
    )
