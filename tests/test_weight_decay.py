"""Weight-decay kinds: which parameters get no decay, by module type and by rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mentor_fn._weight_decay import is_normalization, weight_decay_rules

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
