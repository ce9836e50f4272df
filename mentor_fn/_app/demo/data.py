"""The demo's data: scikit-learn's 8x8 digits, a source task and a target task with new classes.

Per seed (docs/demo-protocol.md):

- the **source task** is digits 0-4: 80% of their images to pretrain on (each
  rotated by a random angle within ``PRETRAIN_ROTATION_DEGREES`` either way,
  drawn afresh each epoch), 20% to validate on;
- the **target task** is digits 5-9, labelled 0-4 (new classes: the pretrained
  head cannot be reused): ``SHOTS_PER_CLASS`` labelled images per digit to
  train on, upright; every other image of those digits is held out, and
  evaluated twice: as trained on (**in distribution**) and rotated by
  ``SHIFT_DEGREES`` (**out of distribution**).

Every tensor is float64 (``DTYPE``): the demo's printed digits then come out
the same whatever CPU kernels run it (docs/demo.md says how that was checked).
The images ship inside scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional
from torch.utils.data import TensorDataset

__all__ = [
    "CLASSES",
    "DTYPE",
    "PRETRAIN_ROTATION_DEGREES",
    "SHIFT_DEGREES",
    "SHOTS_PER_CLASS",
    "SOURCE_DIGITS",
    "TARGET_DIGITS",
    "DemoTasks",
    "RandomRotation",
    "SourceTask",
    "TargetTask",
    "load_tasks",
    "rotate",
]

SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)
CLASSES = 5
"""Classes per task: the source's digits 0-4, the target's digits 5-9 (labelled 0-4)."""
SHOTS_PER_CLASS = 20
"""Labelled target images per digit (100 in all)."""
SOURCE_TRAIN_FRACTION = 0.8
SHIFT_DEGREES = 30
"""The out-of-distribution shift: the held-out target images rotated counterclockwise
by this angle (the rule that fixed it is in docs/demo-protocol.md)."""
PRETRAIN_ROTATION_DEGREES = 45
"""Pretraining rotates each source image by a random angle in [-45, 45] degrees,
so the pretrained features have seen the shift (the setting LP-FT is about)."""
DTYPE = torch.float64
MISSING_EXTRA = (
    "the demo needs scikit-learn and matplotlib: pip install scikit-learn matplotlib "
    "(the 'demo' extra of mentor_fn)"
)


@dataclass(frozen=True)
class SourceTask:
    """Digits 0-4: images ``(N, 1, 8, 8)`` in [0, 1] (upright), labels 0-4."""

    train: TensorDataset
    val: TensorDataset


@dataclass(frozen=True)
class TargetTask:
    """Digits 5-9, labelled 0-4.

    Attributes:
        train: the labelled images, upright.
        test: every other image of those digits, upright (in distribution).
        shifted: the same images as ``test``, rotated by ``SHIFT_DEGREES``
            (out of distribution).
    """

    train: TensorDataset
    test: TensorDataset
    shifted: TensorDataset


@dataclass(frozen=True)
class DemoTasks:
    """The source and target tasks of one seed."""

    source: SourceTask
    target: TargetTask


def load_tasks(seed: int) -> DemoTasks:
    """The source and target tasks for ``seed`` (which seeds every split).

    Raises:
        ImportError: scikit-learn is not installed (the message says what to install).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(MISSING_EXTRA) from error
    images, digits = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=DTYPE).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(digits, dtype=torch.long)

    source = [index for index, digit in enumerate(digits) if digit in SOURCE_DIGITS]
    # sklearn's stratified split, seeded: both parts hold every digit in the
    # proportions of the whole.
    source_train, source_val = train_test_split(
        source, train_size=SOURCE_TRAIN_FRACTION, stratify=digits[source], random_state=seed
    )
    target = torch.as_tensor([i for i, digit in enumerate(digits) if digit in TARGET_DIGITS])
    labels = y - TARGET_DIGITS[0]
    target_train, target_test = _few_shot(target, labels[target], seed)
    test = _subset(x, labels, target_test)
    return DemoTasks(
        source=SourceTask(_subset(x, y, source_train), _subset(x, y, source_val)),
        target=TargetTask(
            train=_subset(x, labels, target_train),
            test=test,
            shifted=TensorDataset(rotate(test.tensors[0], SHIFT_DEGREES), test.tensors[1]),
        ),
    )


def rotate(images: torch.Tensor, degrees: float | torch.Tensor) -> torch.Tensor:
    """``images`` (``(N, C, H, W)``) rotated counterclockwise about their centre.

    Args:
        images: the images.
        degrees: one angle for every image, or a tensor of ``N`` angles.

    Bilinear interpolation, zeros outside the image, one code path for every
    angle: at 90 degrees on a square image each pixel centre lands on a pixel
    centre, and the result is ``torch.rot90(images, 1, dims=(2, 3))`` up to
    float rounding.
    """
    count = len(images)
    if isinstance(degrees, torch.Tensor):
        if degrees.shape != (count,):
            raise ValueError(
                f"degrees must hold one angle per image ({count}), got {degrees.shape}"
            )
        angles = torch.deg2rad(degrees.to(images.dtype))
        cos, sin = torch.cos(angles), torch.sin(angles)
    else:
        angle = math.radians(degrees)
        cos = torch.full((count,), math.cos(angle), dtype=images.dtype)
        sin = torch.full((count,), math.sin(angle), dtype=images.dtype)
    zero = torch.zeros_like(cos)
    # affine_grid maps each output location (x right, y down) to where it samples the input.
    theta = torch.stack(
        [torch.stack([cos, -sin, zero], dim=1), torch.stack([sin, cos, zero], dim=1)], dim=1
    )
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    return functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


class RandomRotation:
    """A DataLoader ``collate_fn``: stacks a batch and rotates each image by a random angle.

    The angles are uniform in ``[-max_degrees, max_degrees]``, drawn from a
    generator of its own, so a seeded run sees the same angles whatever else
    draws random numbers.
    """

    def __init__(self, max_degrees: float, seed: int) -> None:
        self.max_degrees = max_degrees
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
        images = torch.stack([image for image, _ in batch])
        labels = torch.stack([label for _, label in batch])
        unit = torch.rand(len(batch), generator=self.generator, dtype=images.dtype)
        return rotate(images, (2 * unit - 1) * self.max_degrees), labels


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
