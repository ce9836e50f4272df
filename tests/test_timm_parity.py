"""Parity with timm's ``param_groups_layer_decay`` on ViT (BEiT / MAE fine-tuning).

timm cannot be installed here, so the model is a ViT with timm's parameter
names (``cls_token`` and ``pos_embed`` on the root, ``patch_embed.proj``,
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``,
``head``) and tiny widths: only names and dimensions matter. The expected lr
scale and weight decay of every parameter are computed here from timm's
documented rule, not by mentor_fn:

* layer id 0 for the embeddings (``cls_token``, ``pos_embed``,
  ``patch_embed.*``), ``i + 1`` for block ``i``, ``num_blocks + 1`` for the
  final norm and the head;
* lr scale ``decay ** (num_layers - layer_id)`` with ``num_layers =
  num_blocks + 1``;
* no weight decay for 1-d parameters and for ``pos_embed`` / ``cls_token``
  (ViT's ``no_weight_decay()``), ``weight_decay`` for the others;
* one group per (layer id, decay or not).

mentor_fn gets there with ``layerwise_lr_decay(decay, groups=...)`` and
``no_weight_decay=("1d", "pos_embed|cls_token")``.
"""

from __future__ import annotations

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
    return num_blocks + 1


def timm_table(model: VisionTransformer, decay: float) -> dict[str, tuple[float, float, str]]:
    """Parameter name -> (lr scale, weight decay, timm's group name)."""
    num_blocks = len(model.blocks)
    num_layers = num_blocks + 1
    table = {}
    for name, parameter in model.named_parameters():
        layer_id = timm_layer_id(name, num_blocks)
        no_decay = parameter.ndim == 1 or name in ("pos_embed", "cls_token")
        table[name] = (
            decay ** (num_layers - layer_id),
            0.0 if no_decay else WEIGHT_DECAY,
            f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}",
        )
    return table


# mentor_fn's way -------------------------------------------------------------------------------------


def vit_decay(decay: float, num_blocks: int) -> mf.Transition:
    return mf.layerwise_lr_decay(
        decay,
        groups=[
            "cls_token|pos_embed|patch_embed",
            *(rf"blocks\.{i}" for i in range(num_blocks)),
            "norm|head",
        ],
    )


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
