"""The fit loop: training and validation epochs, scheduler steps, history records.

:meth:`Mentee.fit` checks its arguments and runs :func:`run_epochs`. The loop
lives here, apart from the object API, so that what happens at each optimizer
step and at each epoch end is in one place, with a hook at each
(:class:`FitHooks`): best-epoch tracking and checkpoints plug in at the epoch
end, and a schedule advances at both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import optree
import torch
from torch.optim import lr_scheduler as torch_schedulers
from torch.utils.data import DataLoader, Dataset

# Not tqdm.auto: its asyncio bar calls iter() on the data in its constructor, even
# when disabled, so each epoch iterated a loader twice (a seeded DataLoader then
# skipped every other shuffle, and worker processes started twice).
from tqdm.autonotebook import tqdm

from .._wrapper.curriculum import Curriculum
from .trainers import Trainer

__all__ = ["FitHooks", "Trainee", "as_step_output", "batches", "epoch_metrics", "run_epochs"]


class Trainee(Protocol):
    """What the loop needs of a model (a :class:`~mentor_fn.Mentee` is one)."""

    epoch: int
    history: list[dict[str, Any]]
    training: bool

    @property
    def curriculum(self) -> Curriculum: ...

    @property
    def device(self) -> torch.device: ...

    def training_step(self, batch: Any) -> Any: ...

    def validation_step(self, batch: Any) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass(frozen=True)
class FitHooks:
    """Called by :func:`run_epochs`.

    Attributes:
        after_step: after each optimizer step (the optimizer may be rebuilt or
            replaced there: the next step uses the curriculum's current one).
        record_fields: more fields for the epoch's history record (e.g. the
            schedule's phase), asked for when the record is made.
        at_epoch_end: with the epoch's history record, once it is in
            ``model.history`` and ``model.epoch`` counts it.
        stop: asked before each epoch; True ends the loop (with ``epochs=None``,
            the only end).
    """

    after_step: Callable[[], object] | None = None
    record_fields: Callable[[], Mapping[str, Any]] | None = None
    at_epoch_end: Callable[[dict[str, Any]], object] | None = None
    stop: Callable[[], bool] | None = None


def run_epochs(
    model: Trainee,
    train_batches: Iterable[Any],
    val_batches: Iterable[Any] | None,
    epochs: int | None,
    *,
    trainer: Trainer,
    progress: bool,
    hooks: FitHooks = FitHooks(),
) -> None:
    """Train ``epochs`` epochs (None: until ``hooks.stop`` says so): each trains,
    validates, steps the scheduler and appends one record to ``model.history``.

    The scheduler steps once per epoch; ReduceLROnPlateau gets the validation
    loss (the training loss without validation data, or when validation
    reports no loss).
    """
    if epochs is None and hooks.stop is None:
        raise ValueError("run_epochs: epochs=None needs a stop hook, or it would never end")
    done = 0
    while epochs is None or done < epochs:
        if hooks.stop is not None and hooks.stop():
            break
        done += 1
        started = time.perf_counter()
        learning_rates = effective_lrs(model.curriculum)
        train_metrics = trainer.finalize(
            _run_epoch(model, train_batches, progress, train=True, after_step=hooks.after_step)
        )
        val_metrics = (
            {}
            if val_batches is None
            else trainer.finalize(_run_epoch(model, val_batches, progress, train=False))
        )
        scheduler = model.curriculum.scheduler
        if isinstance(scheduler, torch_schedulers.ReduceLROnPlateau):
            scheduler.step((val_metrics if "loss" in val_metrics else train_metrics)["loss"])
        elif scheduler is not None:
            scheduler.step()
        model.epoch += 1
        record = {
            "epoch": model.epoch,
            "train": train_metrics,
            "val": val_metrics,
            "lr": learning_rates,
            "frozen": sorted(frozen_owner_layers(model.curriculum)),
            "time": time.perf_counter() - started,
        }
        if hooks.record_fields is not None:
            record.update(hooks.record_fields())
        model.history.append(record)
        if hooks.at_epoch_end is not None:
            hooks.at_epoch_end(record)


def _run_epoch(
    model: Trainee,
    batches: Iterable[Any],
    progress: bool,
    *,
    train: bool,
    after_step: Callable[[], object] | None = None,
) -> dict[str, float]:
    optimizer = model.curriculum.optimizer
    assert optimizer is not None
    device = model.device
    was_training = model.training
    model.train(train)
    totals: dict[str, float] = {}
    count = 0
    description = f"epoch {model.epoch + 1} {'train' if train else 'val'}"
    bar = tqdm(batches, desc=description, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for batch in bar:
            batch = _to_device(batch, device)
            if train:
                output = as_step_output(model.training_step(batch))
                optimizer.zero_grad(set_to_none=True)
                output["loss"].backward()
                optimizer.step()
                if after_step is not None:
                    after_step()
                    optimizer = model.curriculum.optimizer
                    assert optimizer is not None
            else:
                with torch.no_grad():
                    # torch_mentor's validation steps may report metrics only (no loss).
                    output = as_step_output(model.validation_step(batch), loss_required=False)
            size = _batch_size(batch)
            count += size
            values = {key: _scalar(value) for key, value in output.items()}
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value * size
            if progress and values:
                shown = "loss" if "loss" in values else next(iter(values))
                bar.set_postfix({shown: f"{values[shown]:.4f}"}, refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    if count == 0:
        raise ValueError("fit: the data yielded no batches")
    return {key: total / count for key, total in totals.items()}


def as_step_output(output: Any, *, loss_required: bool = True) -> dict[str, Any]:
    """A step's result as ``{"loss": tensor, **metrics}``.

    Accepts a loss tensor, a dict with ``"loss"``, or torch_mentor's
    ``(loss, metrics_dict)`` (its ``loss`` tensor wins over a ``"loss"`` metric).
    Without ``loss_required`` (a validation step), a dict of metrics without
    ``"loss"`` is accepted as it is (torch_mentor's validation steps may
    report accuracy only): the epoch then has no validation loss.

    Raises:
        TypeError: anything else, named.

    Example:
        >>> as_step_output({"acc": 0.75}, loss_required=False)
        {'acc': 0.75}
    """
    if isinstance(output, torch.Tensor):
        return {"loss": output}
    if isinstance(output, Mapping) and ("loss" in output or not loss_required):
        return dict(output)
    if (
        isinstance(output, tuple)
        and len(output) == 2
        and isinstance(output[0], torch.Tensor)
        and isinstance(output[1], Mapping)
    ):
        loss, metrics = output
        return {**metrics, "loss": loss}
    shown = type(output).__name__
    if isinstance(output, Mapping):
        shown = f"a dict without 'loss' (keys {sorted(map(str, output))})"
    elif isinstance(output, tuple):
        shown = f"a tuple of {', '.join(type(item).__name__ for item in output)}"
    raise TypeError(
        "training_step/validation_step must return a loss tensor, a dict with 'loss', "
        f"or a (loss tensor, metrics dict) tuple; got {shown}"
    )


def batches(data: Any, *, shuffle: bool, batch_size: int, epochs: int | None) -> Iterable[Any]:
    """What one epoch iterates: a DataLoader as given, a sized Dataset batched
    with ``batch_size`` (shuffled for training), or a re-iterable of batches.
    ``epochs``: how many epochs will iterate it (None: as many as a schedule takes).

    Raises:
        TypeError: not iterable, or a one-shot iterator for several epochs.
    """
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle)
    if not isinstance(data, Iterable):
        raise TypeError(f"expected a DataLoader, a Dataset or an iterable of batches, got {data!r}")
    # An iterator is one-shot; asking by type, not by calling iter(), spares a
    # loader an iteration (a reshuffle, worker processes) that no epoch uses.
    if isinstance(data, Iterator) and (epochs is None or epochs > 1):
        raise TypeError(
            "an iterator is exhausted after one epoch: pass a list, a Dataset or a DataLoader"
        )
    return data


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """What an epoch reports to a schedule: each metric of a history record,
    named ``train_<name>`` and ``val_<name>`` (``val_loss``, ``train_accuracy``...).

    Example:
        >>> epoch_metrics({"train": {"loss": 0.5}, "val": {"loss": 0.7, "accuracy": 0.9}})
        {'train_loss': 0.5, 'val_loss': 0.7, 'val_accuracy': 0.9}
    """
    return {
        f"{split}_{name}": value
        for split in ("train", "val")
        for name, value in (record.get(split) or {}).items()
    }


def effective_lrs(curriculum: Curriculum) -> dict[str, float]:
    """Per trainable layer that owns parameters: the lr of its optimizer group."""
    optimizer = curriculum.optimizer
    if optimizer is None:
        return {}
    frozen = set(frozen_owner_layers(curriculum))
    return {
        layer: float(group["lr"])
        for group in optimizer.param_groups
        for layer in group.get("layers", ())
        if layer not in frozen
    }


def frozen_owner_layers(curriculum: Curriculum) -> list[str]:
    """The frozen layers that own parameters, in layer order."""
    state = curriculum.state
    return [
        layer
        for layer, is_frozen in zip(state.layers, state.resolved_frozen())
        if is_frozen and layer in state.parameter_owners
    ]


def _to_device(batch: Any, device: torch.device) -> Any:
    return optree.tree_map(
        lambda leaf: leaf.to(device, non_blocking=True) if isinstance(leaf, torch.Tensor) else leaf,
        batch,
        none_is_leaf=True,
    )


def _batch_size(batch: Any) -> int:
    for leaf in optree.tree_leaves(batch):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    return 1


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().item())
    return float(value)
