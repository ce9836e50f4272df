"""A transition on a built Curriculum costs O(changed layers + rules): what it relies on.

Looking layer names up instead of matching them (``LayerTree.select`` against
``select_layers``), the layers a change of rules can affect
(``CurriculumState.changed_positions``), and the plan over the touched groups
only: property-tested to be the pure ``plan(layout, old, new)``, through the
Curriculum itself. Plus what must not happen on that path: walking the model.
"""

from __future__ import annotations

import re

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from strategies import apply_writes, scenarios
from torch import nn

import mentor_fn as mf
from mentor_fn._core.layer_tree import layer_tree
from mentor_fn._core.model_walk import walk_model
from mentor_fn._core.patterns import literal_form
from mentor_fn._wrapper import curriculum as _curriculum
from mentor_fn._wrapper import kept_walk as _model_walk
from mentor_fn.testing import models, writes

# Selection --------------------------------------------------------------------------

LAYERS = (
    "embed",
    "blocks",
    "blocks.0",
    "blocks.0.attn",
    "blocks.1",
    "blocks.1.attn",
    "blocks.10",
    "blocks.11",
    "blocksx11",
    "blocks.1x",
    "head",
    "head.0",
)


def outcome(select, layers, patterns):
    try:
        return tuple(select(layers, patterns))
    except (TypeError, ValueError) as error:
        return type(error), str(error)


def indexed_select(layers, patterns):
    tree = layer_tree(tuple(layers))
    return [layers[position] for position in tree.select(patterns)]


@pytest.mark.parametrize(
    "patterns",
    [
        "blocks.11",  # a name whose dot is a wildcard: also blocksx11
        r"blocks\.11",  # re.escape'd: that layer only
        re.escape("blocks.1"),
        "blocks.1.",  # blocks.10, blocks.11, blocks.1x
        "head.0",
        "blocks\\.\\d+",
        ".*",
        "blocks.1|head",
        ["head", "blocks.0"],
        ["head", "head"],
        [],
        "nothing",
        "blocks.2",
        ["head", "(unclosed"],
        ["nothing", "(unclosed"],
        "bl(ocks",
        "blocks.0\\",
        3,
        [3],
        b"head",
    ],
)
def test_indexed_selection_is_select_layers(patterns):
    assert outcome(indexed_select, LAYERS, patterns) == outcome(mf.select_layers, LAYERS, patterns)


def test_a_wildcard_never_matches_a_newline():
    layers = ("a", "a\nb", "a.b")
    assert outcome(indexed_select, layers, "a.b") == outcome(mf.select_layers, layers, "a.b")
    assert indexed_select(layers, "a.b") == ["a.b"]


def test_which_patterns_read_as_names():
    assert literal_form("blocks.11") == ("blocks.11", (6,))
    assert literal_form(re.escape("my layer-1.x")) == ("my layer-1.x", ())
    for regex in ("a|b", "a*", r"\d", r"a\.", "(a)", "[ab]", "^a", "a$", "a{2}", "a+", "a?"):
        if regex != r"a\.":
            assert literal_form(regex) is None, regex
    assert literal_form(r"a\.") == ("a.", ())


name_characters = st.sampled_from(["a", "b", "1", ".", "x", "-", "\n"])
names = st.text(name_characters, min_size=1, max_size=5).filter(
    lambda name: not name.startswith(".") and not name.endswith(".")
)
pattern_pieces = st.sampled_from(["a", "b", "1", ".", "\\.", "x", "-", "\\-", "*", "|", "\\d", "("])


@given(
    st.lists(names, min_size=1, max_size=12, unique=True),
    st.lists(st.lists(pattern_pieces, min_size=1, max_size=5).map("".join), min_size=1, max_size=3),
)
@settings(max_examples=300)
def test_indexed_selection_agrees_on_drawn_names_and_patterns(layers, patterns):
    layers = sorted(layers, key=lambda name: name.count("."))  # ancestors first
    try:
        layer_tree(tuple(layers))
    except ValueError:
        return  # not a valid layers tuple
    for drawn in (patterns, patterns[0]):
        assert outcome(indexed_select, tuple(layers), drawn) == outcome(
            mf.select_layers, tuple(layers), drawn
        )


# Changed layers ------------------------------------------------------------------------


