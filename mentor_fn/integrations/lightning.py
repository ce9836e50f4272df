"""Curriculum learning in Lightning: a Callback that owns a Curriculum and its schedule.

the ``lightning`` extra (``pip install -e '.[lightning]'`` in a clone). In your code::

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
* at each training epoch's end (after validation), when the epoch's data was
  exhausted: ``runner.epoch_end`` with ``trainer.callback_metrics``; under
  DDP and FSDP every rank uses rank 0's metrics, so all ranks change phase
  together. Lightning calls ``on_train_epoch_end`` also when ``max_steps`` or
  ``trainer.should_stop`` (early stopping) ends training in the middle of an
  epoch; that is not an epoch end for the schedule (Lightning's own test,
  the one that decides whether its epoch schedulers step: the epoch's batches
  all ran, or the last one was fetched).
* logs: at each optimizer step, ``lr`` (the run's lr: the curriculum's
  reference group, the global lr under the scheduler) and ``lr/<layer>`` for
  each layer with a coefficient of its own, the lrs that step used
  (``log_lrs=False`` turns them off). Lightning's ``LearningRateMonitor``
  names param groups by position (``pg1`` is the first layer's group, not
  the run's lr) and only those there at the start.
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
* the optimizer handle steps only while the callback drives the run (from
  ``on_train_start`` to ``on_train_end``): handles given to Lightning by
  ``callback.configure_optimizers(self)`` with the callback left out of the
  Trainer's callbacks would train the whole run in the first phase.
* DDP (``strategy="ddp"``, no ``find_unused_parameters`` needed): DDP
  registers only the parameters that require grad when it wraps the model;
  the callback makes the strategy's DDP wrapper follow the phases (its
  reducer is rebuilt before the first forward after the trainable
  parameters changed), so frozen layers cost nothing and unfrozen ones are
  reduced. ``static_graph=True`` is refused. Lightning's own
  ``BaseFinetuning`` desynchronizes ranks when it unfreezes under DDP
  (Lightning issue #20340).
* FSDP2 (``ModelParallelStrategy``, the model sharded with ``fully_shard`` in
  ``configure_model``): the curriculum is built on the sharded parameters;
  freezing, unfreezing and coefficient changes work on them in place.
  Lightning checkpoints need :class:`CurriculumModelParallelStrategy` in
  place of ``ModelParallelStrategy``: Lightning saves and loads an FSDP2
  run's optimizer through ``torch.distributed.checkpoint``'s optimizer API,
  which cannot carry a curriculum (see ``_lightning_sharded``); with
  ``ModelParallelStrategy`` itself, checkpointing is refused.
  ``FSDPStrategy`` (FSDP1: flat parameters, whose ``requires_grad`` is fixed
  when they are made) is refused.
* DeepSpeed (``DeepSpeedStrategy``, ZeRO stages 1 to 3): the strategy builds
  DeepSpeed's engine from what ``configure_optimizers`` returns, here the
  curriculum's trainable groups (frozen layers hold no optimizer state) and
  the scheduler handle, which Lightning keeps stepping; the callback takes the
  engine over at ``on_fit_start`` through
  :class:`mentor_fn.integrations.deepspeed.DeepSpeedCurriculum`: lr changes
  are patched into the ZeRO groups, a change of the trainable set rebuilds
  the ZeRO optimizer in the same engine with its state carried, and Lightning
  holds a handle on it. Lightning's checkpoints (DeepSpeed's folders) hold
  the run beside DeepSpeed's files (``mentor_fn_curriculum.pt``), written by
  the engine at every save and read back at every load before DeepSpeed
  loads its own state. Settings DeepSpeed cannot run a curriculum under
  (offload, an optimizer or scheduler in the config...) are refused at
  ``setup``, naming them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch.nn.parallel import DistributedDataParallel

from .. import Curriculum, Schedule, ScheduleRunner, unwrap_model
from .._wrapper.ddp import follow_trainable_parameters
from ._deepspeed_config import check_config
from ._distributed import rank_zero_metrics
from ._handles import scheduler_handle
from ._lightning_sharded import CurriculumModelParallelStrategy
from ._lr_logs import layer_lrs, reference_lr
from ._requirements import require
from ._run import CurriculumRun, plain_metrics

if TYPE_CHECKING:
    from ._deepspeed_bridge import EngineBridge

require(
    "lightning.pytorch",
    extra="lightning",
    minimum="2.2",
    adapter="mentor_fn.integrations.lightning",
)

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.strategies import (  # noqa: E402
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
)

__all__ = ["CurriculumCallback", "CurriculumModelParallelStrategy", "curriculum_optimizers"]

CurriculumSource = Curriculum | Callable[[pl.LightningModule], Curriculum]
_STATE_VERSION = 2  # 2: "exhausted" (version 1 files read as exhausted: they were)
_LR_KEY = "lr"
_SHARDED_CHECKPOINTS = (
    "Lightning checkpoints of a ModelParallelStrategy (FSDP2) run need "
    "mentor_fn.integrations.lightning.CurriculumModelParallelStrategy in its place (same "
    "arguments): ModelParallelStrategy saves and loads its optimizer through "
    "torch.distributed.checkpoint's optimizer API, which steps an optimizer that holds no "
    "state (so it would change the curriculum's run) and loads state only into the layout "
    "the optimizer has when it loads (the first phase's). Or pass "
    "L.Trainer(enable_checkpointing=False) and save the run with "
    "mentor_fn.save_distributed_checkpoint(directory, callback.curriculum) from a callback "
    "of yours"
)
_ATTACH_HINT = (
    "add the callback to the Trainer, L.Trainer(callbacks=[callback]), and return "
    "curriculum_optimizers(self) from configure_optimizers"
)


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
        log_lrs: log ``lr`` (the run's lr) and ``lr/<layer>`` (each layer with a
            coefficient of its own) at each optimizer step.
    """

    def __init__(
        self,
        curriculum: CurriculumSource,
        schedule: Schedule | None = None,
        *,
        lr_scheduler_config: Mapping[str, Any] | None = None,
        log_lrs: bool = True,
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
        if not isinstance(log_lrs, bool):
            raise TypeError(f"log_lrs must be a bool, got {log_lrs!r}")
        self._source = curriculum
        self._schedule = schedule
        self._lr_scheduler_config = config
        self._log_lrs = log_lrs
        self._step_lrs: dict[str, float] = {}  # the lrs of the step just taken
        self._run: CurriculumRun | None = None
        # trainer.global_step when the runner last counted an optimizer step.
        self._steps_counted = 0
        # The epoch whose end the schedule last saw (-1: none), and the epoch
        # and metrics a checkpoint was written at (see _epoch_end).
        self._last_epoch_end = -1
        self._restored: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None
        # Under DeepSpeedStrategy: the bridge to the engine the strategy builds.
        self._bridge: EngineBridge | None = None

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
            ValueError: the curriculum is not on ``module``; a DDP wrapper that
                cannot follow phase changes (``static_graph=True``).
        """
        run = self._run_for(module)
        if isinstance(module.trainer.strategy, DeepSpeedStrategy):
            return self._deepspeed_optimizers(module.trainer, run)
        wrapper = module.trainer.strategy.model
        if isinstance(wrapper, DistributedDataParallel):
            # Wrapped by now (DDPStrategy.setup wraps, then sets up the optimizers).
            follow_trainable_parameters(wrapper)
        run.start()
        configuration: dict[str, Any] = {"optimizer": run.optimizer}
        if run.curriculum.scheduler is not None:
            configuration["lr_scheduler"] = {
                **self._lr_scheduler_config,
                "scheduler": run.scheduler,
            }
        return configuration

    def _deepspeed_optimizers(self, trainer: pl.Trainer, run: CurriculumRun) -> dict[str, Any]:
        """What DeepSpeedStrategy gives ``deepspeed.initialize``: the curriculum's trainable
        groups, and the scheduler handle, which Lightning steps."""
        from ._deepspeed_bridge import EngineBridge

        run.start()
        bridge = EngineBridge(run)
        self._bridge = bridge
        optimizer = bridge.client_optimizer()
        configuration: dict[str, Any] = {"optimizer": optimizer}
        if run.curriculum.scheduler is not None:
            configuration["lr_scheduler"] = {
                **self._lr_scheduler_config,
                "scheduler": scheduler_handle(run, optimizer),
            }
        return configuration

    def _follow(self) -> None:
        """Make the DeepSpeed engine follow the curriculum (a no-op without one)."""
        if self._bridge is not None and self._bridge.handle is not None:
            self._bridge.sync()

    def _run_for(self, module: pl.LightningModule) -> CurriculumRun:
        if self._run is None:
            source = self._source
            curriculum = source if isinstance(source, Curriculum) else source(module)
            if not isinstance(curriculum, Curriculum):
                raise TypeError(
                    f"the curriculum factory must return a mentor_fn.Curriculum, got {curriculum!r}"
                )
            self._run = CurriculumRun(curriculum, self._schedule, attach_hint=_ATTACH_HINT)
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
        self._bridge = None
        problem = _unsupported_strategy(trainer.strategy)
        if (
            not problem
            and _unsupported_checkpoints(trainer.strategy)
            and (trainer.checkpoint_callbacks or trainer.ckpt_path is not None)
        ):
            problem = _SHARDED_CHECKPOINTS
        if problem:
            raise ValueError(f"CurriculumCallback: {problem}")
        if isinstance(trainer.strategy, DDPStrategy) and not isinstance(
            trainer.strategy, DeepSpeedStrategy
        ):
            # DDP refuses a module with no trainable parameter when it wraps it,
            # right after this hook; the phase's flags are not set yet (the
            # curriculum sets them in configure_optimizers, after the wrap,
            # and the wrapper's reducer then follows them).
            for parameter in pl_module.parameters():
                parameter.requires_grad_(True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bridge = self._bridge
        if bridge is not None and isinstance(trainer.strategy, DeepSpeedStrategy):
            # The engine was built with the curriculum's optimizer; the run takes it
            # over before Lightning loads a checkpoint into it (which then puts the
            # run back first). Lightning keeps the optimizer deepspeed.initialize
            # returned, which the first change of the trainable set replaces: it
            # holds a handle instead.
            trainer.strategy.optimizers = [bridge.attach_engine(trainer.strategy.model)]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self._run
        bridge = self._bridge
        if bridge is not None and bridge.handle is not None and run is not None:
            bridge.checkpoint_loaded()  # the engine's step count and ZeRO state, if loaded
        elif run is None or not any(optimizer is run.optimizer for optimizer in trainer.optimizers):
            raise RuntimeError(
                "CurriculumCallback: the LightningModule's configure_optimizers must return "
                "mentor_fn.integrations.lightning.curriculum_optimizers(self) (or "
                "callback.configure_optimizers(self)), so that Lightning trains the curriculum's "
                "optimizer"
            )
        run.attach()
        self._steps_counted = trainer.global_step
        restored = self._restored
        if (
            restored is not None
            and restored["exhausted"]
            and restored["epoch"] < trainer.current_epoch
        ):
            # Resuming after the epoch the checkpoint was written in, whose end
            # Lightning will not run again: the schedule sees it now. (Not when
            # the checkpoint was written at a stop mid-epoch: Lightning goes on
            # with the next epoch, but that one's data was never exhausted.)
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
        if self._steps_counted == trainer.global_step:
            return  # accumulating gradients: no optimizer step in this batch
        if self._log_lrs and self._step_lrs:
            for name, value in self._step_lrs.items():
                pl_module.log(name, value, on_step=True, on_epoch=False)
        # Counted from global_step, which moves once per optimizer step (not
        # per batch under gradient accumulation).
        while self._steps_counted < trainer.global_step:
            self._run.step()
            self._steps_counted += 1
        self._follow()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Under DeepSpeed: an epoch-interval scheduler step Lightning took, and any
        # change made since from another callback, reach the engine before it steps.
        self._follow()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self._log_lrs and self._run is not None:
            # The lrs this step uses: by the batch's end Lightning may have
            # stepped an epoch-interval scheduler (at an epoch's last batch),
            # and the phase may move on.
            curriculum = self._run.curriculum
            self._step_lrs = {
                _LR_KEY: reference_lr(curriculum),
                **layer_lrs(curriculum, prefix=_LR_KEY),
            }

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _epoch_exhausted(trainer):
            return  # stopped mid-epoch (max_steps, should_stop): not an epoch end
        self._epoch_end(trainer, trainer.current_epoch, trainer.callback_metrics)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._run is not None:
            self._run.detach()

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
        # Metrics logged without sync_dist differ between ranks; rank 0's
        # decide for all, so every rank changes phase at the same epoch.
        self._run.epoch_end(rank_zero_metrics(plain))
        self._follow()
        self._last_epoch_end = epoch

    # Checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The epoch whose end the schedule last saw; the epoch now, whether its data
        is exhausted, and the metrics now (the run itself is saved through the
        optimizer handle)."""
        trainer = self._trainer
        if trainer is not None and _unsupported_checkpoints(trainer.strategy):
            # Called by Lightning before it saves the optimizer: refuse first, clearly.
            raise ValueError(f"CurriculumCallback: {_SHARDED_CHECKPOINTS}")
        return {
            "version": _STATE_VERSION,
            "last_epoch_end": self._last_epoch_end,
            "epoch": -1 if trainer is None else trainer.current_epoch,
            "exhausted": trainer is not None and _epoch_exhausted(trainer),
            "metrics": {} if trainer is None else plain_metrics(trainer.callback_metrics),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or state_dict.get("version") not in (
            1,
            _STATE_VERSION,
        ):
            raise ValueError(
                f"not a CurriculumCallback state of version 1 or {_STATE_VERSION}: {state_dict!r}"
            )
        self._last_epoch_end = int(state_dict["last_epoch_end"])
        self._restored = {
            "epoch": int(state_dict["epoch"]),
            "exhausted": bool(state_dict.get("exhausted", True)),
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


def _unsupported_strategy(strategy: Any) -> str:
    """Why the callback cannot drive a run under ``strategy`` ("" when it can)."""
    if isinstance(strategy, (SingleDeviceStrategy, ModelParallelStrategy)):
        return ""
    if isinstance(strategy, DeepSpeedStrategy):  # a DDPStrategy subclass: before it
        try:
            check_config(strategy.config or {})
        except ValueError as error:
            return f"DeepSpeedStrategy: {error}"
        return ""
    if isinstance(strategy, DDPStrategy):
        return ""
    if isinstance(strategy, FSDPStrategy):
        return (
            "FSDPStrategy (FSDP1) is not supported: it flattens each unit's parameters into "
            "one, whose requires_grad is fixed when it is made, so a later phase could not "
            "unfreeze a layer. Use FSDP2: ModelParallelStrategy, with fully_shard applied in "
            "LightningModule.configure_model"
        )
    return (
        f"{type(strategy).__name__} is not supported: use the single-device, DDP or "
        "ModelParallelStrategy (FSDP2) strategies"
    )


def _unsupported_checkpoints(strategy: Any) -> bool:
    """Whether Lightning's checkpoints under ``strategy`` cannot hold a curriculum run."""
    return isinstance(strategy, ModelParallelStrategy) and not isinstance(
        strategy, CurriculumModelParallelStrategy
    )


def _epoch_exhausted(trainer: pl.Trainer) -> bool:
    """Whether the training epoch Lightning ends now ran out of batches.

    Lightning's own test (the one that decides whether epoch-interval
    schedulers step): every batch of the epoch was fetched, or the last one
    was (an iterable of unknown length). False when ``max_steps`` or
    ``should_stop`` ended the epoch early.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return bool(progress.is_last_batch) or progress.current.ready == trainer.num_training_batches
