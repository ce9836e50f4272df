"""Layers: names, wrappers, ownership of parameters, and pattern selection."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import expected_layer_names, expected_owners
from torch import nn

from mentor_fn import (
    CurriculumState,
    layer_names,
    param_groups,
    requires_grad_map,
    select_layers,
)
from mentor_fn._core.model_walk import walk_model
from mentor_fn.testing import models

# Models ---------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.norm = nn.LayerNorm(4)


class Net(nn.Module):
    """A backbone of blocks (with a parameterless container), and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(Block(), nn.ReLU(), Block())
        self.pool = nn.Sequential(nn.ReLU(), nn.Identity())  # no parameters anywhere
        self.head = nn.Linear(4, 2)


NET_LAYERS = (
    "backbone",
    "backbone.0",
    "backbone.0.conv",
    "backbone.0.norm",
    "backbone.2",
    "backbone.2.conv",
    "backbone.2.norm",
    "head",
)


class ViT(nn.Module):
    """Parameters registered on the root, after a module and between modules."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.blocks = nn.Sequential(nn.Linear(4, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, 4))
        self.head = nn.Linear(4, 2)


class TiedLM(nn.Module):
    """An embedding tied to the output head (the head registers the same weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10)
        self.head.weight = self.embed.weight


# layer_names ------------------------------------------------------------------------


def test_containers_included_parameterless_modules_and_root_excluded():
    names = layer_names(Net())
    assert names == NET_LAYERS
    assert "" not in names
    assert "pool" not in names and "backbone.1" not in names
    assert "backbone.0.act" not in names


def test_sequential_example():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    assert layer_names(model) == ("0", "2")


def test_root_parameters_are_layers_listed_first_in_registration_order():
    assert layer_names(ViT()) == ("cls_token", "pos_embed", "patch", "blocks", "blocks.0", "head")


def test_root_parameter_set_to_none_is_not_a_layer():
    model = nn.Module()
    model.register_parameter("missing", None)
    model.fc = nn.Linear(2, 2)
    assert layer_names(model) == ("fc",)


def test_shared_module_listed_once_at_first_path():
    shared = nn.Linear(2, 2)
    model = nn.Module()
    model.a = shared
    model.b = nn.Sequential(nn.Linear(2, 2), shared)
    assert layer_names(model) == ("a", "b", "b.0")


def test_module_reachable_twice_in_one_container():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert layer_names(model) == ("0",)


def test_container_holding_only_an_already_listed_module_is_not_a_layer():
    # In the de-duplicated traversal "b" has nothing below it: freezing it
    # could change nothing, so it is not offered as a layer.
    shared = nn.Linear(2, 2)
    model = nn.Module()
    model.a = shared
    model.b = nn.Sequential(shared)
    assert layer_names(model) == ("a",)


def test_module_registering_only_a_tied_parameter_is_a_layer():
    model = nn.Module()
    model.a = nn.Linear(2, 2, bias=False)
    model.b = nn.Linear(2, 2, bias=False)
    model.b.weight = model.a.weight
    assert layer_names(model) == ("a", "b")


def test_layer_names_rejects_non_modules():
    with pytest.raises(TypeError, match="Module"):
        layer_names({"fc": nn.Linear(2, 2)})


def test_no_parameters_no_layers():
    assert layer_names(nn.Sequential(nn.ReLU(), nn.Identity())) == ()


def test_deep_nesting_walked_as_deep_as_torch_goes():
    # 500 levels: far deeper than real models, well within the recursion
    # limit that torch's own named_modules is bound by too.
    model: nn.Module = nn.Linear(2, 2)
    for _ in range(500):
        model = nn.Sequential(model)
    walked = walk_model(model)
    assert len(walked.layers) == 500
    assert walked.layers[-1] == ".".join(["0"] * 500)
    assert [name for _, name, _ in walked.named_parameters()] == [
        name for name, _ in model.named_parameters()
    ]


@given(models())
def test_layer_names_match_torch_traversal(model):
    assert layer_names(model) == expected_layer_names(model)


# Wrappers ---------------------------------------------------------------------------


def test_data_parallel_is_transparent():
    model = Net()
    assert layer_names(nn.DataParallel(model)) == NET_LAYERS


def test_data_parallel_child_is_transparent():
    holder = nn.Module()
    holder.net = nn.DataParallel(Net())
    holder.out = nn.Linear(2, 2)
    assert layer_names(holder) == ("net", *(f"net.{name}" for name in NET_LAYERS), "out")


@given(models())
def test_data_parallel_names_and_ownership_match_bare_model(model):
    wrapped = nn.DataParallel(model)
    assert layer_names(wrapped) == layer_names(model)
    state = CurriculumState.from_model(model)
    assert requires_grad_map(state, wrapped) == requires_grad_map(state, model)


