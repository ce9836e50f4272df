"""Trainers: what a training / validation step computes for a kind of task.

A trainer turns a batch ``(inputs, targets)`` into a loss and metrics. Metrics
returned per batch are batch means; :meth:`Trainer.finalize` turns the
batch-size-weighted epoch means into the reported values. A step (a
trainer's, or a Mentee's own ``training_step`` / ``validation_step``) may
return a loss tensor, a dict with ``"loss"``, or torch_mentor's
``(loss, metrics_dict)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional

__all__ = ["Classifier", "Regressor", "Trainer"]


class Trainer:
    """Base trainer: a loss on ``(inputs, targets)`` batches.

    Attributes:
        principal_metric: the metric that picks the best epoch.
        mode: ``"min"`` or ``"max"``: whether lower or higher is better.
    """

    principal_metric = "loss"
    mode = "min"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            f"{type(self).__name__} must define loss(), or override training_step "
            "and validation_step"
        )

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Extra per-batch metrics (batch means)."""
        return {}

    def training_step(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        inputs, targets = batch
        outputs = model(inputs)
        loss = self.loss(outputs, targets)
        with torch.no_grad():
            metrics = self.metrics(outputs, targets)
        return {"loss": loss, **metrics}

    def validation_step(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        inputs, targets = batch
        outputs = model(inputs)
        return {"loss": self.loss(outputs, targets), **self.metrics(outputs, targets)}

    def finalize(self, means: dict[str, float]) -> dict[str, float]:
        """Epoch metrics from the batch-size-weighted means of the step metrics."""
        return means

    def best_metric(self, metrics: Mapping[str, float]) -> tuple[str, str] | None:
        """The metric that picks the best epoch among ``metrics``, and its mode.

        The principal metric when it is reported, else ``"loss"`` (lower is
        better); None when ``metrics`` has neither (a validation step that
        reports other metrics only).
        """
        if self.principal_metric in metrics:
            return self.principal_metric, self.mode
        if "loss" in metrics:
            return "loss", "min"
        return None

    def is_better(self, value: float, best: float | None, *, mode: str | None = None) -> bool:
        """Whether ``value`` beats ``best`` (None: nothing yet) under ``mode``
        (default :attr:`mode`); a tie is not better."""
        if best is None:
            return True
        return value > best if (mode or self.mode) == "max" else value < best


class Classifier(Trainer):
    """Cross-entropy classification: metrics ``loss`` and ``accuracy`` (best = max accuracy)."""

    principal_metric = "accuracy"
    mode = "max"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return functional.cross_entropy(outputs, targets)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"accuracy": (outputs.argmax(dim=-1) == targets).float().mean().item()}


class Regressor(Trainer):
    """Mean-squared-error regression: metrics ``loss`` (MSE) and ``rmse`` (best = min rmse)."""

    principal_metric = "rmse"
    mode = "min"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return functional.mse_loss(outputs, targets)

    def finalize(self, means: dict[str, float]) -> dict[str, float]:
        # The root of the epoch's mean squared error, not a mean of batch roots.
        return {**means, "rmse": math.sqrt(means["loss"])}
