"""Unfreezing the top blocks of a ViT-B: mentor_fn side by side with Lightning's BaseFinetuning.

Part of ``bench_curriculum`` (its docstring says what is timed). The model has
ViT-B's module tree and parameter shapes (embed dim 768, MLP 3,072, 12 blocks:
152 parameter tensors, 86M parameters); ``--quick`` uses the same tree at embed
dim 16 and MLP 64. Lightning is optional: without it the rows are skipped
with a note.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import mentor_fn as mf

BLOCKS = 12
TOP = tuple(f"blocks.{number}" for number in range(8, 12))
"""The top 4 blocks, unfrozen by the timed call."""

LR = 1e-4


class _Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class _Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, hidden)


class ViTShapes(nn.Module):
    """timm's ``vit_base_patch16_224`` module tree and parameter shapes (no forward)."""

    def __init__(self, dim: int = 768, hidden: int = 3072, classes: int = 1000) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 197, dim) * 0.02)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 16, stride=16)
        self.blocks = nn.Sequential(*(_Block(dim, hidden) for _ in range(BLOCKS)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)


def lightning_available() -> bool:
    return importlib.util.find_spec("lightning") is not None


@dataclass
class ViTCase:
    """One model, the optimizer state a few steps gave each variant, and the timed calls."""

    model: nn.Module
    tensors: int
    # Per-parameter Adam state after a few real steps (the same tensors are
    # handed to every setup: the timed calls never write them).
    state: dict[nn.Parameter, dict[str, Any]]


def make_case(*, quick: bool) -> ViTCase:
    """The model, and Adam's state after 3 steps on gradients of every parameter."""
    model = ViTShapes(16, 64, 10) if quick else ViTShapes()
    parameters = list(model.parameters())
    generator = torch.Generator().manual_seed(0)
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-3
    optimizer = torch.optim.Adam(parameters, lr=LR)
    for _ in range(3):
        optimizer.step()
    state = {parameter: optimizer.state[parameter] for parameter in parameters}
    for parameter in parameters:
        parameter.grad = None
    return ViTCase(model, len(parameters), state)


def _top_modules(model: nn.Module) -> list[nn.Module]:
    return [model.get_submodule(name) for name in TOP]


def _with_state(optimizer: torch.optim.Optimizer, case: ViTCase) -> None:
    """Give every parameter in ``optimizer`` the state the steps left (shared tensors)."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            optimizer.state[parameter] = case.state[parameter]


def mentor_rebuild(case: ViTCase) -> Callable[[], Any]:
    """Set up (untimed): blocks 8-11 frozen at build(), a few steps' state; return the call."""
    for parameter in case.model.parameters():
        parameter.requires_grad_(True)
    curriculum = mf.Curriculum(case.model, LR)
    curriculum.freeze(list(TOP))
    _with_state(curriculum.build(), case)

    def call() -> Any:
        plan = curriculum.unfreeze(list(TOP), reset_optimizer_if_needed=True)
        assert isinstance(plan, mf.Rebuild) and not plan.new_objects, plan
        return plan

    return call


def mentor_patch(case: ViTCase) -> Callable[[], Any]:
    """Set up (untimed): built with every block trainable, steps, then blocks 8-11 frozen."""
    for parameter in case.model.parameters():
        parameter.requires_grad_(True)
    curriculum = mf.Curriculum(case.model, LR)
    _with_state(curriculum.build(), case)
    curriculum.freeze(list(TOP))

    def call() -> Any:
        plan = curriculum.unfreeze(list(TOP))
        assert isinstance(plan, mf.Patch) and len(plan.reactivated) > 0, plan
        return plan

    return call


def _lightning_call(case: ViTCase, *, frozen_at_build: bool) -> Callable[[], Any]:
    from lightning.pytorch.callbacks import BaseFinetuning

    model = case.model
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if frozen_at_build:
        BaseFinetuning.freeze(_top_modules(model), train_bn=True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    _with_state(optimizer, case)
    if not frozen_at_build:
        BaseFinetuning.freeze(_top_modules(model), train_bn=True)
    modules = _top_modules(model)

    def call() -> Any:
        BaseFinetuning.unfreeze_and_add_param_group(modules, optimizer, lr=LR)
        return optimizer

    return call


def lightning_rebuild(case: ViTCase) -> Callable[[], Any]:
    """Lightning's counterpart of :func:`mentor_rebuild`: the blocks join as a new group."""
    return _lightning_call(case, frozen_at_build=True)


def lightning_patch(case: ViTCase) -> Callable[[], Any]:
    """Lightning's counterpart of :func:`mentor_patch`: the blocks are in the optimizer
    already, so it only makes them trainable (and warns that it skipped them)."""
    return _lightning_call(case, frozen_at_build=False)


def quiet_lightning() -> None:
    """Lightning warns at each call of the patch path that the parameters are in the
    optimizer already; the warning is filtered once, not inside the timed calls."""
    warnings.filterwarnings("ignore", message=".*already exist within another group.*")
