"""Weight-decay kinds: which parameters get no decay, by module type and by rule, and the
param groups they split into (with wrappers around the model too)."""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

import mentor_fn as mf
from mentor_fn._core.weight_decay import is_normalization, weight_decay_rules

NORMS_WITH_PARAMETERS = [
    nn.BatchNorm1d(4),
    nn.BatchNorm2d(4),
    nn.BatchNorm3d(4),
    nn.SyncBatchNorm(4),
    nn.InstanceNorm1d(4, affine=True),
    nn.InstanceNorm2d(4, affine=True),
    nn.InstanceNorm3d(4, affine=True),
    nn.LayerNorm(4),
    nn.GroupNorm(2, 4),
    nn.RMSNorm(4),
    nn.LazyBatchNorm1d(),
]


@pytest.mark.parametrize("norm", NORMS_WITH_PARAMETERS, ids=lambda m: type(m).__name__)
def test_every_torch_norm_type_is_a_norm_whatever_its_name(norm):
    assert is_normalization(norm)
    rules = weight_decay_rules(("norm",))
    for name, parameter in norm.named_parameters():
        # The name says nothing: only the module's type decides.
        assert rules.excludes(f"blocks.0.scale_{name}", parameter, norm)


@pytest.mark.parametrize(
    "module", [nn.LocalResponseNorm(2), nn.CrossMapLRN2d(3)], ids=lambda m: type(m).__name__
)
def test_parameterless_norms_are_norms_too(module):
    assert is_normalization(module)


class MyLayerNorm(nn.LayerNorm):
    pass


def test_subclasses_of_torch_norms_are_norms_and_lookalikes_are_not():
    assert is_normalization(MyLayerNorm(4))
    assert not is_normalization(nn.Linear(4, 4))
    norm_named_linear = nn.Linear(4, 4)
    rules = weight_decay_rules(("norm",))
    assert not rules.excludes("norm.weight", norm_named_linear.weight, norm_named_linear)


def test_bias_kind_is_by_parameter_name():
    attention = nn.MultiheadAttention(4, 2)
    linear = nn.Linear(4, 4)
    rules = weight_decay_rules(("bias",))
    assert rules.excludes("head.bias", linear.bias, linear)
    assert not rules.excludes("head.weight", linear.weight, linear)
    assert rules.excludes("attn.in_proj_bias", attention.in_proj_bias, attention)
    assert not rules.excludes("attn.in_proj_weight", attention.in_proj_weight, attention)


@pytest.mark.parametrize("embedding", [nn.Embedding(5, 4), nn.EmbeddingBag(5, 4)])
def test_embedding_kind_is_by_module_type(embedding):
    rules = weight_decay_rules(("embedding",))
    assert rules.excludes("tokens.weight", embedding.weight, embedding)
    linear = nn.Linear(4, 4)
    assert not rules.excludes("embedding.weight", linear.weight, linear)


def test_1d_kind_is_by_dimension():
    rules = weight_decay_rules(("1d",))
    root = nn.Module()
    assert rules.excludes("scale", nn.Parameter(torch.zeros(())), root)
    assert rules.excludes("gamma", nn.Parameter(torch.zeros(3)), root)
    assert not rules.excludes("pos_embed", nn.Parameter(torch.zeros(1, 3)), root)


def test_regexes_fully_match_full_names():
    rules = weight_decay_rules((r"pos_embed|cls_token", r"blocks\.\d+\.gamma"))
    root = nn.Module()
    parameter = nn.Parameter(torch.zeros(1, 2, 3))
    assert rules.excludes("pos_embed", parameter, root)
    assert rules.excludes("blocks.11.gamma", parameter, root)
    assert not rules.excludes("pos_embed_extra", parameter, root)
    assert rules.unmatched_patterns(["pos_embed", "head.weight"]) == (r"blocks\.\d+\.gamma",)


def test_callables_get_name_parameter_and_module():
    seen = []

    def rule(name, parameter, module):
        seen.append((name, tuple(parameter.shape), type(module).__name__))
        return name.endswith("scale")

    rules = weight_decay_rules((rule,))
    linear = nn.Linear(2, 3)
    assert not rules.excludes("fc.weight", linear.weight, linear)
    assert seen == [("fc.weight", (3, 2), "Linear")]
    with pytest.raises(TypeError, match="must return a bool"):
        weight_decay_rules((lambda *_: 1,)).excludes("fc.weight", linear.weight, linear)