def test_torch_compile_is_transparent(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    model = ViT()
    compiled = torch.compile(model, backend="eager")
    assert any(name.startswith("_orig_mod.") for name, _ in compiled.named_parameters())
    bare_names = layer_names(ViT())
    assert layer_names(compiled) == bare_names

    # A compiled child, and nested wrappers around a compiled model.
    holder = nn.Module()
    holder.encoder = torch.compile(Net(), backend="eager")
    holder.out = nn.Linear(2, 2)
    assert layer_names(holder) == ("encoder", *(f"encoder.{n}" for n in NET_LAYERS), "out")
    assert layer_names(nn.DataParallel(compiled)) == bare_names

    # Ownership and parameter names are the bare model's.
    state = CurriculumState.from_model(compiled)
    assert set(requires_grad_map(state, compiled)) == {n for n, _ in model.named_parameters()}
    grouped = [p for group in param_groups(state, compiled, 0.1) for p in group["params"]]
    assert sorted(map(id, grouped)) == sorted(map(id, model.parameters()))


def test_distributed_data_parallel_is_transparent(tmp_path, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = Net()
        ddp = nn.parallel.DistributedDataParallel(model)
        assert any(name.startswith("module.") for name, _ in ddp.named_parameters())
        assert layer_names(ddp) == NET_LAYERS

        holder = nn.Module()
        holder.net = nn.parallel.DistributedDataParallel(Net())
        assert layer_names(holder) == ("net", *(f"net.{name}" for name in NET_LAYERS))

        state = CurriculumState.from_model(ddp)
        assert state == CurriculumState.from_model(model)
        assert requires_grad_map(state, ddp) == requires_grad_map(state, model)
    finally:
        torch.distributed.destroy_process_group()


def test_activation_checkpoint_wrapper_is_transparent():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = nn.Sequential(nn.Linear(2, 2), checkpoint_wrapper(nn.Sequential(nn.Linear(2, 2))))
    assert any("_checkpoint_wrapped_module" in name for name, _ in model.named_parameters())
    assert layer_names(model) == ("0", "1", "1.0")
    state = CurriculumState.from_model(model)
    assert list(requires_grad_map(state, model)) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]


def test_wrappers_are_detected_by_type_not_by_attribute_name():
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)
            self._orig_mod = nn.Linear(2, 2)

    assert layer_names(Holder()) == ("module", "_orig_mod")
    outer = nn.Module()
    outer.module = Holder()
    assert layer_names(outer) == ("module", "module.module", "module._orig_mod")


# Ownership --------------------------------------------------------------------------


