"""The training side of a Mentee: ``fit``, the run's record, and the schedule it follows.

:class:`MenteeFitting` is :class:`~mentor_fn.Mentee`'s base: it owns what a
training run accumulates (``epoch``, ``history``, the best epoch and its
weights, the schedule run) and ``fit``, which checks everything first (its
arguments, the schedule to follow: ``mentor_fn._mentee.fit_schedule``) and then
runs ``mentor_fn._mentee.fit_loop``'s loop with the hooks that advance the schedule, track
the best epoch and save checkpoints. What it needs of the model (its
curriculum and training objects) the Mentee provides.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from .._core.validation import validate_lr
from .._files.mentee_values import MenteeCheckpoint, SchedulerRecipe
from .._schedules.runner import ScheduleRunner
from .._schedules.schedule import Schedule
from .._wrapper.curriculum import Curriculum
from .fit_loop import FitHooks, batches, epoch_metrics, run_epochs
from .fit_schedule import check_fit_metrics, check_serializable, choose_fit_schedule
from .trainers import Trainer

__all__ = ["DEFAULT_LR", "MenteeFitting"]

DEFAULT_LR = 1e-3
"""``create_train_objects``' default lr, also fit's when it creates them."""

_Model = TypeVar("_Model", bound="MenteeFitting")


class MenteeFitting(nn.Module, abc.ABC):
    """fit, training and validation steps, the best epoch, the schedule run (Mentee's base)."""

    # Set in a subclass's __init__ (self.trainer = Classifier()) or as a class attribute.
    trainer: Trainer | None = None

    def __init__(self) -> None:
        super().__init__()
        # Set past nn.Module.__setattr__, which would register a Module value as a child.
        object.__setattr__(self, "_mentee_best_weights", None)
        object.__setattr__(self, "_mentee_schedule_runner", None)
        object.__setattr__(self, "_mentee_schedule_resumed", False)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None

    # What fit needs of the model (the Mentee provides it) --------------------------

    @property
    @abc.abstractmethod
    def curriculum(self) -> Curriculum:
        """The curriculum that owns the optimizer and scheduler."""

    @property
    @abc.abstractmethod
    def forward_module(self) -> nn.Module:
        """What the training and validation steps call (a DDP wrapper, or the model)."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where batches are moved before the steps."""

    @abc.abstractmethod
    def save(self, path_or_file: Any) -> None:
        """Write a checkpoint of the run (fit's ``checkpoint_path``)."""

    @abc.abstractmethod
    def _unbuilt_train_objects(self, lr: float) -> tuple[Curriculum, SchedulerRecipe | None]:
        """New training objects with the model's state and ``lr``, not yet built nor used."""

    @abc.abstractmethod
    def _use_train_objects(self, curriculum: Curriculum, recipe: SchedulerRecipe | None) -> None:
        """Make ``curriculum`` and ``recipe`` the model's training objects."""

    # The schedule fit follows ------------------------------------------------------

    @property
    def schedule_runner(self) -> ScheduleRunner | None:
        """The schedule run :meth:`fit` follows (started by ``fit(..., schedule=...)``
        or restored by :meth:`resume_training`), or None. Its ``cursor`` says
        where the run stands, its ``phase`` which phase it is in."""
        runner: ScheduleRunner | None = self.__dict__.get("_mentee_schedule_runner")
        return runner

    def detach_schedule(self: _Model) -> _Model:
        """Stop following the schedule (returns self).

        Later fits train without one, from the state it left, and curriculum
        changes by hand are the user's again; a later ``fit(..., schedule=...)``
        starts that schedule from its first phase.
        """
        object.__setattr__(self, "_mentee_schedule_runner", None)
        object.__setattr__(self, "_mentee_schedule_resumed", False)
        return self

    # Steps ------------------------------------------------------------------------

    def _require_trainer(self) -> Trainer:
        trainer = self.trainer
        if trainer is None:
            raise TypeError(
                f"{type(self).__name__} has no trainer: set self.trainer = Classifier() "
                "(or Regressor()) in __init__, or override training_step/validation_step"
            )
        return trainer

    def training_step(self, batch: Any) -> Any:
        """Loss and metrics of one training batch; the trainer's by default.

        May return a loss tensor, a dict with ``"loss"``, or ``(loss, metrics_dict)``.
        """
        return self._require_trainer().training_step(self.forward_module, batch)

    def validation_step(self, batch: Any) -> Any:
        """Metrics of one validation batch (as :meth:`training_step` returns them)."""
        return self._require_trainer().validation_step(self.forward_module, batch)

    # fit --------------------------------------------------------------------------

    def fit(
        self: _Model,
        train_data: Iterable[Any],
        val_data: Iterable[Any] | None = None,
        epochs: int | None = None,
        checkpoint_path: str | os.PathLike[str] | None = None,
        *,
        lr: float | None = None,
        batch_size: int = 32,
        progress: bool = True,
        schedule: Schedule | None = None,
        allow_schedule_change: bool = False,
    ) -> _Model:
        """Train for ``epochs`` more epochs (the number this call runs); returns self.

        ``train_data``/``val_data``: a DataLoader, a Dataset (batched with
        ``batch_size``, shuffled for training) or any re-iterable of batches.
        Batches move to the model's device. Each epoch: train, validate, step
        the scheduler (ReduceLROnPlateau gets the validation loss, or the
        training loss without validation data), append a record to
        :attr:`history`, track the best epoch by the trainer's principal
        metric, and save a checkpoint when ``checkpoint_path`` is given.
        ``epochs`` defaults to 1 without a schedule.

        Without training objects, ``fit`` creates them as
        ``create_train_objects(lr)`` does (``lr`` defaults to 1e-3). With
        training objects, ``lr`` may only repeat their global lr: a new lr is
        a new phase, ``create_train_objects(lr=...)``.

        With a schedule (``schedule=``, or the run the model already follows:
        see :attr:`schedule_runner`), the schedule advances after each
        optimizer step (warmups) and at each epoch end, from the epoch's
        metrics named ``train_<name>`` and ``val_<name>`` (``val_loss``,
        ``val_accuracy``, ``train_loss``...), so ``plateau("val_loss")`` reads
        the validation loss. Each history record names its ``phase`` (the
        phase the epoch ended in). Without ``epochs``, fit runs until the
        schedule finishes (its last phase needs an ``until``); with
        ``epochs``, it runs that many, in the last phase once it finishes.
        Without training objects, the first phase is entered before they are
        built (they are built in its layout, at its lr). Later calls continue
        the run; another schedule is refused unless ``allow_schedule_change``
        (then it continues from the same cursor).

        Raises:
            TypeError: ``epochs`` is not an int or None, the data cannot be
                iterated as asked, or, with ``checkpoint_path``, the schedule
                is not serializable (a user's own callable transition).
            ValueError: ``epochs < 0``, an invalid ``lr``, or an ``lr`` other
                than the live optimizer's global lr; a schedule reading a
                metric fit does not report; another schedule than the run's
                without ``allow_schedule_change`` (a ``CheckpointError`` for a
                run resumed from a checkpoint); a curriculum state changed by
                hand while a schedule drives fit. Nothing changes.
        """
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)):
            raise TypeError(f"epochs must be an int or None, got {epochs!r}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        curriculum = self.curriculum
        if lr is not None:
            lr = validate_lr(lr)
            if curriculum.optimizer is not None and lr != curriculum.lr:
                raise ValueError(
                    f"fit(lr={lr:g}): the optimizer was built with global lr {curriculum.lr:g}; "
                    "fit's lr only sets up missing training objects. Start a new phase at "
                    "another lr with create_train_objects(lr=...)"
                )
        follow = choose_fit_schedule(
            self.schedule_runner,
            schedule,
            curriculum,
            allow_schedule_change=allow_schedule_change,
            resumed=self.__dict__["_mentee_schedule_resumed"],
        )
        followed = follow.schedule
        if followed is not None:
            check_fit_metrics(followed, follow.first_phase, has_val_data=val_data is not None)
            if checkpoint_path is not None:
                check_serializable(followed)
            if epochs is None and followed.phases[-1].until is None:
                raise ValueError(
                    f"fit: without epochs, fit runs until the schedule finishes, but its last "
                    f"phase {followed.phases[-1].name!r} has no until (it runs to the end of "
                    "training): pass epochs="
                )
        elif epochs is None:
            epochs = 1
        train_batches = batches(train_data, shuffle=True, batch_size=batch_size, epochs=epochs)
        val_batches = (
            None
            if val_data is None
            else batches(val_data, shuffle=False, batch_size=batch_size, epochs=epochs)
        )
        trainer = self.trainer or Trainer()

        # Checked: from here on, things change.
        runner = follow.runner
        if curriculum.optimizer is None:
            curriculum, recipe = self._unbuilt_train_objects(DEFAULT_LR if lr is None else lr)
            if follow.start is not None:
                runner = ScheduleRunner(curriculum, follow.start)
                runner.start()  # before the build: the optimizer is built in phase 0's layout
            curriculum.build()
            self._use_train_objects(curriculum, recipe)
            if follow.runner is not None:
                runner = follow.runner.moved_to(curriculum)
        elif follow.start is not None:
            runner = ScheduleRunner(curriculum, follow.start)
            runner.start()
        if runner is not None:
            resumed = follow.start is None and self.__dict__["_mentee_schedule_resumed"]
            object.__setattr__(self, "_mentee_schedule_runner", runner)
            object.__setattr__(self, "_mentee_schedule_resumed", resumed)
        run_epochs(
            self,
            train_batches,
            val_batches,
            epochs,
            trainer=trainer,
            progress=progress,
            hooks=self._fit_hooks(runner, trainer, checkpoint_path, until_finished=epochs is None),
        )
        return self

    def _fit_hooks(
        self,
        runner: ScheduleRunner | None,
        trainer: Trainer,
        checkpoint_path: str | os.PathLike[str] | None,
        *,
        until_finished: bool,
    ) -> FitHooks:
        def at_epoch_end(record: dict[str, Any]) -> None:
            if runner is not None:
                runner.epoch_end(epoch_metrics(record))
            self._track_best(trainer, record)
            if checkpoint_path is not None and _is_main_process():
                self.save(checkpoint_path)

        if runner is None:
            return FitHooks(at_epoch_end=at_epoch_end)

        def phase() -> dict[str, str]:
            current = runner.phase
            assert current is not None  # the runner has started
            return {"phase": current.name}

        return FitHooks(
            after_step=runner.step,
            record_fields=phase,
            at_epoch_end=at_epoch_end,
            stop=(lambda: runner.finished) if until_finished else None,
        )

    def _track_best(self, trainer: Trainer, record: Mapping[str, Any]) -> None:
        """Keep the epoch of ``record`` as the best one if it beats the best so far.

        Judged on the validation metrics; on the training ones when there is
        no validation, or when validation reports neither the trainer's
        principal metric nor a loss (the training loss then decides).
        """
        for metrics in (record["val"], record["train"]):
            chosen = trainer.best_metric(metrics) if metrics else None
            if chosen is not None:
                break
        else:
            return
        name, mode = chosen
        value = metrics[name]
        best = self.best
        # A best epoch by another metric (another trainer) cannot be compared.
        previous = best["value"] if best is not None and best.get("metric") == name else None
        if trainer.is_better(value, previous, mode=mode):
            self.best = {"epoch": self.epoch, "metric": name, "mode": mode, "value": value}
            weights = {key: tensor.detach().clone() for key, tensor in self.state_dict().items()}
            object.__setattr__(self, "_mentee_best_weights", weights)

    def load_best_weights(self: _Model) -> _Model:
        """Load the weights of the best epoch seen by :meth:`fit` (returns self)."""
        weights = self.__dict__.get("_mentee_best_weights")
        if weights is None:
            raise RuntimeError("no best epoch yet: fit() records one per epoch")
        self.load_state_dict(weights)
        return self

    # Checkpoints (the Mentee saves and restores the record) ---------------------------

    def _best_weights(self) -> Mapping[str, torch.Tensor] | None:
        """The weights of the best epoch, as saved with it."""
        weights: Mapping[str, torch.Tensor] | None = self.__dict__.get("_mentee_best_weights")
        return weights

    def _restore_record(self, checkpoint: MenteeCheckpoint, runner: ScheduleRunner | None) -> None:
        """Take the run's record from a checkpoint, and the schedule run resumed from it."""
        self.epoch = checkpoint.epoch
        self.history = list(checkpoint.history)
        self.best = None if checkpoint.best is None else dict(checkpoint.best)
        object.__setattr__(self, "_mentee_best_weights", checkpoint.best_weights)
        object.__setattr__(self, "_mentee_schedule_runner", runner)
        object.__setattr__(self, "_mentee_schedule_resumed", runner is not None)


def _is_main_process() -> bool:
    """Rank 0 of an initialized process group, or a single process."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank() == 0
    return True