@pytest.mark.parametrize(
    ("rules", "error", "match"),
    [
        ("bias", TypeError, r"write \('bias',\)"),
        ((3,), TypeError, "kind, a regex"),
        (("(unclosed",), ValueError, "neither a kind .* nor a valid regex"),
    ],
)
def test_bad_rules_are_refused(rules, error, match):
    with pytest.raises(error, match=match):
        weight_decay_rules(rules)


def test_no_rules_exclude_nothing():
    assert not weight_decay_rules(None)
    assert not weight_decay_rules(())
    assert weight_decay_rules(("1d",))


# Through param_groups ---------------------------------------------------------------------------


def split(groups) -> list[tuple[tuple[str, ...], bool | None, object, list[str]]]:
    """(layers, half, weight_decay, parameter names) of each group."""
    return [
        (
            group["layers"],
            group.get("applies_weight_decay"),
            group.get("weight_decay", "default"),
            [NAMES[id(parameter)] for parameter in group["params"]],
        )
        for group in groups
    ]


NAMES: dict[int, str] = {}


def named(model: nn.Module) -> nn.Module:
    NAMES.update({id(parameter): name for name, parameter in model.named_parameters()})
    return model


@pytest.mark.parametrize(
    "norm", [*NORMS_WITH_PARAMETERS[:-1], nn.LocalResponseNorm(2)], ids=lambda m: type(m).__name__
)
def test_norm_kind_through_param_groups_for_every_norm_type(norm):
    model = named(nn.Sequential(nn.Linear(4, 4, bias=False), copy.deepcopy(norm)))
    state = mf.CurriculumState.from_model(model)
    groups = mf.param_groups(state, model, 0.1, weight_decay=0.05, no_weight_decay=("norm",))
    expected = [(("0",), True, 0.05, ["0.weight"])]
    if list(norm.parameters()):  # LocalResponseNorm has none: no layer, no group
        expected.append((("1",), False, 0.0, [f"1.{name}" for name, _ in norm.named_parameters()]))
    assert split(groups) == expected


