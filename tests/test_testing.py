"""mentor_fn.testing: its strategies, its checks (each fed a broken run) and its machine."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from strategies import expected_layer_names, expected_owners
from torch import nn

import mentor_fn as mf
from mentor_fn.testing import (
    INPUT_WIDTH,
    CurriculumMachine,
    Write,
    check_flags,
    check_lrs,
    check_partition,
    check_resume,
    conditions,
    first_difference,
    models,
    patterns,
    schedules,
    states,
    transitions,
    view_model,
    writes,
)

ROOT = Path(__file__).resolve().parent.parent


def tiny() -> nn.Module:
    """Layers backbone, backbone.0, backbone.1, head."""
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(backbone=nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), head=nn.Linear(2, 1))
    )


def built(model: nn.Module | None = None, **kwargs) -> mf.Curriculum:
    curriculum = mf.Curriculum(model or tiny(), 0.1, **kwargs)
    curriculum.build()
    return curriculum


def train(curriculum: mf.Curriculum) -> None:
    curriculum.model.zero_grad(set_to_none=True)
    curriculum.model(torch.ones(3, 2)).pow(2).mean().backward()
    curriculum.optimizer.step()


# Importing --------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_import_mentor_fn_does_not_import_hypothesis():
    completed = run_python("import mentor_fn, sys; assert 'hypothesis' not in sys.modules")
    assert completed.returncode == 0, completed.stderr


def test_import_mentor_fn_testing_without_hypothesis_names_the_extra():
    completed = run_python(
        "import sys; sys.modules['hypothesis'] = None\n"
        "try:\n"
        "    import mentor_fn.testing\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('imported without hypothesis')\n"
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert "pip install 'hypothesis>=6.100' (the 'testing' extra of mentor_fn)" in completed.stdout


def test_the_testing_extra_brings_hypothesis():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'testing = \[\s*"hypothesis>=6\.100",?\s*\]', pyproject)


# Strategies -------------------------------------------------------------------------


@given(models())
def test_models_run_forward_and_backward_and_agree_with_torchs_traversal(model):
    output = model(torch.randn(4, INPUT_WIDTH))
    assert output.shape == (4, INPUT_WIDTH)
    view = view_model(model)
    assert view.layers == mf.layer_names(model) == expected_layer_names(model)
    assert view.owners == expected_owners(model)
    assert set(view.names.values()) == {name for name, _ in model.named_parameters()}


FEATURES = {
    "tied weights": lambda m: any(
        sum(p is q for mod in m.modules() for q in mod.parameters(recurse=False)) > 1
        for p in m.parameters()
    ),
    "a shared module": lambda m: (
        len(list(m.named_modules(remove_duplicate=False))) > len(list(m.named_modules()))
    ),
    "root parameters": lambda m: any(True for _ in m.parameters(recurse=False)),
    "a root parameter tied to a layer's": lambda m: hasattr(m, "tied"),
    "running statistics": lambda m: any(
        isinstance(x, nn.BatchNorm1d) and x.affine for x in m.modules()
    ),
    "a module with buffers only": lambda m: any(
        isinstance(x, nn.BatchNorm1d) and not x.affine for x in m.modules()
    ),
    "layer norm": lambda m: any(isinstance(x, nn.LayerNorm) for x in m.modules()),
    "frozen at start": lambda m: any(not p.requires_grad for p in m.parameters()),
    "nesting": lambda m: any("." in layer for layer in mf.layer_names(m)),
}


@pytest.mark.parametrize("feature", FEATURES)
def test_models_draw_every_awkward_case(feature):
    # Generation only: finding one is the point, shrinking it would cost seconds.
    quick = settings(database=None, max_examples=500, phases=[Phase.generate])
    find(models(), FEATURES[feature], settings=quick)


@given(models(), st.data())
def test_writes_states_patterns_and_transitions_fit_the_model(model, data):
    layers = mf.layer_names(model)
    for write in data.draw(writes(model)):
        assert isinstance(write, Write) and write.layer in layers
        assert mf.select_layers(layers, write.pattern) == (write.layer,)
    assert data.draw(states(model)).layers == layers
    assert mf.select_layers(layers, data.draw(patterns(model)))
    state = mf.CurriculumState.from_model(model)
    for transition in data.draw(st.lists(transitions(model), max_size=4)):
        state = transition(state)  # every pattern matches: no ValueError
    assert state.layers == layers


@given(models(), st.data())
def test_schedules_are_valid_for_the_model_and_plain_data(model, data):
    schedule = data.draw(schedules(model, max_phases=3))
    schedule.check(model)  # every pattern of every phase matches
    assert 1 <= len(schedule.phases) <= 3
    assert all(phase.until is not None for phase in schedule.phases[:-1])
    assert mf.Schedule.from_dict(schedule.to_dict()) == schedule
    state = mf.CurriculumState.from_model(model)
    for phase in schedule.phases:
        state = phase.transition(state)


def test_conditions_without_metrics_draw_no_plateau():
    drawn = find(
        st.lists(conditions(metrics=()), min_size=20),
        lambda found: True,
        settings=settings(database=None, phases=[Phase.generate]),
    )
    assert not any("Plateau" in repr(condition) for condition in drawn)


@given(transitions(tiny(), kinds=["freeze", "chain"]))
def test_transitions_draw_only_the_kinds_asked_for(transition):
    assert type(transition).__name__ in ("Freeze", "Chain")


def test_transitions_refuse_unknown_kinds():
    with pytest.raises(ValueError, match="kinds"):
        transitions(tiny(), kinds=["thaw"])


# check_flags --------------------------------------------------------------------------


def test_check_flags_passes_on_what_curriculum_sets():
    curriculum = mf.Curriculum(tiny(), 0.1)
    curriculum.freeze("backbone")
    curriculum.unfreeze(r"backbone\.1")
    check_flags(curriculum.state, curriculum.model)


def test_check_flags_names_a_frozen_parameter_that_requires_grad():
    curriculum = mf.Curriculum(tiny(), 0.1)
    curriculum.freeze("backbone")
    curriculum.model.backbone[1].bias.requires_grad_(True)
    with pytest.raises(AssertionError) as failure:
        check_flags(curriculum.state, curriculum.model)
    message = str(failure.value)
    assert "'backbone.1.bias' (layer 'backbone.1')" in message
    assert "requires_grad is True, but its layer is frozen" in message
    assert "backbone.1.weight" not in message  # only the culprit


def test_check_flags_names_a_trainable_parameter_without_grad_and_a_stale_grad():
    curriculum = mf.Curriculum(tiny(), 0.1)
    curriculum.freeze("head")
    curriculum.model.backbone[0].weight.requires_grad_(False)
    curriculum.model.head.weight.grad = torch.ones(1, 2)
    with pytest.raises(AssertionError) as failure:
        check_flags(curriculum.state, curriculum.model)
    message = str(failure.value)
    assert "'backbone.0.weight' (layer 'backbone.0'): requires_grad is False" in message
    assert "'head.weight' (layer 'head'): frozen, but holds a .grad" in message


def test_checks_refuse_a_state_of_another_model():
    state = mf.CurriculumState.from_model(nn.Linear(2, 2))
    with pytest.raises(AssertionError, match="not for this model"):
        check_flags(state, tiny())


# check_partition -----------------------------------------------------------------------


def test_check_partition_passes_with_inert_groups_and_coalesce():
    curriculum = built(coalesce=True)
    curriculum.set_lr_coefficient(0.5, "backbone", reset_optimizer_if_needed=True)
    curriculum.freeze(r"backbone\.0")  # stays in its group, inert
    check_partition(curriculum.optimizer, curriculum.state, curriculum.model)
    check_partition(  # a user's own optimizer, without the reference group
        torch.optim.SGD(mf.param_groups(curriculum.state, curriculum.model, 0.1)),
        curriculum.state,
        curriculum.model,
    )


def test_check_partition_names_a_parameter_in_two_groups():
    curriculum = built()
    groups = curriculum.optimizer.param_groups
    groups[1]["params"].append(curriculum.model.backbone[0].weight)
    with pytest.raises(AssertionError) as failure:
        check_partition(curriculum.optimizer, curriculum.state, curriculum.model)
    message = str(failure.value)
    assert (
        "'backbone.0.weight' (layer 'backbone.0') is in 2 groups: "
        "group 0 (layers ('backbone.0',)), group 1 (layers ('backbone.1',))"
    ) in message
    assert "group 1 (layers ('backbone.1',)) holds 'backbone.0.weight'" in message
    assert "the optimizer's groups:" in message  # the table follows


def test_check_partition_names_a_trainable_parameter_in_no_group():
    curriculum = built()
    curriculum.optimizer.param_groups[2]["params"].pop()  # head.bias
    with pytest.raises(AssertionError) as failure:
        check_partition(curriculum.optimizer, curriculum.state, curriculum.model)
    message = str(failure.value)
    assert "trainable 'head.bias' (layer 'head') is in no group" in message
    assert "group 2 (layers ('head',)) lacks 'head.bias'" in message


def test_check_partition_names_a_frozen_parameter_in_a_group_that_requires_grad():
    curriculum = built()
    curriculum.freeze("head")  # NoChange: the head's group stays, inert
    curriculum.model.head.weight.requires_grad_(True)
    with pytest.raises(
        AssertionError, match=re.escape("frozen 'head.weight' (layer 'head') is in group 2")
    ):
        check_partition(curriculum.optimizer, curriculum.state, curriculum.model)


def test_check_partition_names_a_group_whose_coefficient_disagrees():
    curriculum = built()
    curriculum.optimizer.param_groups[1]["coefficient"] = 0.5
    with pytest.raises(AssertionError) as failure:
        check_partition(curriculum.optimizer, curriculum.state, curriculum.model)
    assert (
        "group 1 (layers ('backbone.1',)) has coefficient 0.5, but the state gives layer "
        "'backbone.1' 1.0"
    ) in str(failure.value)


def test_check_partition_names_foreign_tensors_and_unknown_layers():
    curriculum = built()
    curriculum.optimizer.param_groups[0]["params"].append(nn.Parameter(torch.zeros(3)))
    curriculum.optimizer.param_groups[0]["layers"] = ("backbone.0", "neck")
    curriculum.optimizer.param_groups[-1]["params"].append(curriculum.model.head.bias)
    with pytest.raises(AssertionError) as failure:
        check_partition(curriculum.optimizer, curriculum.state, curriculum.model)
    message = str(failure.value)
    assert "a tensor of shape (3,) that is not a parameter of the model" in message
    assert "layer 'neck' is not a layer of the model" in message
    assert "group 3 (layers ()) is a reference group (no layers) but holds 1 parameters" in message


# check_lrs -----------------------------------------------------------------------------


def test_check_lrs_passes_after_patches_rebuilds_and_scheduler_steps():
    curriculum = built(scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5))
    reference = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)
    reference_scheduler = torch.optim.lr_scheduler.StepLR(reference, 1, gamma=0.5)
    curriculum.set_lr_coefficient(0.3, "backbone")
    train(curriculum)
    reference.step()
    curriculum.scheduler.step()
    reference_scheduler.step()
    curriculum.freeze("head")
    curriculum.update(mf.layerwise_lr_decay(0.8), reset_optimizer_if_needed=True)
    curriculum.unfreeze("head", reset_optimizer_if_needed=True)
    check_lrs(curriculum, reference.param_groups[0]["lr"])
    check_lrs(curriculum, reference.param_groups[0])


def test_check_lrs_names_a_group_off_by_a_factor():
    curriculum = built()
    curriculum.set_lr_coefficient(0.5, "head")
    curriculum.optimizer.param_groups[2]["lr"] *= 3
    with pytest.raises(AssertionError) as failure:
        check_lrs(curriculum, 0.1)
    message = str(failure.value)
    assert "group 2 (layers ('head',)), coefficient 0.5: lr is" in message
    assert "expected 0.1 x 0.5 = 0.05 (3 times too large)" in message
    assert "group 0" not in message and "group 1" not in message


def test_check_lrs_compares_every_lr_like_value_of_the_flat_group():
    curriculum = built(scheduler=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9))
    curriculum.optimizer.param_groups[-1]["initial_lr"] = 0.01
    flat = {"lr": 0.1, "initial_lr": 0.1}
    with pytest.raises(AssertionError) as failure:
        check_lrs(curriculum, flat)
    assert "group 3 (layers ()), coefficient 1.0: initial_lr is 0.01" in str(failure.value)
    assert "10 times too small" in str(failure.value)


def test_check_lrs_tolerates_rounding_only():
    curriculum = built()
    group = curriculum.optimizer.param_groups[0]
    group["lr"] = math.nextafter(math.nextafter(0.1, 1), 1)  # two ulps
    check_lrs(curriculum, 0.1)
    group["lr"] = 0.1 * (1 + 1e-9)
    with pytest.raises(AssertionError):
        check_lrs(curriculum, 0.1)


def test_check_lrs_needs_a_built_curriculum():
    with pytest.raises(AssertionError, match="not built"):
        check_lrs(mf.Curriculum(tiny(), 0.1), 0.1)


# check_resume --------------------------------------------------------------------------


def make_run(curriculum_class=mf.Curriculum):
    def make() -> mf.Curriculum:
        model = tiny()
        model.backbone.insert(1, nn.Dropout(0.5))  # RNG: each step is seeded
        return curriculum_class(
            model,
            0.1,
            scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5),
        )

    return make


def scheduler_step(curriculum):
    curriculum.scheduler.step()


STEPS = [
    lambda c: c.freeze("backbone"),
    lambda c: c.build(),
    train,
    scheduler_step,
    lambda c: c.unfreeze(r"backbone\.2", reset_optimizer_if_needed=True),
    train,
    lambda c: c.set_lr_coefficient(0.5, "backbone"),
    train,
    scheduler_step,
    train,
]


def test_check_resume_passes_on_a_real_run():
    check_resume(make_run(), STEPS)


class DropsOptimizerState(mf.Curriculum):
    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.optimizer is not None:
            self.optimizer.state.clear()


class ForgetsSchedulerProgress(mf.Curriculum):
    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.scheduler is not None:
            self.scheduler.last_epoch = 0


def test_check_resume_names_optimizer_state_a_resume_dropped():
    with pytest.raises(AssertionError) as failure:
        check_resume(make_run(DropsOptimizerState), STEPS, split_points=[6])
    message = str(failure.value)
    assert "saved after step 6 of 10 and resumed, before any further step" in message
    assert "['curriculum']['optimizer']['state']: missing keys [" in message
    assert "'head.weight'" in message and "'backbone.2.weight'" in message


def test_check_resume_names_scheduler_progress_a_resume_forgot():
    with pytest.raises(AssertionError) as failure:
        check_resume(make_run(ForgetsSchedulerProgress), STEPS)
    message = str(failure.value)
    assert "saved after step" in message
    assert "['model.state_dict()']" in message or "['scheduler']" in message


def test_check_resume_rejects_split_points_outside_the_run():
    with pytest.raises(ValueError, match=r"outside 0\.\.10"):
        check_resume(make_run(), STEPS, split_points=[11])


# first_difference ------------------------------------------------------------------------


def test_first_difference_is_bitwise():
    assert first_difference({"a": [1.0, torch.ones(2)]}, {"a": [1.0, torch.ones(2)]}) is None
    assert first_difference(math.nan, math.nan) is None
    assert "expected 0.0, got -0.0" in first_difference(0.0, -0.0)
    assert "expected 1 (int), got 1.0 (float)" in first_difference(1, 1.0)
    found = first_difference({"x": torch.zeros(3)}, {"x": torch.tensor([0.0, 1e-30, 0.0])})
    assert found.startswith("['x']: tensors differ in 1 of 3 elements")
    assert "float64" in first_difference(torch.zeros(1), torch.zeros(1, dtype=torch.float64))
    assert "missing keys ['b']" in first_difference({"a": 1, "b": 2}, {"a": 1})


# CurriculumMachine ------------------------------------------------------------------------

FAST = settings(
    max_examples=8,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class RandomModels(CurriculumMachine):
    """The machine on drawn models: tied, shared, root, norm and frozen-at-start parameters."""

    example_input = torch.randn(4, INPUT_WIDTH)

    def model_strategy(self):
        return models()

    def make_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)


@pytest.mark.parametrize("coalesce", [False, True])
def test_machine_holds_on_random_models(coalesce):
    machine = type("RandomModelsMachine", (RandomModels,), {"coalesce": coalesce})
    run_state_machine_as_test(machine, settings=FAST)


class UserModel(nn.Module):
    """A model returning a tuple, with dropout: the default loss covers both."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.2), nn.LayerNorm(4))
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 1), "b": nn.Linear(4, 2)})

    def forward(self, x, scale):
        hidden = self.encoder(x) * scale
        return self.heads["a"](hidden), {"b": self.heads["b"](hidden)}


