"""Recipes: gradual_unfreeze (ULMFiT), fine_tune (fastai), lp_ft (linear probe, then fine-tune)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from mentor_fn import Curriculum, CurriculumState
from mentor_fn._schedules.conditions import after_epochs
from mentor_fn._schedules.cursor import ScheduleCursor
from mentor_fn._schedules.recipes import fine_tune, gradual_unfreeze, lp_ft
from mentor_fn._schedules.runner import ScheduleRunner
from mentor_fn._schedules.schedule import Schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model() -> nn.Module:
    model = nn.Sequential()
    model.add_module("embed", nn.Embedding(10, 4))
    model.add_module("encoder", nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)))
    model.add_module("head", nn.Linear(4, 2))
    return model


LAYERS = ("embed", "encoder", "encoder.0", "encoder.2", "head")


def states_by_phase(schedule: Schedule, model: nn.Module) -> list[CurriculumState]:
    initial = CurriculumState.from_model(model)
    return [
        schedule.state_at(ScheduleCursor(index), initial) for index in range(len(schedule.phases))
    ]


def trainable(state: CurriculumState) -> list[str]:
    return [layer for layer in state.layers if not state.is_frozen(layer)]


# gradual_unfreeze ------------------------------------------------------------------------


def test_gradual_unfreeze_unfreezes_one_group_per_stage_from_the_top():
    model = make_model()
    assert CurriculumState.from_model(model).layers == LAYERS
    schedule = gradual_unfreeze(
        ["embed", r"encoder\.0", [r"encoder\.2", "head"]], epochs_per_stage=2
    )
    schedule.check(model)
    names = [phase.name for phase in schedule.phases]
    assert names == ["head", r"unfreeze encoder\.0", "unfreeze embed"]
    assert [phase.until for phase in schedule.phases] == [after_epochs(2), after_epochs(2), None]
    head, middle, everything = states_by_phase(schedule, model)
    assert trainable(head) == ["encoder.2", "head"]
    assert trainable(middle) == ["encoder.0", "encoder.2", "head"]
    assert trainable(everything) == ["embed", "encoder.0", "encoder.2", "head"]
    assert all(c == 1.0 for c in everything.resolved_coefficients())


def test_gradual_unfreeze_with_discriminative_coefficients():
    model = make_model()
    schedule = gradual_unfreeze(["embed", "encoder", "head"], epochs_per_stage=1, decay=0.5)
    head, middle, everything = states_by_phase(schedule, model)
    # Set in the first phase, so frozen groups already hold their coefficient.
    for state in (head, middle, everything):
        assert [state.coefficient(layer) for layer in LAYERS] == [0.25, 0.5, 0.5, 0.5, 1.0]
    assert trainable(middle) == ["encoder", "encoder.0", "encoder.2", "head"]
    assert Schedule.from_dict(schedule.to_dict()) == schedule


def test_gradual_unfreeze_with_a_single_group_is_one_open_phase():
    schedule = gradual_unfreeze(["head"], epochs_per_stage=3)
    assert [(phase.name, phase.until) for phase in schedule.phases] == [("head", None)]


@pytest.mark.parametrize(
    ("groups", "kwargs", "error", "message"),
    [
        ("head", {}, TypeError, "'head'"),
        ([], {}, ValueError, "at least one group"),
        (["a", 3], {}, TypeError, "groups[1]"),
        (["a", []], {}, ValueError, "groups[1] must hold at least one pattern"),
        (["a", "b", ["a"]], {}, ValueError, "groups[2] repeats"),
        (["a"], {"epochs_per_stage": 0}, ValueError, "epochs_per_stage"),
        (["a"], {"epochs_per_stage": 1.0}, TypeError, "epochs_per_stage"),
        (["a"], {"decay": 0}, ValueError, "decay must be in (0, 1]"),
        (["a"], {"decay": 1.5}, ValueError, "1.5"),
        (["a"], {"decay": "0.5"}, TypeError, "'0.5'"),
    ],
)
def test_gradual_unfreeze_validates_eagerly(groups, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        gradual_unfreeze(groups, **{"epochs_per_stage": 1, **kwargs})


# fine_tune -------------------------------------------------------------------------------


def test_fine_tune_head_then_everything_with_spread_coefficients():
    model = make_model()
    schedule = fine_tune("head", freeze_epochs=1, epochs=3, lr_mult=100)
    schedule.check(model)
    frozen_phase, unfrozen_phase = schedule.phases
    assert (frozen_phase.name, frozen_phase.until, frozen_phase.optimizer) == (
        "frozen",
        after_epochs(1),
        "keep",
    )
    assert (unfrozen_phase.name, unfrozen_phase.until) == ("unfrozen", after_epochs(3))
    assert unfrozen_phase.optimizer == "fresh"
    frozen, unfrozen = states_by_phase(schedule, model)
    assert trainable(frozen) == ["head"]
    assert trainable(unfrozen) == list(LAYERS)
    # Over the four layers owning parameters: 1/100 ... 1, geometric.
    owners = ["embed", "encoder.0", "encoder.2", "head"]
    coefficients = [unfrozen.coefficient(layer) for layer in owners]
    assert coefficients[0] == 0.01 and coefficients[-1] == 1.0
    assert coefficients == pytest.approx([0.01, 0.01 ** (2 / 3), 0.01 ** (1 / 3), 1.0], rel=1e-12)
    # The schedule finishes after the unfrozen epochs.
    cursor = schedule.start()
    for _ in range(4):
        cursor = schedule.advance(cursor, epoch_end=True)
    assert cursor.finished and cursor.phase == 1
    assert Schedule.from_dict(schedule.to_dict()) == schedule


def test_fine_tune_runs_on_a_curriculum():
    model = make_model()
    curriculum = Curriculum(model, 0.1)
    runner = ScheduleRunner(curriculum, fine_tune(["head"], freeze_epochs=1, epochs=1))
    runner.start()
    curriculum.build()
    first = curriculum.optimizer
    runner.epoch_end({})
    assert curriculum.optimizer is not first  # fresh
    lrs = {group["layers"]: group["lr"] for group in curriculum.optimizer.param_groups}
    assert lrs[("embed",)] == pytest.approx(0.001) and lrs[("head",)] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("head", "kwargs", "error", "message"),
    [
        (3, {}, TypeError, "head"),
        ([], {}, ValueError, "head must hold at least one pattern"),
        ("head", {"freeze_epochs": 0}, ValueError, "freeze_epochs"),
        ("head", {"epochs": True}, TypeError, "epochs"),
        ("head", {"lr_mult": 0.5}, ValueError, "lr_mult must be finite and >= 1"),
        ("head", {"lr_mult": math.inf}, ValueError, "inf"),
        ("head", {"lr_mult": None}, TypeError, "None"),
    ],
)
def test_fine_tune_validates_eagerly(head, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        fine_tune(head, **{"freeze_epochs": 1, "epochs": 1, **kwargs})


# lp_ft -------------------------------------------------------------------------------------


def test_lp_ft_probes_then_fine_tunes_at_a_lower_lr():
    model = make_model()
    schedule = lp_ft("head", probe_epochs=2)
    schedule.check(model)
    probe, tune = schedule.phases
    assert (probe.name, probe.until) == ("probe", after_epochs(2))
    assert (tune.name, tune.until, tune.optimizer, tune.lr_scale, tune.lr) == (
        "fine_tune",
        None,
        "fresh",
        0.1,
        None,
    )
    probing, tuning = states_by_phase(schedule, model)
    assert trainable(probing) == ["head"] and trainable(tuning) == list(LAYERS)
    assert Schedule.from_dict(schedule.to_dict()) == schedule


def test_lp_ft_runs_on_a_curriculum():
    curriculum = Curriculum(make_model(), 0.1)
    runner = ScheduleRunner(curriculum, lp_ft("head", probe_epochs=1, lr_ratio=0.5))
    runner.start()
    curriculum.build()
    runner.epoch_end()
    assert curriculum.lr == pytest.approx(0.05)
    assert all(group["lr"] == pytest.approx(0.05) for group in curriculum.optimizer.param_groups)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"probe_epochs": 0}, ValueError, "probe_epochs"),
        ({"lr_ratio": 0}, ValueError, "lr_ratio must be finite and > 0"),
        ({"lr_ratio": math.nan}, ValueError, "nan"),
        ({"lr_ratio": True}, TypeError, "True"),
    ],
)
def test_lp_ft_validates_eagerly(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        lp_ft("head", **{"probe_epochs": 1, **kwargs})


def test_recipes_check_against_a_model():
    with pytest.raises(ValueError, match=r"phase 'probe': pattern 'haed'.*'head'"):
        lp_ft("haed", probe_epochs=1).check(make_model())
    torch.manual_seed(0)  # keep the autouse seed fixture's contract for later tests
