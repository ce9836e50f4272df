"""ScheduleRunner on a real Curriculum, a real torch optimizer and scheduler."""

from __future__ import annotations

import io
import re

import pytest
import torch
from torch import nn

from mentor_fn import Curriculum, CurriculumState, NoChange, Patch, Rebuild, chain, freeze, unfreeze
from mentor_fn._schedules.conditions import after_epochs, after_steps, any_of, plateau
from mentor_fn._schedules.runner import ScheduleRunner
from mentor_fn._schedules.schedule import Phase, Schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8)))
    model.add_module("head", nn.Linear(8, 3))
    return model


def make_curriculum(model: nn.Module) -> Curriculum:
    return Curriculum(
        model,
        0.01,
        optimizer=torch.optim.Adam,
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 2, gamma=0.9),
    )


def train_step(curriculum: Curriculum, index: int) -> None:
    """One optimizer and scheduler step on a batch that depends on ``index`` only."""
    generator = torch.Generator().manual_seed(index)
    inputs = torch.randn(8, 4, generator=generator)
    targets = torch.randint(0, 3, (8,), generator=generator)
    optimizer = curriculum.optimizer
    optimizer.zero_grad()
    nn.functional.cross_entropy(curriculum.model(inputs), targets).backward()
    optimizer.step()
    curriculum.scheduler.step()


def reference_lr(curriculum: Curriculum) -> float:
    (reference,) = [g for g in curriculum.optimizer.param_groups if g["layers"] == ()]
    return reference["lr"]


def check_lrs(curriculum: Curriculum) -> None:
    """Every group's lr is the reference lr times the state's coefficient of its layers."""
    state, lr = curriculum.state, reference_lr(curriculum)
    for group in curriculum.optimizer.param_groups:
        for layer in group["layers"]:
            assert group["lr"] == pytest.approx(lr * state.coefficient(layer), rel=1e-12, abs=0)


# Starting --------------------------------------------------------------------------------


def test_creating_changes_nothing_and_start_before_build_sets_the_state_only():
    curriculum = make_curriculum(make_model())
    schedule = Schedule(
        [
            Phase("head", freeze("backbone"), until=after_epochs(1)),
            Phase("all", unfreeze("backbone")),
        ]
    )
    runner = ScheduleRunner(curriculum, schedule)
    assert curriculum.state == CurriculumState.from_model(curriculum.model)
    assert runner.cursor is None and runner.phase is None and not runner.finished
    for call in (runner.step, runner.epoch_end, runner.state_dict):
        with pytest.raises(RuntimeError, match="start"):
            call()
    assert runner.start() == NoChange()
    assert curriculum.optimizer is None and curriculum.state.is_frozen("backbone")
    assert runner.phase.name == "head" and runner.initial_state == CurriculumState.from_model(
        curriculum.model
    )
    with pytest.raises(RuntimeError, match="already started"):
        runner.start()
    curriculum.build()  # builds phase 0's layout: the head alone
    assert [group["layers"] for group in curriculum.optimizer.param_groups] == [("head",), ()]


def test_start_on_a_built_curriculum_executes_the_phase_change():
    curriculum = make_curriculum(make_model())
    curriculum.build()
    optimizer = curriculum.optimizer
    runner = ScheduleRunner(curriculum, Schedule([Phase("head", freeze("backbone"))]))
    assert runner.start() == NoChange()  # freezing keeps the groups (inert)
    assert curriculum.optimizer is optimizer
    assert not any(p.requires_grad for p in curriculum.model.backbone.parameters())


def test_start_with_an_initial_state():
    curriculum = make_curriculum(make_model())
    initial = CurriculumState(curriculum.state.layers).set_lr_coefficient(0.5, "head")
    schedule = Schedule([Phase("a", freeze("backbone"))])
    runner = ScheduleRunner(curriculum, schedule, initial_state=initial)
    runner.start()
    assert curriculum.state.coefficient("head") == 0.5 and curriculum.state.is_frozen("backbone")
    # The runner keeps the curriculum's parameter owners (a state made from names lacks them).
    assert runner.initial_state.parameter_owners == curriculum.state.parameter_owners
    with pytest.raises(ValueError, match=r"extra|missing|differ"):
        ScheduleRunner(curriculum, schedule, initial_state=CurriculumState(("head",)))


