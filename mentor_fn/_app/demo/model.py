"""The demo's network: a small CNN for 8x8 digits, written as a Mentee."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional

from ..._mentee.mentee import Mentee
from ..._mentee.trainers import Classifier

__all__ = ["ConvBlock", "DigitsCNN"]


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with ReLU, optionally followed by 2x2 max pooling."""

    def __init__(self, channels_in: int, channels_out: int, *, pool: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu(self.conv2(functional.relu(self.conv1(x))))
        return functional.max_pool2d(x, 2) if self.pool else x


class DigitsCNN(Mentee):
    """A small CNN for 8x8 digits: three two-conv blocks and a linear head.

    Layers: ``backbone``, ``backbone.block{1,2,3}``, their ``conv1``/``conv2``,
    and ``head``.
    """

    trainer = Classifier()

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            OrderedDict(
                block1=ConvBlock(1, width, pool=True),  # 8x8 -> 4x4
                block2=ConvBlock(width, 2 * width, pool=True),  # 4x4 -> 2x2
                block3=ConvBlock(2 * width, 4 * width, pool=False),
            )
        )
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the head sees: the backbone's output, averaged over positions (``(N, 4 * width)``)."""
        return self.backbone(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
