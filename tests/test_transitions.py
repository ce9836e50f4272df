"""Transition values: freeze, unfreeze, set_lr_coefficient, layerwise_lr_decay, chain."""

from __future__ import annotations

import io
import itertools
import json
import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import apply_writes, scenarios

from mentor_fn import (
    CurriculumState,
    chain,
    freeze,
    layerwise_lr_decay,
    set_lr_coefficient,
    set_norm_policy,
    unfreeze,
)
from mentor_fn._core.transitions import (
    TRANSITION_KINDS,
    LayerwiseLrSpread,
    depth_ranks,
    layerwise_lr_spread,
    register_transition_kind,
    transition_from_dict,
    transition_to_dict,
)
from mentor_fn.testing import Write
from mentor_fn.testing import models as module_trees
from mentor_fn.testing import writes as writes_for

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


def test_llrd_ranks_parameter_owning_layers_by_depth_on_a_nested_cnn():
    # Four conv + BatchNorm blocks and a head, nested in containers.
    blocks = [
        torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU())
        for _ in range(4)
    ]
    model = torch.nn.Sequential(torch.nn.Sequential(*blocks), torch.nn.Linear(3, 2))
    state = CurriculumState.from_model(model)
    result = layerwise_lr_decay(0.8)(state)
    for block in range(4):
        # The conv and the BatchNorm after it share a rank: 5 ranks in all.
        for part in ("0", "1"):
            assert result.coefficient(f"0.{block}.{part}") == pytest.approx(0.8 ** (4 - block))
    assert result.coefficient("1") == 1.0
    # Containers own no parameter: they are no rank and get no rule.
    assert "0" not in result.coefficients and "0.0" not in result.coefficients
    # torch_mentor's loop over every layer name counts containers and norms:
    # the first conv would get 0.8 ** 11 (13 layer names), not about 0.8 ** 4.
    assert seed_llrd(state, 0.8).coefficient("0.0.0") == pytest.approx(0.8**11)
    assert result.resolved_frozen() == state.resolved_frozen()


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(4)
        self.attn = torch.nn.Module()
        self.attn.qkv = torch.nn.Linear(4, 12)
        self.attn.proj = torch.nn.Linear(4, 4)
        self.norm2 = torch.nn.LayerNorm(4)
        self.mlp = torch.nn.Module()
        self.mlp.fc1 = torch.nn.Linear(4, 8)
        self.mlp.fc2 = torch.nn.Linear(8, 4)


class _VitShaped(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 5, 4))
        self.patch_embed = torch.nn.Module()
        self.patch_embed.proj = torch.nn.Conv2d(3, 4, 2, 2)
        self.blocks = torch.nn.Sequential(_Block(), _Block())
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 2)


def test_llrd_ranks_on_a_vit_shaped_model():
    state = CurriculumState.from_model(_VitShaped())
    result = layerwise_lr_decay(0.5)(state)
    ranks = {
        "cls_token": 0,
        "pos_embed": 1,
        "patch_embed.proj": 2,
        "blocks.0.norm1": 2,  # a norm shares the rank of the layer before it
        "blocks.0.attn.qkv": 3,
        "blocks.0.attn.proj": 4,
        "blocks.0.norm2": 4,
        "blocks.0.mlp.fc1": 5,
        "blocks.0.mlp.fc2": 6,
        "blocks.1.norm1": 6,
        "blocks.1.attn.qkv": 7,
        "blocks.1.attn.proj": 8,
        "blocks.1.norm2": 8,
        "blocks.1.mlp.fc1": 9,
        "blocks.1.mlp.fc2": 10,
        "norm": 10,  # the final norm: the last block's rank, as timm has it
        "head": 11,
    }
    assert {layer for layer in state.layers if layer in state.parameter_owners} == set(ranks)
    for layer, rank in ranks.items():
        assert result.coefficient(layer) == 0.5 ** (11 - rank), layer
    # Per block, as timm's recipe ranks a ViT, is what groups= is for.
    per_block = layerwise_lr_decay(
        0.5, groups=["cls_token|pos_embed|patch_embed", "blocks.0", "blocks.1|norm", "head"]
    )(state)
    assert per_block.coefficient("blocks.0.mlp.fc2") == 0.25
    assert per_block.coefficient("norm") == 0.5


