"""CurriculumState: value semantics, pytree, resolution, writes, canonical form, plain data."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import re
from fractions import Fraction

import numpy as np
import optree
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import apply_writes, replay, resolution, scenarios
from torch import nn

from mentor_fn import CurriculumState
from mentor_fn.testing import Write, models, writes

LAYERS = (
    "backbone",
    "backbone.layer1",
    "backbone.layer1.conv",
    "backbone.layer4",
    "head",
)


def resolved(state: CurriculumState) -> dict[str, tuple[bool, float]]:
    return dict(zip(state.layers, resolution(state)))


# Construction and reading ---------------------------------------------------------


def test_defaults_are_trainable_at_coefficient_one():
    state = CurriculumState(LAYERS)
    assert state.layers == LAYERS
    assert dict(state.frozen) == {} and dict(state.coefficients) == {}
    assert all(not state.is_frozen(layer) for layer in LAYERS)
    assert all(state.coefficient(layer) == 1.0 for layer in LAYERS)
    assert state.resolved_frozen() == (False,) * 5
    assert state.resolved_coefficients() == (1.0,) * 5


def test_from_model_records_layers_and_parameter_owners():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 2))
    state = CurriculumState.from_model(model)
    assert state.layers == ("0", "0.0", "1")
    # "0" is a container: it owns no parameter directly.
    assert state.parameter_owners == frozenset({"0.0", "1"})


def test_unknown_layer_is_a_value_error_naming_it():
    state = CurriculumState(LAYERS)
    with pytest.raises(ValueError, match=r"'hed'.*'head'"):
        state.is_frozen("hed")
    with pytest.raises(ValueError, match="'nope'"):
        state.coefficient("nope")
    with pytest.raises(ValueError, match="'nope'"):
        CurriculumState(LAYERS, frozen={"nope": True})
    with pytest.raises(ValueError, match="'nope'"):
        CurriculumState(LAYERS, parameter_owners=["nope"])


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (("a", "a"), "duplicate layer name 'a'"),
        (("a.b", "a"), "'a' must come before its descendant 'a.b'"),
        (("a", ""), "non-empty"),
    ],
)
def test_malformed_layers(layers, message):
    with pytest.raises(ValueError, match=message):
        CurriculumState(layers)


def test_layers_must_be_strings():
    with pytest.raises(TypeError, match="str"):
        CurriculumState("backbone")
    with pytest.raises(TypeError, match="3"):
        CurriculumState(("a", 3))


# Value semantics --------------------------------------------------------------------


def test_immutable():
    state = CurriculumState(LAYERS, frozen={"head": True})
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.layers = ("x",)
    with pytest.raises(TypeError):
        state.frozen["backbone"] = True
    with pytest.raises(TypeError):
        state.coefficients["backbone"] = 0.5
    frozen_before, coefficients_before = dict(state.frozen), dict(state.coefficients)
    state.freeze("backbone").set_lr_coefficient(0.1, "head").unfreeze("head")
    assert dict(state.frozen) == frozen_before
    assert dict(state.coefficients) == coefficients_before
    assert state.is_frozen("head") and not state.is_frozen("backbone")


def test_hashable_and_equal_by_value():
    a = CurriculumState(LAYERS).freeze("backbone").set_lr_coefficient(0.5, "head")
    b = CurriculumState(LAYERS).set_lr_coefficient(0.5, "head").freeze("backbone")
    assert a == b and hash(a) == hash(b)
    assert len({a, b, CurriculumState(LAYERS)}) == 2
    assert {a: "phase 1"}[b] == "phase 1"
    assert a != CurriculumState(LAYERS)
    assert a != CurriculumState(LAYERS[:-1]).freeze("backbone")
    assert a != "not a state"


def test_parameter_owners_take_part_in_equality():
    a = CurriculumState(LAYERS, parameter_owners=["head"])
    assert a != CurriculumState(LAYERS)
    assert a == CurriculumState(LAYERS, parameter_owners={"head"})


def test_copy_and_pickle_round_trip():
    state = CurriculumState(LAYERS, parameter_owners=["head", "backbone.layer4"])
    state = state.freeze("backbone").set_lr_coefficient(0.25, "backbone.layer1")
    assert copy.deepcopy(state) == state
    assert pickle.loads(pickle.dumps(state)) == state


# Pytree -------------------------------------------------------------------------------


def test_registered_as_pytree_whose_leaves_are_coefficient_rules():
    state = CurriculumState(
        LAYERS,
        frozen={"backbone": True},
        coefficients={"backbone": 0.1, "head": 2.0},
        parameter_owners=["backbone.layer1.conv", "head"],
    )
    leaves, spec = optree.tree_flatten(state, namespace="mentor_fn")
    assert leaves == [0.1, 2.0]
    assert optree.tree_unflatten(spec, leaves) == state
    # Without the namespace the state is an opaque leaf.
    assert optree.tree_leaves(state) == [state]

    doubled = optree.tree_map(lambda c: c * 2, state, namespace="mentor_fn")
    assert dict(doubled.coefficients) == {"backbone": 0.2, "head": 4.0}
    assert dict(doubled.frozen) == {"backbone": True}
    assert doubled.parameter_owners == state.parameter_owners

    # Rebuilt states are validated and canonical.
    with pytest.raises(ValueError, match=r"-0\.1"):
        optree.tree_map(lambda c: -c, state, namespace="mentor_fn")
    assert optree.tree_map(lambda c: 1.0, state, namespace="mentor_fn") == state.set_lr_coefficient(
        1.0, ["backbone", "head"]
    )


def test_pytree_inside_containers():
    state = CurriculumState(LAYERS).set_lr_coefficient(0.5, "head")
    tree = {"phase": 1, "state": state}
    assert optree.tree_leaves(tree, namespace="mentor_fn") == [1, 0.5]
    scaled = optree.tree_map(lambda x: x / 2, tree, namespace="mentor_fn")
    assert scaled["state"].coefficient("head") == 0.25


# Resolution ---------------------------------------------------------------------------


def test_nearest_ancestor_or_self_rule_wins():
    state = CurriculumState(
        LAYERS,
        frozen={"backbone": True, "backbone.layer1.conv": False},
        coefficients={"backbone": 0.1, "backbone.layer1": 0.5},
    )
    assert resolved(state) == {
        "backbone": (True, 0.1),
        "backbone.layer1": (True, 0.5),
        "backbone.layer1.conv": (False, 0.5),
        "backbone.layer4": (True, 0.1),
        "head": (False, 1.0),
    }


def test_ancestry_is_by_dotted_path_among_layers():
    # "a.b.c" has no layer "a.b": its nearest ancestor layer is "a".
    # "ab" starts with "a" but is not below it.
    state = CurriculumState(("a", "a.b.c", "ab")).freeze("a").set_lr_coefficient(0.5, "a")
    assert resolved(state) == {"a": (True, 0.5), "a.b.c": (True, 0.5), "ab": (False, 1.0)}


# Writes -------------------------------------------------------------------------------


def test_write_on_a_subtree_then_child_override():
    state = CurriculumState(LAYERS).freeze("backbone").unfreeze("backbone.layer4")
    assert [layer for layer in LAYERS if not state.is_frozen(layer)] == ["backbone.layer4", "head"]
    assert dict(state.frozen) == {"backbone": True, "backbone.layer4": False}
    state = state.unfreeze("backbone")
    assert not any(state.is_frozen(layer) for layer in LAYERS)
    assert dict(state.frozen) == {}


def test_write_removes_every_rule_below():
    state = (
        CurriculumState(LAYERS)
        .set_lr_coefficient(0.5, "backbone.layer1.conv")
        .set_lr_coefficient(2.0, "backbone.layer4")
        .set_lr_coefficient(0.1, "backbone")
    )
    assert dict(state.coefficients) == {"backbone": 0.1}
    assert [state.coefficient(layer) for layer in LAYERS] == [0.1, 0.1, 0.1, 0.1, 1.0]


def test_set_one_restores_one_under_another_coefficient():
    state = CurriculumState(LAYERS).set_lr_coefficient(0.1, "backbone")
    state = state.set_lr_coefficient(1.0, "backbone.layer4")
    assert state.coefficient("backbone.layer4") == 1.0
    assert dict(state.coefficients) == {"backbone": 0.1, "backbone.layer4": 1.0}
    # Where 1.0 is what the layer inherits, the rule is dropped.
    state = state.set_lr_coefficient(1.0, "backbone")
    assert dict(state.coefficients) == {}
    assert state == CurriculumState(LAYERS)


def test_round_trips_return_the_initial_state():
    initial = CurriculumState(LAYERS)
    assert initial.freeze("backbone").unfreeze("backbone") == initial
    assert initial.set_lr_coefficient(0.3, "head").set_lr_coefficient(1, "head") == initial


def test_zero_coefficient_does_not_freeze():
    state = CurriculumState(LAYERS).set_lr_coefficient(0.0, "head")
    assert state.coefficient("head") == 0.0 and not state.is_frozen("head")


def test_coefficients_are_kept_while_frozen():
    state = CurriculumState(LAYERS).set_lr_coefficient(0.1, "backbone").freeze("backbone")
    assert state.coefficient("backbone.layer4") == 0.1
    state = state.set_lr_coefficient(0.5, "backbone.layer4")  # set while frozen
    state = state.unfreeze("backbone")
    assert state.coefficient("backbone.layer1") == 0.1
    assert state.coefficient("backbone.layer4") == 0.5


def test_writes_accept_regex_and_lists():
    state = CurriculumState(LAYERS).freeze([r"backbone\.layer\d", "head"])
    assert [state.is_frozen(layer) for layer in LAYERS] == [False, True, True, True, True]


# Canonical form ------------------------------------------------------------------------


def test_constructor_canonicalizes():
    explicit = CurriculumState(
        LAYERS,
        frozen={"backbone": False, "head": True, "backbone.layer4": False},
        coefficients={"backbone": 0.5, "backbone.layer1": 0.5, "head": 1.0},
    )
    assert dict(explicit.frozen) == {"head": True}
    assert dict(explicit.coefficients) == {"backbone": 0.5}
    assert explicit == CurriculumState(LAYERS).freeze("head").set_lr_coefficient(0.5, "backbone")


def test_rules_are_in_layer_order():
    state = (
        CurriculumState(LAYERS).freeze("head").freeze("backbone.layer4").freeze("backbone.layer1")
    )
    assert list(state.frozen) == ["backbone.layer1", "backbone.layer4", "head"]


def assert_canonical(state: CurriculumState) -> None:
    """Every rule differs from what its layer would inherit without it."""
    parents = {}
    for layer in state.layers:
        head, dot, _ = layer.rpartition(".")
        while dot and head not in state.layers:
            head, dot, _ = head.rpartition(".")
        parents[layer] = head if dot else None
    for rules, read, default in (
        (state.frozen, state.is_frozen, False),
        (state.coefficients, state.coefficient, 1.0),
    ):
        assert list(rules) == [layer for layer in state.layers if layer in rules]
        for layer, value in rules.items():
            parent = parents[layer]
            assert value != (read(parent) if parent is not None else default), (layer, value)


@given(scenarios())
def test_resolution_matches_naive_replay_and_rules_are_canonical(scenario):
    for state, state_writes in (
        (scenario.a, scenario.writes_a),
        (scenario.b, scenario.writes_a + scenario.writes_b),
    ):
        frozen, coefficients = replay(state.layers, state_writes)
        assert resolution(state) == tuple(
            (frozen[layer], coefficients[layer]) for layer in state.layers
        )
        assert state.resolved_frozen() == tuple(frozen.values())
        assert state.resolved_coefficients() == tuple(coefficients.values())
        assert_canonical(state)


@st.composite
def state_pairs(draw):
    """Two states of one model; the second often reached by a different path."""
    model = draw(models())
    initial = CurriculumState.from_model(model)
    # Few coefficients so that independent sequences often resolve alike.
    small = writes(initial.layers, max_size=4, coefficients=(0.5, 1.0))
    first = apply_writes(initial, draw(small))
    how = draw(st.sampled_from(["independent", "extended", "materialized"]))
    if how == "independent":
        second = apply_writes(initial, draw(small))
    elif how == "extended":
        second = apply_writes(first, draw(small))
    else:
        # Write every layer's resolved values explicitly, ancestors first.
        second = initial
        for layer in initial.layers:
            operation = "freeze" if first.is_frozen(layer) else "unfreeze"
            second = Write(operation, layer, 0.0).apply(second)
            second = Write("set_lr_coefficient", layer, first.coefficient(layer)).apply(second)
    return first, second


@given(state_pairs())
def test_states_are_equal_iff_they_resolve_identically(pair):
    first, second = pair
    same = resolution(first) == resolution(second)
    assert (first == second) == same
    if same:
        assert hash(first) == hash(second)
        assert dict(first.frozen) == dict(second.frozen)
        assert dict(first.coefficients) == dict(second.coefficients)
        explicit = CurriculumState(
            first.layers,
            frozen=dict(zip(first.layers, first.resolved_frozen())),
            coefficients=dict(zip(first.layers, first.resolved_coefficients())),
            parameter_owners=first.parameter_owners,
            norm_layers=first.norm_layers,
        )
        assert explicit == first


# Coefficient validation ---------------------------------------------------------------


@pytest.mark.parametrize("value", [-0.1, -1, math.nan, math.inf, -math.inf])
def test_invalid_coefficient_value(value):
    state = CurriculumState(LAYERS)
    with pytest.raises(
        ValueError, match=re.escape(f"coefficient must be finite and >= 0, got {value!r}")
    ):
        state.set_lr_coefficient(value, "head")
    with pytest.raises(ValueError, match="'head'"):
        CurriculumState(LAYERS, coefficients={"head": value})


@pytest.mark.parametrize("value", [True, False, "0.1", None, 1j, [0.5]])
def test_non_number_coefficient_is_type_error(value):
    state = CurriculumState(LAYERS)
    with pytest.raises(TypeError, match="coefficient must be a real number"):
        state.set_lr_coefficient(value, "head")
    with pytest.raises(TypeError, match="'head'"):
        CurriculumState(LAYERS, coefficients={"head": value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2, 2.0), (0, 0.0), (-0.0, 0.0), (Fraction(1, 4), 0.25), (np.float64(0.5), 0.5)],
)
def test_real_coefficients_are_stored_as_float(value, expected):
    state = CurriculumState(LAYERS).set_lr_coefficient(value, "head")
    assert state.coefficient("head") == expected
    assert type(state.coefficients["head"]) is float
    assert math.copysign(1.0, state.coefficients["head"]) == 1.0


@pytest.mark.parametrize("value", [1, 0, None, "yes"])
def test_frozen_rules_must_be_bool(value):
    with pytest.raises(TypeError, match="frozen"):
        CurriculumState(LAYERS, frozen={"head": value})


def test_invalid_coefficient_changes_nothing():
    state = CurriculumState(LAYERS)
    with pytest.raises(ValueError):
        state.set_lr_coefficient(-1.0, "nothing")  # coefficient checked first
    with pytest.raises(ValueError):
        state.set_lr_coefficient(0.5, "nothing")
    assert state == CurriculumState(LAYERS)


# set_coefficients ------------------------------------------------------------------------


def test_set_coefficients_equals_sequential_writes_in_layer_order():
    state = CurriculumState(LAYERS).set_lr_coefficient(0.5, "backbone.layer1.conv")
    values = {"head": 0.3, "backbone.layer1": 2.0, "backbone": 0.1}
    expected = state
    for layer in LAYERS:
        if layer in values:
            expected = expected.set_lr_coefficient(values[layer], layer)
    assert state.set_coefficients(values) == expected
    by_position = {LAYERS.index(layer): value for layer, value in values.items()}
    assert state.set_coefficients(by_position) == expected


@pytest.mark.parametrize("key", [-1, 5, True])
def test_set_coefficients_rejects_bad_positions(key):
    state = CurriculumState(LAYERS)
    with pytest.raises((ValueError, TypeError), match=repr(key)):
        state.set_coefficients({key: 0.5})


def test_set_coefficients_rejects_unknown_names():
    with pytest.raises(ValueError, match="'nope'"):
        CurriculumState(LAYERS).set_coefficients({"nope": 0.5})


# Plain data ------------------------------------------------------------------------------


def sample_state() -> CurriculumState:
    return (
        CurriculumState(
            LAYERS, parameter_owners=["backbone.layer1.conv", "backbone.layer4", "head"]
        )
        .freeze("backbone")
        .unfreeze("backbone.layer4")
        .set_lr_coefficient(0.1, "backbone")
        .set_lr_coefficient(0.0, "head")
    )


def test_to_dict_is_plain_versioned_data():
    data = sample_state().to_dict()
    assert data == {
        "format": "mentor_fn.CurriculumState",
        "version": 2,
        "layers": list(LAYERS),
        "parameter_owners": ["backbone.layer1.conv", "backbone.layer4", "head"],
        "norm_layers": [],
        "norm_policy": "stats",
        "frozen": {"backbone": True, "backbone.layer4": False},
        "coefficients": {"backbone": 0.1, "head": 0.0},
    }
    assert CurriculumState.from_dict(data) == sample_state()


def test_version_1_dicts_still_load_with_the_default_norm_policy():
    data = sample_state().to_dict()
    del data["norm_layers"], data["norm_policy"]
    data["version"] = 1
    assert CurriculumState.from_dict(data) == sample_state()
    data["norm_policy"] = "eval"  # a version 1 dict has no such key
    with pytest.raises(ValueError, match="malformed"):
        CurriculumState.from_dict(data)


def test_to_dict_round_trips_through_a_weights_only_torch_file(tmp_path):
    state = sample_state()
    path = tmp_path / "state.pt"
    torch.save({"curriculum": state.to_dict()}, path)
    loaded = torch.load(path, weights_only=True)
    restored = CurriculumState.from_dict(loaded["curriculum"])
    assert restored == state
    assert restored.parameter_owners == state.parameter_owners
    assert resolved(restored) == resolved(state)


@given(scenarios())
def test_to_dict_from_dict_round_trip(scenario):
    for state in (scenario.a, scenario.b):
        data = state.to_dict()
        assert CurriculumState.from_dict(data) == state
        assert CurriculumState.from_dict(copy.deepcopy(data)).to_dict() == data


def _malformed(**changes):
    data = sample_state().to_dict()
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    return data


_DROP = object()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_malformed(version=3), "version 3"),
        (_malformed(version=0), "version 0"),
        (_malformed(version="1"), "version '1'"),
        (_malformed(version=True), "version True"),
        (_malformed(version=1.0), "version 1.0"),
        (_malformed(version=None), "version None"),
        (_malformed(version=_DROP), "version None"),
        (_malformed(format="torch_mentor"), "'torch_mentor'"),
        (_malformed(extra=1), "extra"),
        (_malformed(frozen=_DROP), "keys"),
        (_malformed(layers=("backbone", "head")), "lists"),
        (_malformed(layers=["backbone", 3]), "3"),
        (_malformed(layers=["head", "head"]), "duplicate layer name 'head'"),
        (_malformed(layers=["backbone.layer4", "backbone"]), "'backbone' must come before"),
        (_malformed(frozen=["backbone"]), "dicts"),
        (_malformed(frozen={"nope": True}), "'nope'"),
        (_malformed(frozen={"head": "yes"}), "'yes'"),
        (_malformed(frozen={3: True}), "3"),
        (_malformed(coefficients={"head": -1.0}), "-1.0"),
        (_malformed(coefficients={"head": "0.5"}), "'0.5'"),
        (_malformed(coefficients={"head": math.nan}), "nan"),
        (_malformed(parameter_owners=["nope"]), "'nope'"),
        (_malformed(parameter_owners="head"), "lists"),
        ([("format", "mentor_fn.CurriculumState")], "mapping"),
        (None, "mapping"),
    ],
)
def test_from_dict_rejects_malformed_data(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CurriculumState.from_dict(data)


# Norm policy and layer kinds ---------------------------------------------------------


def test_norm_policy_is_part_of_the_value():
    state = CurriculumState(LAYERS, norm_layers=["backbone.layer4"])
    assert state.norm_policy == "stats"
    evaluated = state.set_norm_policy("eval")
    assert evaluated.norm_policy == "eval" and state.norm_policy == "stats"
    assert evaluated != state and hash(evaluated) != hash(state)
    assert evaluated.set_norm_policy("stats") == state
    assert CurriculumState.from_dict(evaluated.to_dict()) == evaluated
    assert optree.tree_map(lambda c: c, evaluated, namespace="mentor_fn") == evaluated
    assert "norm_policy='eval'" in repr(evaluated)


@pytest.mark.parametrize(
    ("policy", "error", "match"),
    [("frozen", ValueError, "'stats', 'eval', 'train'"), (None, TypeError, "must be a str")],
)
def test_bad_norm_policies_are_refused(policy, error, match):
    with pytest.raises(error, match=match):
        CurriculumState(LAYERS).set_norm_policy(policy)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        CurriculumState(LAYERS, norm_policy=policy)  # type: ignore[arg-type]


def test_under_the_train_policy_norm_layers_of_frozen_subtrees_train():
    state = CurriculumState(LAYERS, norm_layers=["backbone.layer4"]).freeze("backbone")
    trainable = dict(zip(LAYERS, state.resolved_trainable()))
    assert not trainable["backbone.layer4"] and trainable["head"]
    trained = dict(zip(LAYERS, state.set_norm_policy("train").resolved_trainable()))
    assert trained["backbone.layer4"] and not trained["backbone.layer1.conv"]
    assert state.set_norm_policy("train").is_frozen("backbone.layer4")  # still frozen


def test_with_layer_kinds_keeps_rules_and_policy():
    state = CurriculumState(LAYERS).freeze("backbone").set_norm_policy("eval")
    kinds = state.with_layer_kinds(parameter_owners=["head"], norm_layers=["backbone.layer4"])
    assert kinds.frozen == state.frozen and kinds.norm_policy == "eval"
    assert kinds.parameter_owners == {"head"} and kinds.norm_layers == {"backbone.layer4"}
    assert (
        kinds.with_layer_kinds(parameter_owners=["head"], norm_layers=["backbone.layer4"]) is kinds
    )
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        state.with_layer_kinds(parameter_owners=["nope"])


def test_frozen_roots_are_the_tops_of_fully_frozen_subtrees():
    state = CurriculumState(LAYERS).freeze("backbone").unfreeze("backbone.layer4")
    assert state.frozen_roots() == tuple(
        layer
        for layer in LAYERS
        if layer.startswith("backbone.") and layer.count(".") == 1 and layer != "backbone.layer4"
    )
    assert CurriculumState(LAYERS).freeze("backbone").frozen_roots() == ("backbone",)
    assert CurriculumState(LAYERS).frozen_roots() == ()
