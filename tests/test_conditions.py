"""Conditions ending a phase: after_epochs, after_steps, plateau, any_of, all_of."""

from __future__ import annotations

import io
import json
import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mentor_fn._schedules.conditions import (
    CONDITION_KINDS,
    Condition,
    after_epochs,
    after_steps,
    all_of,
    any_of,
    condition_from_dict,
    plateau,
)


def run(condition, events, progress=None):
    """Feed ``events`` (("step", n) or ("epoch", metrics)) and return each point's ``holds``.

    Counts epochs and steps from zero, as a phase does.
    """
    progress = condition.start() if progress is None else progress
    epochs = steps = 0
    held = []
    for kind, value in events:
        if kind == "step":
            steps += value
            progress, holds = condition.advance(
                progress, phase_epochs=epochs, phase_steps=steps, epoch_end=False, metrics=None
            )
        else:
            epochs += 1
            progress, holds = condition.advance(
                progress, phase_epochs=epochs, phase_steps=steps, epoch_end=True, metrics=value
            )
        condition.validate_progress(progress)
        held.append(holds)
    return held


def epochs_of(values, metric="loss"):
    return [("epoch", {metric: value}) for value in values]


# after_epochs / after_steps ------------------------------------------------------------


@given(st.integers(1, 6), st.lists(st.integers(0, 3), max_size=12))
def test_after_epochs_and_steps_count_from_the_phase_start(n, steps_per_epoch):
    events = []
    for steps in steps_per_epoch:
        events += [("step", 1)] * steps + [("epoch", None)]
    epoch_flags = run(after_epochs(n), events)
    step_flags = run(after_steps(n), events)
    epochs = steps = 0
    for (kind, _), by_epochs, by_steps in zip(events, epoch_flags, step_flags):
        epochs += kind == "epoch"
        steps += kind == "step"
        assert by_epochs == (epochs >= n)
        assert by_steps == (steps >= n)


def test_after_steps_counts_several_steps_at_once():
    assert run(after_steps(5), [("step", 2), ("step", 2), ("step", 3)]) == [False, False, True]


@pytest.mark.parametrize("make", [after_epochs, after_steps])
@pytest.mark.parametrize(
    ("n", "error"),
    [(0, ValueError), (-1, ValueError), (True, TypeError), (1.0, TypeError), ("2", TypeError)],
)
def test_counts_are_validated(make, n, error):
    with pytest.raises(error, match=re.escape(repr(n))):
        make(n)


# plateau --------------------------------------------------------------------------------


def plateau_oracle(values, mode, min_delta, patience):
    """Whether the phase ends at each epoch end: the last ``patience`` values brought no improvement.

    An improvement beats the best *improvement* so far by more than
    ``min_delta``; the first value always improves.
    """
    improved, best = [], None
    for value in values:
        better = best is None or (
            value < best - min_delta if mode == "min" else value > best + min_delta
        )
        improved.append(better)
        if better:
            best = value
    return [
        index + 1 >= patience and not any(improved[index + 1 - patience : index + 1])
        for index in range(len(values))
    ]


@given(
    st.lists(st.sampled_from([0.0, 0.5, 0.9, 1.0, 1.05, 1.2, 2.0]), max_size=12),
    st.sampled_from(["min", "max"]),
    st.sampled_from([0.0, 0.1, 0.5]),
    st.integers(1, 4),
)
def test_plateau_agrees_with_the_oracle(values, mode, min_delta, patience):
    condition = plateau("loss", mode=mode, min_delta=min_delta, patience=patience)
    assert run(condition, epochs_of(values)) == plateau_oracle(values, mode, min_delta, patience)


def test_plateau_examples():
    assert run(plateau("loss"), epochs_of([1.0, 0.9, 0.9])) == [False, False, True]
    assert run(plateau("acc", mode="max"), epochs_of([0.5, 0.6, 0.55], "acc")) == [
        False,
        False,
        True,
    ]
    # min_delta: 0.95 is better than 1.0 but not by more than 0.1.
    assert run(plateau("loss", min_delta=0.1), epochs_of([1.0, 0.95])) == [False, True]
    # patience: two bad epoch ends in a row; an improvement resets the count.
    flags = run(plateau("loss", patience=2), epochs_of([1.0, 1.1, 0.8, 0.9, 0.9]))
    assert flags == [False, False, False, False, True]