def test_tied_embedding_and_head_weight_owned_once_by_the_embedding():
    model = TiedLM()
    walked = walk_model(model)
    assert walked.layers == ("embed", "body", "head")
    owned = {
        layer: [name for name, _ in params] for layer, params in zip(walked.layers, walked.owned)
    }
    assert owned == {
        "embed": ["embed.weight"],
        "body": ["body.weight", "body.bias"],
        "head": ["head.bias"],
    }

    state = CurriculumState.from_model(model)
    assert list(requires_grad_map(state, model)) == [n for n, _ in model.named_parameters()]
    grouped = [p for group in param_groups(state, model, 0.1) for p in group["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))


def test_root_parameter_tied_to_a_child_is_owned_by_the_root_layer():
    model = nn.Module()
    model.fc = nn.Linear(2, 2)
    model.shared_weight = model.fc.weight
    walked = walk_model(model)
    assert walked.layers == ("shared_weight", "fc")
    assert [[name for name, _ in params] for params in walked.owned] == [
        ["shared_weight"],
        ["fc.bias"],
    ]


@given(models())
def test_every_parameter_is_owned_by_exactly_one_layer(model):
    walked = walk_model(model)
    owned = [(layer, parameter) for layer, _, parameter in walked.named_parameters()]
    assert sorted(id(p) for _, p in owned) == sorted(id(p) for p in model.parameters())
    owners = expected_owners(model)
    assert {id(p): layer for layer, p in owned} == owners
    assert walked.parameter_owners == frozenset(owners.values())
    # Parameter names are torch's (the first registration), in torch's order.
    assert [name for _, name, _ in walked.named_parameters()] == [
        name for name, _ in model.named_parameters()
    ]


# select_layers ----------------------------------------------------------------------

LAYERS = ("backbone", "backbone.layer3", "backbone.layer4", "head", "head2")


def test_patterns_fullmatch():
    assert select_layers(LAYERS, "head") == ("head",)
    assert select_layers(LAYERS, r"backbone\.layer[34]") == ("backbone.layer3", "backbone.layer4")
    assert select_layers(LAYERS, "backbone.*") == ("backbone", "backbone.layer3", "backbone.layer4")
    with pytest.raises(ValueError, match="'back'"):
        select_layers(LAYERS, "back")  # a prefix is not a match


def test_result_is_deduplicated_in_layer_order():
    selected = select_layers(LAYERS, ["head", r"backbone\.layer4", "head.*", "backbone.*"])
    assert selected == ("backbone", "backbone.layer3", "backbone.layer4", "head", "head2")


def test_bare_string_is_one_pattern():
    layers = ("a", "b", "ab")
    assert select_layers(layers, "ab") == ("ab",)
    assert select_layers(layers, ("a", "b")) == ("a", "b")


def test_any_iterable_of_patterns():
    assert select_layers(iter(LAYERS), (p for p in ["head2", "head"])) == ("head", "head2")
    assert select_layers(LAYERS, []) == ()


def test_patterns_with_groups_or_inline_flags():
    # Such patterns cannot be merged into one alternation; results must not change.
    assert select_layers(LAYERS, [r"(head)2?", r"backbone\.layer(3)"]) == (
        "backbone.layer3",
        "head",
        "head2",
    )
    assert select_layers(LAYERS, ["(?i)HEAD", "backbone"]) == ("backbone", "head")
    assert select_layers(LAYERS, [r"(?P<x>head)", r"(?P<x>backbone)"]) == ("backbone", "head")


def test_inline_flags_apply_to_their_own_pattern_only():
    layers = ("Backbone", "backbone", "HEAD", "head")
    assert select_layers(layers, ["(?i)head", "backbone"]) == ("backbone", "HEAD", "head")
    assert select_layers(layers, ["backbone", "(?i:head)"]) == ("backbone", "HEAD", "head")
    assert select_layers(layers, ["backbone", "(?i)BACKBONE"]) == ("Backbone", "backbone")


def test_no_match_names_the_pattern_and_suggests_close_layers():
    with pytest.raises(ValueError, match=r"'backbone\.layr4'.*'backbone\.layer4'"):
        select_layers(LAYERS, ["head", "backbone.layr4"])
    with pytest.raises(ValueError, match="'zzz' matches no layer"):
        select_layers(LAYERS, "zzz")


def test_invalid_regex_names_the_pattern():
    with pytest.raises(ValueError, match=re.escape("'backbone.('")):
        select_layers(LAYERS, ["head", "backbone.("])


@pytest.mark.parametrize("patterns", [3, None, b"head", ["head", 3], [b"head"], [None]])
def test_non_str_patterns_raise_type_error(patterns):
    with pytest.raises(TypeError, match="str"):
        select_layers(LAYERS, patterns)


@pytest.mark.parametrize(
    "patterns",
    [["head", "nothing"], ["head", "("], ["head", 3]],
    ids=["no-match", "bad-regex", "not-str"],
)
def test_failing_selection_changes_nothing(patterns):
    state = CurriculumState(LAYERS).set_lr_coefficient(0.5, "backbone")
    before = state.to_dict()
    for write in (
        lambda: state.freeze(patterns),
        lambda: state.unfreeze(patterns),
        lambda: state.set_lr_coefficient(0.1, patterns),
    ):
        with pytest.raises((ValueError, TypeError)):
            write()
    assert state.to_dict() == before
    assert not state.is_frozen("head") and state.coefficient("head") == 1.0


def test_state_select_is_select_layers_on_its_layers():
    state = CurriculumState(LAYERS)
    assert state.select(["head.*", "backbone"]) == select_layers(LAYERS, ["head.*", "backbone"])
    with pytest.raises(ValueError, match="'nope'"):
        state.select("nope")


_name = st.text(alphabet="ab", min_size=1, max_size=2)
_layer_sets = st.lists(
    st.lists(_name, min_size=1, max_size=3).map(".".join), min_size=1, max_size=8, unique=True
)


@given(_layer_sets, st.data())
def test_selection_matches_brute_force_fullmatch(layers, data):
    candidates = [*layers, "a.*", r"a\..*", ".*b", "(a|b)", "(?:b)", "(a)b", r"[ab]\.a"]
    patterns = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=4))
    expected = tuple(name for name in layers if any(re.fullmatch(p, name) for p in patterns))
    if all(any(re.fullmatch(p, name) for name in layers) for p in patterns):
        assert select_layers(layers, patterns) == expected
    else:
        with pytest.raises(ValueError, match="matches no layer"):
            select_layers(layers, patterns)


# Registration lookups (the optimizer's step guard) -------------------------------


def test_registration_lookups_follow_wrappers_and_notice_replacements():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    from mentor_fn._wrapper.registration_lookups import lookups_hold, registration_lookups

    inner = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model = nn.DataParallel(nn.Sequential(checkpoint_wrapper(inner), nn.Linear(2, 1)))
    assert "0.1" in layer_names(model)
    weight = inner[1].weight
    lookups = registration_lookups(model, "0.1", weight)
    assert lookups is not None and lookups_hold(lookups)
    assert registration_lookups(model, "0.1", inner[0].weight) is None  # not its parameter
    assert registration_lookups(model, "9", weight) is None  # no such layer

    inner[1].weight = nn.Parameter(weight.detach().clone())
    assert not lookups_hold(lookups)
    inner[1].weight = weight
    assert lookups_hold(lookups)
    inner[1] = nn.Linear(2, 2)
    assert not lookups_hold(lookups)


def test_registration_lookups_of_a_root_parameter():
    from mentor_fn._wrapper.registration_lookups import lookups_hold, registration_lookups

    model = nn.Linear(2, 2)
    lookups = registration_lookups(model, "bias", model.bias)
    assert lookups is not None and lookups_hold(lookups)
    model.bias = nn.Parameter(torch.zeros(2))
    assert not lookups_hold(lookups)
