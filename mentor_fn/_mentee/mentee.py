"""Mentee: torch_mentor's object API (an nn.Module) on the functional core.

A subclass writes ``__init__`` and ``forward`` (and sets ``self.trainer``);
freezing, coefficients, the optimizer, ``fit``, checkpoints and resume come
from here: this module holds the model's curriculum and training objects and
saves and resumes it. The other parts live in their own modules: ``fit`` and
the run's record in its base class (``_mentee_fit``; the loop itself is
``_fit``'s), a schedule driving fit (``_mentee_schedule``), constructor
recording (``_mentee_construction``), the training objects' scheduler
(``_train_objects``), the checkpoint layout (``_mentee_checkpoint``) and
rebuilding from it (``_mentee_resume``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO, cast

import torch
from torch import nn
from torch.optim import lr_scheduler as torch_schedulers

from .._core.model_walk import layer_names
from .._core.selection import Patterns, select_layers
from .._core.state import CurriculumState
from .._core.torch_compat import is_dtensor
from .._core.validation import validate_lr
from .._core.weight_decay import NoWeightDecayRule
from .._files.mentee_file import read_mentee_checkpoint, write_mentee_checkpoint
from .._files.mentee_values import MenteeCheckpoint, SchedulerRecipe
from .._files.random_states import RandomStates
from .._schedules.runner import ScheduleRunner
from .._schedules.schedule import Schedule
from .._wrapper.curriculum import Curriculum
from .._wrapper.qualified_names import qualified_name
from .construction import constructor_arguments, record_explicit_arguments, register_model_class
from .fit_schedule import check_resume_schedule, resumed_runner
from .fitting import DEFAULT_LR, MenteeFitting
from .resume import model_from, resumed_curriculum
from .train_objects import scheduler_factory, scheduler_recipe

__all__ = ["Mentee"]

_PLACEHOLDER_LR = 1e-3  # lr of the unbuilt curriculum; create_train_objects sets the real one


class _Device:
    """``model.device``: where the model's parameters (else buffers) are; the CPU
    for a model with neither."""

    def __get__(self, instance: nn.Module | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        for parameter in instance.parameters():
            return parameter.device
        for buffer in instance.buffers():
            return buffer.device
        return torch.device("cpu")


class Mentee(MenteeFitting):
    """An ``nn.Module`` with curriculum controls, ``fit``, checkpoints and resume.

    Example:
        >>> from torch import nn
        >>> from mentor_fn import Mentee, Classifier
        >>> class Net(Mentee):
        ...     def __init__(self, hidden=8):
        ...         super().__init__()
        ...         self.body = nn.Linear(4, hidden)
        ...         self.head = nn.Linear(hidden, 3)
        ...         self.trainer = Classifier()
        ...     def forward(self, x):
        ...         return self.head(self.body(x).relu())
        >>> model = Net(hidden=16).freeze("body")
        >>> model.layer_names, sorted(model._frozen_modules)
        (['body', 'head'], ['body'])
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_model_class(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Constructor arguments are recorded automatically: those the
        most-derived class's ``__init__`` received, defaults included.

        A subclass may also pass them explicitly, torch_mentor style
        (``super().__init__(num_classes=num_classes)``). The recorded ones
        always win; explicit ones are the fallback used when the recorded ones
        cannot be saved (not plain data, e.g. a module passed in) or were not
        captured (an ``__init__`` replaced after the class was made).
        """
        super().__init__()
        record_explicit_arguments(self, args, kwargs)
        # Set past nn.Module.__setattr__, which would register a Module value as a child.
        object.__setattr__(self, "_mentee_curriculum", None)
        object.__setattr__(self, "_mentee_scheduler_recipe", None)

    # The curriculum behind the object API ----------------------------------------

    def _curriculum(self) -> Curriculum:
        curriculum: Curriculum | None = self.__dict__.get("_mentee_curriculum")
        if curriculum is None:
            curriculum = Curriculum(self, _PLACEHOLDER_LR)
            object.__setattr__(self, "_mentee_curriculum", curriculum)
        elif curriculum.optimizer is None:
            layers = layer_names(self)
            if layers != curriculum.state.layers:
                # Modules were added or removed before any optimizer existed:
                # keep the rules of the layers that are still there.
                old = curriculum.state
                state = CurriculumState(
                    layers,
                    frozen={k: v for k, v in old.frozen.items() if k in layers},
                    coefficients={k: v for k, v in old.coefficients.items() if k in layers},
                    norm_policy=old.norm_policy,
                )
                curriculum = Curriculum(self, _PLACEHOLDER_LR, state=state)
                object.__setattr__(self, "_mentee_curriculum", curriculum)
        return curriculum

    @property
    def curriculum_state(self) -> CurriculumState:
        """The :class:`CurriculumState`: the source of truth of frozen flags and coefficients."""
        return self._curriculum().state

    @property
    def forward_module(self) -> nn.Module:
        """What training and validation steps call: the DDP wrapper after
        :meth:`wrap_ddp`, else the model itself. An overridden
        ``training_step`` should call ``self.forward_module(inputs)``."""
        wrapped = self.__dict__.get("_mentee_ddp")
        return self if wrapped is None else wrapped

    def wrap_ddp(self, **ddp_kwargs: Any) -> nn.Module:
        """Wrap this model in DistributedDataParallel, phase-safely (see
        :func:`mentor_fn.wrap_ddp`); :meth:`fit` then trains through it.

        Returns:
            The DDP wrapper (also :attr:`forward_module`).
        """
        from .._wrapper.ddp import wrap_ddp

        wrapped = wrap_ddp(self, **ddp_kwargs)
        object.__setattr__(self, "_mentee_ddp", wrapped)
        return wrapped

    @property
    def curriculum(self) -> Curriculum:
        """The :class:`Curriculum` wrapper that owns the optimizer and scheduler."""
        return self._curriculum()

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The live optimizer (None before :meth:`create_train_objects`)."""
        return self._curriculum().optimizer

    @property
    def lr_scheduler(self) -> Any:
        """The live lr scheduler (None before :meth:`create_train_objects`)."""
        return self._curriculum().scheduler

    # A non-data descriptor, not a property: a subclass written for a plain
    # nn.Module that sets ``self.device = ...`` keeps working (its own value wins).
    device = _Device()

    @property
    def current_epoch(self) -> int:
        """Epochs trained so far (torch_mentor's name for :attr:`epoch`)."""
        return self.epoch

    @property
    def layer_names(self) -> list[str]:
        """Layer names in traversal order (see :func:`mentor_fn.layer_names`)."""
        return list(layer_names(self))

    def select_layers(self, patterns: Patterns) -> list[str]:
        """Layers matching ``patterns`` (re.fullmatch), in layer order."""
        return list(select_layers(layer_names(self), patterns))

    @property
    def _frozen_modules(self) -> frozenset[str]:
        """Roots of the fully frozen subtrees (torch_mentor's representation)."""
        return frozenset(self.curriculum_state.frozen_roots())

    @property
    def _lr_coefficients(self) -> Mapping[str, float]:
        """The coefficient rules (read-only; an absent layer inherits, default 1.0)."""
        return self.curriculum_state.coefficients

    # Curriculum controls (return self for chaining) ------------------------------

    def _check_optimizer_argument(self, optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is not None and optimizer is not self.optimizer:
            raise ValueError(
                "optimizer= must be None or this model's own optimizer (from "
                "create_train_objects): mentor_fn derives and manages it"
            )

    def freeze(
        self,
        patterns: Patterns,
        optimizer: torch.optim.Optimizer | None = None,
        reset_optimizer_if_needed: bool = False,
    ) -> Mentee:
        """Freeze the matched layers' subtrees (requires_grad False, grads dropped)."""
        self._check_optimizer_argument(optimizer)
        self._curriculum().freeze(patterns, reset_optimizer_if_needed=reset_optimizer_if_needed)
        return self

    def unfreeze(
        self,
        patterns: Patterns,
        optimizer: torch.optim.Optimizer | None = None,
        reset_optimizer_if_needed: bool = False,
    ) -> Mentee:
        """Unfreeze the matched layers' subtrees.

        Raises:
            RuntimeError: a layer has no param group and ``reset_optimizer_if_needed``
                is False (nothing changes).
        """
        self._check_optimizer_argument(optimizer)
        self._curriculum().unfreeze(patterns, reset_optimizer_if_needed=reset_optimizer_if_needed)
        return self

    def set_lr_coefficient(
        self,
        coefficient: float,
        patterns: Patterns,
        optimizer: torch.optim.Optimizer | None = None,
        reset_optimizer_if_needed: bool = False,
    ) -> Mentee:
        """Set the lr coefficient of the matched layers' subtrees (in place when possible)."""
        self._check_optimizer_argument(optimizer)
        self._curriculum().set_lr_coefficient(
            coefficient, patterns, reset_optimizer_if_needed=reset_optimizer_if_needed
        )
        return self

    def create_train_objects(
        self,
        lr: float = DEFAULT_LR,
        step_size: int = 10,
        gamma: float = 0.1,
        *,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        scheduler: type[torch_schedulers.LRScheduler]
        | Callable[[torch.optim.Optimizer], Any]
        | None = None,
        scheduler_kwargs: Mapping[str, Any] | None = None,
        coalesce: bool = False,
        weight_decay: float | None = None,
        no_weight_decay: Iterable[NoWeightDecayRule] = (),
    ) -> dict[str, Any]:
        """Build a fresh optimizer and scheduler from the curriculum state: a new phase.

        Adam and ``StepLR(step_size, gamma)`` by default. ``scheduler`` may be
        a ``torch.optim.lr_scheduler`` class (with ``scheduler_kwargs``; it is
        recorded in checkpoints) or any factory ``optimizer -> scheduler``
        (pass it again to :meth:`resume_training`). A schedule run goes on
        with the new objects at the next :meth:`fit`. ``weight_decay`` and
        ``no_weight_decay`` are :class:`~mentor_fn.Curriculum`'s (weight decay
        by parameter kind); a callable rule must be passed again to
        :meth:`resume_training`.

        Returns:
            ``{"optimizer": ..., "lr_scheduler": ...}``
        """
        curriculum, recipe = self._unbuilt_train_objects(
            lr,
            step_size,
            gamma,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            scheduler=scheduler,
            scheduler_kwargs=scheduler_kwargs,
            coalesce=coalesce,
            weight_decay=weight_decay,
            no_weight_decay=no_weight_decay,
        )
        curriculum.build()
        self._use_train_objects(curriculum, recipe)
        return {"optimizer": curriculum.optimizer, "lr_scheduler": curriculum.scheduler}

    def _unbuilt_train_objects(
        self,
        lr: float = DEFAULT_LR,
        step_size: int = 10,
        gamma: float = 0.1,
        *,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        scheduler: Any = None,
        scheduler_kwargs: Mapping[str, Any] | None = None,
        coalesce: bool = False,
        weight_decay: float | None = None,
        no_weight_decay: Iterable[NoWeightDecayRule] = (),
    ) -> tuple[Curriculum, SchedulerRecipe | None]:
        """A Curriculum with this model's state, not built and not yet the model's."""
        recipe = scheduler_recipe(scheduler, scheduler_kwargs, step_size=step_size, gamma=gamma)
        factory = scheduler_factory(recipe) if recipe is not None else scheduler
        curriculum = Curriculum(
            self,
            lr,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            scheduler=factory,
            coalesce=coalesce,
            state=self.curriculum_state,
            weight_decay=weight_decay,
            no_weight_decay=no_weight_decay,
        )
        return curriculum, recipe

    def _use_train_objects(self, curriculum: Curriculum, recipe: SchedulerRecipe | None) -> None:
        object.__setattr__(self, "_mentee_curriculum", curriculum)
        object.__setattr__(self, "_mentee_scheduler_recipe", recipe)

    # Checkpoints --------------------------------------------------------------------

    def save(
        self,
        path_or_file: str | os.PathLike[str] | BinaryIO,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
    ) -> None:
        """Write a checkpoint: weights, curriculum, optimizer, scheduler, history,
        best weights, random number generators, and the schedule run (see
        :attr:`schedule_runner`).

        A path is written atomically (a crash leaves the previous file whole);
        a binary file object (``open(..., "wb")``, ``io.BytesIO``) gets the
        same contents, written directly, with no such promise.
        ``optimizer`` / ``lr_scheduler``: torch_mentor's arguments; the model's
        own are always saved, so they may only be those (or None).

        Raises:
            ValueError: another optimizer or scheduler than the model's own; a
                sharded model (FSDP2 DTensor weights: use
                :func:`mentor_fn.save_distributed_checkpoint` on every rank); or
                contents that would not resume (the field is named). Nothing is
                written.
            TypeError: ``path_or_file`` is neither a path nor a binary file, or
                the schedule is not serializable (a user's own callable).
            OSError: the file could not be written (e.g. the disk is full).
        """
        self._check_optimizer_argument(optimizer)
        if lr_scheduler is not None and lr_scheduler is not self.lr_scheduler:
            raise ValueError(
                "lr_scheduler= must be None or this model's own scheduler (from "
                "create_train_objects): mentor_fn derives and saves it"
            )
        if any(_is_sharded(parameter) for parameter in self.parameters()):
            raise ValueError(
                "this model is sharded (FSDP2): one file cannot hold it; call "
                "mentor_fn.save_distributed_checkpoint(directory, model.curriculum) on every rank"
            )
        runner = self.schedule_runner
        checkpoint = MenteeCheckpoint(
            model_class=qualified_name(_user_class(type(self))),
            constructor=constructor_arguments(self),
            weights=self.state_dict(),
            curriculum=self._curriculum().state_dict(),
            scheduler_recipe=self.__dict__.get("_mentee_scheduler_recipe"),
            epoch=self.epoch,
            history=self.history,
            best=self.best,
            best_weights=self._best_weights(),
            random_states=RandomStates.capture(),
            schedule=None if runner is None else runner.saved(),
        )
        write_mentee_checkpoint(path_or_file, checkpoint)

    @classmethod
    def resume(
        cls, path: str | os.PathLike[str] | BinaryIO, model_class: type[Mentee] | None = None
    ) -> Mentee:
        """Rebuild the model from a checkpoint: weights, curriculum state, history.

        No optimizer is built and no schedule run restored (use
        :meth:`resume_training` to continue training).

        Args:
            path: the checkpoint file: a path, or a binary file object
                (``open(..., "rb")``, ``io.BytesIO``) read from where it stands.
            model_class: the class to build (a subclass of the class this is
                called on); by default the class this is called on, or for
                ``Mentee.resume`` the saved class (it must be defined in this
                process: nothing is imported).

        Raises:
            TypeError: ``model_class`` is not a subclass of this class; ``path``
                is neither a path nor a binary file object.
            CheckpointError: the file is unusable or does not fit the model class.
        """
        target = cls._model_class_argument(model_class)
        checkpoint = read_mentee_checkpoint(path)
        model = cast(Mentee, model_from(checkpoint, target))
        curriculum = resumed_curriculum(model, checkpoint, with_optimizer=False)
        model._restore_run(checkpoint, curriculum, None)
        return model

    @classmethod
    def resume_training(
        cls,
        path: str | os.PathLike[str] | BinaryIO,
        model_class: type[Mentee] | None = None,
        device: str | torch.device | None = None,
        *,
        lr: float | None = None,
        optimizer: type[torch.optim.Optimizer] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        schedule: Schedule | None = None,
        allow_schedule_change: bool = False,
        no_weight_decay: Iterable[NoWeightDecayRule] | None = None,
    ) -> tuple[Mentee, torch.optim.Optimizer | None, Any]:
        """Rebuild model, optimizer and scheduler from a checkpoint and continue.

        The optimizer comes back in exactly the saved layout (inert groups of
        layers frozen after the build included) with its per-parameter state,
        the scheduler with its progress, the schedule run :meth:`fit` followed
        at its cursor, and the random number generators as saved (torch's CPU
        and CUDA ones, Python's ``random``, and numpy's global one when the
        saving program had imported numpy), so the continued run is
        bit-for-bit the uninterrupted one. An optimizer class outside
        ``torch.optim`` or a scheduler factory that was not a
        ``torch.optim.lr_scheduler`` class must be passed again.

        Args:
            path: the checkpoint file, or a binary file object (as for :meth:`resume`).
            model_class: as for :meth:`resume`.
            device: where to move the model before the optimizer state is loaded.
            lr: torch_mentor's keyword. For a file saved before
                ``create_train_objects``, the training objects are created at
                this global lr (``create_train_objects(lr)``); for a file with
                an optimizer, it may only repeat the global lr the optimizer
                was created with (the saved run goes on as it was; a new lr is
                a new phase: ``create_train_objects(lr=...)`` after resuming).
            optimizer: the optimizer class, when it is not one of ``torch.optim``'s.
            scheduler: the scheduler factory, when it was not a scheduler class.
            schedule: the schedule the file's run followed (checked against the
                saved one); by default the saved one.
            allow_schedule_change: continue the saved run with ``schedule``, a
                different schedule, from the saved cursor (which must fit it).
            no_weight_decay: the weight-decay rules, needed again only when the
                run used a callable rule (string rules are saved in the file).

        Returns:
            ``(model, optimizer, lr_scheduler)`` (both None when the file was
            saved before ``create_train_objects`` and no ``lr`` is given).

        Raises:
            TypeError: ``model_class`` is not a subclass of this class; ``path``
                is neither a path nor a binary file object.
            ValueError: an invalid ``lr``, or one other than the global lr of
                the file's optimizer (raised before anything is built).
            CheckpointError: the file is unusable, does not fit the model
                class, or needs the optimizer class or scheduler factory
                passed; ``schedule`` differs from the saved one without
                ``allow_schedule_change`` (refused before anything is built),
                or its phases do not fit the saved cursor and state.
        """
        target = cls._model_class_argument(model_class)
        if lr is not None:
            lr = validate_lr(lr)
        checkpoint = read_mentee_checkpoint(path)
        if lr is not None and checkpoint.has_optimizer and lr != checkpoint.global_lr:
            raise ValueError(
                f"resume_training(lr={lr:g}): the checkpoint's optimizer was created with "
                f"global lr {checkpoint.global_lr:g} and goes on as saved; to train on at "
                "another lr, resume first, then start a new phase with "
                "create_train_objects(lr=...)"
            )
        check_resume_schedule(checkpoint, schedule, allow_schedule_change)
        model = cast(Mentee, model_from(checkpoint, target))
        if device is not None:
            model.to(device)
        curriculum = resumed_curriculum(
            model,
            checkpoint,
            optimizer=optimizer,
            scheduler=scheduler,
            no_weight_decay=no_weight_decay,
        )
        model._restore_run(checkpoint, curriculum, resumed_runner(curriculum, checkpoint, schedule))
        checkpoint.random_states.restore()
        if lr is not None and not checkpoint.has_optimizer:
            model.create_train_objects(lr)
        return model, model.optimizer, model.lr_scheduler

    def _restore_run(
        self, checkpoint: MenteeCheckpoint, curriculum: Curriculum, runner: ScheduleRunner | None
    ) -> None:
        """Take the run from a checkpoint: training objects, epochs, history, best, schedule."""
        self._use_train_objects(curriculum, checkpoint.scheduler_recipe)
        self._restore_record(checkpoint, runner)

    @classmethod
    def _model_class_argument(cls, model_class: object) -> type[Mentee] | None:
        """``model_class``, checked; None when the file's own class is to be used."""
        if model_class is None:
            return None if cls is Mentee else cls
        if not (isinstance(model_class, type) and issubclass(model_class, cls)):
            hint = (
                " (the device is resume_training's third argument: device=...)"
                if isinstance(model_class, (str, torch.device))
                else ""
            )
            raise TypeError(
                f"model_class must be a subclass of {cls.__name__}, got {model_class!r}{hint}"
            )
        return model_class


def _is_sharded(parameter: torch.Tensor) -> bool:
    return is_dtensor(parameter)


def _user_class(model_class: type[Mentee]) -> type[Mentee]:
    """The user's class, not the one ``fully_shard`` derives from it in place."""
    for candidate in model_class.__mro__:
        if issubclass(candidate, Mentee) and not candidate.__module__.startswith("torch."):
            return candidate
    return model_class
