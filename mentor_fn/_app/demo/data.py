"""The demo's data: scikit-learn's 8x8 digits, a source task and a rotated target task.

Per seed, the 1797 images are split (stratified by digit) into a source half
and a target half. The source task is the ten digits as they are: 80% of its
half to train on, 20% to validate on. The target task is the same ten digits
rotated by ``ROTATION_DEGREES`` (a shifted domain, same labels):
``SHOTS_PER_CLASS`` labelled images per digit to train on, every other target
image to validate on. The images ship inside scikit-learn: nothing is
downloaded. The angle was chosen by the premise rule of docs/demo-protocol.md
(tools/choose_demo_angle.py), before any transfer at that angle was run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional
from torch.utils.data import TensorDataset

__all__ = [
    "CLASSES",
    "ROTATION_DEGREES",
    "SHOTS_PER_CLASS",
    "DemoTasks",
    "Split",
    "load_tasks",
    "rotate",
]

CLASSES = 10
SHOTS_PER_CLASS = 10
"""Labelled target images per digit (few-shot transfer: 100 images in all)."""

ROTATION_DEGREES = 15
"""The target task's rotation, counterclockwise: the largest angle of the
premise rule's grid at which the pretrained network, with no transfer, gets
at least half the target validation images right (docs/demo-protocol.md)."""

SOURCE_TRAIN_FRACTION = 0.8
MISSING_EXTRA = "the demo needs scikit-learn and matplotlib: pip install 'mentor_fn[demo]'"


@dataclass(frozen=True)
class Split:
    """Training and validation images of one task: ``(N, 1, 8, 8)`` in [0, 1], labels 0-9."""

    train: TensorDataset
    val: TensorDataset


@dataclass(frozen=True)
class DemoTasks:
    """The source task (upright digits) and the target task (rotated digits) of one seed."""

    source: Split
    target: Split


def load_tasks(seed: int, degrees: float = ROTATION_DEGREES) -> DemoTasks:
    """The source and target tasks for ``seed`` (which seeds every split).

    ``degrees`` rotates the target images (the split does not depend on it).

    Raises:
        ImportError: scikit-learn is not installed (the message says what to install).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(MISSING_EXTRA) from error
    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(labels, dtype=torch.long)

    # sklearn's stratified splits, seeded: each half and each part holds every
    # digit in the proportions of the whole set.
    source, target = train_test_split(
        range(len(labels)), test_size=0.5, stratify=labels, random_state=seed
    )
    source_train, source_val = train_test_split(
        source, train_size=SOURCE_TRAIN_FRACTION, stratify=labels[source], random_state=seed
    )
    target_train, target_val = _few_shot(torch.as_tensor(target), y[target], seed)

    rotated = rotate(x, degrees)
    return DemoTasks(
        source=Split(_subset(x, y, source_train), _subset(x, y, source_val)),
        target=Split(_subset(rotated, y, target_train), _subset(rotated, y, target_val)),
    )


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """``images`` (``(N, C, H, W)``) rotated counterclockwise by ``degrees`` about their centre.

    Bilinear interpolation, zeros outside the image, one code path for every
    angle: at 90 degrees on a square image each pixel centre lands on a pixel
    centre, and the result is ``torch.rot90(images, 1, dims=(2, 3))`` up to
    float rounding.
    """
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # affine_grid maps each output location (x right, y down) to where it samples the input.
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=images.dtype)
    grid = functional.affine_grid(
        theta.expand(len(images), 2, 3), list(images.shape), align_corners=False
    )
    return functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def _few_shot(
    indices: torch.Tensor, labels: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``SHOTS_PER_CLASS`` random indices per label, and all the others (both sorted)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(indices), generator=generator)
    chosen = torch.zeros(len(indices), dtype=torch.bool)
    for label in range(CLASSES):
        of_label = order[labels[order] == label]
        chosen[of_label[:SHOTS_PER_CLASS]] = True
    return indices[chosen], indices[~chosen]


def _subset(
    x: torch.Tensor, y: torch.Tensor, indices: Sequence[int] | torch.Tensor
) -> TensorDataset:
    chosen = torch.as_tensor(indices, dtype=torch.long)
    return TensorDataset(x[chosen], y[chosen])
