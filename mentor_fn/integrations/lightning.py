"""Curriculum learning in Lightning: a Callback that owns a Curriculum and its schedule.

``pip install 'mentor_fn[lightning]'``. In your code::

    callback = CurriculumCallback(mf.Curriculum(model, lr=1e-3), schedule)
    trainer = L.Trainer(callbacks=[callback], ...)

    class Model(L.LightningModule):
        def configure_optimizers(self):
            return curriculum_optimizers(self)

What the callback does, at each point of Lightning's loop:

* ``configure_optimizers``: enters the schedule's first phase and builds a
  fresh optimizer and scheduler from the curriculum; Lightning gets stable
  handles on them (``LiveOptimizer``, ``LiveScheduler``), so a phase change
  that makes new objects never leaves Lightning holding stale ones.
* after each optimizer step (``on_train_batch_end``, once per step
  ``trainer.global_step`` has moved: gradient accumulation counts optimizer
  steps, not batches; several steps in one batch under manual optimization
  are counted at that batch's end): ``runner.step()``, which ramps warmups
  and ends step-counted phases.
* at each training epoch's end (after validation): ``runner.epoch_end`` with
  ``trainer.callback_metrics``; under DDP every rank uses rank 0's metrics,
  so all ranks change phase together.
* checkpoints: the run (curriculum state, optimizer state by parameter name,
  scheduler, schedule cursor) is what the optimizer handle's ``state_dict``
  returns, so it lands in Lightning's own ``optimizer_states``. On
  ``trainer.fit(model, ckpt_path=...)`` Lightning calls ``configure_optimizers``
  and then loads that state through the handle, which restores the saved
  layout before the saved optimizer state: never by position into phase 0's
  layout. ``ModelCheckpoint`` saves at the epoch's end by default, after the
  callback's epoch end. A checkpoint written after validation but before it
  (``save_on_train_epoch_end=False``, validation several times per epoch)
  holds Lightning's metrics of that moment, and the resumed run applies the
  epoch end with them: validation metrics are exact; a training metric
  aggregated over the epoch (``on_epoch=True`` in ``training_step``) is not
  aggregated yet at that point, so a ``plateau`` on one resumes exactly only
  from checkpoints written at the epoch's end.
* DDP (``DDPStrategy(find_unused_parameters=True)``): DDP registers only the
  parameters that require grad when it wraps the model, so the callback makes
  every parameter trainable before Lightning wraps it (``setup``) and the
  curriculum sets each phase's flags afterwards; frozen layers are then
  skipped by DDP's unused-parameter search. Lightning's own ``BaseFinetuning``
  desynchronizes ranks when it unfreezes under DDP (Lightning issue #20340).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch.nn.parallel import DistributedDataParallel

from .. import Curriculum, Schedule, ScheduleRunner, unwrap_model
from ._requirements import require
from ._run import CurriculumRun, plain_metrics

require(
    "lightning.pytorch",
    extra="lightning",
    minimum="2.2",
    adapter="mentor_fn.integrations.lightning",
)

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy  # noqa: E402

__all__ = ["CurriculumCallback", "curriculum_optimizers"]

CurriculumSource = Curriculum | Callable[[pl.LightningModule], Curriculum]
_STATE_VERSION = 1


class CurriculumCallback(pl.Callback):
    """Runs a :class:`~mentor_fn.Curriculum` (and a :class:`~mentor_fn.Schedule`) in Lightning.

    The LightningModule's ``configure_optimizers`` returns
    ``curriculum_optimizers(self)`` (or ``callback.configure_optimizers(self)``).

    Args:
        curriculum: a Curriculum on the LightningModule, or a function making
            one from it (called at the first ``configure_optimizers``; use it
            when the callback is built without the model, from a config).
        schedule: phases advanced after each optimizer step and at each epoch
            end; None leaves changes to you (``callback.curriculum.unfreeze(...,
            reset_optimizer_if_needed=True)`` from any hook works: Lightning
            holds handles, not the objects).
        lr_scheduler_config: Lightning's scheduler settings (``interval``,
            ``frequency``, ``monitor``, ``name``...). Lightning steps the
            scheduler once per epoch by default; per-step schedules need
            ``{"interval": "step"}``.
    """

    def __init__(
        self,
        curriculum: CurriculumSource,
        schedule: Schedule | None = None,
        *,
        lr_scheduler_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(curriculum, Curriculum) and not callable(curriculum):
            raise TypeError(
                "curriculum must be a mentor_fn.Curriculum or a function LightningModule -> "
                f"Curriculum, got {curriculum!r}"
            )
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a mentor_fn.Schedule or None, got {schedule!r}")
        if lr_scheduler_config is not None and not isinstance(lr_scheduler_config, Mapping):
            raise TypeError(f"lr_scheduler_config must be a mapping, got {lr_scheduler_config!r}")
        config = dict(lr_scheduler_config or {})
        if "scheduler" in config:
            raise ValueError(
                "lr_scheduler_config must not hold 'scheduler': the curriculum's scheduler factory "
                "makes it"
            )
        self._source = curriculum
        self._schedule = schedule
        self._lr_scheduler_config = config
        self._run: CurriculumRun | None = None
        # trainer.global_step when the runner last counted an optimizer step.
        self._steps_counted = 0
        # The epoch whose end the schedule last saw (-1: none), and the epoch
        # and metrics a checkpoint was written at (see _epoch_end).
        self._last_epoch_end = -1
        self._restored: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None

    # Reading ----------------------------------------------------------------------------

    @property
    def curriculum(self) -> Curriculum | None:
        """The Curriculum; None before the first ``configure_optimizers`` when given a factory."""
        if self._run is not None:
            return self._run.curriculum
        return self._source if isinstance(self._source, Curriculum) else None

    @property
    def runner(self) -> ScheduleRunner | None:
        """The schedule's runner (None without a schedule or before ``configure_optimizers``)."""
        return None if self._run is None else self._run.runner

    # The optimizers ----------------------------------------------------------------------

    def configure_optimizers(self, module: pl.LightningModule) -> dict[str, Any]:
        """What ``LightningModule.configure_optimizers`` returns: the curriculum's
        optimizer and scheduler, as handles, in Lightning's dict form.

        Raises:
            ValueError: the curriculum is not on ``module``; a DDP wrapper
                without ``find_unused_parameters=True``.
        """
        run = self._run_for(module)
        _check_ddp_wrapper(module.trainer)
        run.start()
        configuration: dict[str, Any] = {"optimizer": run.optimizer}
        if run.curriculum.scheduler is not None:
            configuration["lr_scheduler"] = {
                **self._lr_scheduler_config,
                "scheduler": run.scheduler,
            }
        return configuration

    def _run_for(self, module: pl.LightningModule) -> CurriculumRun:
        if self._run is None:
            source = self._source
            curriculum = source if isinstance(source, Curriculum) else source(module)
            if not isinstance(curriculum, Curriculum):
                raise TypeError(
                    f"the curriculum factory must return a mentor_fn.Curriculum, got {curriculum!r}"
                )
            self._run = CurriculumRun(curriculum, self._schedule)
        if unwrap_model(self._run.curriculum.model) is not module:
            raise ValueError(
                "the curriculum must be on the LightningModule being fitted "
                f"({type(module).__name__}), not on {type(self._run.curriculum.model).__name__}: "
                "mentor_fn.Curriculum(model, ...) with the module you pass to trainer.fit"
            )
        return self._run

    # Lightning's hooks ---------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy):
            # DDP registers only the parameters that require grad when it wraps
            # the module, right after this hook: all of them, so that later
            # phases may unfreeze any. configure_optimizers, after the wrap,
            # sets the phase's flags.
            for parameter in pl_module.parameters():
                parameter.requires_grad_(True)
        elif not isinstance(strategy, SingleDeviceStrategy):
            raise ValueError(
                f"CurriculumCallback supports Lightning's single-device and DDP strategies, not "
                f"{type(strategy).__name__}"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self._run
        if run is None or not any(optimizer is run.optimizer for optimizer in trainer.optimizers):
            raise RuntimeError(
                "CurriculumCallback: the LightningModule's configure_optimizers must return "
                "mentor_fn.integrations.lightning.curriculum_optimizers(self) (or "
                "callback.configure_optimizers(self)), so that Lightning trains the curriculum's "
                "optimizer"
            )
        self._steps_counted = trainer.global_step
        restored = self._restored
        if restored is not None and restored["epoch"] < trainer.current_epoch:
            # Resuming after the epoch the checkpoint was written in, whose end
            # Lightning will not run again: the schedule sees it now.
            self._epoch_end(trainer, restored["epoch"], {})

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        assert self._run is not None
        # Counted from global_step, which moves once per optimizer step (not
        # per batch under gradient accumulation).
        while self._steps_counted < trainer.global_step:
            self._run.step()
            self._steps_counted += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end(trainer, trainer.current_epoch, trainer.callback_metrics)

    def _epoch_end(self, trainer: pl.Trainer, epoch: int, metrics: Mapping[str, Any]) -> None:
        assert self._run is not None
        restored, self._restored = self._restored, None
        if epoch <= self._last_epoch_end:
            return  # seen before the checkpoint this run resumed from
        plain = plain_metrics(metrics)
        if restored is not None and restored["epoch"] == epoch:
            # The end of the epoch a checkpoint was written in, before this
            # callback saw it (after validation): Lightning's metrics of then
            # come from the checkpoint (a resumed Trainer has none yet).
            plain = {**restored["metrics"], **plain}
        if trainer.world_size > 1:
            # Metrics logged without sync_dist differ between ranks; rank 0's
            # decide for all, so every rank changes phase at the same epoch.
            plain = trainer.strategy.broadcast(plain, src=0)
        self._run.epoch_end(plain)
        self._last_epoch_end = epoch

    # Checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The epoch whose end the schedule last saw, and the epoch and metrics now
        (the run itself is saved through the optimizer handle)."""
        trainer = self._trainer
        return {
            "version": _STATE_VERSION,
            "last_epoch_end": self._last_epoch_end,
            "epoch": -1 if trainer is None else trainer.current_epoch,
            "metrics": {} if trainer is None else plain_metrics(trainer.callback_metrics),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or state_dict.get("version") != _STATE_VERSION:
            raise ValueError(
                f"not a CurriculumCallback state of version {_STATE_VERSION}: {state_dict!r}"
            )
        self._last_epoch_end = int(state_dict["last_epoch_end"])
        self._restored = {
            "epoch": int(state_dict["epoch"]),
            "metrics": {str(k): float(v) for k, v in state_dict["metrics"].items()},
        }


def curriculum_optimizers(module: pl.LightningModule) -> dict[str, Any]:
    """``return curriculum_optimizers(self)`` in ``LightningModule.configure_optimizers``.

    Finds the trainer's :class:`CurriculumCallback` and returns its
    :meth:`~CurriculumCallback.configure_optimizers`.

    Raises:
        ValueError: the trainer has no CurriculumCallback, or several.
    """
    trainer: Any = module.trainer  # Trainer.callbacks is set in __init__, untyped
    callbacks = [c for c in trainer.callbacks if isinstance(c, CurriculumCallback)]
    if len(callbacks) != 1:
        raise ValueError(
            f"curriculum_optimizers needs exactly one CurriculumCallback in the Trainer's "
            f"callbacks, found {len(callbacks)}"
        )
    return callbacks[0].configure_optimizers(module)


def _check_ddp_wrapper(trainer: pl.Trainer) -> None:
    wrapper = trainer.strategy.model
    if not isinstance(wrapper, DistributedDataParallel):
        return
    if not wrapper.find_unused_parameters:
        raise ValueError(
            "CurriculumCallback under DDP needs DDPStrategy(find_unused_parameters=True) (or "
            "strategy='ddp_find_unused_parameters_true'): frozen layers produce no gradient, "
            "and without it DDP's next gradient reduction fails"
        )
    if wrapper.static_graph:
        raise ValueError(
            "CurriculumCallback under DDP needs DDPStrategy(static_graph=False): each phase "
            "change changes which parameters get gradients"
        )
