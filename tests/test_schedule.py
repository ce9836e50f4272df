"""Schedules: Phase and Schedule values, the pure cursor, state_at (with warmup), check, plain data."""

from __future__ import annotations

import io
import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import apply_writes, expected_owners, resolution
from torch import nn

from mentor_fn import (
    CurriculumState,
    chain,
    freeze,
    layerwise_lr_decay,
    set_lr_coefficient,
    unfreeze,
)
from mentor_fn._schedules.conditions import after_epochs, after_steps, all_of, any_of, plateau
from mentor_fn._schedules.cursor import ScheduleCursor
from mentor_fn._schedules.schedule import Phase, Schedule
from mentor_fn.testing import Write
from mentor_fn.testing import models as module_trees
from mentor_fn.testing import writes as writes_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def transition_of(write: Write):
    if write.operation == "freeze":
        return freeze(write.pattern)
    if write.operation == "unfreeze":
        return unfreeze(write.pattern)
    return set_lr_coefficient(write.coefficient, write.pattern)


small_conditions = st.recursive(
    st.one_of(
        st.builds(after_epochs, st.integers(1, 2)),
        st.builds(after_steps, st.integers(1, 4)),
        st.builds(plateau, st.just("loss"), patience=st.integers(1, 2)),
    ),
    lambda inner: st.lists(inner, min_size=1, max_size=2).flatmap(
        lambda children: st.sampled_from([any_of(*children), all_of(*children)])
    ),
    max_leaves=3,
)
events = st.lists(
    st.one_of(
        st.tuples(st.just("step"), st.integers(0, 3)),
        st.tuples(st.just("epoch"), st.sampled_from([0.1, 0.5, 1.0])),
    ),
    max_size=25,
)


@st.composite
def schedule_cases(draw):
    """A model, its initial state, a schedule of random writes, and each phase's writes."""
    model = draw(module_trees())
    # Some layers frozen from the start, so that phases unfreeze (and warm up) layers.
    initial = apply_writes(
        CurriculumState.from_model(model),
        draw(writes_for(CurriculumState.from_model(model).layers)),
    )
    count = draw(st.integers(1, 4))
    phase_writes, phases = [], []
    for index in range(count):
        writes = draw(writes_for(initial.layers, max_size=4))
        last = index == count - 1
        until = draw(st.none() | small_conditions) if last else draw(small_conditions)
        warmup = draw(st.sampled_from([0, 1, 2, 3, 5, 8]))
        transition = chain(*map(transition_of, writes))
        phases.append(Phase(f"p{index}", transition, until=until, warmup_steps=warmup))
        phase_writes.append(writes)
    return model, initial, Schedule(phases), phase_writes


def oracle_resolution(model, initial, schedule, phase_writes, cursor):
    """What state_at must resolve to: the phases' writes replayed with the state's
    methods, then the warmup computed layer by layer from torch's own ownership."""
    before = initial
    for writes in phase_writes[: cursor.phase]:
        for write in writes:
            before = write.apply(before)
    target = before
    for write in phase_writes[cursor.phase]:
        target = write.apply(target)
    owners = set(expected_owners(model).values())
    total = schedule.phases[cursor.phase].warmup_steps
    expected = []
    for layer in initial.layers:
        coefficient = target.coefficient(layer)
        warming = before.is_frozen(layer) and not target.is_frozen(layer) and layer in owners
        if warming and cursor.steps + 1 < total:
            coefficient = coefficient * ((cursor.steps + 1) / total)
        expected.append((target.is_frozen(layer), coefficient))
    return tuple(expected)


@settings(max_examples=40)
@given(schedule_cases(), events)
def test_state_at_agrees_with_replaying_the_phases(case, run_events):
    model, initial, schedule, phase_writes = case
    cursor = schedule.start()
    assert cursor == ScheduleCursor(0, 0, 0, cursor.progress)
    for kind, value in run_events:
        if kind == "step":
            new = schedule.advance(cursor, steps=value)
        else:
            new = schedule.advance(cursor, epoch_end=True, metrics={"loss": value})
        # Never backwards, never a skipped phase; a new phase starts at zero.
        if new.phase == cursor.phase:
            assert new.epochs == cursor.epochs + (kind == "epoch")
            assert new.steps == cursor.steps + (value if kind == "step" else 0)
            assert new.finished or not cursor.finished
        else:
            assert new.phase == cursor.phase + 1 and not cursor.finished
            assert (new.epochs, new.steps, new.finished) == (0, 0, False)
        # A cursor is a value: an equal cursor (through plain data) has an equal future.
        again = ScheduleCursor.from_dict(json.loads(json.dumps(cursor.to_dict())))
        assert again == cursor
        if kind == "step":
            assert schedule.advance(again, steps=value) == new
        else:
            assert schedule.advance(again, epoch_end=True, metrics={"loss": value}) == new
        schedule.validate_cursor(new)
        assert resolution(schedule.state_at(new, initial)) == oracle_resolution(
            model, initial, schedule, phase_writes, new
        )
        cursor = new


