"""Curriculum learning on a DeepSpeed ZeRO engine (stages 1, 2 and 3), in your own training loop.

the ``deepspeed`` extra (``pip install -e '.[deepspeed]'`` in a clone). In your code::

    from mentor_fn.integrations import deepspeed as mf_deepspeed

    curriculum = mf.Curriculum(model, lr=1e-3, optimizer=torch.optim.AdamW, scheduler=...)
    run = mf_deepspeed.initialize(curriculum, config=ds_config, schedule=schedule)
    for batch in loader:
        loss = loss_of(run.engine(batch))
        run.engine.backward(loss)
        run.engine.step()
        run.step()                      # the schedule's warmups and phase changes
    run.epoch_end({"val_loss": ...})    # at each epoch's end

What happens underneath:

* The curriculum keeps its own optimizer and scheduler, with every group,
  lr and coefficient as in one process; it is never stepped (it holds no
  state). The engine's ZeRO optimizer gets one group per trainable group of
  it (frozen parameters are in none: they hold no optimizer state), and
  takes each group's lr from it after every scheduler step and transition.
* A transition that only moves lrs (a coefficient, a warmup step, ``set_lr``)
  is patched into the ZeRO optimizer's groups in place. One that changes
  which parameters train (freeze, unfreeze, a new phase) re-initializes the
  ZeRO optimizer inside the same engine, because ZeRO flattens and
  partitions its groups when it is built; every parameter trainable before
  and after keeps its fp32 master weights and optimizer state (moments and
  step), newly trainable ones start fresh, and the scheduler's progress is
  kept: the promises of a rebuild in one process. The plan returned is then
  a :class:`~mentor_fn.Rebuild` that says so.
* Checkpoints: :meth:`DeepSpeedCurriculum.save_checkpoint` writes DeepSpeed's
  own checkpoint (``engine.save_checkpoint``) and, beside it in the tag's
  folder, ``mentor_fn_curriculum.pt``: the curriculum, the schedule's cursor
  and the ZeRO group layout, plain data that loads with
  ``torch.load(weights_only=True)``. An attached engine writes that file
  whenever it saves a checkpoint, whoever calls ``engine.save_checkpoint``
  (a framework, say).
* Configurations that cannot work are refused before training:
  :func:`check_config`.

A framework that calls ``deepspeed.initialize`` itself does it in three
steps: ``run = DeepSpeedCurriculum(curriculum, schedule=...)``, then
``deepspeed.initialize(model=..., optimizer=run.client_optimizer(),
lr_scheduler=run.lr_scheduler, config=...)``, then ``run.attach(engine)``.
One that also loads DeepSpeed's checkpoints itself restores the curriculum,
then the ZeRO layout (:meth:`DeepSpeedCurriculum.use_zero_groups`) before the
engine loads, and calls :meth:`DeepSpeedCurriculum.checkpoint_loaded` after.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import ReduceLROnPlateau

from .. import (
    CheckpointError,
    Curriculum,
    CurriculumState,
    Plan,
    Schedule,
    ScheduleRunner,
    freeze,
    set_lr_coefficient,
    unfreeze,
)
from ._requirements import require

require("deepspeed", extra="deepspeed", minimum="0.19", adapter="mentor_fn.integrations.deepspeed")

import deepspeed  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: E402
from deepspeed.runtime.engine import DeepSpeedEngine  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: E402
from deepspeed.runtime.pipe.engine import PipelineEngine  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: E402

from ._deepspeed_checkpoint import (  # noqa: E402
    CHECKPOINT_FILE,
    read_run_file,
    saved_layout,
)
from ._deepspeed_checkpoint_engine import install_run_files  # noqa: E402
from ._deepspeed_config import check_config, read_config  # noqa: E402
from ._deepspeed_follow import EngineFollower, build_client_optimizer  # noqa: E402
from ._deepspeed_scheduler import EngineScheduler  # noqa: E402
from ._deepspeed_zero import (  # noqa: E402
    ZeroGroup,
    check_engine_internals,
    link_state,
    optimizer_bytes,
    zero_layout,
)

__all__ = [
    "CHECKPOINT_FILE",
    "DeepSpeedCurriculum",
    "check_config",
    "initialize",
    "optimizer_state_bytes",
]

Target = CurriculumState | Callable[[CurriculumState], CurriculumState]
"""What ``update`` takes, as ``Curriculum.update``: a state, or a transition."""


class DeepSpeedCurriculum:
    """A :class:`~mentor_fn.Curriculum` (and optionally a schedule) trained by a DeepSpeed engine.

    Make it with :func:`initialize`, or, when something else calls
    ``deepspeed.initialize``, construct it, pass :meth:`client_optimizer` and
    :attr:`lr_scheduler` to ``deepspeed.initialize``, and :meth:`attach` the
    engine. Then, in the loop, call :meth:`step` after each ``engine.step()``
    and :meth:`epoch_end` after each epoch; make transitions through
    :meth:`update` (or :meth:`freeze`, :meth:`unfreeze`,
    :meth:`set_lr_coefficient`, :meth:`set_lr`), on every rank at the same step.

    Args:
        curriculum: the curriculum of the bare model the engine trains.
        schedule: phases to run; None leaves every change to you.
        steps_scheduler: whether the run steps the curriculum's scheduler (the
            engine, through :attr:`lr_scheduler`, or :meth:`step`). False: the
            caller steps it (a framework stepping a scheduler handle of its
            own) and calls :meth:`sync` before the engine's next step; a
            ``ReduceLROnPlateau`` is then allowed.

    Example:
        >>> run = initialize(mf.Curriculum(model, 1e-3), config=config)  # doctest: +SKIP
        >>> run.engine.backward(loss); run.engine.step(); run.step()      # doctest: +SKIP
    """

    def __init__(
        self,
        curriculum: Curriculum,
        *,
        schedule: Schedule | None = None,
        steps_scheduler: bool = True,
    ) -> None:
        if not isinstance(curriculum, Curriculum):
            raise TypeError(f"curriculum must be a mentor_fn.Curriculum, got {curriculum!r}")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a mentor_fn.Schedule or None, got {schedule!r}")
        self._curriculum = curriculum
        self._runner = None if schedule is None else ScheduleRunner(curriculum, schedule)
        self._follower = EngineFollower(curriculum)
        self._steps_scheduler = steps_scheduler
        self._started = False
        self._client: torch.optim.Optimizer | None = None
        self._steps_seen = 0  # engine.global_steps at the last step()
        self._guard: Any = None
        # A saved ZeRO layout for client_optimizer() to build (see use_zero_groups).
        self._pending_layout: tuple[ZeroGroup, ...] | None = None
        # The client_state keys save_checkpoint is saving (written in the run file).
        self._saving_keys: list[str] = []
        self.lr_scheduler = EngineScheduler(self._step_scheduler, self._lrs)
        """What to give ``deepspeed.initialize`` as ``lr_scheduler``: the engine then steps
        the curriculum's scheduler exactly when it steps the optimizer."""

    # Reading ---------------------------------------------------------------------------------

    @property
    def curriculum(self) -> Curriculum:
        return self._curriculum

    @property
    def runner(self) -> ScheduleRunner | None:
        return self._runner

    @property
    def engine(self) -> DeepSpeedEngine:
        """The attached engine.

        Raises:
            RuntimeError: none is attached yet.
        """
        engine = self._follower.engine
        if engine is None:
            raise RuntimeError("no DeepSpeed engine is attached yet: call attach(engine) first")
        return engine

    @property
    def zero_groups(self) -> tuple[tuple[int, tuple[str, ...]], ...]:
        """The ZeRO optimizer's groups: (curriculum group index, parameter names) each."""
        names = {id(p): name for name, p in self._curriculum.model.named_parameters()}
        return tuple(
            (group.source, tuple(names[id(parameter)] for parameter in group.parameters))
            for group in self._follower.layout
        )

    # Starting --------------------------------------------------------------------------------

    def start(self) -> None:
        """Enter the schedule's first phase and build the curriculum (once; later calls do nothing).

        Raises:
            ValueError: the curriculum's scheduler is a ``ReduceLROnPlateau``.
        """
        if self._started:
            return
        if self._runner is not None:
            self._runner.start()
        if self._curriculum.optimizer is None:
            self._curriculum.build()
        if self._steps_scheduler and isinstance(self._curriculum.scheduler, ReduceLROnPlateau):
            raise ValueError(
                "the curriculum's scheduler is a ReduceLROnPlateau, which needs a metric at each "
                "step and DeepSpeed's engine.step() passes none: use a step-wise scheduler, or a "
                "schedule phase that ends on mf.plateau(...)"
            )
        self._started = True

    def client_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer to give ``deepspeed.initialize``: the curriculum's trainable groups.

        Starts the run first (:meth:`start`).

        Raises:
            ValueError: no parameter is trainable (ZeRO needs at least one).
        """
        self.start()
        layout, self._pending_layout = self._pending_layout, None
        self._client = build_client_optimizer(
            self._curriculum, self._follower.client_groups(layout)
        )
        return self._client

    def attach(self, engine: DeepSpeedEngine) -> None:
        """Take over a DeepSpeed engine built on the curriculum's model.

        An engine built with :meth:`client_optimizer` is taken as it is; one
        built with another optimizer gets a fresh ZeRO optimizer in the
        curriculum's layout (before its first step only).

        Raises:
            TypeError: not a DeepSpeed engine.
            ValueError: naming the problem: a pipeline engine, another
                model, no ZeRO (or a refused setting, see :func:`check_config`),
                MoE layers, an lr scheduler of its own, or an engine that has
                trained already with another optimizer.
        """
        if not isinstance(engine, DeepSpeedEngine):
            raise TypeError(f"expected a DeepSpeed engine, got {type(engine).__name__}")
        if isinstance(engine, PipelineEngine):
            raise ValueError(
                "pipeline parallelism (PipelineEngine) is not supported: its stages hold different "
                "layers on different ranks. Train the model with a ZeRO stage instead."
            )
        if engine.module is not self._curriculum.model:
            raise ValueError(
                "the engine trains another model than the curriculum: build the Curriculum on the "
                "bare model you gave deepspeed.initialize (engine.module)"
            )
        # The dict DeepSpeed read, however it was given (a dict, a JSON path, args).
        check_config(getattr(engine._config, "_param_dict", None) or engine.config)
        if getattr(engine, "has_moe_layers", False):
            raise ValueError(
                "mixture-of-experts layers are not supported: DeepSpeed splits their parameters "
                "into groups of its own"
            )
        own = engine.lr_scheduler
        if own is not None and own is not self.lr_scheduler:
            raise ValueError(
                f"the engine has an lr scheduler of its own ({type(own).__name__}), which would "
                "write lrs over the curriculum's: give deepspeed.initialize "
                "lr_scheduler=run.lr_scheduler (or none), and the scheduler factory to the "
                "Curriculum"
            )
        check_engine_internals(engine)
        ours = self._client is not None and engine.basic_optimizer is self._client
        if not ours and engine.global_steps > 0:
            raise ValueError(
                "the engine has trained with an optimizer that is not the run's: attach it "
                "before its first step, or build it with run.client_optimizer()"
            )
        self.start()
        follower = self._follower
        follower.engine = engine
        self._steps_seen = engine.global_steps
        self._client = None
        if ours:
            follower.follow(None)  # transitions made between client_optimizer() and now
        else:
            optimizer = self._curriculum.optimizer
            assert optimizer is not None
            follower.reinitialize(zero_layout(optimizer.param_groups, None), carry=False)
        install_run_files(engine, self._run_file_contents)
        if self._guard is None:
            self._guard = self._curriculum.model.register_forward_pre_hook(self._check_in_step)

    # Training ------------------------------------------------------------------------------------

    def step(self) -> Plan | None:
        """After each ``engine.step()``: advance the schedule; the executed plan, or None.

        Does nothing between gradient accumulation boundaries, or when the
        engine skipped the step (fp16 overflow; it skips the scheduler too).
        Steps the curriculum's scheduler itself when the engine has none
        (and ``steps_scheduler`` was not turned off).

        Raises:
            RuntimeError: no engine attached, or the engine took more than one
                optimizer step since the last call (each needs its own call).
        """
        engine = self.engine
        steps = engine.global_steps
        if steps == self._steps_seen:
            return None
        if steps != self._steps_seen + 1:
            raise RuntimeError(
                f"the engine took {steps - self._steps_seen} optimizer steps since the last "
                "run.step(): call it after every engine.step()"
            )
        self._steps_seen = steps
        if not engine.was_step_applied():
            return None
        if self._steps_scheduler and engine.lr_scheduler is not self.lr_scheduler:
            self._step_scheduler()
        plan = None if self._runner is None else self._runner.step()
        return self._follower.follow(plan)

    def epoch_end(self, metrics: Mapping[str, Any] | None = None) -> Plan | None:
        """After each epoch, with its metrics, on every rank: the executed plan, or None.

        Under several ranks, rank 0's metrics are used on every rank, so all
        ranks change phase together.
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shared = [dict(metrics or {})]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        plan = None if self._runner is None else self._runner.epoch_end(metrics)
        return self._follower.follow(plan)

    # Transitions -------------------------------------------------------------------------------

    def update(self, target: Target, *, reset_optimizer_if_needed: bool = False) -> Plan:
        """``curriculum.update(target, ...)``, followed by the engine.

        ``reset_optimizer_if_needed`` is needed exactly where one process
        needs it: a change the curriculum plans as NoChange or Patch (a
        freeze, a fast-path unfreeze) re-initializes the ZeRO optimizer
        without it, since nothing a rebuild keeps is lost. The plan returned
        is the curriculum's, or a :class:`~mentor_fn.Rebuild` when the ZeRO
        optimizer was re-initialized.

        Raises:
            RuntimeError / ValueError / TypeError: as ``Curriculum.update``;
                nothing has changed.
        """
        plan = self._curriculum.update(target, reset_optimizer_if_needed=reset_optimizer_if_needed)
        followed = self._follower.follow(plan)
        assert followed is not None
        return followed

    def freeze(self, patterns: Any, *, reset_optimizer_if_needed: bool = False) -> Plan:
        """``update(mf.freeze(patterns))``."""
        return self.update(freeze(patterns), reset_optimizer_if_needed=reset_optimizer_if_needed)

    def unfreeze(self, patterns: Any, *, reset_optimizer_if_needed: bool = False) -> Plan:
        """``update(mf.unfreeze(patterns))``."""
        return self.update(unfreeze(patterns), reset_optimizer_if_needed=reset_optimizer_if_needed)

    def set_lr_coefficient(
        self, coefficient: float, patterns: Any, *, reset_optimizer_if_needed: bool = False
    ) -> Plan:
        """``update(mf.set_lr_coefficient(coefficient, patterns))``."""
        return self.update(
            set_lr_coefficient(coefficient, patterns),
            reset_optimizer_if_needed=reset_optimizer_if_needed,
        )

    def set_lr(self, lr: float) -> None:
        """``curriculum.set_lr(lr)``, patched into the engine's groups."""
        self._curriculum.set_lr(lr)
        self._follower.follow(None)

    def sync(self) -> Plan | None:
        """Make the engine follow changes made on the curriculum directly (its methods, ``build()``).

        Returns the plan executed on the engine (None when it was in step).
        """
        return self._follower.follow(None)

    # Checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the curriculum, the schedule's cursor and the ZeRO group layout.

        The ZeRO optimizer's own state is in DeepSpeed's checkpoint.
        """
        self._follower.follow(None)
        return {
            "curriculum": self._curriculum.state_dict(),
            "schedule": None if self._runner is None else self._runner.state_dict(),
            "zero_groups": [
                {"source": source, "parameters": list(names)} for source, names in self.zero_groups
            ],
        }

    def save_checkpoint(
        self,
        save_dir: str | os.PathLike[str],
        tag: str | None = None,
        *,
        client_state: Mapping[str, Any] | None = None,
        save_latest: bool = True,
    ) -> str:
        """Save the run: DeepSpeed's checkpoint, with ``mentor_fn_curriculum.pt`` beside it.

        Call it on every rank (DeepSpeed's saving is collective). The file
        (:data:`CHECKPOINT_FILE`) is written atomically, before DeepSpeed's
        own, by the ranks that write DeepSpeed's model states; DeepSpeed
        writes ``latest`` last, so a save cut short leaves ``latest`` on the
        previous, whole checkpoint. ``client_state`` goes to DeepSpeed.

        Returns:
            The tag (by default ``global_step<N>``, as DeepSpeed names it).
        """
        engine = self.engine
        tag = f"global_step{engine.global_steps}" if tag is None else str(tag)
        client_state = dict(client_state or {})
        # The engine's checkpoint engine writes the run file (see attach).
        self._saving_keys = sorted(client_state)
        try:
            engine.save_checkpoint(
                str(save_dir), tag, client_state=client_state, save_latest=save_latest
            )
        finally:
            self._saving_keys = []
        return tag

    def load_checkpoint(
        self, load_dir: str | os.PathLike[str], tag: str | None = None
    ) -> dict[str, Any]:
        """Resume a run saved by :meth:`save_checkpoint` (default: the ``latest`` tag).

        The curriculum and the schedule's cursor are restored, the ZeRO
        optimizer is rebuilt in the saved layout, then DeepSpeed loads the
        model, its optimizer state and its step counts. The run then
        continues as the saved one would have.

        Returns:
            The ``client_state`` that was saved.

        Raises:
            CheckpointError: no such checkpoint, a missing or malformed
                ``mentor_fn_curriculum.pt``, or contents that do not fit this
                curriculum or schedule.
        """
        engine = self.engine
        tag, saved = read_run_file(load_dir, tag)
        where = f"{str(os.path.join(load_dir, tag))!r}"
        if (saved.get("schedule") is None) != (self._runner is None):
            raise CheckpointError(
                f"{where} was saved with a schedule and this run has none"
                if self._runner is None
                else f"{where} was saved without a schedule and this run has one"
            )
        try:
            self._curriculum.load_state_dict(saved["curriculum"])
            if self._runner is not None:
                self._runner.load_state_dict(saved["schedule"])
            layout = self._saved_layout(saved.get("zero_groups"))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{where} does not fit this run: {error}") from None
        self._started = True
        self._follower.reinitialize(layout, carry=False)
        load_path, client_state = engine.load_checkpoint(
            str(load_dir), tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint {tag!r} in {str(load_dir)!r}")
        self.checkpoint_loaded()
        # DeepSpeed returns the rest of its file too (its config, shapes...): keep what was given.
        given = saved.get("client_state_keys", ())
        return {key: value for key, value in (client_state or {}).items() if key in given}

    def use_zero_groups(self, saved: object) -> None:
        """Put the ZeRO optimizer in a saved layout (``state_dict()["zero_groups"]``).

        For a framework that restores the curriculum itself (its state dict)
        before the engine loads DeepSpeed's checkpoint: the ZeRO optimizer
        must then have the saved groups, or DeepSpeed cannot load their state.
        Before :meth:`attach`, :meth:`client_optimizer` builds this layout;
        after, the engine's ZeRO optimizer is rebuilt in it, without carrying
        state (the checkpoint's replaces it).

        Raises:
            ValueError: not a saved layout, or one that does not place the
                curriculum's trainable parameters as it groups them now.
        """
        self.start()
        layout = self._saved_layout(saved)
        if self._follower.engine is None:
            self._pending_layout = layout
        else:
            self._follower.reinitialize(layout, carry=False)

    def checkpoint_loaded(self) -> None:
        """Call after the attached engine loaded a checkpoint (``engine.load_checkpoint``).

        The run takes the engine's step count and the ZeRO optimizer's
        loaded state as its own (:meth:`load_checkpoint` does this itself).
        """
        engine = self.engine
        link_state(engine.optimizer)
        self._steps_seen = engine.global_steps
        self._follower.sync()

    def _saved_layout(self, saved: object) -> tuple[ZeroGroup, ...]:
        optimizer = self._curriculum.optimizer
        assert optimizer is not None
        return saved_layout(
            saved,
            self._curriculum.model,
            optimizer.param_groups,
            zero_layout(optimizer.param_groups, None),
        )

    # The engine's side ------------------------------------------------------------------------------

    def _run_file_contents(self) -> dict[str, Any]:
        """What the engine writes as the run file beside each checkpoint it saves."""
        return {**self.state_dict(), "client_state_keys": list(self._saving_keys)}

    def _step_scheduler(self, *args: Any, **kwargs: Any) -> None:
        """Step the curriculum's scheduler (after an optimizer step the engine applied)."""
        scheduler = self._curriculum.scheduler
        if scheduler is not None:
            # The curriculum's optimizer is never stepped itself: say it was
            # (torch's flag), or its scheduler warns of steps in the wrong order.
            scheduler.optimizer._opt_called = True
            scheduler.step(*args, **kwargs)
        self._follower.follow(None)

    def _lrs(self) -> list[float]:
        return [group["lr"] for group in self.engine.optimizer.param_groups]

    def _check_in_step(self, module: Any, inputs: Any) -> None:
        """Forward pre-hook: refuse to train while the engine lags the curriculum."""
        if not self._follower.in_step():
            raise RuntimeError(
                "the curriculum changed since the DeepSpeed engine last followed it (a transition "
                "or build() made on the Curriculum directly): make transitions through the "
                "DeepSpeedCurriculum (run.update, run.freeze, ...), or call run.sync() first"
            )


def initialize(
    curriculum: Curriculum,
    *,
    config: Mapping[str, Any] | str | os.PathLike[str],
    schedule: Schedule | None = None,
    **deepspeed_kwargs: Any,
) -> DeepSpeedCurriculum:
    """``deepspeed.initialize`` for a curriculum: the engine, with the run that drives it.

    Checks ``config`` first (:func:`check_config`), then calls
    ``deepspeed.initialize(model=curriculum.model, optimizer=...,
    lr_scheduler=..., config=config, **deepspeed_kwargs)`` and attaches the
    engine. ``deepspeed_kwargs`` are its other arguments (``training_data``,
    ``dist_init_required``, ``mpu``, ...).

    Raises:
        TypeError: an argument that the run sets itself.
        ValueError: a refused configuration (nothing started).
    """
    taken = {"model", "optimizer", "lr_scheduler", "model_parameters", "config", "config_params"}
    clash = sorted(taken & set(deepspeed_kwargs))
    if clash:
        raise TypeError(
            f"initialize() sets {', '.join(clash)} itself (from the curriculum); leave them out"
        )
    settings = read_config(config)
    check_config(settings)
    run = DeepSpeedCurriculum(curriculum, schedule=schedule)
    engine, *_ = deepspeed.initialize(
        model=curriculum.model,
        optimizer=run.client_optimizer(),
        lr_scheduler=run.lr_scheduler,
        config=settings,
        **deepspeed_kwargs,
    )
    run.attach(engine)
    return run


def optimizer_state_bytes(engine: DeepSpeedEngine) -> int:
    """Bytes of the ZeRO optimizer's fp32 master partitions and optimizer state on this rank.

    What ZeRO partitions as optimizer state (for Adam: master weights and two
    moments, 12 bytes per trainable parameter before partitioning), for any
    ZeRO engine, a curriculum's or not; gradients, communication buckets and
    the model's own weights are not counted. Frozen layers of a curriculum
    add nothing; kept in the optimizer at lr 0 they add their full share.
    """
    return optimizer_bytes(engine.optimizer)
