"""Parity with timm's ``param_groups_layer_decay`` on ViT (BEiT / MAE fine-tuning).

Two ways. Where timm is installed (the second environment, ``.venv-tv``: see
tools/write_torch_mentor_fixtures.py), against timm itself: real
``timm.create_model`` ViT-S/16, ViT-B/16, ViT-L/16 and DeiT-S (built on the
``meta`` device: only names and shapes matter), every parameter's lr scale and
weight decay from ``timm.optim.param_groups_layer_decay`` against mentor_fn's,
per layer and coalesced, with the ranks written by hand and with
``mf.timm_layer_groups(model)``. Without timm, against timm's rule written out
here, on a ViT with timm's parameter names and tiny widths:

* layer id 0 for the embeddings (``cls_token``, ``pos_embed``,
  ``patch_embed.*``), ``i + 1`` for block ``i``; the final ``norm`` joins the
  last block (id ``num_blocks``: timm's ``group_matcher`` merges it into the
  previous group), the head gets ``num_blocks + 1``;
* lr scale ``decay ** (max_id - layer_id)``;
* no weight decay for 1-d parameters and for ``pos_embed`` / ``cls_token``
  (ViT's ``no_weight_decay()``), ``weight_decay`` for the others;
* one group per (layer id, decay or not).

mentor_fn gets there with ``layerwise_lr_decay(decay, groups=...)`` and
``no_weight_decay=("1d", "pos_embed|cls_token")``.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import mentor_fn as mf

WIDTH = 4
PATCHES = 4
LR = 1e-3
WEIGHT_DECAY = 0.05


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, 2 * WIDTH)
        self.fc2 = nn.Linear(2 * WIDTH, WIDTH)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(WIDTH)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(WIDTH)
        self.mlp = Mlp()


class PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, WIDTH, kernel_size=2, stride=2)


class VisionTransformer(nn.Module):
    """timm's ViT parameter names and shapes, at width 4."""

    def __init__(self, depth: int, num_classes: int = 3) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_embed = nn.Parameter(torch.zeros(1, PATCHES + 1, WIDTH))
        self.blocks = nn.Sequential(*(Block() for _ in range(depth)))
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, num_classes)


# timm's rule, written out ------------------------------------------------------------------------


def timm_layer_id(name: str, num_blocks: int) -> int:
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith("norm."):
        return num_blocks  # merged into the last block's group
    return num_blocks + 1


def timm_table(model: VisionTransformer, decay: float) -> dict[str, tuple[float, float, str]]:
    """Parameter name -> (lr scale, weight decay, timm's group name)."""
    num_blocks = len(model.blocks)
    max_id = num_blocks + 1
    table = {}
    for name, parameter in model.named_parameters():
        layer_id = timm_layer_id(name, num_blocks)
        no_decay = parameter.ndim == 1 or name in ("pos_embed", "cls_token")
        table[name] = (
            decay ** (max_id - layer_id),
            0.0 if no_decay else WEIGHT_DECAY,
            f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}",
        )
    return table


# mentor_fn's way -------------------------------------------------------------------------------------


def vit_ranks(num_blocks: int) -> list[str]:
    """timm's ViT ranks, written by hand: the final norm in the last block's rank."""
    return [
        "cls_token|pos_embed|patch_embed",
        *(rf"blocks\.{i}" for i in range(num_blocks - 1)),
        rf"blocks\.{num_blocks - 1}|norm",
        "head",
    ]


def vit_decay(decay: float, num_blocks: int) -> mf.Transition:
    return mf.layerwise_lr_decay(decay, groups=vit_ranks(num_blocks))


NO_WEIGHT_DECAY = ("1d", "pos_embed|cls_token")


def through_param_groups(model, decay, coalesce):
    state = vit_decay(decay, len(model.blocks))(mf.CurriculumState.from_model(model))
    return mf.param_groups(
        state,
        model,
        LR,
        coalesce=coalesce,
        weight_decay=WEIGHT_DECAY,
        no_weight_decay=NO_WEIGHT_DECAY,
    )


def through_a_curriculum(model, decay, coalesce):
    curriculum = mf.Curriculum(
        model,
        LR,
        optimizer=torch.optim.AdamW,
        coalesce=coalesce,
        weight_decay=WEIGHT_DECAY,
        no_weight_decay=NO_WEIGHT_DECAY,
    )
    curriculum.update(vit_decay(decay, len(model.blocks)))
    optimizer = curriculum.build()
    return optimizer.param_groups[:-1]  # the reference group holds no parameter