def test_plateau_reads_metrics_only_at_epoch_ends():
    condition = plateau("loss", patience=1)
    events = [("step", 1), *epochs_of([1.0]), ("step", 1), ("step", 1), *epochs_of([2.0])]
    assert run(condition, events) == [False, False, False, False, True]


def test_plateau_progress_is_plain_data():
    condition = plateau("loss")
    progress = condition.start()
    progress, _ = condition.advance(
        progress, phase_epochs=1, phase_steps=0, epoch_end=True, metrics={"loss": torch.tensor(0.5)}
    )
    assert progress == (0.5, 0) and type(progress[0]) is float


def test_plateau_missing_metric_names_it_and_lists_the_reported_ones():
    condition = plateau("val_loss")
    advance = lambda metrics: condition.advance(
        condition.start(), phase_epochs=1, phase_steps=0, epoch_end=True, metrics=metrics
    )
    with pytest.raises(ValueError, match=r"'val_loss'.*'acc', 'loss'"):
        advance({"loss": 1.0, "acc": 0.5})
    with pytest.raises(ValueError, match=r"'val_loss'.*none"):
        advance(None)
    with pytest.raises(ValueError, match="NaN"):
        advance({"val_loss": math.nan})
    with pytest.raises(TypeError, match="'low'"):
        advance({"val_loss": "low"})
    with pytest.raises(TypeError, match="True"):
        advance({"val_loss": True})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"metric": 3}, TypeError, "3"),
        ({"metric": ""}, ValueError, "non-empty"),
        ({"mode": "lowest"}, ValueError, "'lowest'"),
        ({"mode": None}, TypeError, "None"),
        ({"patience": 0}, ValueError, "patience"),
        ({"patience": 1.5}, TypeError, "patience"),
        ({"min_delta": -0.1}, ValueError, "-0.1"),
        ({"min_delta": math.inf}, ValueError, "inf"),
        ({"min_delta": True}, TypeError, "True"),
    ],
)
def test_plateau_arguments_are_validated(kwargs, error, message):
    arguments = {"metric": "loss", **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        plateau(arguments.pop("metric"), **arguments)


# any_of / all_of -----------------------------------------------------------------------


def test_any_of_holds_when_any_child_holds():
    condition = any_of(plateau("loss", patience=2), after_epochs(3))
    assert run(condition, epochs_of([1.0, 0.9, 0.8])) == [False, False, True]  # after_epochs
    assert run(condition, epochs_of([1.0, 1.0, 1.0])) == [False, False, True]  # both
    assert run(any_of(plateau("loss"), after_epochs(9)), epochs_of([1.0, 1.0])) == [False, True]


def test_all_of_latches_every_child():
    # The plateau holds at the second epoch end, then the metric improves
    # again; all_of still counts it once the steps are done too.
    condition = all_of(plateau("loss"), after_steps(3))
    events = [("step", 1), *epochs_of([1.0]), ("step", 1), *epochs_of([1.5])]
    events += [*epochs_of([0.5]), ("step", 1)]
    assert run(condition, events) == [False, False, False, False, False, True]
    # Without the latch the plateau child would not hold at the end.
    assert run(plateau("loss"), epochs_of([1.0, 1.5, 0.5])) == [False, True, False]


def test_composite_children_keep_advancing():
    condition = all_of(after_epochs(1), plateau("loss", patience=3))
    progress = condition.start()
    for epoch, value in enumerate([1.0, 2.0, 3.0], start=1):
        progress, holds = condition.advance(
            progress, phase_epochs=epoch, phase_steps=0, epoch_end=True, metrics={"loss": value}
        )
    assert progress == ((None, (1.0, 2)), (True, False)) and not holds


def test_composites_validate_their_children():
    with pytest.raises(ValueError, match="at least one"):
        any_of()
    with pytest.raises(ValueError, match="at least one"):
        all_of()
    with pytest.raises(TypeError, match="'after_epochs'"):
        all_of(after_steps(1), "after_epochs")
    assert run(all_of(all_of(after_steps(1))), [("step", 1)]) == [True]


# Values: hashing, max_epochs, plain data ------------------------------------------------


leaf_conditions = st.one_of(
    st.builds(after_epochs, st.integers(1, 100)),
    st.builds(after_steps, st.integers(1, 10**9)),
    st.builds(
        plateau,
        st.sampled_from(["loss", "val_loss", "accuracy"]),
        mode=st.sampled_from(["min", "max"]),
        patience=st.integers(1, 5),
        min_delta=st.floats(0, 1) | st.just(0),
    ),
)
conditions = st.recursive(
    leaf_conditions,
    lambda inner: st.lists(inner, min_size=1, max_size=3).flatmap(
        lambda children: st.sampled_from([any_of(*children), all_of(*children)])
    ),
    max_leaves=6,
)


@given(conditions)
def test_conditions_round_trip_through_plain_data(condition):
    data = condition.to_dict()
    assert condition_from_dict(data) == condition
    assert condition_from_dict(json.loads(json.dumps(data))) == condition
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    assert condition_from_dict(torch.load(buffer, weights_only=True)) == condition
    assert hash(condition_from_dict(data)) == hash(condition)
    condition.validate_progress(condition.start())


def test_conditions_are_immutable_values():
    assert plateau("loss", patience=2) == plateau("loss", patience=2)
    assert len({after_epochs(2), after_epochs(2), after_steps(2)}) == 2
    assert isinstance(any_of(after_epochs(1)), Condition)
    with pytest.raises(AttributeError):
        after_epochs(2).n = 3
    assert set(CONDITION_KINDS) == {"after_epochs", "after_steps", "plateau", "any_of", "all_of"}


def test_max_epochs_where_knowable():
    assert after_epochs(3).max_epochs == 3
    assert after_steps(3).max_epochs is None and plateau("loss").max_epochs is None
    assert any_of(plateau("loss"), after_epochs(6), after_epochs(4)).max_epochs == 4
    assert any_of(plateau("loss"), after_steps(4)).max_epochs is None
    assert all_of(after_epochs(2), after_epochs(5)).max_epochs == 5
    assert all_of(after_epochs(2), plateau("loss")).max_epochs is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1], "must be a mapping"),
        ({"kind": "after_days", "n": 1}, "'after_days'"),
        ({"kind": "after_epochs"}, r"fields \['kind'\]"),
        ({"kind": "after_epochs", "n": 0}, "n must be an int >= 1"),
        ({"kind": "after_steps", "n": "3"}, "n must be an int >= 1"),
        (
            {"kind": "plateau", "metric": "loss", "mode": "up", "patience": 1, "min_delta": 0.0},
            "'up'",
        ),
        ({"kind": "plateau", "metric": "loss", "mode": "min", "patience": 1}, "expected"),
        ({"kind": "any_of", "conditions": []}, "at least one"),
        ({"kind": "all_of", "conditions": "after_epochs"}, "must be a list"),
        ({"kind": "all_of", "conditions": [{"kind": "after_epochs", "n": -1}]}, "after_epochs"),
    ],
)
def test_malformed_condition_dicts_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        condition_from_dict(data)


@pytest.mark.parametrize(
    ("condition", "progress"),
    [
        (after_epochs(1), 0),
        (plateau("loss"), None),
        (plateau("loss"), (None, -1)),
        (plateau("loss"), (math.nan, 0)),
        (plateau("loss"), ("a", 0)),
        (any_of(after_epochs(1)), ((None,), (False, False))),
        (all_of(plateau("loss")), ((None,), (False,))),
        (all_of(after_epochs(1)), ((None,), (1,))),
    ],
)
def test_validate_progress_rejects_foreign_progress(condition, progress):
    with pytest.raises(ValueError, match="does not belong"):
        condition.validate_progress(progress)


def test_a_users_own_condition_works_but_is_not_serializable():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class EveryOtherEpoch(Condition):
        def start(self):
            return None

        def advance(self, progress, *, phase_epochs, phase_steps, epoch_end, metrics):
            return None, phase_epochs == 2

    assert "EveryOtherEpoch" not in str(sorted(CONDITION_KINDS))
    assert run(any_of(EveryOtherEpoch(), after_steps(99)), epochs_of([1, 2], "x"))[1] is True
    with pytest.raises(TypeError, match=r"EveryOtherEpoch.*not serializable"):
        all_of(EveryOtherEpoch()).to_dict()
