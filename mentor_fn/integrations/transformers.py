"""Curriculum learning in the transformers Trainer: a TrainerCallback that owns a Curriculum.

``pip install 'mentor_fn[transformers]'``. The callback hands the Trainer the
curriculum's optimizer and scheduler::

    callback = CurriculumCallback(mf.Curriculum(model, lr=5e-5, ...), schedule)
    trainer = Trainer(model, args, ..., optimizers=callback.optimizers(), callbacks=[callback])

What it does, at each point of the Trainer's loop:

* :meth:`CurriculumCallback.optimizers`: enters the schedule's first phase,
  builds a fresh optimizer and scheduler, and returns stable handles on them
  (``LiveOptimizer``, ``LiveScheduler``). accelerate wraps the optimizer
  handle in its ``AcceleratedOptimizer``, which then always reaches the
  curriculum's current optimizer, whatever phase changes replaced it.
* after each optimizer step (``on_step_end``): ``runner.step()``.
* at each epoch's end: ``runner.epoch_end`` with the latest value of every
  metric in ``state.log_history``. The end is applied after the epoch's own
  log and evaluation (``logging_strategy`` / ``eval_strategy="epoch"``), so a
  ``plateau("eval_loss")`` reads this epoch's evaluation, and before the
  epoch's checkpoint is written.
* checkpoints: the Trainer writes ``optimizer.state_dict()`` to
  ``optimizer.pt``; through the handle that is the whole run (curriculum
  state, optimizer state by parameter name, scheduler, schedule cursor). On
  ``trainer.train(resume_from_checkpoint=...)`` the Trainer loads it into the
  handle after building the optimizer and before training, which restores the
  saved layout before the saved state: never by position into phase 0's
  layout. ``scheduler.pt`` holds only a marker (the scheduler travels with the
  optimizer).

The Trainer's own optimizer settings (``learning_rate``, ``optim``,
``weight_decay``, ``lr_scheduler_type``, warmup) are not used: the
curriculum's optimizer class and arguments and its scheduler factory decide
(without a factory the lr is constant; for the Trainer's linear warmup pass
``scheduler=lambda o: transformers.get_linear_schedule_with_warmup(o, w, n)``).
Distributed runs (DDP, FSDP, DeepSpeed) are not supported by this callback yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .. import Curriculum, Schedule, ScheduleRunner, unwrap_model
from ._handles import LiveOptimizer, LiveScheduler
from ._requirements import require
from ._run import CurriculumRun, plain_metrics

require(
    "transformers",
    extra="transformers",
    minimum="4.40",
    adapter="mentor_fn.integrations.transformers",
)
require(
    "accelerate",
    extra="transformers",
    minimum="0.26",
    adapter="mentor_fn.integrations.transformers",
)

from transformers import (  # noqa: E402
    IntervalStrategy,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

__all__ = ["CurriculumCallback"]

# When the epoch end waits for the epoch's evaluation or log (see on_epoch_end).
_AFTER_EVALUATION, _AFTER_LOG = "evaluate", "log"
_EPOCHS_ENDED = "transformers_epochs_ended"


class CurriculumCallback(TrainerCallback):
    """Runs a :class:`~mentor_fn.Curriculum` (and a :class:`~mentor_fn.Schedule`) in a
    transformers ``Trainer``.

    Pass ``optimizers=callback.optimizers()`` and ``callbacks=[callback]`` to
    the Trainer.

    Args:
        curriculum: a Curriculum on the model the Trainer trains.
        schedule: phases advanced after each optimizer step and at each epoch
            end; None leaves changes to you (``callback.curriculum.unfreeze(...,
            reset_optimizer_if_needed=True)`` from any callback works: the
            Trainer holds handles, not the objects).
    """

    def __init__(self, curriculum: Curriculum, schedule: Schedule | None = None) -> None:
        self._run = CurriculumRun(curriculum, schedule)
        # Epoch ends the schedule has seen, saved with the run (optimizer.pt).
        self._run.extra[_EPOCHS_ENDED] = 0
        self._pending_epoch_end: str | None = None

    @property
    def curriculum(self) -> Curriculum:
        return self._run.curriculum

    @property
    def runner(self) -> ScheduleRunner | None:
        return self._run.runner

    def optimizers(self) -> tuple[LiveOptimizer, LiveScheduler]:
        """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``.

        The first call enters the schedule's first phase and builds a fresh
        optimizer and scheduler; later calls return the same handles.
        """
        self._run.start()
        return self._run.optimizer, self._run.scheduler

    # The Trainer's events ------------------------------------------------------------------

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if args.world_size > 1:
            raise RuntimeError(
                "mentor_fn.integrations.transformers.CurriculumCallback does not support "
                f"distributed training yet (world size {args.world_size}): DDP would have to be "
                "built with every parameter trainable; use the Lightning adapter or "
                "mentor_fn.wrap_ddp in your own loop"
            )

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        optimizer = kwargs.get("optimizer")
        # accelerate wraps the handle: AcceleratedOptimizer.optimizer.
        if optimizer is not self._run.optimizer and (
            getattr(optimizer, "optimizer", None) is not self._run.optimizer
        ):
            raise RuntimeError(
                "CurriculumCallback: the Trainer does not train the curriculum's optimizer; "
                "construct it with Trainer(..., optimizers=callback.optimizers())"
            )
        model = kwargs.get("model")
        if model is not None and unwrap_model(self.curriculum.model) is not unwrap_model(model):
            raise ValueError(
                "CurriculumCallback: the curriculum is on another model than the Trainer's "
                f"({type(self.curriculum.model).__name__}, the Trainer trains "
                f"{type(model).__name__})"
            )
        self._pending_epoch_end = None
        if math.floor(state.epoch or 0) > self._run.extra.get(_EPOCHS_ENDED, 0):
            self._catch_up_epoch_end(args, state)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._run.step()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The Trainer logs and evaluates for the epoch right after this event,
        # then writes the epoch's checkpoint: wait for the last of those that
        # will happen (DefaultFlowCallback, always first, has set the flags),
        # so the schedule reads this epoch's metrics and the checkpoint holds
        # the epoch end.
        if control.should_evaluate:
            self._pending_epoch_end = _AFTER_EVALUATION
        elif control.should_log:
            self._pending_epoch_end = _AFTER_LOG
        else:
            self._epoch_end(state)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._pending_epoch_end == _AFTER_LOG:
            self._epoch_end(state)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._pending_epoch_end == _AFTER_EVALUATION:
            self._epoch_end(state)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._flush_epoch_end(state)

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._flush_epoch_end(state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._flush_epoch_end(state)

    def _flush_epoch_end(self, state: TrainerState) -> None:
        # The awaited log or evaluation did not come (nothing to log, say):
        # the epoch still ends, before anything else happens.
        if self._pending_epoch_end is not None:
            self._epoch_end(state)

    def _epoch_end(self, state: TrainerState, metrics: Mapping[str, float] | None = None) -> None:
        self._pending_epoch_end = None
        self._run.epoch_end(latest_metrics(state.log_history) if metrics is None else metrics)
        self._run.extra[_EPOCHS_ENDED] = self._run.extra.get(_EPOCHS_ENDED, 0) + 1

    def _catch_up_epoch_end(self, args: TrainingArguments, state: TrainerState) -> None:
        """The end of the epoch a checkpoint was written in, at its last optimizer step.

        A step-based save at an epoch's last step comes before the Trainer's
        epoch end, and a resumed Trainer goes on with the next epoch without
        it (``state.epoch`` is exactly the epoch count after an epoch's last
        step). The schedule sees that end now, with the metrics logged up to
        the checkpoint, less those the Trainer would have logged at the epoch's
        end (``logging_strategy`` / ``eval_strategy="epoch"``): they are not in
        the checkpoint, and an older value would silently steer the schedule
        elsewhere than the uninterrupted run went.

        Raises:
            ValueError: the current phase's condition reads one of those metrics.
        """
        metrics = latest_metrics(state.log_history)
        missing, at_epoch_end = set(), []
        if args.logging_strategy == IntervalStrategy.EPOCH:
            missing |= {key for entry in state.log_history if "loss" in entry for key in entry}
            at_epoch_end.append("logging_strategy='epoch'")
        if args.eval_strategy == IntervalStrategy.EPOCH:
            missing |= {key for key in metrics if key.startswith("eval_")}
            at_epoch_end.append("eval_strategy='epoch'")
        missing -= {"epoch", "step"}
        try:
            self._epoch_end(state, {k: v for k, v in metrics.items() if k not in missing})
        except ValueError as error:
            raise ValueError(
                f"resuming from a checkpoint written at the last step of epoch "
                f"{math.floor(state.epoch or 0)}, before the Trainer's epoch end: what the "
                f"Trainer logs at an epoch's end ({', '.join(at_epoch_end) or 'nothing'}) is not "
                f"in it, and the schedule needs it: {error}. Save at epoch ends "
                "(save_strategy='epoch'), or log and evaluate on the steps you save at"
            ) from None


def latest_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The latest value of every numeric entry the Trainer has logged."""
    merged: dict[str, Any] = {}
    for entry in log_history:
        merged.update(entry)
    return plain_metrics(merged)