@given(scenarios())
def test_changed_positions_cover_every_layer_that_resolves_differently(scenario):
    a, b = scenario.a, scenario.b
    changed = b.changed_positions(a)
    assert changed is not None and changed == sorted(set(changed))
    differing = {
        position
        for position in range(len(a.layers))
        if a.resolved_frozen()[position] != b.resolved_frozen()[position]
        or a.resolved_coefficients()[position] != b.resolved_coefficients()[position]
    }
    assert differing <= set(changed)
    frozen, trainable, coefficients = b.resolve_at(changed)
    assert frozen == [b.resolved_frozen()[position] for position in changed]
    assert trainable == [b.resolved_trainable()[position] for position in changed]
    assert coefficients == [b.resolved_coefficients()[position] for position in changed]
    assert b.changed_positions(b) == []


def test_changes_beyond_rules_mean_any_layer():
    state = mf.CurriculumState(("a", "a.b", "c"))
    assert state.set_norm_policy("eval").changed_positions(state) is None
    owners = state.with_layer_kinds(parameter_owners=("a.b", "c"))
    assert owners.changed_positions(state) is None
    assert state.freeze("a").changed_positions(state) == [0, 1]


# The plan over touched groups is the pure plan --------------------------------------------


@st.composite
def runs(draw):
    model = draw(models())
    initial = mf.CurriculumState.from_model(model)
    first = draw(writes(initial.layers, max_size=3))
    steps = draw(st.lists(writes(initial.layers, min_size=1, max_size=3), min_size=1, max_size=6))
    return model, apply_writes(initial, first), steps


@given(runs(), st.booleans(), st.booleans())
@settings(max_examples=150, deadline=None)
def test_the_curriculum_executes_the_pure_plan(run, coalesce, split):
    """Before each update, the pure plan on the live layout says what the update must do."""
    model, first, steps = run
    curriculum = mf.Curriculum(
        model,
        0.1,
        optimizer=torch.optim.SGD,
        coalesce=coalesce,
        state=first,
        no_weight_decay=("1d",) if split else (),
    )
    curriculum.build()
    full_plans = []
    with pytest.MonkeyPatch.context() as patch:
        # Counts the Curriculum's own calls of the pure plan: one per rebuild
        # (for its reasons), none for a patch or no change.
        patch.setattr(_curriculum, "plan", lambda *args: full_plans.append(1) or mf.plan(*args))
        rebuilds = 0
        for drawn in steps:
            old = curriculum.state
            new = apply_writes(old, drawn)
            expected = mf.plan(mf.layout_of(curriculum.optimizer), old, new)
            assert curriculum.update(new, reset_optimizer_if_needed=True) == expected
            rebuilds += isinstance(expected, mf.Rebuild)
            assert len(full_plans) == rebuilds
            assert curriculum.state == new
            # Only the changed layers' flags were set: all are right.
            trains = dict(zip(new.layers, new.resolved_trainable()))
            for layer, name, parameter in walk_model(model).named_parameters():
                assert parameter.requires_grad == trains[layer], name


def test_patches_and_no_changes_do_not_walk_the_model(monkeypatch):
    model = nn.Sequential(*(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)) for _ in range(4)))
    curriculum = mf.Curriculum(model, 0.1)
    curriculum.freeze("3")
    curriculum.build()
    walks = []
    original = _model_walk.walk_for_state
    monkeypatch.setattr(
        _model_walk, "walk_for_state", lambda *args: walks.append(1) or original(*args)
    )
    assert isinstance(curriculum.set_lr_coefficient(0.5, "1.0"), mf.Patch)
    assert curriculum.set_lr_coefficient(0.5, "1.0") == mf.NoChange()
    assert curriculum.freeze("0") == mf.NoChange()
    assert isinstance(curriculum.unfreeze("0"), mf.Patch)  # reactivated
    assert walks == []
    assert isinstance(curriculum.unfreeze("3", reset_optimizer_if_needed=True), mf.Rebuild)
    assert walks == [1]  # a rebuild walks the model afresh
    nn.Linear(2, 2)  # a registration anywhere: the kept walk may be stale
    assert curriculum.set_lr_coefficient(0.25, "1.0") != mf.NoChange()
    assert walks == [1, 1]