@pytest.mark.parametrize("coalesce", [False, True], ids=["per_layer", "coalesced"])
@pytest.mark.parametrize("derive", [through_param_groups, through_a_curriculum])
@pytest.mark.parametrize(("depth", "decay"), [(12, 0.65), (24, 0.75)], ids=["ViT-B", "ViT-L"])
def test_every_parameter_gets_timms_lr_scale_and_weight_decay(depth, decay, derive, coalesce):
    model = VisionTransformer(depth)
    expected = timm_table(model, decay)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    actual = {}
    groups = derive(model, decay, coalesce)
    for group in groups:
        for parameter in group["params"]:
            actual[names[id(parameter)]] = (group["lr"] / LR, group["weight_decay"])
    assert actual.keys() == expected.keys()
    for name, (scale, weight_decay, _) in expected.items():
        assert actual[name][0] == pytest.approx(scale, rel=1e-12), name
        assert actual[name][1] == weight_decay, name
    if coalesce:
        # One group per (layer id, decay or not), exactly timm's partition.
        partition = {frozenset(names[id(p)] for p in group["params"]) for group in groups}
        timm_groups: dict[str, set[str]] = {}
        for name, (_, _, group_name) in expected.items():
            timm_groups.setdefault(group_name, set()).add(name)
        assert partition == {frozenset(members) for members in timm_groups.values()}
        assert len(groups) == 2 * (depth + 2)


def test_timm_layer_groups_reads_a_group_matcher_and_refuses_other_models():
    class WithMatcher(VisionTransformer):
        def group_matcher(self, coarse: bool = False):  # timm's ViT matcher
            return {
                "stem": r"^cls_token|reg_token|pos_embed|patch_embed|norm_pre",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
            }

    model = WithMatcher(3)
    groups = mf.timm_layer_groups(model)
    assert groups == [
        ["cls_token", "pos_embed", "patch_embed"],
        [r"blocks\.0"],
        [r"blocks\.1"],
        [r"blocks\.2", "norm"],
        ["head"],
    ]
    state = mf.CurriculumState.from_model(model)
    assert mf.layerwise_lr_decay(0.5, groups=groups)(state) == vit_decay(0.5, 3)(state)
    with pytest.raises(TypeError, match="has no group_matcher"):
        mf.timm_layer_groups(VisionTransformer(2))

    class Splitting(VisionTransformer):
        def group_matcher(self, coarse: bool = False):
            return {"weights": r"^head\.weight"}  # head.bias falls in another rank

    with pytest.raises(ValueError, match="'head' holds parameters of ranks"):
        mf.timm_layer_groups(Splitting(1))


# Against timm itself ------------------------------------------------------------------------------

TIMM_MODELS = [
    ("vit_small_patch16_224", 0.75),
    ("vit_base_patch16_224", 0.65),
    ("vit_large_patch16_224", 0.75),
    ("deit_small_patch16_224", 0.65),
]


@pytest.fixture(scope="module")
def timm_models():
    timm = pytest.importorskip("timm", reason="timm is installed in the second environment")
    models = {}
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        for name, _ in TIMM_MODELS:
            models[name] = timm.create_model(name, pretrained=False)
    return models


def timm_own_table(model: nn.Module, decay: float) -> dict[str, tuple[float, float]]:
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(
        model,
        weight_decay=WEIGHT_DECAY,
        no_weight_decay_list=model.no_weight_decay(),
        layer_decay=decay,
    )
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return {
        names[id(parameter)]: (group["lr_scale"], group["weight_decay"])
        for group in groups
        for parameter in group["params"]
    }


@pytest.mark.parametrize("coalesce", [False, True], ids=["per_layer", "coalesced"])
@pytest.mark.parametrize("ranks", ["by_hand", "timm_layer_groups"])
@pytest.mark.parametrize(("name", "decay"), TIMM_MODELS, ids=[n for n, _ in TIMM_MODELS])
def test_every_parameter_matches_timm_itself(timm_models, name, decay, ranks, coalesce):
    model = timm_models[name]
    expected = timm_own_table(model, decay)
    groups = vit_ranks(len(model.blocks)) if ranks == "by_hand" else mf.timm_layer_groups(model)
    state = mf.layerwise_lr_decay(decay, groups=groups)(mf.CurriculumState.from_model(model))
    no_weight_decay = ("1d", "|".join(sorted(map(re.escape, model.no_weight_decay()))))
    derived = mf.param_groups(
        state,
        model,
        LR,
        coalesce=coalesce,
        weight_decay=WEIGHT_DECAY,
        no_weight_decay=no_weight_decay,
    )
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    actual = {
        names[id(parameter)]: (group["lr"] / LR, group["weight_decay"])
        for group in derived
        for parameter in group["params"]
    }
    assert actual.keys() == expected.keys()
    for parameter, (scale, weight_decay) in expected.items():
        assert actual[parameter][0] == pytest.approx(scale, rel=1e-12), parameter
        assert actual[parameter][1] == weight_decay, parameter
    # The final norm is where a rule re-derived by reading timm's docs went
    # wrong: timm gives it the last block's scale, decay ** 1.
    assert expected["norm.weight"][0] == pytest.approx(decay)