class Kinds(nn.Module):
    """Root parameters, an embedding, attention, a linear and a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.scale = nn.Parameter(torch.ones(4))
        self.tokens = nn.Embedding(10, 4)
        self.attn = nn.MultiheadAttention(4, 2)
        self.fc = nn.Linear(4, 4)
        self.ln_f = nn.RMSNorm(4)


def kinds_groups(rules, **kwargs):
    model = named(Kinds())
    state = mf.CurriculumState.from_model(model)
    return split(mf.param_groups(state, model, 0.1, no_weight_decay=rules, **kwargs))


def excluded(rules) -> list[str]:
    return [name for _, half, _, names in kinds_groups(rules) if half is False for name in names]


def test_each_kind_excludes_its_parameters():
    assert excluded(("bias",)) == ["attn.in_proj_bias", "attn.out_proj.bias", "fc.bias"]
    assert excluded(("norm",)) == ["ln_f.weight"]
    assert excluded(("embedding",)) == ["tokens.weight"]
    assert excluded(("1d",)) == [
        "scale",
        "attn.in_proj_bias",
        "attn.out_proj.bias",
        "fc.bias",
        "ln_f.weight",
    ]
    assert excluded((r"cls_token|attn\..*",)) == [
        "cls_token",
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
    ]


def test_a_callable_gets_full_names_parameters_and_their_modules():
    seen = []

    def rule(name, parameter, module):
        seen.append((name, type(module).__name__))
        return parameter.ndim == 3

    assert excluded((rule,)) == ["cls_token"]
    assert seen[:3] == [("cls_token", "Kinds"), ("scale", "Kinds"), ("tokens.weight", "Embedding")]
    assert ("attn.out_proj.weight", "NonDynamicallyQuantizableLinear") in seen


def test_groups_split_in_layer_order_decay_half_first():
    assert kinds_groups(("1d",), weight_decay=0.1) == [
        (("cls_token",), True, 0.1, ["cls_token"]),
        (("scale",), False, 0.0, ["scale"]),
        (("tokens",), True, 0.1, ["tokens.weight"]),
        (("attn",), True, 0.1, ["attn.in_proj_weight"]),
        (("attn",), False, 0.0, ["attn.in_proj_bias"]),
        (("attn.out_proj",), True, 0.1, ["attn.out_proj.weight"]),
        (("attn.out_proj",), False, 0.0, ["attn.out_proj.bias"]),
        (("fc",), True, 0.1, ["fc.weight"]),
        (("fc",), False, 0.0, ["fc.bias"]),
        (("ln_f",), False, 0.0, ["ln_f.weight"]),
    ]


def test_without_weight_decay_the_decay_half_takes_the_optimizers_default():
    groups = kinds_groups(("1d",))
    assert {decay for _, half, decay, _ in groups if half} == {"default"}
    model = Kinds()
    optimizer = torch.optim.AdamW(
        mf.param_groups(mf.CurriculumState.from_model(model), model, 0.1, no_weight_decay=["1d"]),
        weight_decay=0.3,
    )
    assert {g["applies_weight_decay"]: g["weight_decay"] for g in optimizer.param_groups} == {
        True: 0.3,
        False: 0.0,
    }


def test_coalesced_groups_are_keyed_by_coefficient_and_half():
    model = named(Kinds())
    state = mf.CurriculumState.from_model(model).set_lr_coefficient(0.5, "attn|fc")
    groups = mf.param_groups(state, model, 0.1, coalesce=True, no_weight_decay=("1d",))
    assert [
        (layers, half, group["coefficient"])
        for (layers, half, _, _), group in zip(split(groups), groups)
    ] == [
        (("cls_token", "tokens"), True, 1.0),
        (("scale", "ln_f"), False, 1.0),
        (("attn", "attn.out_proj", "fc"), True, 0.5),
        (("attn", "attn.out_proj", "fc"), False, 0.5),
    ]


def test_frozen_layers_get_no_half():
    model = named(Kinds())
    state = mf.CurriculumState.from_model(model).freeze("attn|tokens|cls_token")
    layers = [
        layers for layers, *_ in split(mf.param_groups(state, model, 0.1, no_weight_decay=("1d",)))
    ]
    assert layers == [("scale",), ("fc",), ("fc",), ("ln_f",)]


def test_without_rules_the_groups_are_as_before():
    model = Kinds()
    state = mf.CurriculumState.from_model(model)
    plain = mf.param_groups(state, model, 0.1)
    assert all(set(group) == {"params", "lr", "layers", "coefficient"} for group in plain)
    for rules in ((), None):
        assert mf.param_groups(state, model, 0.1, no_weight_decay=rules) == plain
    with_decay = mf.param_groups(state, model, 0.1, weight_decay=0.01)
    assert [{**group, "weight_decay": 0.01} for group in plain] == with_decay


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"no_weight_decay": ("pos_embed",)},
            ValueError,
            r"pattern\(s\) 'pos_embed' match no parameter",
        ),
        ({"no_weight_decay": "bias"}, TypeError, r"write \('bias',\)"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be finite and >= 0"),
        ({"weight_decay": "0.1"}, TypeError, "weight_decay must be a real number"),
    ],
)
def test_bad_rules_through_param_groups(kwargs, error, match):
    model = Kinds()
    with pytest.raises(error, match=match):
        mf.param_groups(mf.CurriculumState.from_model(model), model, 0.1, **kwargs)


def test_adamw_decays_only_the_decay_half():
    model = Kinds()
    groups = mf.param_groups(
        mf.CurriculumState.from_model(model), model, 0.1, weight_decay=0.5, no_weight_decay=("1d",)
    )
    optimizer = torch.optim.AdamW(groups)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    for name, parameter in model.named_parameters():
        decayed = parameter.ndim > 1 and bool(before[name].abs().sum())
        assert torch.equal(before[name], parameter) != decayed, name


# Wrappers ---------------------------------------------------------------------------------------


def group_parameters(groups):
    return [
        (group["layers"], group.get("applies_weight_decay"), [id(p) for p in group["params"]])
        for group in groups
    ]


def wrapped_groups(model, wrapped):
    seen = []

    def rule(name, parameter, module):
        seen.append(name)
        return name.endswith("in_proj_weight")

    rules = ("1d", r"cls_token", rule)
    groups = mf.param_groups(
        mf.CurriculumState.from_model(model), wrapped, 0.1, weight_decay=0.1, no_weight_decay=rules
    )
    return group_parameters(groups), seen


def test_compile_does_not_change_the_groups(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    model = Kinds()
    expected = wrapped_groups(model, model)
    assert wrapped_groups(model, torch.compile(model, backend="eager")) == expected
    assert wrapped_groups(model, nn.DataParallel(model)) == expected
    torch._dynamo.reset()


def test_ddp_does_not_change_the_groups():
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group yet")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group(
            "gloo", store=dist.FileStore(os.path.join(folder, "store"), 1), rank=0, world_size=1
        )
        try:
            model = Kinds()
            expected = wrapped_groups(model, model)
            assert wrapped_groups(model, mf.wrap_ddp(model)) == expected
        finally:
            dist.destroy_process_group()