class UserMachine(CurriculumMachine):
    optimizer_class = torch.optim.SGD
    optimizer_kwargs = {"momentum": 0.9, "weight_decay": 0.01}
    example_input = (torch.randn(5, 3), 2.0)

    def make_model(self):
        return UserModel()


def test_machine_with_the_default_loss_on_a_user_model_without_scheduler():
    run_state_machine_as_test(UserMachine, settings=FAST)


def test_machine_without_example_input_or_loss_says_what_to_define():
    machine = type("NoInput", (UserMachine,), {"example_input": None})
    with pytest.raises(TypeError, match="needs example_input"):
        run_state_machine_as_test(machine, settings=FAST)


def test_machine_without_model_says_what_to_define():
    with pytest.raises(NotImplementedError, match="make_model"):
        run_state_machine_as_test(CurriculumMachine, settings=FAST)


class ScalesTwice(mf.Curriculum):
    """A broken Curriculum: a patch doubles the lr of the first group."""

    def update(self, target, *, reset_optimizer_if_needed=False):
        result = super().update(target, reset_optimizer_if_needed=reset_optimizer_if_needed)
        if isinstance(result, mf.Patch) and self.optimizer is not None:
            self.optimizer.param_groups[0]["lr"] *= 2
        return result


class KeepsStaleState(mf.Curriculum):
    """A broken Curriculum: rebuilds drop the optimizer state of every parameter."""

    def update(self, target, *, reset_optimizer_if_needed=False):
        result = super().update(target, reset_optimizer_if_needed=reset_optimizer_if_needed)
        if isinstance(result, mf.Rebuild):
            self.optimizer.state.clear()
        return result


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [(ScalesTwice, "invariant 3"), (KeepsStaleState, "lost its optimizer state")],
)
def test_machine_catches_a_broken_curriculum(broken, complaint):
    class Broken(UserMachine):
        def new_curriculum(self, model):
            good = super().new_curriculum(model)
            return broken(
                model,
                good.lr,
                optimizer=self.optimizer_class,
                optimizer_kwargs=dict(self.optimizer_kwargs),
            )

    quick = settings(FAST, max_examples=100, phases=[Phase.generate])
    with pytest.raises(AssertionError, match=complaint):
        run_state_machine_as_test(Broken, settings=quick)


# The example -------------------------------------------------------------------------------


def test_the_example_passes_under_pytest():
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "examples/property_test.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "1 passed" in completed.stdout