@given(module_trees(), st.sampled_from([0.9, 0.5, 0.1, 1.0, 0.75]), st.data())
def test_llrd_and_spread_agree_on_what_a_rank_is(model, decay, data):
    state = CurriculumState.from_model(model)
    state = apply_writes(state, data.draw(writes_for(state.layers, max_size=4)))
    ranks = len(depth_ranks(state, state.layers))
    decayed = layerwise_lr_decay(decay)(state)
    spread = layerwise_lr_spread(decay ** max(ranks - 1, 0))(state)
    for layer in state.parameter_owners:
        assert decayed.coefficient(layer) == pytest.approx(spread.coefficient(layer), rel=1e-12)
    assert decayed.resolved_frozen() == state.resolved_frozen()


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


# Plain data: to_dict / transition_from_dict ------------------------------------------------

pattern_texts = st.sampled_from(["head", r"blocks\.\d", ".*", "", "naïve", "a|b"])
pattern_lists = st.lists(pattern_texts, max_size=3)
leaf_transitions = st.one_of(
    st.builds(freeze, pattern_lists),
    st.builds(unfreeze, pattern_texts),
    st.builds(
        set_lr_coefficient,
        st.floats(min_value=0, max_value=1e6) | st.sampled_from([0, 1, 2]),
        pattern_lists,
    ),
    st.builds(
        layerwise_lr_decay,
        st.floats(min_value=1e-9, max_value=1),
        patterns=st.none() | pattern_lists,
    ),
    st.builds(
        layerwise_lr_spread,
        st.floats(min_value=1e-9, max_value=1),
        patterns=st.none() | pattern_lists,
    ),
    st.builds(
        layerwise_lr_decay,
        st.floats(min_value=1e-9, max_value=1),
        groups=st.lists(pattern_texts | pattern_lists, min_size=1, max_size=3),
    ),
    st.builds(set_norm_policy, st.sampled_from(["stats", "eval", "train"])),
)
transition_values = st.recursive(
    leaf_transitions,
    lambda inner: st.lists(inner, max_size=3).map(lambda ts: chain(*ts)),
    max_leaves=8,
)


@given(transition_values)
def test_transition_round_trips_through_plain_data(transition):
    data = transition.to_dict()
    assert transition_to_dict(transition) == data
    assert transition_from_dict(data) == transition
    # Plain data: JSON and torch.load(weights_only=True) carry it unchanged.
    assert transition_from_dict(json.loads(json.dumps(data))) == transition
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    assert transition_from_dict(torch.load(buffer, weights_only=True)) == transition


def test_to_dict_examples():
    assert freeze("head").to_dict() == {"kind": "freeze", "patterns": ["head"]}
    assert set_lr_coefficient(1, ["a", "b"]).to_dict() == {
        "kind": "set_lr_coefficient",
        "coefficient": 1.0,
        "patterns": ["a", "b"],
    }
    assert layerwise_lr_decay(0.5).to_dict() == {
        "kind": "layerwise_lr_decay",
        "decay": 0.5,
        "patterns": None,
    }
    assert chain(unfreeze("x")).to_dict() == {
        "kind": "chain",
        "transitions": [{"kind": "unfreeze", "patterns": ["x"]}],
    }
    assert set(TRANSITION_KINDS) >= {
        "freeze",
        "unfreeze",
        "set_lr_coefficient",
        "layerwise_lr_decay",
        "layerwise_lr_spread",
        "set_norm_policy",
        "chain",
    }
    assert set_norm_policy("eval").to_dict() == {"kind": "set_norm_policy", "policy": "eval"}
    assert layerwise_lr_decay(0.5, groups=["a|b", ["c", "d"]]).to_dict() == {
        "kind": "layerwise_lr_decay",
        "decay": 0.5,
        "patterns": None,
        "groups": [["a|b"], ["c", "d"]],
    }