def test_an_initial_state_keeps_its_norm_policy_and_gets_the_models_norm_layers():
    """A state made from layer names gets the model's layer kinds, owners and norm
    layers both; its own rules and norm policy are kept."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)))
    model.add_module("head", nn.Linear(8, 3))
    curriculum = make_curriculum(model)
    initial = CurriculumState(curriculum.state.layers, norm_policy="eval")
    runner = ScheduleRunner(
        curriculum, Schedule([Phase("head", freeze("backbone"))]), initial_state=initial
    )
    runner.start()
    assert runner.initial_state.norm_policy == "eval"
    assert curriculum.state.norm_policy == "eval"
    assert curriculum.state.norm_layers == frozenset({"backbone.1"})
    assert runner.initial_state.norm_layers == curriculum.state.norm_layers
    model.train()
    before = model.backbone[1].running_mean.clone()
    model(torch.randn(16, 4))
    assert torch.equal(model.backbone[1].running_mean, before)  # frozen norm: statistics kept


def test_constructor_validates_its_arguments():
    curriculum = make_curriculum(make_model())
    schedule = Schedule([Phase("a", freeze("head"))])
    with pytest.raises(TypeError, match="Curriculum"):
        ScheduleRunner(curriculum.model, schedule)
    with pytest.raises(TypeError, match="Schedule"):
        ScheduleRunner(curriculum, [Phase("a", freeze("head"))])
    with pytest.raises(TypeError, match="CurriculumState"):
        ScheduleRunner(curriculum, schedule, initial_state={})


# Phase changes --------------------------------------------------------------------------


def test_keep_phase_change_rebuilds_in_place_and_keeps_optimizer_state():
    curriculum = make_curriculum(make_model())
    schedule = Schedule(
        [
            Phase("head", freeze("backbone"), until=after_steps(3)),
            Phase("top", unfreeze(r"backbone\.2"), until=after_epochs(1)),
            Phase("all", unfreeze("backbone"), until=after_epochs(1)),
        ]
    )
    runner = ScheduleRunner(curriculum, schedule)
    runner.start()
    curriculum.build()
    plans = []
    for index in range(3):
        train_step(curriculum, index)
        plans.append(runner.step())
    assert plans[:2] == [None, None] and isinstance(plans[2], Rebuild)
    assert runner.phase.name == "top" and runner.cursor.steps == 0
    # The rebuild kept the head's Adam state and the scheduler's progress.
    assert int(curriculum.optimizer.state[curriculum.model.head.weight]["step"]) == 3
    assert curriculum.scheduler.last_epoch == 3
    check_lrs(curriculum)
    assert runner.epoch_end({"loss": 1.0}) is not None and runner.phase.name == "all"
    assert runner.epoch_end() is None  # finishing changes no state
    assert runner.finished and runner.phase.name == "all"
    assert runner.epoch_end() is None and runner.step() is None and runner.finished


def test_fresh_phase_change_builds_a_new_optimizer_and_scheduler():
    curriculum = make_curriculum(make_model())
    schedule = Schedule(
        [
            Phase("head", freeze("backbone"), until=after_steps(2)),
            Phase("all", unfreeze("backbone"), optimizer="fresh"),
        ]
    )
    runner = ScheduleRunner(curriculum, schedule)
    runner.start()
    curriculum.build()
    old_optimizer = curriculum.optimizer
    for index in range(2):
        train_step(curriculum, index)
        executed = runner.step()
    assert isinstance(executed, Rebuild) and "fresh" in executed.reasons[0]
    assert curriculum.optimizer is not old_optimizer
    assert curriculum.optimizer.state == {} or all(
        not s for s in curriculum.optimizer.state.values()
    )
    assert curriculum.scheduler.last_epoch == 0
    assert reference_lr(curriculum) == 0.01
    assert {layer for g in curriculum.optimizer.param_groups for layer in g["layers"]} == {
        "backbone.0",
        "backbone.2",
        "head",
    }


def test_fresh_first_phase_on_an_unbuilt_curriculum_does_not_build():
    curriculum = make_curriculum(make_model())
    runner = ScheduleRunner(
        curriculum, Schedule([Phase("a", freeze("backbone"), optimizer="fresh")])
    )
    runner.start()
    assert curriculum.optimizer is None


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"lr": 0.002}, 0.002),  # the live lr becomes 0.002
        ({"lr_scale": 0.5}, 0.01 * 0.9 * 0.5),  # the live lr (one StepLR decay) halves
    ],
)
def test_phase_lr_with_keep_rescales_the_live_optimizer(options, expected):
    curriculum = make_curriculum(make_model())
    schedule = Schedule(
        [
            Phase("head", freeze("backbone"), until=after_steps(3)),
            Phase("all", unfreeze("backbone"), **options),
        ]
    )
    runner = ScheduleRunner(curriculum, schedule)
    runner.start()
    curriculum.build()
    for index in range(3):
        train_step(curriculum, index)
        runner.step()
    assert curriculum.lr == pytest.approx(expected)
    assert reference_lr(curriculum) == pytest.approx(expected, rel=1e-12)
    check_lrs(curriculum)
    # The scheduler goes on from there: StepLR(2, 0.9) decays again at step 4.
    train_step(curriculum, 3)
    runner.step()
    assert reference_lr(curriculum) == pytest.approx(expected * 0.9, rel=1e-12)
    check_lrs(curriculum)


def test_a_phase_lr_from_a_live_lr_of_zero_is_refused_before_any_change():
    curriculum = Curriculum(
        make_model(),
        0.01,
        scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0),
    )
    schedule = Schedule(
        [
            Phase("head", freeze("backbone"), until=after_steps(1)),
            Phase("all", unfreeze("backbone"), optimizer="fresh", lr=0.001),
        ]
    )
    runner = ScheduleRunner(curriculum, schedule)
    runner.start()
    curriculum.build()
    state, cursor = curriculum.state, runner.cursor
    with pytest.raises(RuntimeError, match=r"phase 'all'.*live lr is 0"):
        runner.step()
    assert curriculum.state == state and runner.cursor == cursor


def test_phase_lr_scale_with_fresh_sets_the_new_optimizers_lr():
    curriculum = make_curriculum(make_model())
    schedule = Schedule(
        [
            Phase("probe", freeze("backbone"), until=after_steps(1), lr=0.02),
            Phase("tune", unfreeze("backbone"), optimizer="fresh", lr_scale=0.1),
        ]
    )
    runner = ScheduleRunner(curriculum, schedule)
    runner.start()
    assert curriculum.lr == 0.02  # before build: the lr build() will use
    curriculum.build()
    train_step(curriculum, 0)
    runner.step()
    assert curriculum.lr == pytest.approx(0.002) and reference_lr(curriculum) == pytest.approx(
        0.002
    )
    assert curriculum.scheduler.last_epoch == 0
    check_lrs(curriculum)


# Warmup -------------------------------------------------------------------------------------


def test_warmup_ramps_group_lrs_step_by_step():
    curriculum = make_curriculum(make_model())
    schedule = Schedule(
        [
            Phase("head", chain(freeze("backbone")), until=after_steps(1)),
            Phase("all", unfreeze("backbone"), warmup_steps=4),
        ]
    )
    runner = ScheduleRunner(curriculum, schedule)
    runner.start()
    curriculum.build()
    train_step(curriculum, 0)
    assert isinstance(runner.step(), Rebuild)  # the backbone gets groups, at 1/4
    ramps, plans = [], []
    for index in range(1, 7):
        ramps.append(curriculum.state.coefficient("backbone.0"))
        check_lrs(curriculum)
        assert curriculum.state == schedule.state_at(runner.cursor, runner.initial_state)
        train_step(curriculum, index)
        plans.append(runner.step())
    assert ramps == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert curriculum.state.coefficient("head") == 1.0
    assert [type(plan) for plan in plans] == [
        Patch,
        Patch,
        Patch,
        type(None),
        type(None),
        type(None),
    ]


def test_plateau_ends_a_phase_and_a_missing_metric_changes_nothing():
    curriculum = make_curriculum(make_model())
    schedule = Schedule(
        [
            Phase(
                "head",
                freeze("backbone"),
                until=any_of(plateau("val_loss", patience=2), after_epochs(9)),
            ),
            Phase("all", unfreeze("backbone")),
        ]
    )
    runner = ScheduleRunner(curriculum, schedule)
    runner.start()
    cursor = runner.cursor
    with pytest.raises(ValueError, match=r"'val_loss'.*'loss'"):
        runner.epoch_end({"loss": 1.0})
    assert runner.cursor == cursor
    for value in (1.0, 0.9, 0.95):
        assert runner.epoch_end({"val_loss": value}) is None
    runner.epoch_end({"val_loss": 0.91})
    assert runner.phase.name == "all" and not curriculum.state.is_frozen("backbone")


# Saving and resuming --------------------------------------------------------------------------

RESUME_SCHEDULE = Schedule(
    [
        Phase("head", freeze("backbone"), until=after_steps(4)),
        Phase("top", unfreeze(r"backbone\.2"), until=after_steps(6), warmup_steps=4),
        Phase("all", unfreeze("backbone"), until=plateau("val_loss", patience=2), warmup_steps=3),
        Phase("last", freeze(r"backbone\.0")),
    ]
)
VAL_LOSSES = [1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.72, 0.71]


def run(curriculum, runner, steps, start=0):
    """Train ``steps`` steps from step ``start``: an epoch ends every third step."""
    for index in range(start, start + steps):
        train_step(curriculum, index)
        runner.step()
        if index % 3 == 2:
            runner.epoch_end({"val_loss": VAL_LOSSES[(index // 3) % len(VAL_LOSSES)]})


def saved_bytes(curriculum, runner) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "model": curriculum.model.state_dict(),
            "curriculum": curriculum.state_dict(),
            "runner": runner.state_dict(),
        },
        buffer,
    )
    return buffer.getvalue()


def resumed(data: bytes, schedule=RESUME_SCHEDULE, **load_options):
    checkpoint = torch.load(io.BytesIO(data), weights_only=True)
    model = make_model(seed=123)  # other weights: everything must come from the checkpoint
    model.load_state_dict(checkpoint["model"])
    curriculum = make_curriculum(model)
    curriculum.load_state_dict(checkpoint["curriculum"])
    runner = ScheduleRunner(curriculum, schedule)
    runner.load_state_dict(checkpoint["runner"], **load_options)
    return curriculum, runner


def started(schedule=RESUME_SCHEDULE):
    curriculum = make_curriculum(make_model())
    runner = ScheduleRunner(curriculum, schedule)
    runner.start()
    curriculum.build()
    return curriculum, runner


def assert_same_run(first, second):
    (curriculum_a, runner_a), (curriculum_b, runner_b) = first, second
    assert runner_a.cursor == runner_b.cursor
    assert curriculum_a.state == curriculum_b.state
    for (name, a), (_, b) in zip(
        curriculum_a.model.named_parameters(), curriculum_b.model.named_parameters()
    ):
        assert torch.equal(a, b), name
    saved_a, saved_b = curriculum_a.state_dict(), curriculum_b.state_dict()
    assert saved_a["scheduler"] == saved_b["scheduler"]
    assert saved_a["optimizer"].keys() == saved_b["optimizer"].keys()
    for key in saved_a["optimizer"]:
        assert_equal_trees(saved_a["optimizer"][key], saved_b["optimizer"][key])


def assert_equal_trees(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal_trees(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal_trees(x, y)
    else:
        assert a == b


@pytest.mark.parametrize(
    ("save_at", "where"),
    [
        (2, "mid-phase"),  # phase "head", 2 of 4 steps
        (6, "mid-warmup"),  # phase "top", 2 of 4 warmup steps done
        (18, "mid-plateau"),  # phase "all", a best value and bad epochs recorded
    ],
)
def test_resume_continues_bit_for_bit(save_at, where):
    uninterrupted = started()
    run(*uninterrupted, save_at)
    cursor = uninterrupted[1].cursor
    if where == "mid-warmup":
        assert uninterrupted[1].phase.name == "top" and 0 < cursor.steps < 4
    if where == "mid-plateau":
        assert uninterrupted[1].phase.name == "all" and cursor.progress[0] is not None
        assert cursor.progress[1] > 0
    data = saved_bytes(*uninterrupted)
    restarted = resumed(data)
    assert_same_run(uninterrupted, restarted)
    run(*uninterrupted, 14, start=save_at)
    run(*restarted, 14, start=save_at)
    assert_same_run(uninterrupted, restarted)
    assert uninterrupted[1].phase.name in ("all", "last")


LR_SCHEDULE = Schedule(
    [
        Phase("head", freeze("backbone"), until=after_steps(4), lr=0.02),
        Phase("top", unfreeze(r"backbone\.2"), until=after_steps(5), lr_scale=0.5, warmup_steps=3),
        Phase("all", unfreeze("backbone"), optimizer="fresh", lr_scale=0.1, warmup_steps=2),
    ]
)


@pytest.mark.parametrize("save_at", [3, 6, 9])
def test_resume_with_phase_lrs_continues_bit_for_bit(save_at):
    uninterrupted = started(LR_SCHEDULE)
    run(*uninterrupted, save_at)
    restarted = resumed(saved_bytes(*uninterrupted), LR_SCHEDULE)
    assert_same_run(uninterrupted, restarted)
    run(*uninterrupted, 8, start=save_at)
    run(*restarted, 8, start=save_at)
    assert_same_run(uninterrupted, restarted)
    assert uninterrupted[0].lr == restarted[0].lr and uninterrupted[1].phase.name == "all"


def test_resume_refuses_another_schedule_unless_allowed():
    run_now = started()
    run(*run_now, 2)
    data = saved_bytes(*run_now)
    longer = Schedule(
        [*RESUME_SCHEDULE.phases[:3], Phase("last", freeze(r"backbone\.0"), until=after_epochs(5))]
    )
    with pytest.raises(ValueError) as error:
        resumed(data, longer)
    message = str(error.value)
    assert RESUME_SCHEDULE.fingerprint() in message and longer.fingerprint() in message
    assert "allow_schedule_change=True" in message
    _, runner = resumed(data, longer, allow_schedule_change=True)
    assert runner.schedule is longer and runner.cursor == run_now[1].cursor
    # A new schedule whose state disagrees at the cursor is refused even when allowed.
    other = Schedule(
        [Phase("head", freeze("head"), until=after_steps(4)), *RESUME_SCHEDULE.phases[1:]]
    )
    with pytest.raises(ValueError, match=r"not the schedule's state.*'head'"):
        resumed(data, other, allow_schedule_change=True)


def test_resume_refuses_a_curriculum_in_another_state():
    run_now = started()
    run(*run_now, 2)
    checkpoint = torch.load(io.BytesIO(saved_bytes(*run_now)), weights_only=True)
    curriculum = make_curriculum(make_model())  # its own state dict was not loaded
    runner = ScheduleRunner(curriculum, RESUME_SCHEDULE)
    with pytest.raises(ValueError, match=r"'backbone'.*frozen=True"):
        runner.load_state_dict(checkpoint["runner"])
    assert runner.cursor is None


def test_malformed_runner_state_dicts():
    run_now = started()
    saved = run_now[1].state_dict()
    runner = ScheduleRunner(run_now[0], RESUME_SCHEDULE)
    for broken, message in [
        ({**saved, "format": "x"}, "not a mentor_fn ScheduleRunner"),
        ({**saved, "version": 9}, "version 9"),
        ({k: v for k, v in saved.items() if k != "cursor"}, "fields"),
        ({**saved, "cursor": {**saved["cursor"], "steps": -1}}, "steps must be"),
        ({**saved, "cursor": {**saved["cursor"], "phase": 9}}, "out of range"),
        ({**saved, "fingerprint": 3}, "fingerprint"),
    ]:
        with pytest.raises(ValueError, match=message):
            runner.load_state_dict(broken)
    with pytest.raises(TypeError, match="allow_schedule_change"):
        runner.load_state_dict(saved, allow_schedule_change="yes")


def test_an_unserializable_schedule_fails_at_save_time():
    def custom(state):
        return state.freeze("backbone")

    curriculum = make_curriculum(make_model())
    runner = ScheduleRunner(curriculum, Schedule([Phase("a", custom)]))
    runner.start()  # runs fine
    with pytest.raises(TypeError, match=re.escape("custom")):
        runner.state_dict()


def test_moved_to_another_curriculum_goes_on_at_the_same_cursor():
    uninterrupted = started()
    run(*uninterrupted, 6)  # mid-warmup
    curriculum, runner = uninterrupted
    other = make_curriculum(curriculum.model)
    other.load_state_dict(curriculum.state_dict())
    moved = runner.moved_to(other)
    assert moved.cursor == runner.cursor and moved.curriculum is other
    assert moved.initial_state == runner.initial_state and moved.schedule is runner.schedule
    run(other, moved, 8, start=6)
    assert moved.phase.name in ("all", "last")
    with pytest.raises(RuntimeError, match="start"):
        ScheduleRunner(other, RESUME_SCHEDULE).moved_to(other)


def test_check_state_names_a_change_made_by_other_means():
    curriculum, runner = started()
    runner.check_state()
    curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    with pytest.raises(ValueError, match=r"'backbone.0'.*frozen=True.*hands off"):
        runner.check_state("hands off")
    with pytest.raises(ValueError, match="hands off"):
        runner.moved_to(make_curriculum(curriculum.model), "hands off")