def test_phases_end_exactly_when_their_condition_holds():
    schedule = Schedule(
        [
            Phase("a", freeze("x"), until=after_steps(2)),
            Phase("b", unfreeze("x"), until=after_epochs(1)),
            Phase("c", freeze("y"), until=after_steps(1)),
        ]
    )
    cursor = schedule.advance(schedule.start(), steps=1)
    assert (cursor.phase, cursor.steps) == (0, 1)
    cursor = schedule.advance(cursor, steps=1)
    assert cursor == ScheduleCursor(1)
    # Phase c's after_steps(1) would hold at once, but one call moves one phase.
    cursor = schedule.advance(cursor, steps=5, epoch_end=True)
    assert cursor == ScheduleCursor(2)
    cursor = schedule.advance(cursor, steps=1)
    assert cursor == ScheduleCursor(2, 0, 1, None, finished=True)
    # Finished: the run stays in the last phase; epochs and steps still count.
    cursor = schedule.advance(cursor, steps=2, epoch_end=True)
    assert cursor == ScheduleCursor(2, 1, 3, None, finished=True)


def test_a_last_phase_without_until_never_finishes():
    schedule = Schedule([Phase("only", freeze("x"))])
    cursor = schedule.start()
    for _ in range(3):
        cursor = schedule.advance(cursor, steps=10, epoch_end=True)
    assert cursor == ScheduleCursor(0, 3, 30) and not cursor.finished


def test_plateau_metric_must_be_reported():
    schedule = Schedule(
        [Phase("a", freeze("x"), until=plateau("val_loss")), Phase("b", unfreeze("x"))]
    )
    cursor = schedule.advance(schedule.start(), steps=3)  # no epoch end: no metric read
    with pytest.raises(ValueError, match=r"'val_loss'.*'loss'") as error:
        schedule.advance(cursor, epoch_end=True, metrics={"loss": 1.0})
    assert not isinstance(error.value, KeyError)


def test_advance_validates_its_arguments():
    schedule = Schedule([Phase("a", freeze("x"), until=after_epochs(1)), Phase("b", unfreeze("x"))])
    cursor = schedule.start()
    with pytest.raises(ValueError, match="-1"):
        schedule.advance(cursor, steps=-1)
    with pytest.raises(TypeError, match="True"):
        schedule.advance(cursor, steps=True)
    with pytest.raises(TypeError, match="epoch_end"):
        schedule.advance(cursor, epoch_end=1)
    with pytest.raises(ValueError, match="epoch_end=True"):
        schedule.advance(cursor, metrics={"loss": 1.0})
    with pytest.raises(TypeError, match="mapping"):
        schedule.advance(cursor, epoch_end=True, metrics=[1.0])
    with pytest.raises(ValueError, match="out of range"):
        schedule.advance(ScheduleCursor(2), steps=1)
    with pytest.raises(TypeError, match="ScheduleCursor"):
        schedule.advance((0, 0, 0), steps=1)


def test_planned_end_and_phase_at():
    schedule = Schedule(
        [
            Phase("a", freeze("x"), until=after_epochs(3)),
            Phase("b", unfreeze("x"), until=any_of(plateau("loss"), after_epochs(6))),
            Phase("c", freeze("x"), until=after_steps(100)),
            Phase("d", unfreeze("x")),
        ]
    )
    cursor = schedule.advance(schedule.start(), epoch_end=True)
    assert schedule.phase_at(cursor).name == "a"
    assert schedule.planned_end(cursor, epoch=5) == 7  # started at epoch 4, lasts 3
    assert (
        schedule.planned_end(ScheduleCursor(1, 2, 0, ((None, (None, 0)), (False, False))), epoch=10)
        == 14
    )
    assert schedule.planned_end(ScheduleCursor(2), epoch=10) is None
    assert schedule.planned_end(ScheduleCursor(3), epoch=10) is None


# Warmup ----------------------------------------------------------------------------------