def test_user_callables_are_not_serializable_and_named():
    def my_phase(state):
        return state

    with pytest.raises(TypeError, match=r"my_phase.*not serializable"):
        transition_to_dict(my_phase)
    with pytest.raises(TypeError, match="my_phase"):
        chain(freeze("a"), chain(my_phase)).to_dict()

    class Subclass(type(freeze("a"))):
        pass

    # A subclass is not the registered kind: its behaviour may differ.
    with pytest.raises(TypeError, match="Subclass"):
        transition_to_dict(Subclass(("a",)))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("freeze", "must be a mapping"),
        ({"patterns": ["a"]}, "'kind' is None"),
        ({"kind": "melt", "patterns": ["a"]}, "'melt'"),
        ({"kind": ["freeze"], "patterns": ["a"]}, r"\['freeze'\]"),
        ({"kind": "freeze"}, r"missing fields \['patterns'\]"),
        ({"kind": "freeze", "patterns": ["a"], "extra": 1}, r"unknown fields \['extra'\]"),
        ({"kind": "freeze", "patterns": "a"}, "'patterns' must be a list of str"),
        ({"kind": "unfreeze", "patterns": [1]}, "'patterns' must be a list of str"),
        ({"kind": "set_lr_coefficient", "coefficient": -1, "patterns": ["a"]}, "'coefficient'"),
        ({"kind": "set_lr_coefficient", "coefficient": True, "patterns": ["a"]}, "'coefficient'"),
        ({"kind": "set_lr_coefficient", "coefficient": "1", "patterns": ["a"]}, "'coefficient'"),
        ({"kind": "layerwise_lr_decay", "decay": 2.0, "patterns": None}, "'decay'"),
        ({"kind": "layerwise_lr_spread", "lowest": 0.0, "patterns": None}, "'lowest'"),
        (
            {"kind": "layerwise_lr_decay", "decay": 0.5, "patterns": ["a"], "groups": [["b"]]},
            "'patterns' and 'groups' are exclusive",
        ),
        (
            {"kind": "layerwise_lr_decay", "decay": 0.5, "patterns": None, "groups": []},
            "'groups' must be a non-empty list",
        ),
        (
            {"kind": "layerwise_lr_decay", "decay": 0.5, "patterns": None, "groups": ["a"]},
            "'patterns' must be a list of str",
        ),
        ({"kind": "set_norm_policy", "policy": "frozen"}, "'policy'.*one of 'stats', 'eval'"),
        ({"kind": "set_norm_policy"}, r"missing fields \['policy'\]"),
        ({"kind": "chain", "transitions": {"kind": "freeze"}}, "'transitions' must be a list"),
        ({"kind": "chain", "transitions": [{"kind": "freeze"}]}, "missing fields"),
    ],
)
def test_malformed_transition_dicts_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        transition_from_dict(data)


def test_the_kind_registry_is_extensible():
    from dataclasses import dataclass as make_dataclass

    with pytest.raises(ValueError, match="'freeze' is already registered"):
        register_transition_kind("freeze")(type("Other", (), {}))

    @register_transition_kind("set_everything_frozen_test")
    @make_dataclass(frozen=True)
    class FreezeAll:
        def __call__(self, state):
            return state.freeze(".*")

        def to_dict(self):
            return {"kind": self.kind}

        @classmethod
        def from_dict(cls, data):
            return cls()

    try:
        assert transition_from_dict(chain(FreezeAll()).to_dict()) == chain(FreezeAll())
    finally:
        del TRANSITION_KINDS["set_everything_frozen_test"]


# layerwise_lr_spread ---------------------------------------------------------------------


def test_spread_example_and_exact_ends():
    state = CurriculumState(("embed", "block", "head"))
    assert layerwise_lr_spread(0.01)(state).resolved_coefficients() == (0.01, 0.1, 1.0)
    coefficients = layerwise_lr_spread(1 / 3)(
        CurriculumState(tuple("abcdefg"))
    ).resolved_coefficients()
    assert coefficients[0] == 1 / 3 and coefficients[-1] == 1.0
    ratios = [b / a for a, b in itertools.pairwise(coefficients)]
    assert ratios == pytest.approx([ratios[0]] * len(ratios))


