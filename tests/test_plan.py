"""layout_of and plan: NoChange, Patch or Rebuild when the state changes."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from strategies import apply_writes, expected_owners, scenarios
from torch import nn

from mentor_fn import (
    CurriculumState,
    GroupLayout,
    GroupScale,
    NoChange,
    Patch,
    Rebuild,
    layout_of,
    param_groups,
    plan,
)
from mentor_fn.testing import models, writes

LR = 0.01


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 3)
        self.backbone = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
        self.head = nn.Linear(3, 2)


# Split by weight decay: the 1-d parameters (biases, norms, root vectors) in
# no-decay halves, the others in decay halves.
SPLIT = ("1d",)


def layout(state: CurriculumState, model: nn.Module, *, coalesce: bool = False, split=False):
    rules = SPLIT if split else ()
    return layout_of(param_groups(state, model, LR, coalesce=coalesce, no_weight_decay=rules))


@pytest.fixture
def model():
    return Net()


@pytest.fixture
def initial(model):
    state = CurriculumState.from_model(model)
    assert state.layers == ("embed", "backbone", "backbone.0", "backbone.2", "head")
    return state


# layout_of --------------------------------------------------------------------------------


def test_layout_of_a_live_optimizer(model, initial):
    state = initial.set_lr_coefficient(0.5, "backbone").freeze("embed")
    optimizer = torch.optim.Adam(param_groups(state, model, LR))
    assert layout_of(optimizer) == (
        GroupLayout(("backbone.0",), 0.5),
        GroupLayout(("backbone.2",), 0.5),
        GroupLayout(("head",), 1.0),
    )
    coalesced = torch.optim.SGD(param_groups(state, model, LR, coalesce=True))
    assert layout_of(coalesced) == (
        GroupLayout(("backbone.0", "backbone.2"), 0.5),
        GroupLayout(("head",), 1.0),
    )
    assert layout_of(coalesced) == layout(state, model, coalesce=True)


def test_layout_survives_an_optimizer_state_dict_round_trip(model, initial, tmp_path):
    state = initial.set_lr_coefficient(0.5, "backbone").freeze("head")
    optimizer = torch.optim.Adam(param_groups(state, model, LR, coalesce=True))
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    restored = torch.optim.Adam(param_groups(state, model, LR, coalesce=True))
    restored.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert layout_of(restored) == layout_of(optimizer)
    assert plan(layout_of(restored), state, state) == NoChange()


def test_layout_of_an_optimizer_not_built_by_mentor_fn(model, initial):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    assert layout_of(optimizer) == (GroupLayout(None, None),)
    result = plan(layout_of(optimizer), initial, initial)
    assert isinstance(result, Rebuild)
    assert "optimizer group 0 was not derived by mentor_fn" in result.reasons[0]


# NoChange ---------------------------------------------------------------------------------


@pytest.mark.parametrize("coalesce", [False, True])
def test_same_state_needs_no_change(model, initial, coalesce):
    state = initial.set_lr_coefficient(0.1, "backbone.0").freeze("head")
    assert plan(layout(state, model, coalesce=coalesce), state, state) == NoChange()


@pytest.mark.parametrize("coalesce", [False, True])
def test_freezing_a_layer_that_has_a_group_needs_no_change(model, initial, coalesce):
    current = layout(initial, model, coalesce=coalesce)
    assert plan(current, initial, initial.freeze("backbone")) == NoChange()
    assert plan(current, initial, initial.freeze(".*")) == NoChange()


def test_changing_a_container_without_groups_is_no_change(model, initial):
    # "backbone" owns no parameters: its coefficient rule changes nothing once
    # every layer below has its own rule.
    state = initial.set_lr_coefficient(0.5, r"backbone\.\d")
    changed = state.set_lr_coefficient(2.0, "backbone").set_lr_coefficient(0.5, r"backbone\.\d")
    assert changed != state
    assert plan(layout(state, model), state, changed) == NoChange()


# Patch --------------------------------------------------------------------------------------


def test_coefficient_change_is_a_patch_with_the_ratio(model, initial):
    current = layout(initial, model)
    result = plan(current, initial, initial.set_lr_coefficient(0.25, "backbone"))
    assert result == Patch(scales=(GroupScale(1, 1.0, 0.25), GroupScale(2, 1.0, 0.25)))
    assert [scale.ratio for scale in result.scales] == [0.25, 0.25]
    assert result.reactivated == ()


def test_coalesced_group_scales_as_a_whole(model, initial):
    current = layout(initial, model, coalesce=True)
    assert plan(current, initial, initial.set_lr_coefficient(0.1, ".*")) == Patch(
        scales=(GroupScale(0, 1.0, 0.1),)
    )


def test_coefficient_to_zero_is_a_patch(model, initial):
    result = plan(layout(initial, model), initial, initial.set_lr_coefficient(0.0, "head"))
    assert result == Patch(scales=(GroupScale(3, 1.0, 0.0),))


def test_inert_group_of_a_frozen_layer_is_scaled_too(model, initial):
    current = layout(initial, model)
    frozen = initial.freeze("head")
    assert plan(current, initial, frozen) == NoChange()
    result = plan(current, frozen, frozen.set_lr_coefficient(0.5, "head"))
    assert result == Patch(scales=(GroupScale(3, 1.0, 0.5),))


def test_unfreezing_a_layer_with_an_inert_group_reactivates_it(model, initial):
    current = layout(initial, model)
    frozen = initial.freeze("backbone")
    result = plan(current, frozen, frozen.unfreeze("backbone"))
    # Only layers that own parameters (have groups) are reactivated.
    assert result == Patch(scales=(), reactivated=("backbone.0", "backbone.2"))

    # Unfrozen with a new coefficient: both in one patch.
    result = plan(
        current, frozen, frozen.unfreeze("backbone.2").set_lr_coefficient(2.0, "backbone.2")
    )
    assert result == Patch(scales=(GroupScale(2, 1.0, 2.0),), reactivated=("backbone.2",))


# Rebuild ------------------------------------------------------------------------------------


def test_trainable_layer_without_group_is_a_rebuild(model, initial):
    frozen = initial.freeze(["embed", "head"])
    result = plan(layout(frozen, model), frozen, initial)
    assert isinstance(result, Rebuild)
    assert len(result.reasons) == 1
    assert "trainable layer(s) with no optimizer group: embed, head" in result.reasons[0]


def test_coalesced_group_that_must_split_is_a_rebuild(model, initial):
    current = layout(initial, model, coalesce=True)
    result = plan(current, initial, initial.set_lr_coefficient(0.5, "backbone.2"))
    assert isinstance(result, Rebuild)
    (reason,) = result.reasons
    assert "optimizer group 0" in reason and "must be split" in reason
    assert "backbone.2 -> 0.5" in reason and "head -> 1" in reason
    # Also when the layer whose coefficient differs is frozen (its group is inert).
    frozen = initial.freeze("backbone.2")
    assert isinstance(plan(current, frozen, frozen.set_lr_coefficient(0.5, "backbone.2")), Rebuild)


def test_coefficient_from_zero_to_non_zero_is_a_rebuild(model, initial):
    zero = initial.set_lr_coefficient(0.0, "head")
    result = plan(layout(zero, model), zero, initial.set_lr_coefficient(0.5, "head"))
    assert isinstance(result, Rebuild)
    (reason,) = result.reasons
    assert "optimizer group 3 (head) goes from coefficient 0 to 0.5" in reason
    # 0 -> 0 (another write) is fine.
    assert plan(layout(zero, model), zero, zero.freeze("head").unfreeze("head")) == NoChange()


def test_rebuild_lists_every_reason(model, initial):
    built = initial.set_lr_coefficient(0.0, "embed").freeze("head")
    new = built.set_lr_coefficient(1.0, "embed").unfreeze("head")
    result = plan(layout(built, model), built, new)
    assert isinstance(result, Rebuild)
    assert len(result.reasons) == 2
    assert all(isinstance(reason, str) and reason for reason in result.reasons)
    assert "coefficient 0 to 1" in result.reasons[0]
    assert "head" in result.reasons[1]


def test_layout_with_unknown_layers_or_a_layer_twice_is_a_rebuild(initial):
    result = plan((GroupLayout(("ghost",), 1.0),), initial, initial)
    assert isinstance(result, Rebuild) and "unknown layer 'ghost'" in result.reasons[0]
    twice = (GroupLayout(("head",), 1.0), GroupLayout(("head", "embed"), 1.0))
    result = plan(twice, initial, initial)
    assert isinstance(result, Rebuild)
    assert any("'head' is in two optimizer groups" in reason for reason in result.reasons)


def test_plan_rejects_states_of_different_layers(model, initial):
    other = CurriculumState(("embed", "head"))
    with pytest.raises(ValueError, match="different layers"):
        plan(layout(initial, model), initial, other)
    with pytest.raises(TypeError, match="CurriculumState"):
        plan(layout(initial, model), initial, None)


# Properties -----------------------------------------------------------------------------------


def expected_plan(groups, old, new, owners):
    """Independent oracle of the design's plan rules (docs/design.md): 'rebuild', or (scales, reactivated)."""
    grouped = {layer for group in groups for layer in group.layers}
    rebuild = any(
        layer in owners and not new.is_frozen(layer) and layer not in grouped
        for layer in new.layers
    )
    scales = []
    for number, group in enumerate(groups):
        coefficients = {new.coefficient(layer) for layer in group.layers}
        if len(coefficients) > 1:
            rebuild = True  # a (coalesced) group whose layers now differ
            continue
        (coefficient,) = coefficients
        if coefficient != group.coefficient:
            if group.coefficient == 0:
                rebuild = True
            scales.append(GroupScale(number, group.coefficient, coefficient))
    if rebuild:
        return "rebuild"
    reactivated = tuple(
        layer
        for layer in new.layers
        if layer in grouped and old.is_frozen(layer) and not new.is_frozen(layer)
    )
    return tuple(scales), reactivated