class Block(nn.Module):
    """Owns a parameter itself and holds a child that owns another."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(2))
        self.inner = nn.Linear(2, 2)


def block_model():
    model = nn.Module()
    model.block = Block()
    model.head = nn.Linear(2, 2)
    return model


def test_warmup_ramps_only_the_newly_trainable_layers_in_a_subtree():
    model = block_model()
    assert CurriculumState.from_model(model).layers == ("block", "block.inner", "head")
    schedule = Schedule(
        [
            Phase(
                "top",
                chain(freeze("block"), unfreeze("block.inner"), set_lr_coefficient(0.5, "block")),
                until=after_steps(1),
            ),
            Phase("all", unfreeze("block"), warmup_steps=4),
        ]
    )
    initial = CurriculumState.from_model(model)
    cursor = schedule.advance(schedule.start(), steps=1)
    seen = []
    for _ in range(6):
        state = schedule.state_at(cursor, initial)
        # block.inner was trainable already: it keeps 0.5 while its parent ramps.
        seen.append((state.coefficient("block"), state.coefficient("block.inner")))
        assert state.coefficient("head") == 1.0 and not state.is_frozen("block")
        cursor = schedule.advance(cursor, steps=1)
    assert seen == [(0.125, 0.5), (0.25, 0.5), (0.375, 0.5), (0.5, 0.5), (0.5, 0.5), (0.5, 0.5)]
    # At the target the state is exactly the phase's transition's result.
    assert schedule.state_at(cursor, initial) == unfreeze("block")(
        schedule.phases[0].transition(initial)
    )


def test_warmup_ramps_nested_warming_layers_each_to_its_own_target():
    model = block_model()
    schedule = Schedule(
        [
            Phase(
                "head",
                chain(freeze("block"), set_lr_coefficient(0.2, "block.inner")),
                until=after_steps(1),
            ),
            Phase("all", unfreeze("block"), warmup_steps=2),
        ]
    )
    initial = CurriculumState.from_model(model)
    state = schedule.state_at(ScheduleCursor(1), initial)
    assert (
        state.coefficient("block"),
        state.coefficient("block.inner"),
        state.coefficient("head"),
    ) == (0.5, 0.1, 1.0)


def test_warmup_skips_layers_that_own_no_parameters():
    state = CurriculumState(("body", "body.0", "head"), parameter_owners=("body.0", "head"))
    schedule = Schedule(
        [
            Phase("a", freeze("body"), until=after_steps(1)),
            Phase("b", unfreeze("body"), warmup_steps=10),
        ]
    )
    ramped = schedule.state_at(ScheduleCursor(1, 0, 3), state)
    assert ramped.coefficient("body") == 1.0 and ramped.coefficient("body.0") == pytest.approx(0.4)


def test_a_warmup_cut_short_leaves_the_target_for_the_next_phase():
    state = CurriculumState(("body", "head"))
    schedule = Schedule(
        [
            Phase("a", freeze("body"), until=after_steps(1)),
            Phase("b", unfreeze("body"), warmup_steps=100, until=after_steps(2)),
            Phase("c", set_lr_coefficient(0.5, "head")),
        ]
    )
    assert schedule.state_at(ScheduleCursor(1, 0, 1), state).coefficient("body") == 0.02
    assert schedule.state_at(ScheduleCursor(2), state).coefficient("body") == 1.0


# Phase and Schedule validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((3, freeze("x")), {}, TypeError, "3"),
        (("", freeze("x")), {}, ValueError, "non-empty"),
        (("a", "freeze"), {}, TypeError, "'freeze'"),
        (("a", freeze("x")), {"until": 3}, TypeError, "until"),
        (("a", freeze("x")), {"lr": 0.1, "lr_scale": 0.1}, ValueError, "not both"),
        (("a", freeze("x")), {"lr": 0}, ValueError, "lr must be finite and > 0"),
        (("a", freeze("x")), {"lr": math.nan}, ValueError, "nan"),
        (("a", freeze("x")), {"lr": True}, TypeError, "True"),
        (("a", freeze("x")), {"lr_scale": -1}, ValueError, "lr_scale"),
        (("a", freeze("x")), {"lr_scale": math.inf}, ValueError, "inf"),
        (("a", freeze("x")), {"optimizer": "new"}, ValueError, "'new'"),
        (("a", freeze("x")), {"optimizer": None}, TypeError, "None"),
        (("a", freeze("x")), {"warmup_steps": -1}, ValueError, "-1"),
        (("a", freeze("x")), {"warmup_steps": True}, TypeError, "True"),
        (("a", freeze("x")), {"warmup_steps": 1.0}, TypeError, "1.0"),
    ],
)
def test_phase_validates_eagerly(args, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        Phase(*args, **kwargs)


def test_phase_is_a_frozen_value():
    phase = Phase("a", freeze("x"), until=after_epochs(1), lr=1, warmup_steps=3)
    assert phase == Phase("a", freeze("x"), until=after_epochs(1), lr=1.0, warmup_steps=3)
    assert type(phase.lr) is float and hash(phase) == hash(
        Phase("a", freeze("x"), until=after_epochs(1), lr=1.0, warmup_steps=3)
    )
    with pytest.raises(AttributeError):
        phase.lr = 2.0
    with pytest.raises(TypeError):
        Phase("a", freeze("x"), after_epochs(1))  # until is keyword-only


def test_schedule_validates_eagerly():
    a = Phase("a", freeze("x"), until=after_epochs(1))
    with pytest.raises(ValueError, match="at least one phase"):
        Schedule([])
    with pytest.raises(TypeError, match="Phase"):
        Schedule(a)
    with pytest.raises(TypeError, match=r"phase 1.*'b'"):
        Schedule([a, "b"])
    with pytest.raises(ValueError, match="duplicate phase name 'a'"):
        Schedule([a, Phase("a", unfreeze("x"))])
    with pytest.raises(ValueError, match="phase 'b' has no until"):
        Schedule([Phase("b", freeze("x")), a])
    schedule = Schedule(phase for phase in [a, Phase("b", freeze("x"))])
    assert schedule == Schedule([a, Phase("b", freeze("x"))]) and len(schedule.phases) == 2


# check() -----------------------------------------------------------------------------------


def check_model():
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model.head = nn.Linear(2, 2)
    return model


def test_check_collects_every_bad_pattern_of_every_phase():
    def mine(state):
        return state.freeze("heda")

    schedule = Schedule(
        [
            Phase("head", chain(freeze("backbon"), unfreeze("head")), until=after_epochs(1)),
            Phase(
                "top",
                chain(
                    unfreeze(["backbone.1", "backbone.7"]),
                    layerwise_lr_decay(0.5, patterns=["hed", "head"]),
                ),
                until=after_epochs(1),
            ),
            Phase("custom", mine, until=after_epochs(1)),
            Phase("all", set_lr_coefficient(0.5, "backbone.(")),
        ]
    )
    with pytest.raises(ValueError) as error:
        schedule.check(check_model())
    message = str(error.value)
    assert "5 pattern problem" in message
    for expected in [
        r"phase 'head': pattern 'backbon' matches no layer; closest layer names: 'backbone'",
        r"phase 'top': pattern 'backbone.7' matches no layer",
        r"phase 'top': pattern 'hed' matches no layer; closest layer names: 'head'",
        r"phase 'custom': pattern 'heda' matches no layer",
        r"phase 'all': invalid regular expression 'backbone.('",
    ]:
        assert expected in message
    assert "'head' matches" not in message and "'backbone.1' matches" not in message


def test_check_passes_and_accepts_layers_or_a_state():
    schedule = Schedule(
        [
            Phase("a", freeze("backbone"), until=after_epochs(1)),
            Phase("b", unfreeze(r"backbone\.0")),
        ]
    )
    assert schedule.check(check_model()) is None
    assert schedule.check(["backbone", "backbone.0", "head"]) is None
    assert schedule.check(CurriculumState(("backbone", "backbone.0"))) is None
    with pytest.raises(ValueError, match="'backbone'"):
        schedule.check(["head"])


# Plain data ------------------------------------------------------------------------------


def test_schedule_round_trips_through_plain_data():
    schedule = Schedule(
        [
            Phase(
                "head", chain(freeze("backbone"), unfreeze("head")), until=after_epochs(2), lr=0.01
            ),
            Phase(
                "top",
                unfreeze(r"backbone\.1"),
                until=any_of(plateau("val_loss", patience=2, min_delta=0.01), after_steps(600)),
                warmup_steps=10,
            ),
            Phase(
                "all",
                layerwise_lr_decay(0.8),
                optimizer="fresh",
                lr_scale=0.1,
                until=all_of(after_epochs(1)),
            ),
        ]
    )
    data = schedule.to_dict()
    assert data["format"] == "mentor_fn.Schedule" and data["version"] == 1
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    loaded = Schedule.from_dict(torch.load(buffer, weights_only=True))
    assert loaded == schedule
    assert Schedule.from_dict(json.loads(json.dumps(data))) == schedule
    assert loaded.fingerprint() == schedule.fingerprint()
    assert re.fullmatch("[0-9a-f]{64}", schedule.fingerprint())
    changed = Schedule(
        [
            *schedule.phases[:2],
            Phase("all", layerwise_lr_decay(0.8), optimizer="fresh", lr_scale=0.2),
        ]
    )
    assert changed.fingerprint() != schedule.fingerprint()


def test_a_users_callable_makes_the_schedule_unserializable():
    def my_transition(state):
        return state

    schedule = Schedule([Phase("a", chain(freeze("x"), my_transition))])
    with pytest.raises(TypeError, match="my_transition"):
        schedule.to_dict()
    with pytest.raises(TypeError, match="my_transition"):
        schedule.fingerprint()


def good_schedule_dict():
    return Schedule(
        [Phase("a", freeze("x"), until=after_epochs(1)), Phase("b", unfreeze("x"))]
    ).to_dict()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="other"), "format is 'other'"),
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(version=True), "version True"),
        (lambda d: d.update(extra=1), "'extra'"),
        (lambda d: d.update(phases="a"), "'phases' must be a list"),
        (lambda d: d.update(phases=[]), "at least one phase"),
        (lambda d: d["phases"][0].pop("lr"), r"phases\[0\]: malformed phase dict"),
        (lambda d: d["phases"][1].update(lr=-1.0), r"phases\[1\]: Phase 'b': lr"),
        (lambda d: d["phases"][1].update(name=7), r"phases\[1\].*name must be a str"),
        (
            lambda d: d["phases"][0].update(until={"kind": "after_epochs", "n": 0}),
            r"phases\[0\].*n must be",
        ),
        (lambda d: d["phases"][0].update(until=None), "phase 'a' has no until"),
        (lambda d: d["phases"][0].update(transition={"kind": "melt"}), r"phases\[0\].*'melt'"),
        (lambda d: d["phases"][0].update(warmup_steps=1.5), r"phases\[0\].*warmup_steps"),
    ],
)
def test_malformed_schedule_dicts_name_the_field(edit, message):
    data = good_schedule_dict()
    edit(data)
    with pytest.raises(ValueError, match=message):
        Schedule.from_dict(data)


def test_cursor_round_trips_and_validates():
    schedule = Schedule(
        [
            Phase("a", freeze("x"), until=all_of(plateau("loss"), after_steps(9))),
            Phase("b", unfreeze("x"), until=after_epochs(1)),
        ]
    )
    cursor = schedule.advance(schedule.start(), steps=2, epoch_end=True, metrics={"loss": 0.25})
    assert cursor.progress == (((0.25, 0), None), (False, False))
    data = cursor.to_dict()
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    assert ScheduleCursor.from_dict(torch.load(buffer, weights_only=True)) == cursor
    schedule.validate_cursor(cursor)
    with pytest.raises(ValueError, match="does not belong"):
        schedule.validate_cursor(ScheduleCursor(0, 0, 0, (None, 0)))
    with pytest.raises(ValueError, match="cannot be finished"):
        schedule.validate_cursor(ScheduleCursor(0, 0, 0, schedule.start().progress, True))
    with pytest.raises(ValueError, match="out of range"):
        schedule.validate_cursor(ScheduleCursor(5))
    for field, value, message in [
        ("phase", -1, "phase must be an int >= 0"),
        ("steps", 1.0, "steps must be an int >= 0"),
        ("finished", 1, "finished must be a bool"),
        ("progress", {"best": 1}, "malformed cursor progress"),
        ("format", "x", "format is 'x'"),
    ]:
        with pytest.raises(ValueError, match=message):
            ScheduleCursor.from_dict({**data, field: value})
    with pytest.raises(TypeError, match="epochs"):
        ScheduleCursor(0, 1.5)


def test_the_design_example_from_the_public_api():
    import mentor_fn as mf

    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.layer3 = nn.Linear(2, 2)
    model.backbone.layer4 = nn.Linear(2, 2)
    model.head = nn.Linear(2, 2)
    schedule = mf.Schedule(
        [
            mf.Phase("head", mf.freeze("backbone"), until=mf.after_epochs(2)),
            mf.Phase(
                "top",
                mf.unfreeze("backbone.layer4"),
                until=mf.any_of(mf.plateau("val_loss", patience=2), mf.after_epochs(6)),
            ),
            mf.Phase(
                "all",
                mf.chain(mf.unfreeze("backbone"), mf.layerwise_lr_decay(0.8)),
                lr=1e-4,
                optimizer="fresh",
                warmup_steps=100,
            ),
        ]
    )
    assert schedule.check(model) is None
    assert mf.Schedule.from_dict(schedule.to_dict()) == schedule
    cursor = schedule.start()
    for _ in range(2):
        cursor = schedule.advance(cursor, steps=10, epoch_end=True, metrics={"val_loss": 1.0})
    assert schedule.phase_at(cursor).name == "top"
    state = schedule.state_at(cursor, mf.CurriculumState.from_model(model))
    assert [state.is_frozen(layer) for layer in state.layers] == [True, True, False, False]
