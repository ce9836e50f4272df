"""Curriculum learning in the transformers Trainer: a TrainerCallback that owns a Curriculum.

``pip install 'mentor_fn[transformers]'``. The callback hands the Trainer the
curriculum's optimizer and scheduler::

    callback = CurriculumCallback(mf.Curriculum(model, lr=5e-5, ...), schedule)
    trainer = Trainer(model, args, ..., optimizers=callback.optimizers(), callbacks=[callback])

Both halves are needed: handed the handles without the callback, the Trainer
would train the whole run in the first phase, so the optimizer handle refuses
to step until the callback drives the run (from ``on_train_begin``).

What it does, at each point of the Trainer's loop:

* :meth:`CurriculumCallback.optimizers`: enters the schedule's first phase,
  builds a fresh optimizer and scheduler, and returns stable handles on them
  (``LiveOptimizer``, ``LiveScheduler``). accelerate wraps the optimizer
  handle in its ``AcceleratedOptimizer``, which then always reaches the
  curriculum's current optimizer, whatever phase changes replaced it.
* ``on_init_end``: refuses what it cannot drive (DeepSpeed; a model sharded at
  load time with tensor, pipeline or expert parallelism) and warns about the
  Trainer's own optimizer settings (``learning_rate``, ``weight_decay``,
  ``lr_scheduler_type``, ``warmup_steps``...) that differ from their
  defaults: the curriculum's optimizer class and arguments and its scheduler
  factory decide, not them.
* after each optimizer step (``on_step_end``): ``runner.step()``.
* at each epoch's end, when the epoch's data was exhausted: ``runner.epoch_end``
  with the latest value of every metric in ``state.log_history``. A stop in
  the middle of an epoch (``max_steps``, ``control.should_training_stop``
  from early stopping, ``should_epoch_stop``) makes the Trainer call
  ``on_epoch_end`` too; that is not an epoch end for the schedule. The end is
  applied after the epoch's own log and evaluation (``logging_strategy`` /
  ``eval_strategy="epoch"``), so a ``plateau("eval_loss")`` reads this
  epoch's evaluation, and before the epoch's checkpoint is written.
* checkpoints: the Trainer writes ``optimizer.state_dict()`` to
  ``optimizer.pt``; through the handle that is the whole run (curriculum
  state, optimizer state by parameter name, scheduler, schedule cursor). On
  ``trainer.train(resume_from_checkpoint=...)`` the Trainer loads it into the
  handle after building the optimizer and before training, which restores the
  saved layout before the saved state: never by position into phase 0's
  layout. ``scheduler.pt`` holds only a marker (the scheduler travels with the
  optimizer).
* logs: ``learning_rate`` is the run's lr (the curriculum's reference group:
  the global lr under the scheduler), not the first group's, which under
  layer-wise decay is the embeddings' lr at a fraction of it; the scheduler
  handle's ``get_last_lr()`` is ``[that lr]``, which is what the Trainer
  logs. Each layer with a coefficient of its own gets ``learning_rate/<layer>``
  (added to the logs the callback sees, and to ``state.log_history``): the lr
  it trained with at that step.

Distributed runs: DDP (``torchrun``, ``accelerate launch``) and FSDP2 through
``from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=N))``.
Under DDP, the wrapper accelerate makes inside ``train()`` is found at its
first forward with gradients, and its reducer then follows the phases (it is
rebuilt before the first forward after a change of the trainable parameters),
so ``ddp_find_unused_parameters=False`` is safe and saves DDP's search for
unused parameters at every step. Every rank takes the epoch-end metrics of
rank 0, so all change phase together. accelerate's own FSDP (``fsdp=...``)
cannot be given the curriculum's optimizer (the Trainer refuses
``optimizers=`` under it); DeepSpeed is refused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .. import Curriculum, Schedule, ScheduleRunner, unwrap_model
from ._distributed import rank_zero_metrics, world_size
from ._handles import LiveOptimizer, LiveScheduler
from ._lr_logs import layer_lrs, reference_lr
from ._requirements import require
from ._run import CurriculumRun, plain_metrics
from ._trainer_arguments import ignored_optimizer_settings, unsupported_configuration
from ._wrapper_finder import WrapperFinder

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
# Saved with the run (optimizer.pt): the epoch ends the schedule has seen, and
# the global step of the last one (an epoch that took no step ends nothing).
_EPOCHS_ENDED = "transformers_epochs_ended"
_EPOCH_END_STEP = "transformers_epoch_end_step"
_LR_KEY = "learning_rate"


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
        self._run = CurriculumRun(
            curriculum,
            schedule,
            attach_hint=(
                "pass the callback to the Trainer as well: Trainer(..., "
                "optimizers=callback.optimizers(), callbacks=[callback])"
            ),
            reports_reference=True,
        )
        self._run.extra[_EPOCHS_ENDED] = 0
        self._run.extra[_EPOCH_END_STEP] = -1
        self._pending_epoch_end: str | None = None
        self._finder = WrapperFinder(curriculum.model)
        # The lrs of the step the Trainer is about to log (see on_optimizer_step).
        self._step_lrs: dict[str, float] = {}

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
        problem = unsupported_configuration(args, kwargs.get("model"))
        if problem:
            raise ValueError(f"CurriculumCallback: {problem}")
        ignored = ignored_optimizer_settings(args)
        if ignored:
            settings = ", ".join(f"{name}={value!r}" for name, value in ignored.items())
            recipe = self.curriculum.recipe
            warnings.warn(
                f"CurriculumCallback: the Trainer's optimizer settings {settings} are not used. "
                f"The curriculum's optimizer ({recipe.optimizer_class.__name__}, lr "
                f"{recipe.lr:g}, with the optimizer_kwargs given to mentor_fn.Curriculum) and "
                "its scheduler factory (Curriculum(scheduler=...); none: a constant lr) decide.",
                UserWarning,
                stacklevel=2,
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
        self._run.attach()
        if world_size() > 1:
            # accelerate has wrapped the model in DDP (if it did) by now, out of sight.
            self._finder.start()
        self._pending_epoch_end = None
        if math.floor(state.epoch or 0) > self._run.extra.get(_EPOCHS_ENDED, 0):
            self._catch_up_epoch_end(args, state)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The Trainer reads the lr it logs right after this event, before the
        # scheduler steps: the lrs this step trained with.
        self._step_lrs = {
            _LR_KEY: reference_lr(self.curriculum),
            **layer_lrs(self.curriculum, prefix=_LR_KEY),
        }

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._run.step()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self._epoch_exhausted(state, control):
            return  # stopped mid-epoch: not an epoch end for the schedule
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
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is not None and _LR_KEY in logs and self._step_lrs:
            # The run's lr under the usual key, and each layer's under its own:
            # for the callbacks after this one and in the Trainer's history.
            logs.update(self._step_lrs)
            if state.log_history and _LR_KEY in state.log_history[-1]:
                state.log_history[-1].update(self._step_lrs)
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
        self._finder.stop()
        self._run.detach()

    # Epoch ends ------------------------------------------------------------------------------

    def _epoch_exhausted(self, state: TrainerState, control: TrainerControl) -> bool:
        """Whether the epoch the Trainer ends now ran out of data.

        After an epoch's last optimizer step ``state.epoch`` is a whole number
        (the Trainer sets it to ``epoch + steps done / steps in the epoch``);
        a loop that ended without a stop request ran out of data too (an
        iterable dataset, whose epoch length is unknown). An epoch that took no
        optimizer step since the last epoch end ends nothing.
        """
        if state.global_step <= self._run.extra.get(_EPOCH_END_STEP, -1):
            return False
        epoch = float(state.epoch or 0)
        whole = math.isclose(epoch, round(epoch), rel_tol=0.0, abs_tol=1e-9)
        stopped = control.should_training_stop or control.should_epoch_stop
        return whole or not stopped

    def _flush_epoch_end(self, state: TrainerState) -> None:
        # The awaited log or evaluation did not come (nothing to log, say):
        # the epoch still ends, before anything else happens.
        if self._pending_epoch_end is not None:
            self._epoch_end(state)

    def _epoch_end(self, state: TrainerState, metrics: Mapping[str, float] | None = None) -> None:
        self._pending_epoch_end = None
        metrics = latest_metrics(state.log_history) if metrics is None else dict(metrics)
        # Rank 0's metrics decide for every rank, so all change phase together.
        self._run.epoch_end(rank_zero_metrics(metrics))
        self._run.extra[_EPOCHS_ENDED] = self._run.extra.get(_EPOCHS_ENDED, 0) + 1
        self._run.extra[_EPOCH_END_STEP] = state.global_step

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