def check_against_oracle(result, groups, old, new, owners):
    expected = expected_plan(groups, old, new, owners)
    event(type(result).__name__)
    if expected == "rebuild":
        assert isinstance(result, Rebuild)
        assert isinstance(result.reasons, tuple) and result.reasons
        assert all(isinstance(reason, str) and reason for reason in result.reasons)
    elif expected == ((), ()):
        assert result == NoChange()
    else:
        assert result == Patch(*expected)


@given(scenarios(), st.booleans(), st.booleans())
def test_same_state_is_always_no_change(scenario, coalesce, split):
    for state in (scenario.a, scenario.b):
        current = layout(state, scenario.model, coalesce=coalesce, split=split)
        assert plan(current, state, state) == NoChange()


@given(scenarios(min_writes_b=1), st.booleans(), st.booleans())
def test_plan_matches_the_design_rules(scenario, coalesce, split):
    model, a, b = scenario.model, scenario.a, scenario.b
    groups = layout(a, model, coalesce=coalesce, split=split)
    owners = set(expected_owners(model).values())
    check_against_oracle(plan(groups, a, b), groups, a, b, owners)


@given(scenarios(min_writes_b=1), st.booleans(), st.booleans())
def test_patch_ratios_give_the_new_states_lrs(scenario, coalesce, split):
    model, a, b = scenario.model, scenario.a, scenario.b
    rules = SPLIT if split else ()
    groups = param_groups(a, model, LR, coalesce=coalesce, no_weight_decay=rules)
    result = plan(layout_of(groups), a, b)
    event(type(result).__name__)
    if isinstance(result, Rebuild):
        return
    lrs = [group["lr"] for group in groups]
    if isinstance(result, Patch):
        assert result.reactivated == ()  # every group's layers were trainable in a
        for scale in result.scales:
            assert scale.old == groups[scale.group]["coefficient"]
            lrs[scale.group] *= scale.ratio
    derived = {
        layer: group["lr"]
        for group in param_groups(b, model, LR, coalesce=coalesce, no_weight_decay=rules)
        for layer in group["layers"]
    }
    for group, lr in zip(groups, lrs):
        for layer in group["layers"]:
            if not b.is_frozen(layer):
                assert lr == pytest.approx(derived[layer], rel=1e-12, abs=0)
                assert lr == pytest.approx(LR * b.coefficient(layer), rel=1e-12, abs=0)