def test_spread_covers_the_layers_owning_parameters_only():
    # "backbone" is a container: it owns no parameter and is not written.
    state = CurriculumState(
        ("backbone", "backbone.0", "backbone.1", "head"),
        parameter_owners=("backbone.0", "backbone.1", "head"),
    ).set_lr_coefficient(0.5, "backbone")
    result = layerwise_lr_spread(0.25)(state)
    assert [result.coefficient(layer) for layer in state.layers] == [0.5, 0.25, 0.5, 1.0]
    assert isinstance(layerwise_lr_spread(0.25), LayerwiseLrSpread)
    # A single owner gets 1.0; patterns restrict the spread.
    assert layerwise_lr_spread(0.1, patterns="head")(state).coefficient("head") == 1.0
    restricted = layerwise_lr_spread(0.1, patterns=r"backbone\.\d")(state)
    assert [restricted.coefficient(layer) for layer in state.layers] == [0.5, 0.1, 1.0, 1.0]
    assert restricted.resolved_frozen() == state.resolved_frozen()


@pytest.mark.parametrize(
    ("lowest", "error"),
    [
        (0, ValueError),
        (1.5, ValueError),
        (math.nan, ValueError),
        (True, TypeError),
        ("0.1", TypeError),
    ],
)
def test_spread_validates_lowest(lowest, error):
    with pytest.raises(error, match=re.escape(repr(lowest))):
        layerwise_lr_spread(lowest)


# set_norm_policy -------------------------------------------------------------------------------


def test_set_norm_policy_equals_the_method_and_validates_when_made():
    state = CurriculumState(("backbone", "head")).freeze("backbone")
    for policy in ("eval", "train", "stats"):
        assert set_norm_policy(policy)(state) == state.set_norm_policy(policy)
    with pytest.raises(ValueError, match="one of 'stats', 'eval', 'train', got 'frozen'"):
        set_norm_policy("frozen")
    with pytest.raises(TypeError, match="must be a str"):
        set_norm_policy(None)


# layerwise_lr_decay with groups ---------------------------------------------------------------

VIT_LAYERS = (
    "cls_token",
    "pos_embed",
    "patch_embed",
    "blocks",
    "blocks.0",
    "blocks.0.attn",
    "blocks.1",
    "norm",
    "head",
)


def test_llrd_groups_give_each_group_one_rank():
    state = CurriculumState(VIT_LAYERS)
    transition = layerwise_lr_decay(
        0.5, groups=["cls_token|pos_embed|patch_embed", "blocks.0", "blocks.1", ["norm", "head"]]
    )
    coefficients = dict(zip(VIT_LAYERS, transition(state).resolved_coefficients()))
    assert coefficients == {
        "cls_token": 0.125,
        "pos_embed": 0.125,
        "patch_embed": 0.125,
        "blocks": 1.0,  # no group selects it
        "blocks.0": 0.25,
        "blocks.0.attn": 0.25,  # a write covers the subtree
        "blocks.1": 0.5,
        "norm": 1.0,
        "head": 1.0,
    }


def test_llrd_groups_nest_like_writes_and_refuse_a_layer_in_two_groups():
    state = CurriculumState(VIT_LAYERS)
    nested = layerwise_lr_decay(0.5, groups=["blocks", "blocks.1"])(state)
    assert nested.coefficient("blocks.0") == 0.5 and nested.coefficient("blocks.1") == 1.0
    with pytest.raises(ValueError, match=r"layer 'head' is selected by group 0 .* and group 1"):
        layerwise_lr_decay(0.5, groups=["head|norm", "head"])(state)
    with pytest.raises(ValueError, match="matches no layer"):
        layerwise_lr_decay(0.5, groups=["blocks", "blokcs.1"])(state)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"groups": ["a"], "patterns": "a"}, ValueError, "patterns or groups, not both"),
        ({"groups": []}, ValueError, "at least one group"),
        ({"groups": "a"}, TypeError, "groups must be a sequence of patterns"),
        ({"groups": [3]}, TypeError, "must be a str or an iterable of str"),
    ],
)
def test_llrd_groups_are_validated_when_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        layerwise_lr_decay(0.5, **kwargs)
