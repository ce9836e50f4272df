"""Curriculum learning on a DeepSpeed ZeRO engine (stages 1, 2 and 3), in your own training loop.

``pip install 'mentor_fn[deepspeed]'``. In your code::

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
  ``torch.load(weights_only=True)``.
* Configurations that cannot work are refused before training:
  :func:`check_config`.

A framework that calls ``deepspeed.initialize`` itself does it in three
steps: ``run = DeepSpeedCurriculum(curriculum, schedule=...)``, then
``deepspeed.initialize(model=..., optimizer=run.client_optimizer(),
lr_scheduler=run.lr_scheduler, config=...)``, then ``run.attach(engine)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import ReduceLROnPlateau

from .. import (
    CheckpointError,
    Curriculum,
    CurriculumState,
    Plan,
    Rebuild,
    Schedule,
    ScheduleRunner,
    load_checkpoint,
    save_checkpoint,
)
from .._wrapper.optimizers import build_optimizer
from ._requirements import require

require("deepspeed", extra="deepspeed", minimum="0.19", adapter="mentor_fn.integrations.deepspeed")

import deepspeed  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: E402
from deepspeed.runtime.engine import DeepSpeedEngine  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: E402
from deepspeed.runtime.pipe.engine import PipelineEngine  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: E402

from ._deepspeed_config import check_config, read_config  # noqa: E402
from ._deepspeed_zero import (  # noqa: E402
    ZeroGroup,
    check_engine_internals,
    link_state,
    optimizer_bytes,
    reinitialize,
    same_groups,
    zero_layout,
)

__all__ = ["DeepSpeedCurriculum", "check_config", "initialize", "optimizer_state_bytes"]

CHECKPOINT_FILE = "mentor_fn_curriculum.pt"
"""The file beside DeepSpeed's own in each checkpoint tag's folder."""

_FORMAT_NAME, _FORMAT_VERSION = "mentor_fn.integrations.deepspeed", 1
_SCHEDULER_FORMAT = "mentor_fn.integrations.deepspeed.scheduler"
_REINITIALIZED = (
    "engine.optimizer: DeepSpeed's ZeRO optimizer flattens and partitions its groups when it "
    "is built, so a new one replaced it in the same engine (state carried)"
)
Target = CurriculumState | Any  # a state or a transition, as Curriculum.update takes


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

    Example:
        >>> run = initialize(mf.Curriculum(model, 1e-3), config=config)  # doctest: +SKIP
        >>> run.engine.backward(loss); run.engine.step(); run.step()      # doctest: +SKIP
    """

    def __init__(self, curriculum: Curriculum, *, schedule: Schedule | None = None) -> None:
        if not isinstance(curriculum, Curriculum):
            raise TypeError(f"curriculum must be a mentor_fn.Curriculum, got {curriculum!r}")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a mentor_fn.Schedule or None, got {schedule!r}")
        self._curriculum = curriculum
        self._runner = None if schedule is None else ScheduleRunner(curriculum, schedule)
        self._engine: DeepSpeedEngine | None = None
        self._started = False
        # The ZeRO groups, and the curriculum objects they were derived from:
        # another optimizer object is a fresh phase, another state or recipe
        # a change the engine has not followed yet.
        self._layout: tuple[ZeroGroup, ...] = ()
        self._followed: tuple[object, object, object] = (None, None, None)
        self._client: torch.optim.Optimizer | None = None
        self._steps_seen = 0
        self._guard: Any = None
        self.lr_scheduler = EngineScheduler(self)
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
        if self._engine is None:
            raise RuntimeError("no DeepSpeed engine is attached yet: call attach(engine) first")
        return self._engine

    @property
    def zero_groups(self) -> tuple[tuple[int, tuple[str, ...]], ...]:
        """The ZeRO optimizer's groups: (curriculum group index, parameter names) each."""
        names = self._names()
        return tuple(
            (group.source, tuple(names[id(parameter)] for parameter in group.parameters))
            for group in self._layout
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
        if isinstance(self._curriculum.scheduler, ReduceLROnPlateau):
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
        optimizer = self._curriculum.optimizer
        assert optimizer is not None
        layout = zero_layout(optimizer.param_groups, None)
        if not layout:
            raise ValueError(
                "no parameter is trainable in the curriculum's state: a ZeRO optimizer needs at "
                "least one (unfreeze a layer before starting)"
            )
        self._layout = layout
        self._followed = self._current()
        self._client = build_optimizer(self._curriculum.recipe, self._groups(layout))
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
        self._engine = engine
        self._steps_seen = engine.global_steps
        self._client = None
        if ours:
            self._follow(None)  # transitions made between client_optimizer() and now
        else:
            self.start()
            optimizer = self._curriculum.optimizer
            assert optimizer is not None
            self._reinitialize(zero_layout(optimizer.param_groups, None), carry=False)
        if self._guard is None:
            self._guard = self._curriculum.model.register_forward_pre_hook(self._check_followed)

    # Training ------------------------------------------------------------------------------------

    def step(self) -> Plan | None:
        """After each ``engine.step()``: advance the schedule; the executed plan, or None.

        Does nothing between gradient accumulation boundaries, or when the
        engine skipped the step (fp16 overflow; it skips the scheduler too).
        Steps the curriculum's scheduler itself when the engine has none.

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
        if engine.lr_scheduler is not self.lr_scheduler:
            self._step_scheduler()
        plan = None if self._runner is None else self._runner.step()
        return self._follow(plan)

    def epoch_end(self, metrics: Mapping[str, Any] | None = None) -> Plan | None:
        """After each epoch, with its metrics: the executed plan, or None.

        Under several ranks, rank 0's metrics are used on every rank, so all
        ranks change phase together.
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shared = [dict(metrics or {})]
            dist.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        plan = None if self._runner is None else self._runner.epoch_end(metrics)
        return self._follow(plan)

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
        followed = self._follow(plan)
        assert followed is not None
        return followed

    def freeze(self, patterns: Any, *, reset_optimizer_if_needed: bool = False) -> Plan:
        """``update(mf.freeze(patterns))``."""
        from .. import freeze

        return self.update(freeze(patterns), reset_optimizer_if_needed=reset_optimizer_if_needed)

    def unfreeze(self, patterns: Any, *, reset_optimizer_if_needed: bool = False) -> Plan:
        """``update(mf.unfreeze(patterns))``."""
        from .. import unfreeze

        return self.update(unfreeze(patterns), reset_optimizer_if_needed=reset_optimizer_if_needed)

    def set_lr_coefficient(
        self, coefficient: float, patterns: Any, *, reset_optimizer_if_needed: bool = False
    ) -> Plan:
        """``update(mf.set_lr_coefficient(coefficient, patterns))``."""
        from .. import set_lr_coefficient

        return self.update(
            set_lr_coefficient(coefficient, patterns),
            reset_optimizer_if_needed=reset_optimizer_if_needed,
        )

    def set_lr(self, lr: float) -> None:
        """``curriculum.set_lr(lr)``, patched into the engine's groups."""
        self._curriculum.set_lr(lr)
        self._follow(None)

    def sync(self) -> Plan | None:
        """Make the engine follow changes made on the curriculum directly (its methods, ``build()``).

        Returns the plan executed on the engine (None when it was in step).
        """
        return self._follow(None)

    # Checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the curriculum, the schedule's cursor and the ZeRO group layout.

        The ZeRO optimizer's own state is in DeepSpeed's checkpoint.
        """
        self._follow(None)
        return {
            "format": _FORMAT_NAME,
            "version": _FORMAT_VERSION,
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
        """Save the run: DeepSpeed's checkpoint, with :data:`CHECKPOINT_FILE` beside it.

        Call it on every rank (DeepSpeed's saving is collective). The file is
        written atomically, before DeepSpeed's own, by the ranks that write
        DeepSpeed's model states; DeepSpeed writes ``latest`` last, so a save
        cut short leaves ``latest`` on the previous, whole checkpoint.

        Returns:
            The tag (by default ``global_step<N>``, as DeepSpeed names it).
        """
        engine = self.engine
        tag = f"global_step{engine.global_steps}" if tag is None else str(tag)
        client_state = dict(client_state or {})
        contents = {**self.state_dict(), "client_state_keys": sorted(client_state)}
        if getattr(engine, "save_non_zero_checkpoint", True):
            save_checkpoint(Path(save_dir) / tag / CHECKPOINT_FILE, {"deepspeed_run": contents})
        if dist.is_initialized():
            dist.barrier()
        engine.save_checkpoint(
            str(save_dir), tag, client_state=client_state, save_latest=save_latest
        )
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
                :data:`CHECKPOINT_FILE`, or contents that do not fit this
                curriculum or schedule.
        """
        engine = self.engine
        folder = Path(load_dir)
        if tag is None:
            latest = folder / "latest"
            if not latest.is_file():
                raise CheckpointError(f"no 'latest' file in {str(folder)!r}: pass the tag to load")
            tag = latest.read_text().strip()
        saved = load_checkpoint(folder / tag / CHECKPOINT_FILE).get("deepspeed_run")
        if not isinstance(saved, Mapping) or saved.get("format") != _FORMAT_NAME:
            raise CheckpointError(
                f"{str(folder / tag / CHECKPOINT_FILE)!r} holds no mentor_fn DeepSpeed run"
            )
        if saved.get("version") != _FORMAT_VERSION:
            raise CheckpointError(
                f"{str(folder / tag / CHECKPOINT_FILE)!r} has version {saved.get('version')!r}; "
                f"this mentor_fn reads version {_FORMAT_VERSION}"
            )
        if (saved.get("schedule") is None) != (self._runner is None):
            raise CheckpointError(
                "the checkpoint was saved with a schedule and this run has none"
                if self._runner is None
                else "the checkpoint was saved without a schedule and this run has one"
            )
        try:
            self._curriculum.load_state_dict(saved["curriculum"])
            if self._runner is not None:
                self._runner.load_state_dict(saved["schedule"])
            layout = self._saved_layout(saved.get("zero_groups"))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{str(folder / tag)!r} does not fit this run: {error}") from None
        self._started = True
        self._reinitialize(layout, carry=False)
        load_path, client_state = engine.load_checkpoint(
            str(folder), tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise CheckpointError(f"DeepSpeed found no checkpoint {tag!r} in {str(folder)!r}")
        link_state(engine.optimizer)
        self._steps_seen = engine.global_steps
        self._sync()
        # DeepSpeed returns the rest of its file too (its config, shapes...): keep what was given.
        given = saved.get("client_state_keys", ())
        return {key: value for key, value in (client_state or {}).items() if key in given}

    # Following the curriculum ---------------------------------------------------------------------

    def _current(self) -> tuple[object, object, object]:
        curriculum = self._curriculum
        return (curriculum.optimizer, curriculum.state, curriculum.recipe)

    def _in_step(self) -> bool:
        """Whether the engine follows the curriculum's optimizer, state and recipe as they are
        (compared by identity: each is replaced, never changed, by a transition)."""
        return all(a is b for a, b in zip(self._current(), self._followed, strict=True))

    def _follow(self, plan: Plan | None) -> Plan | None:
        """Make the engine's optimizer follow the curriculum; the plan executed on both."""
        if self._engine is None:
            return plan
        if self._in_step():
            self._sync()
            return plan
        optimizer = self._curriculum.optimizer
        assert optimizer is not None
        fresh = optimizer is not self._followed[0]
        layout = zero_layout(optimizer.param_groups, None if fresh else self._layout)
        if not fresh and same_groups(layout, self._layout):
            self._followed = self._current()
            self._sync()
            return plan
        if not layout:
            raise RuntimeError(
                "no parameter is trainable any more: a ZeRO optimizer needs at least one, so the "
                "engine cannot follow this state (the curriculum has changed; unfreeze a layer)"
            )
        self._reinitialize(layout, carry=not fresh)
        reasons = plan.reasons if isinstance(plan, Rebuild) else ()
        objects = plan.new_objects if isinstance(plan, Rebuild) else ()
        return Rebuild(
            (
                *reasons,
                "the set of trainable parameters changed, which DeepSpeed's ZeRO "
                "optimizer cannot follow in place",
            ),
            (*objects, _REINITIALIZED),
        )

    def _reinitialize(self, layout: tuple[ZeroGroup, ...], *, carry: bool) -> None:
        optimizer = self._curriculum.optimizer
        assert optimizer is not None and self._engine is not None
        recipe = self._curriculum.recipe
        reinitialize(
            self._engine,
            layout,
            [_hyperparameters(optimizer.param_groups[group.source]) for group in layout],
            make_optimizer=lambda groups: build_optimizer(recipe, groups),
            carry=carry,
        )
        self._layout = layout
        self._followed = self._current()
        self._sync()

    def _groups(self, layout: tuple[ZeroGroup, ...]) -> list[dict[str, Any]]:
        optimizer = self._curriculum.optimizer
        assert optimizer is not None
        return [
            {
                **_hyperparameters(optimizer.param_groups[group.source]),
                "params": list(group.parameters),
            }
            for group in layout
        ]

    def _step_scheduler(self, *args: Any, **kwargs: Any) -> None:
        """Step the curriculum's scheduler (after an optimizer step the engine applied)."""
        scheduler = self._curriculum.scheduler
        if scheduler is not None:
            # The curriculum's optimizer is never stepped itself: say it was
            # (torch's flag), or its scheduler warns of steps in the wrong order.
            scheduler.optimizer._opt_called = True
            scheduler.step(*args, **kwargs)
        self._follow(None)

    def _sync(self) -> None:
        """Copy each curriculum group's lr into its ZeRO groups."""
        optimizer = self._curriculum.optimizer
        assert optimizer is not None and self._engine is not None
        sources = optimizer.param_groups
        for group, target in zip(self._layout, self._engine.optimizer.param_groups, strict=True):
            target["lr"] = sources[group.source]["lr"]

    def _check_followed(self, module: Any, inputs: Any) -> None:
        """Forward pre-hook: refuse to train while the engine lags the curriculum."""
        if not self._in_step():
            raise RuntimeError(
                "the curriculum changed since the DeepSpeed engine last followed it (a transition "
                "or build() made on the Curriculum directly): make transitions through the "
                "DeepSpeedCurriculum (run.update, run.freeze, ...), or call run.sync() first"
            )

    def _names(self) -> dict[int, str]:
        return {
            id(parameter): name for name, parameter in self._curriculum.model.named_parameters()
        }

    def _saved_layout(self, saved: object) -> tuple[ZeroGroup, ...]:
        """The ZeRO groups a checkpoint names, checked against the curriculum as loaded."""
        optimizer = self._curriculum.optimizer
        assert optimizer is not None
        if not isinstance(saved, list):
            raise ValueError(f"'zero_groups' is {saved!r}, not a list")
        parameters = dict(self._curriculum.model.named_parameters())
        layout = []
        for entry in saved:
            source, names = entry["source"], entry["parameters"]
            unknown = [name for name in names if name not in parameters]
            if unknown:
                raise ValueError(f"the ZeRO groups name unknown parameters {unknown[:8]}")
            layout.append(ZeroGroup(source, tuple(parameters[name] for name in names), None))
        expected = zero_layout(optimizer.param_groups, None)
        placed = {(group.source, id(p)) for group in layout for p in group.parameters}
        wanted = {(group.source, id(p)) for group in expected for p in group.parameters}
        if placed != wanted:
            raise ValueError(
                "the saved ZeRO groups do not hold the curriculum's trainable parameters"
            )
        return tuple(layout)


def _hyperparameters(group: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in group.items() if key != "params"}


class EngineScheduler:
    """The curriculum's scheduler as the DeepSpeed engine sees it (``run.lr_scheduler``).

    The engine steps it after each optimizer step it applies; that steps the
    curriculum's scheduler and copies the new lrs into the ZeRO groups. Its
    state travels in the run's checkpoint file, so :meth:`state_dict` is a
    marker that :meth:`load_state_dict` checks.
    """

    def __init__(self, run: DeepSpeedCurriculum) -> None:
        self._run = run

    def step(self, *args: Any, **kwargs: Any) -> None:
        self._run._step_scheduler(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self._run.engine.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": _SCHEDULER_FORMAT,
            "note": "the scheduler's state is in mentor_fn_curriculum.pt, with the curriculum",
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Check the marker (the run's own load restored the scheduler).

        Raises:
            ValueError: another scheduler's state (a checkpoint saved without mentor_fn).
        """
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != _SCHEDULER_FORMAT:
            raise ValueError(
                "the checkpoint's lr_scheduler state is not a mentor_fn DeepSpeed run's "
                f"(saved without mentor_fn?): {state_dict!r}"
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