@st.composite
def state_sequences(draw):
    model = draw(models())
    state = CurriculumState.from_model(model)
    states = [apply_writes(state, draw(writes(state.layers, max_size=3)))]
    for _ in range(draw(st.integers(1, 4))):
        drawn = draw(writes(state.layers, min_size=1, max_size=3))
        states.append(apply_writes(states[-1], drawn))
    return model, states


@given(state_sequences(), st.booleans(), st.booleans())
def test_executing_plans_keeps_every_trainable_layer_at_its_lr(sequence, coalesce, split):
    """A pure model of what Curriculum does: patch in place, rebuild when told.

    The live groups go stale (inert groups of frozen layers, coefficients set
    while frozen); plan must stay right on them, split by weight decay too.
    """
    model, states = sequence
    owners = set(expected_owners(model).values())
    rules = SPLIT if split else ()
    live = param_groups(states[0], model, LR, coalesce=coalesce, no_weight_decay=rules)
    for old, new in itertools.pairwise(states):
        current = layout_of(live)
        result = plan(current, old, new)
        check_against_oracle(result, current, old, new, owners)
        if isinstance(result, Rebuild):
            live = param_groups(new, model, LR, coalesce=coalesce, no_weight_decay=rules)
        elif isinstance(result, Patch):
            for scale in result.scales:
                live[scale.group]["lr"] *= scale.ratio
                live[scale.group]["coefficient"] = scale.new
        groups_of: dict[str, list] = {}
        for group in live:
            for layer in group["layers"]:
                groups_of.setdefault(layer, []).append(group)
        for layer in new.layers:
            if layer in owners and not new.is_frozen(layer):
                assert groups_of[layer]
                for group in groups_of[layer]:  # both halves, when split
                    assert group["coefficient"] == new.coefficient(layer)
                    expected = LR * new.coefficient(layer)
                    assert group["lr"] == pytest.approx(expected, rel=1e-12, abs=0)
        for group in live:  # inert groups too: right lr for a later reactivation
            for layer in group["layers"]:
                assert group["lr"] == pytest.approx(LR * new.coefficient(layer), rel=1e-12, abs=0)


