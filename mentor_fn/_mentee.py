"""Mentee: torch_mentor's object API (an nn.Module) on the functional core.

A subclass writes ``__init__`` and ``forward`` (and sets ``self.trainer``);
freezing, coefficients, the optimizer, ``fit``, checkpoints and resume come
from here. Constructor arguments are recorded automatically, so a checkpoint
can rebuild the model with no bookkeeping by the user. The training loop is
``mentor_fn._fit``'s, the checkpoint layout ``mentor_fn._mentee_checkpoint``'s.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, BinaryIO

import torch
from torch import nn
from torch.optim import lr_scheduler as torch_schedulers

from . import _layers
from ._checkpoint import CheckpointError, is_plain_data
from ._curriculum import Curriculum
from ._fit import FitHooks, batches, run_epochs
from ._groups import validate_lr
from ._layers import Patterns
from ._mentee_checkpoint import (
    ConstructorArguments,
    MenteeCheckpoint,
    SchedulerRecipe,
    read_mentee_checkpoint,
    write_mentee_checkpoint,
)
from ._qualified_names import class_in_namespace, qualified_name
from ._random_states import RandomStates
from ._state import CurriculumState
from ._trainers import Trainer

__all__ = ["Mentee"]

_REGISTRY: dict[str, type[Mentee]] = {}
_PLACEHOLDER_LR = 1e-3  # lr of the unbuilt curriculum; create_train_objects sets the real one
_DEFAULT_LR = 1e-3  # create_train_objects' default, also fit's when it creates them


def _received_arguments(
    signature: inspect.Signature | None,
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> ConstructorArguments:
    """What a constructor received: the arguments passed, and the defaults of the others.

    Defaults are recorded too (as keywords), so a model resumed after a
    default changed in the code is still built as it was saved; a default
    that is not plain data is left to the code, as it cannot be saved.
    """
    received = dict(kwargs)
    if signature is not None:
        try:
            bound = signature.bind(instance, *args, **kwargs)
        except TypeError:
            return ConstructorArguments(args, received)  # the call itself fails: it says why
        for name, parameter in signature.parameters.items():
            if (
                name not in bound.arguments
                and parameter.default is not parameter.empty
                and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
                and is_plain_data(parameter.default)
            ):
                received[name] = parameter.default
    return ConstructorArguments(args, received)


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    try:
        signature: inspect.Signature | None = inspect.signature(init)
    except (TypeError, ValueError):
        signature = None

    @functools.wraps(init)
    def __init__(self: Mentee, *args: Any, **kwargs: Any) -> None:
        # The outermost constructor runs first, that of type(self) (or the one
        # it inherits): its arguments are the ones that rebuild the model. The
        # depth of nested recorded constructors tells Mentee.__init__ whose
        # explicit arguments it receives (see there).
        if "_mentee_constructor" not in self.__dict__:
            object.__setattr__(
                self, "_mentee_constructor", _received_arguments(signature, self, args, kwargs)
            )
        depth = self.__dict__.get("_mentee_init_depth", 0)
        object.__setattr__(self, "_mentee_init_depth", depth + 1)
        try:
            init(self, *args, **kwargs)
        finally:
            if depth:
                object.__setattr__(self, "_mentee_init_depth", depth)
            else:
                self.__dict__.pop("_mentee_init_depth", None)

    return __init__


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


class Mentee(nn.Module):
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

    # Set in a subclass's __init__ (self.trainer = Classifier()) or as a class attribute.
    trainer: Trainer | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[qualified_name(cls)] = cls
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _recording(init)  # type: ignore[method-assign]

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
        # Explicit arguments describe the signature of the class that passes
        # them: a fallback only when that is type(self)'s own constructor (one
        # recorded constructor deep, or none). A subclass of a class that
        # passes its arguments explicitly has another signature.
        if (args or kwargs) and self.__dict__.get("_mentee_init_depth", 0) <= 1:
            object.__setattr__(
                self, "_mentee_explicit_constructor", ConstructorArguments(args, dict(kwargs))
            )
        object.__setattr__(self, "_mentee_curriculum", None)
        object.__setattr__(self, "_mentee_scheduler_recipe", None)
        object.__setattr__(self, "_mentee_best_weights", None)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None

    # The curriculum behind the object API ----------------------------------------

    def _curriculum(self) -> Curriculum:
        curriculum: Curriculum | None = self.__dict__.get("_mentee_curriculum")
        if curriculum is None:
            curriculum = Curriculum(self, _PLACEHOLDER_LR)
            object.__setattr__(self, "_mentee_curriculum", curriculum)
        elif curriculum.optimizer is None:
            layers = _layers.layer_names(self)
            if layers != curriculum.state.layers:
                # Modules were added or removed before any optimizer existed:
                # keep the rules of the layers that are still there.
                old = curriculum.state
                state = CurriculumState(
                    layers,
                    frozen={k: v for k, v in old.frozen.items() if k in layers},
                    coefficients={k: v for k, v in old.coefficients.items() if k in layers},
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
        from ._ddp import wrap_ddp

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
    def layer_names(self) -> list[str]:
        """Layer names in traversal order (see :func:`mentor_fn.layer_names`)."""
        return list(_layers.layer_names(self))

    def select_layers(self, patterns: Patterns) -> list[str]:
        """Layers matching ``patterns`` (re.fullmatch), in layer order."""
        return list(_layers.select_layers(_layers.layer_names(self), patterns))

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
        lr: float = _DEFAULT_LR,
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
    ) -> dict[str, Any]:
        """Build a fresh optimizer and scheduler from the curriculum state: a new phase.

        Adam and ``StepLR(step_size, gamma)`` by default. ``scheduler`` may be
        a ``torch.optim.lr_scheduler`` class (with ``scheduler_kwargs``; it is
        recorded in checkpoints) or any factory ``optimizer -> scheduler``
        (pass it again to :meth:`resume_training`).

        Returns:
            ``{"optimizer": ..., "lr_scheduler": ...}``
        """
        if scheduler is None:
            recipe: SchedulerRecipe | None = SchedulerRecipe(
                qualified_name(torch_schedulers.StepLR), {"step_size": step_size, "gamma": gamma}
            )
        elif isinstance(scheduler, type) and issubclass(scheduler, torch_schedulers.LRScheduler):
            recipe = SchedulerRecipe(qualified_name(scheduler), dict(scheduler_kwargs or {}))
        elif callable(scheduler):
            if scheduler_kwargs:
                raise ValueError("scheduler_kwargs go with a scheduler class, not a factory")
            recipe = None
        else:
            raise TypeError(
                f"scheduler must be an LRScheduler class or a factory, got {scheduler!r}"
            )
        factory = _scheduler_factory(recipe) if recipe is not None else scheduler
        curriculum = Curriculum(
            self,
            lr,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            scheduler=factory,
            coalesce=coalesce,
            state=self.curriculum_state,
        )
        curriculum.build()
        object.__setattr__(self, "_mentee_curriculum", curriculum)
        object.__setattr__(self, "_mentee_scheduler_recipe", recipe)
        return {"optimizer": curriculum.optimizer, "lr_scheduler": curriculum.scheduler}

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
        self,
        train_data: Iterable[Any],
        val_data: Iterable[Any] | None = None,
        epochs: int = 1,
        checkpoint_path: str | os.PathLike[str] | None = None,
        *,
        lr: float | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> Mentee:
        """Train for ``epochs`` more epochs (the number this call runs); returns self.

        ``train_data``/``val_data``: a DataLoader, a Dataset (batched with
        ``batch_size``, shuffled for training) or any re-iterable of batches.
        Batches move to the model's device. Each epoch: train, validate, step
        the scheduler (ReduceLROnPlateau gets the validation loss, or the
        training loss without validation data), append a record to
        :attr:`history`, track the best epoch by the trainer's principal
        metric, and save a checkpoint when ``checkpoint_path`` is given.

        Without training objects, ``fit`` creates them as
        ``create_train_objects(lr)`` does (``lr`` defaults to 1e-3). With
        training objects, ``lr`` may only repeat their global lr: a new lr is
        a new phase, ``create_train_objects(lr=...)``.

        Raises:
            TypeError: ``epochs`` is not an int, or the data cannot be iterated as asked.
            ValueError: ``epochs < 0``, an invalid ``lr``, or an ``lr`` other
                than the live optimizer's global lr (nothing changes).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int):
            raise TypeError(f"epochs must be an int, got {epochs!r}")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        curriculum = self._curriculum()
        if lr is not None:
            lr = validate_lr(lr)
            if curriculum.optimizer is not None and lr != curriculum.lr:
                raise ValueError(
                    f"fit(lr={lr:g}): the optimizer was built with global lr {curriculum.lr:g}; "
                    "fit's lr only sets up missing training objects. Start a new phase at "
                    "another lr with create_train_objects(lr=...)"
                )
        train_batches = batches(train_data, shuffle=True, batch_size=batch_size, epochs=epochs)
        val_batches = (
            None
            if val_data is None
            else batches(val_data, shuffle=False, batch_size=batch_size, epochs=epochs)
        )
        if curriculum.optimizer is None:
            self.create_train_objects(lr=_DEFAULT_LR if lr is None else lr)
        trainer = self.trainer or Trainer()

        def at_epoch_end(record: dict[str, Any]) -> None:
            self._track_best(trainer, record["val"] or record["train"])
            if checkpoint_path is not None and _is_main_process():
                self.save(checkpoint_path)

        run_epochs(
            self,
            train_batches,
            val_batches,
            epochs,
            trainer=trainer,
            progress=progress,
            hooks=FitHooks(at_epoch_end=at_epoch_end),
        )
        return self

    def _track_best(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        name, mode = trainer.best_metric(metrics)
        value = metrics[name]
        best = self.best
        # A best epoch by another metric (another trainer) cannot be compared.
        previous = best["value"] if best is not None and best.get("metric") == name else None
        if trainer.is_better(value, previous, mode=mode):
            self.best = {"epoch": self.epoch, "metric": name, "mode": mode, "value": value}
            weights = {key: tensor.detach().clone() for key, tensor in self.state_dict().items()}
            object.__setattr__(self, "_mentee_best_weights", weights)

    def load_best_weights(self) -> Mentee:
        """Load the weights of the best epoch seen by :meth:`fit` (returns self)."""
        weights = self.__dict__.get("_mentee_best_weights")
        if weights is None:
            raise RuntimeError("no best epoch yet: fit() records one per epoch")
        self.load_state_dict(weights)
        return self

    # Checkpoints --------------------------------------------------------------------

    def save(
        self,
        path_or_file: str | os.PathLike[str] | BinaryIO,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
    ) -> None:
        """Write a checkpoint: weights, curriculum, optimizer, scheduler, history,
        best weights, random number generators.

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
            TypeError: ``path_or_file`` is neither a path nor a binary file.
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
        checkpoint = MenteeCheckpoint(
            model_class=qualified_name(_user_class(type(self))),
            constructor=self._constructor_arguments(),
            weights=self.state_dict(),
            curriculum=self._curriculum().state_dict(),
            scheduler_recipe=self.__dict__.get("_mentee_scheduler_recipe"),
            epoch=self.epoch,
            history=self.history,
            best=self.best,
            best_weights=self.__dict__.get("_mentee_best_weights"),
            random_states=RandomStates.capture(),
        )
        write_mentee_checkpoint(path_or_file, checkpoint)

    def _constructor_arguments(self) -> ConstructorArguments | None:
        """The arguments that rebuild this model, or None when none can be saved."""
        recorded = self.__dict__.get("_mentee_constructor")
        explicit = self.__dict__.get("_mentee_explicit_constructor")
        if recorded is None and explicit is None:
            return ConstructorArguments((), {})
        for candidate in (recorded, explicit):
            if candidate is not None and is_plain_data((candidate.args, dict(candidate.kwargs))):
                return candidate
        return None  # resume() then explains that the model must be built by hand

    @classmethod
    def resume(
        cls, path: str | os.PathLike[str], model_class: type[Mentee] | None = None
    ) -> Mentee:
        """Rebuild the model from a checkpoint: weights, curriculum state, history.

        No optimizer is built (use :meth:`resume_training` to continue training).

        Args:
            path: the checkpoint file.
            model_class: the class to build (a subclass of the class this is
                called on); by default the class this is called on, or for
                ``Mentee.resume`` the saved class (it must be defined in this
                process: nothing is imported).

        Raises:
            TypeError: ``model_class`` is not a subclass of this class.
            CheckpointError: the file is unusable or does not fit the model class.
        """
        target = cls._model_class_argument(model_class)
        checkpoint = read_mentee_checkpoint(path)
        model = _model_from(checkpoint, target)
        try:
            curriculum = Curriculum(model, checkpoint.global_lr, state=checkpoint.state)
        except ValueError as error:
            raise CheckpointError(f"checkpoint {checkpoint.path!r}: {error}") from None
        object.__setattr__(model, "_mentee_curriculum", curriculum)
        return model

    @classmethod
    def resume_training(
        cls,
        path: str | os.PathLike[str],
        model_class: type[Mentee] | None = None,
        device: str | torch.device | None = None,
        *,
        optimizer: type[torch.optim.Optimizer] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    ) -> tuple[Mentee, torch.optim.Optimizer | None, Any]:
        """Rebuild model, optimizer and scheduler from a checkpoint and continue.

        The optimizer comes back in exactly the saved layout (inert groups of
        layers frozen after the build included) with its per-parameter state,
        the scheduler with its progress, and the random number generators as
        saved (torch's CPU and CUDA ones, Python's ``random``, and numpy's
        global one when the saving program had imported numpy), so the
        continued run is bit-for-bit the uninterrupted one. An optimizer
        class outside ``torch.optim`` or a scheduler factory that was not a
        ``torch.optim.lr_scheduler`` class must be passed again.

        Args:
            path: the checkpoint file.
            model_class: as for :meth:`resume`.
            device: where to move the model before the optimizer state is loaded.
            optimizer: the optimizer class, when it is not one of ``torch.optim``'s.
            scheduler: the scheduler factory, when it was not a scheduler class.

        Returns:
            ``(model, optimizer, lr_scheduler)`` (both None when the file was
            saved before ``create_train_objects``).

        Raises:
            TypeError: ``model_class`` is not a subclass of this class.
            CheckpointError: the file is unusable, does not fit the model
                class, or needs the optimizer class or scheduler factory passed.
        """
        target = cls._model_class_argument(model_class)
        checkpoint = read_mentee_checkpoint(path)
        model = _model_from(checkpoint, target)
        if device is not None:
            model.to(device)
        where = checkpoint.path
        scheduler_recipe = checkpoint.scheduler_recipe
        try:
            if not checkpoint.has_optimizer:
                curriculum = Curriculum(model, checkpoint.global_lr, state=checkpoint.state)
            else:
                factory = scheduler
                if factory is None and scheduler_recipe is not None:
                    factory = _scheduler_factory(scheduler_recipe, where)
                if factory is None and checkpoint.has_scheduler_state:
                    raise CheckpointError(
                        f"checkpoint {where!r} was trained with a custom scheduler factory: "
                        "pass it again as resume_training(path, scheduler=...)"
                    )
                curriculum = Curriculum(
                    model,
                    checkpoint.global_lr,
                    optimizer=optimizer
                    or _torch_class(torch.optim, checkpoint.optimizer_name, where),
                    optimizer_kwargs=checkpoint.optimizer_kwargs,
                    scheduler=factory,
                    coalesce=checkpoint.coalesce,
                )
                curriculum.load_state_dict(checkpoint.curriculum)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {where!r} cannot be resumed: {error}") from None
        object.__setattr__(model, "_mentee_curriculum", curriculum)
        object.__setattr__(model, "_mentee_scheduler_recipe", scheduler_recipe)
        checkpoint.random_states.restore()
        return model, curriculum.optimizer, curriculum.scheduler

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


def _model_from(checkpoint: MenteeCheckpoint, model_class: type[Mentee] | None) -> Mentee:
    """The model a checkpoint describes, its weights loaded; no curriculum attached.

    The class is built on the ``meta`` device first and compared with the
    saved weights, so arguments that would allocate absurd memory are refused
    before any real allocation. A constructor that cannot run on ``meta``
    (data-dependent code, ``.item()``) is built for real and then compared.
    """
    where = checkpoint.path
    if model_class is None:
        found = _REGISTRY.get(checkpoint.model_class)
        if found is None:
            raise CheckpointError(
                f"checkpoint {where!r} holds a {checkpoint.model_class}, which is not "
                "defined in this process: import it, or call YourClass.resume(path)"
            )
        model_class = found
    constructor = checkpoint.constructor
    if constructor is None:
        raise CheckpointError(
            f"checkpoint {where!r}: the constructor arguments of {checkpoint.model_class} "
            "were not plain data and could not be saved: build the model yourself and "
            "load the weights (mentor_fn.load_checkpoint)"
        )
    try:
        with torch.device("meta"):
            probe: Mentee | None = model_class(*constructor.args, **constructor.kwargs)
    except Exception:
        probe = None  # checked after the real build instead
    if probe is not None:
        checkpoint.check_fits(_layers.layer_names(probe), probe.state_dict())
        del probe
    try:
        model = model_class(*constructor.args, **constructor.kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as error:
        shown = ", ".join(
            [*map(repr, constructor.args), *(f"{k}={v!r}" for k, v in constructor.kwargs.items())]
        )
        raise CheckpointError(
            f"checkpoint {where!r}: {model_class.__name__}({shown}) failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    checkpoint.check_fits(_layers.layer_names(model), model.state_dict())
    try:
        model.load_state_dict(checkpoint.weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {where!r}: the weights do not load: {error}") from None
    model.epoch = checkpoint.epoch
    model.history = list(checkpoint.history)
    model.best = None if checkpoint.best is None else dict(checkpoint.best)
    object.__setattr__(model, "_mentee_best_weights", checkpoint.best_weights)
    return model


def _is_main_process() -> bool:
    """Rank 0 of an initialized process group, or a single process."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank() == 0
    return True


def _is_sharded(parameter: torch.Tensor) -> bool:
    # No DTensor can exist unless torch.distributed.tensor was imported.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(parameter, module.DTensor)


def _user_class(model_class: type[Mentee]) -> type[Mentee]:
    """The user's class, not the one ``fully_shard`` derives from it in place."""
    for candidate in model_class.__mro__:
        if issubclass(candidate, Mentee) and not candidate.__module__.startswith("torch."):
            return candidate
    return model_class


def _torch_class(namespace: Any, name: str, path: str) -> Any:
    """A class of torch's own namespace by qualified name: never imports anything."""
    found = class_in_namespace(namespace, name)
    if found is None:
        raise CheckpointError(
            f"checkpoint {path!r} names {name!r}, which is not in {namespace.__name__}: "
            "pass the class or factory to resume_training"
        )
    return found


def _scheduler_factory(recipe: SchedulerRecipe, path: str = "") -> Callable[[Any], Any]:
    scheduler_class = _torch_class(torch_schedulers, recipe.name, path)
    kwargs = dict(recipe.kwargs)
    return lambda optimizer: scheduler_class(optimizer, **kwargs)
