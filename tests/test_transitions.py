"""Transition values: freeze, unfreeze, set_lr_coefficient, layerwise_lr_decay, chain."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import Write, apply_writes, module_trees, scenarios, writes_for

from mentor_fn import (
    CurriculumState,
    chain,
    freeze,
    layerwise_lr_decay,
    set_lr_coefficient,
    unfreeze,
)

LAYERS = ("embed", "blocks", "blocks.0", "blocks.1", "norm", "head")


def transition_of(write: Write):
    """The transition value doing what ``write.apply`` does with a method."""
    if write.operation == "freeze":
        return freeze(write.pattern)
    if write.operation == "unfreeze":
        return unfreeze(write.pattern)
    return set_lr_coefficient(write.coefficient, write.pattern)


# Each transition equals its method ---------------------------------------------------


def test_transitions_equal_methods():
    state = CurriculumState(LAYERS).set_lr_coefficient(0.5, "blocks")
    assert freeze("blocks")(state) == state.freeze("blocks")
    assert unfreeze("blocks.1")(state.freeze("blocks")) == state.freeze("blocks").unfreeze(
        "blocks.1"
    )
    assert set_lr_coefficient(0.1, [r"blocks\.\d", "head"])(state) == state.set_lr_coefficient(
        0.1, [r"blocks\.\d", "head"]
    )


@given(scenarios())
def test_transition_values_equal_state_methods(scenario):
    for writes, start, end in (
        (scenario.writes_a, scenario.initial, scenario.a),
        (scenario.writes_b, scenario.a, scenario.b),
    ):
        state = start
        for write in writes:
            assert transition_of(write)(state) == write.apply(state)
            state = transition_of(write)(state)
        assert state == end
        assert chain(*map(transition_of, writes))(start) == end


def test_transitions_are_pure():
    state = CurriculumState(LAYERS)
    phase = chain(freeze("embed"), set_lr_coefficient(0.1, "blocks"))
    after = phase(state)
    assert state == CurriculumState(LAYERS)
    assert phase(state) == after  # the same value applies the same way again


def test_transition_values_compare_and_hash():
    assert freeze("head") == freeze(["head"])
    assert freeze("head") != unfreeze("head")
    assert set_lr_coefficient(1, "head") == set_lr_coefficient(1.0, ("head",))
    schedule = {freeze("embed"), freeze("embed"), chain(freeze("embed"))}
    assert len(schedule) == 2


# chain ------------------------------------------------------------------------------------


def test_chain_applies_left_to_right():
    state = CurriculumState(("backbone", "backbone.layer4", "head"))
    phase = chain(freeze("backbone"), unfreeze("backbone.layer4"))
    assert dict(phase(state).frozen) == {"backbone": True, "backbone.layer4": False}
    reverse = chain(unfreeze("backbone.layer4"), freeze("backbone"))
    assert dict(reverse(state).frozen) == {"backbone": True}


def test_chain_nests_and_accepts_callables():
    state = CurriculumState(LAYERS)
    inner = chain(freeze("embed"), set_lr_coefficient(0.5, "head"))
    custom = lambda s: s.set_lr_coefficient(2.0, "norm")
    assert chain(inner, custom, unfreeze("embed"))(state) == (
        state.freeze("embed")
        .set_lr_coefficient(0.5, "head")
        .set_lr_coefficient(2.0, "norm")
        .unfreeze("embed")
    )
    assert chain()(state) == state


def test_chain_rejects_non_callables_naming_them():
    with pytest.raises(TypeError, match="'embed'"):
        chain(freeze("head"), "embed")


def test_chain_stops_at_the_first_failing_transition():
    state = CurriculumState(LAYERS)
    phase = chain(freeze("embed"), freeze("missing"))
    with pytest.raises(ValueError, match="'missing'"):
        phase(state)
    assert state == CurriculumState(LAYERS)


# Validation -----------------------------------------------------------------------------


def test_patterns_and_coefficients_are_validated_when_made():
    with pytest.raises(TypeError, match="3"):
        freeze(3)
    with pytest.raises(TypeError, match="None"):
        unfreeze(["head", None])
    with pytest.raises(ValueError, match=re.escape("-0.5")):
        set_lr_coefficient(-0.5, "head")
    with pytest.raises(TypeError, match="True"):
        set_lr_coefficient(True, "head")
    with pytest.raises(ValueError, match="nan"):
        set_lr_coefficient(math.nan, "head")


def test_layers_are_validated_when_applied():
    state = CurriculumState(LAYERS)
    transition = freeze("hed")  # no layers known yet: fine
    with pytest.raises(ValueError, match=r"'hed'.*'head'"):
        transition(state)
    with pytest.raises(ValueError, match=re.escape("'blocks.('")):
        set_lr_coefficient(0.5, "blocks.(")(state)


# layerwise_lr_decay ----------------------------------------------------------------------


def seed_llrd(state: CurriculumState, decay: float) -> CurriculumState:
    """The seed's LLRD loop, as written there, on the state's methods."""
    layers = state.layers
    n = len(layers)
    for i, layer in enumerate(layers):
        state = state.set_lr_coefficient(decay ** (n - 1 - i), layer)
    return state


def test_llrd_example():
    state = CurriculumState(("embed", "block", "head"))
    assert layerwise_lr_decay(0.5)(state).resolved_coefficients() == (0.25, 0.5, 1.0)


def test_llrd_equals_the_seed_loop_on_a_nested_model():
    state = CurriculumState(LAYERS).freeze("blocks").set_lr_coefficient(0.3, "blocks.1")
    result = layerwise_lr_decay(0.9)(state)
    assert result == seed_llrd(state, 0.9)
    assert result.resolved_coefficients() == tuple(0.9**k for k in (5, 4, 3, 2, 1, 0))
    # Frozen flags are untouched.
    assert result.resolved_frozen() == state.resolved_frozen()


@given(
    module_trees(),
    st.sampled_from([0.9, 0.5, 0.1, 1.0, 0.75]),
    st.data(),
)
def test_llrd_equals_the_seed_loop(model, decay, data):
    # Layer names of these trees are also exact patterns of themselves (no
    # name matches another's "." wildcard), so the seed's loop can pass them
    # as they are.
    state = CurriculumState.from_model(model)
    assert all(state.select(layer) == (layer,) for layer in state.layers)
    state = apply_writes(state, data.draw(writes_for(state.layers, max_size=4)))
    assert layerwise_lr_decay(decay)(state) == seed_llrd(state, decay)


def test_llrd_restricted_to_patterns():
    state = CurriculumState(LAYERS).set_lr_coefficient(0.3, "embed")
    result = layerwise_lr_decay(0.5, patterns=r"blocks\.\d|head")(state)
    expected = state
    selected = ["blocks.0", "blocks.1", "head"]
    for i, layer in enumerate(selected):
        expected = expected.set_lr_coefficient(0.5 ** (len(selected) - 1 - i), layer)
    assert result == expected
    assert result.coefficient("embed") == 0.3 and result.coefficient("blocks") == 1.0
    assert result.coefficient("blocks.0") == 0.25
    with pytest.raises(ValueError, match="'nope'"):
        layerwise_lr_decay(0.5, patterns="nope")(state)


@pytest.mark.parametrize("decay", [0, 0.0, -0.5, 1.5, math.nan, math.inf])
def test_llrd_decay_out_of_range(decay):
    with pytest.raises(ValueError, match=re.escape(repr(decay))):
        layerwise_lr_decay(decay)


@pytest.mark.parametrize("decay", [True, "0.9", None])
def test_llrd_decay_not_a_number(decay):
    with pytest.raises(TypeError, match=re.escape(repr(decay))):
        layerwise_lr_decay(decay)