# Groups split by weight decay --------------------------------------------------------------


def split_layout(state, model, *, coalesce=False):
    return layout(state, model, coalesce=coalesce, split=True)


def test_layout_of_reads_which_half_each_group_holds(model, initial):
    current = split_layout(initial, model)
    assert current == (
        GroupLayout(("embed",), 1.0, True),
        GroupLayout(("backbone.0",), 1.0, True),
        GroupLayout(("backbone.0",), 1.0, False),
        GroupLayout(("backbone.2",), 1.0, True),
        GroupLayout(("backbone.2",), 1.0, False),
        GroupLayout(("head",), 1.0, True),
        GroupLayout(("head",), 1.0, False),
    )
    assert plan(current, initial, initial) == NoChange()


def test_a_coefficient_change_patches_both_halves(model, initial):
    new = initial.set_lr_coefficient(0.5, "backbone.2")
    assert plan(split_layout(initial, model), initial, new) == Patch(
        (GroupScale(3, 1.0, 0.5), GroupScale(4, 1.0, 0.5))
    )


def test_a_frozen_layers_halves_stay_inert_and_come_back_together(model, initial):
    current = split_layout(initial, model)
    frozen = initial.freeze("backbone")
    assert plan(current, initial, frozen) == NoChange()
    scaled = frozen.set_lr_coefficient(0.1, "backbone.0")
    assert plan(current, frozen, scaled) == Patch(
        (GroupScale(1, 1.0, 0.1), GroupScale(2, 1.0, 0.1))
    )
    back = frozen.unfreeze("backbone")
    assert plan(current, frozen, back) == Patch(reactivated=("backbone.0", "backbone.2"))


def test_coalesced_halves_are_keyed_by_coefficient_and_half(model, initial):
    state = initial.set_lr_coefficient(0.5, "backbone")
    current = split_layout(state, model, coalesce=True)
    assert current == (
        GroupLayout(("embed", "head"), 1.0, True),
        GroupLayout(("backbone.0", "backbone.2"), 0.5, True),
        GroupLayout(("backbone.0", "backbone.2"), 0.5, False),
        GroupLayout(("head",), 1.0, False),
    )
    assert plan(current, state, state.set_lr_coefficient(0.25, "backbone")) == Patch(
        (GroupScale(1, 0.5, 0.25), GroupScale(2, 0.5, 0.25))
    )
    result = plan(current, state, state.set_lr_coefficient(0.25, "backbone.0"))
    assert isinstance(result, Rebuild)
    assert result.reasons == (
        "optimizer group 1 (decay half) covers layers whose coefficients now differ "
        "(backbone.0 -> 0.25, backbone.2 -> 0.5); it must be split",
        "optimizer group 2 (no-decay half) covers layers whose coefficients now differ "
        "(backbone.0 -> 0.25, backbone.2 -> 0.5); it must be split",
    )


def test_a_layer_in_two_groups_of_one_half_or_three_groups_is_a_rebuild(initial):
    same_half = (GroupLayout(("head",), 1.0, True), GroupLayout(("head",), 1.0, True))
    assert plan(same_half, initial, initial) == Rebuild(
        (
            "layer 'head' is in two optimizer groups of the same weight-decay half "
            "(again in optimizer group 1 (decay half))",
            "trainable layer(s) with no optimizer group: embed, backbone.0, backbone.2 (frozen "
            "when the optimizer was built, or the optimizer has no per-layer groups)",
        )
    )
    three = (*split_layout(initial, Net()), GroupLayout(("head",), 1.0, False))
    assert any(
        "'head' is in two optimizer groups" in r for r in plan(three, initial, initial).reasons
    )
    mixed = (GroupLayout(("head",), 1.0, None), GroupLayout(("head",), 1.0, False))
    assert any(
        "'head' is in two optimizer groups" in r for r in plan(mixed, initial, initial).reasons
    )
