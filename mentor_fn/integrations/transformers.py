"""Curriculum learning in the transformers Trainer: a TrainerCallback that owns a Curriculum.

the ``transformers`` extra (``pip install -e '.[transformers]'`` in a clone). The callback hands the Trainer the
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
* ``on_init_end``: refuses what it cannot drive (DeepSpeed under a plain
  ``Trainer``, or with a config it cannot run under; accelerate's FSDP; a
  model sharded at load time with tensor, pipeline or expert parallelism, or
  with FSDP2 and checkpoints) and warns about the
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

Distributed runs: DDP (``torchrun``, ``accelerate launch``), FSDP2 through
``from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=N))``,
and DeepSpeed ZeRO through :class:`CurriculumTrainer` (the ``Trainer``
replaces any ``optimizers=`` under DeepSpeed).
Under DDP, the wrapper accelerate makes inside ``train()`` is found at its
first forward with gradients, and its reducer then follows the phases (it is
rebuilt before the first forward after a change of the trainable parameters),
so ``ddp_find_unused_parameters=False`` is safe and saves DDP's search for
unused parameters at every step. Every rank takes the epoch-end metrics of
rank 0, so all change phase together. accelerate's own FSDP (``fsdp=...``)
is refused: it moves the optimizer onto parameters it makes when training
starts. Under DeepSpeed, accelerate builds the engine from the curriculum's
trainable groups, and the run drives it through
:class:`mentor_fn.integrations.deepspeed.DeepSpeedCurriculum`; its
checkpoints hold the run beside DeepSpeed's files.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .. import Curriculum, Schedule, ScheduleRunner, unwrap_model
from ._deepspeed_config import check_config
from ._distributed import rank_zero_metrics, world_size
from ._handles import LiveOptimizer, LiveScheduler
from ._lr_logs import layer_lrs, reference_lr
from ._requirements import require
from ._run import CurriculumRun, plain_metrics
from ._trainer_arguments import (
    deepspeed_settings,
    ignored_optimizer_settings,
    unsupported_configuration,
)
from ._wrapper_finder import WrapperFinder

if TYPE_CHECKING:
    from ._deepspeed_bridge import EngineBridge

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
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

__all__ = ["CurriculumCallback", "CurriculumTrainer"]

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
        # The CurriculumTrainer that takes its optimizer from this callback, if
        # one does; under DeepSpeed, the bridge to the engine it builds.
        self._trainer: CurriculumTrainer | None = None
        self._bridge: EngineBridge | None = None

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
        problem = unsupported_configuration(args, kwargs.get("model")) or self._deepspeed_problem(
            args
        )
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
        # accelerate wraps the handle (AcceleratedOptimizer.optimizer); under
        # DeepSpeed it wraps the handle on the engine's ZeRO optimizer.
        ours = self._run.optimizer if self._bridge is None else self._bridge.handle
        if optimizer is not ours and getattr(optimizer, "optimizer", None) is not ours:
            raise RuntimeError(
                "CurriculumCallback: the Trainer does not train the curriculum's optimizer; "
                "construct it with Trainer(..., optimizers=callback.optimizers()), or use "
                "CurriculumTrainer"
            )
        model = kwargs.get("model")
        if model is not None and unwrap_model(self.curriculum.model) is not unwrap_model(model):
            raise ValueError(
                "CurriculumCallback: the curriculum is on another model than the Trainer's "
                f"({type(self.curriculum.model).__name__}, the Trainer trains "
                f"{type(model).__name__})"
            )
        self._run.attach()
        if self._bridge is not None:
            # The engine may have loaded a checkpoint (its step count, the ZeRO state).
            self._bridge.checkpoint_loaded()
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

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Under DeepSpeed: the scheduler step the Trainer took, and any change
        # made since from another callback, reach the engine before it steps.
        self._follow()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._run.step()
        self._follow()

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

    # The engine under DeepSpeed, and CurriculumTrainer's side ----------------------------------

    def _follow(self) -> None:
        """Make the DeepSpeed engine follow the curriculum (a no-op without one)."""
        if self._bridge is not None and self._bridge.handle is not None:
            self._bridge.sync()

    def _deepspeed_problem(self, args: TrainingArguments) -> str:
        """Why the run cannot go on under the DeepSpeed config ``args`` turns on ("" if it can)."""
        trainer = self._trainer
        if trainer is not None:
            plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
            settings = None if plugin is None else dict(plugin.deepspeed_config)
        else:
            settings = deepspeed_settings(args)
            if settings is None and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in (
                "true",
                "1",
            ):
                settings = {}
        if settings is None:
            return ""
        if trainer is None:
            return (
                "under DeepSpeed the transformers Trainer builds an optimizer of its own from "
                "TrainingArguments, whatever Trainer(optimizers=...) it was given (transformers "
                "issue #38753): train with mentor_fn.integrations.transformers.CurriculumTrainer("
                "..., callbacks=[callback]) instead of Trainer, which takes the curriculum's "
                "optimizer and scheduler from this callback"
            )
        try:
            check_config(settings)
        except ValueError as error:
            return str(error)
        return ""

    def _bind(self, trainer: CurriculumTrainer) -> None:
        if self._trainer is not None and self._trainer is not trainer:
            raise ValueError(
                "this CurriculumCallback belongs to another CurriculumTrainer already: make one "
                "callback (and curriculum) per trainer"
            )
        self._trainer = trainer

    def _trainer_optimizer(self, trainer: CurriculumTrainer) -> torch.optim.Optimizer:
        """What ``trainer.create_optimizer()`` returns: the optimizer handle, or under
        DeepSpeed the optimizer the engine is built with."""
        self._run.start()
        if not trainer.is_deepspeed_enabled:
            self._bridge = None
            return self._run.optimizer
        from ._deepspeed_bridge import EngineBridge

        bridge = EngineBridge(self._run)
        self._bridge = bridge
        return bridge.client_optimizer()

    def _trainer_scheduler(self, trainer: CurriculumTrainer) -> LiveScheduler:
        """What ``trainer.create_scheduler()`` returns: the scheduler handle. Under
        DeepSpeed the engine exists by now (accelerate built it): the run takes it over,
        before the Trainer loads a checkpoint into it or steps it."""
        bridge = self._bridge
        if bridge is not None:
            engine = trainer.accelerator.deepspeed_engine_wrapped.engine
            handle = bridge.attach_engine(engine)
            # accelerate's wrapper keeps the optimizer deepspeed.initialize returned,
            # which the first change of the trainable set replaces.
            trainer.optimizer.optimizer = handle  # type: ignore[union-attr]
        return self._run.scheduler

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
        self._follow()
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


class CurriculumTrainer(Trainer):
    """The transformers ``Trainer``, with the optimizer and scheduler of its CurriculumCallback.

    Needed under DeepSpeed (``TrainingArguments(deepspeed=...)``, ``accelerate
    launch --use_deepspeed``), where the Trainer builds an optimizer of its
    own whatever ``optimizers=`` it is given: this Trainer's
    ``create_optimizer`` and ``create_scheduler``, the extension points
    transformers documents for a custom optimizer, take the curriculum's.
    Under DeepSpeed, DeepSpeed's engine is built from the curriculum's
    trainable groups and driven through
    :class:`mentor_fn.integrations.deepspeed.DeepSpeedCurriculum`; its
    checkpoints hold the run beside DeepSpeed's own files, and
    ``train(resume_from_checkpoint=...)`` resumes it. It works under every
    engine the callback supports (one process, DDP, FSDP2) too.

    Takes the Trainer's arguments; ``callbacks`` must hold exactly one
    :class:`CurriculumCallback`, and ``optimizers`` / ``optimizer_cls_and_kwargs``
    must be left out.

    Example:
        >>> callback = CurriculumCallback(mf.Curriculum(model, 5e-5), schedule)  # doctest: +SKIP
        >>> trainer = CurriculumTrainer(model=model, args=TrainingArguments(  # doctest: +SKIP
        ...     output_dir="out", deepspeed="ds_zero2.json"), train_dataset=data,
        ...     callbacks=[callback])
        >>> trainer.train()  # doctest: +SKIP

    Raises:
        ValueError: no CurriculumCallback or several, or ``optimizers`` /
            ``optimizer_cls_and_kwargs`` given.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(Trainer.__init__).bind(self, *args, **kwargs).arguments
        callbacks = [c for c in bound.get("callbacks") or () if isinstance(c, CurriculumCallback)]
        if len(callbacks) != 1:
            raise ValueError(
                "CurriculumTrainer needs exactly one CurriculumCallback in callbacks=[...], "
                f"found {len(callbacks)}"
            )
        optimizers = bound.get("optimizers") or (None, None)
        if any(part is not None for part in optimizers) or bound.get("optimizer_cls_and_kwargs"):
            raise ValueError(
                "CurriculumTrainer takes the optimizer and scheduler from its CurriculumCallback: "
                "leave optimizers= and optimizer_cls_and_kwargs= out"
            )
        self.curriculum_callback: CurriculumCallback = callbacks[0]
        """The callback whose curriculum this Trainer trains."""
        self.curriculum_callback._bind(self)
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The curriculum's optimizer (see the class); built once per ``train()``."""
        if self.optimizer is None:
            self.optimizer = self.curriculum_callback._trainer_optimizer(self)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        """The curriculum's scheduler, as a handle the Trainer steps."""
        if self.lr_scheduler is None:
            self.lr_scheduler = self.curriculum_callback._trainer_scheduler(self)  # type: ignore[assignment]
        return self.lr_scheduler
