"""Mentee: torch_mentor's object API (an nn.Module) on the functional core.

A subclass writes ``__init__`` and ``forward`` (and sets ``self.trainer``);
freezing, coefficients, the optimizer, ``fit``, checkpoints and resume come
from here. Constructor arguments are recorded automatically, so a checkpoint
can rebuild the model with no bookkeeping by the user.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import optree
import torch
from torch import nn
from torch.optim import lr_scheduler as torch_schedulers
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import _layers
from ._checkpoint import (
    CheckpointError,
    check_checkpoint_layers,
    check_checkpoint_weights,
    load_checkpoint,
    save_checkpoint,
)
from ._curriculum import Curriculum
from ._layers import Patterns
from ._qualified_names import class_in_namespace, qualified_name
from ._state import CurriculumState
from ._trainers import Trainer

__all__ = ["Mentee"]

_REGISTRY: dict[str, type[Mentee]] = {}
_PLACEHOLDER_LR = 1e-3  # lr of the unbuilt curriculum; create_train_objects sets the real one


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: Mentee, *args: Any, **kwargs: Any) -> None:
        # The outermost subclass constructor runs first: it records. The depth
        # of nested recorded constructors tells Mentee.__init__ whose explicit
        # arguments it receives (see there).
        if "_mentee_constructor" not in self.__dict__:
            object.__setattr__(self, "_mentee_constructor", (list(args), dict(kwargs)))
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
        """Subclasses may pass their constructor arguments explicitly
        (``super().__init__(num_classes=num_classes)``); they are recorded
        automatically otherwise."""
        super().__init__()
        # Explicit arguments describe the signature of the class that passes
        # them. Only when that is type(self)'s own constructor (one recorded
        # constructor deep, or none) may they replace the recorded ones: a
        # subclass of a class that passes its arguments explicitly has another
        # signature, and its recorded arguments are the ones that rebuild it.
        if (args or kwargs) and self.__dict__.get("_mentee_init_depth", 0) <= 1:
            object.__setattr__(self, "_mentee_constructor", (list(args), dict(kwargs)))
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
        lr: float = 1e-3,
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
            recipe: dict[str, Any] | None = {
                "name": qualified_name(torch_schedulers.StepLR),
                "kwargs": {"step_size": step_size, "gamma": gamma},
            }
        elif isinstance(scheduler, type) and issubclass(scheduler, torch_schedulers.LRScheduler):
            recipe = {"name": qualified_name(scheduler), "kwargs": dict(scheduler_kwargs or {})}
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

    def training_step(self, batch: Any) -> dict[str, Any] | torch.Tensor:
        """Loss (and metrics) of one training batch; the trainer's by default."""
        return self._require_trainer().training_step(self.forward_module, batch)

    def validation_step(self, batch: Any) -> dict[str, Any] | torch.Tensor:
        """Metrics of one validation batch; the trainer's by default."""
        return self._require_trainer().validation_step(self.forward_module, batch)

    # fit --------------------------------------------------------------------------

    def fit(
        self,
        train_data: Iterable[Any],
        val_data: Iterable[Any] | None = None,
        epochs: int = 1,
        checkpoint_path: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 32,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` more epochs (the number this call runs).

        ``train_data``/``val_data``: a DataLoader, a Dataset (batched with
        ``batch_size``, shuffled for training) or any re-iterable of batches.
        Batches move to the model's device. Each epoch: train, validate, step
        the scheduler (ReduceLROnPlateau gets the validation loss, or the
        training loss without validation data), record the history, track
        the best epoch by the trainer's principal metric, and save a
        checkpoint when ``checkpoint_path`` is given.

        Returns:
            The history records of the epochs this call ran.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int):
            raise TypeError(f"epochs must be an int, got {epochs!r}")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        curriculum = self._curriculum()
        if curriculum.optimizer is None:
            raise RuntimeError("call create_train_objects(...) before fit(...)")
        train_batches = _batches(train_data, shuffle=True, batch_size=batch_size, epochs=epochs)
        val_batches = (
            None
            if val_data is None
            else _batches(val_data, shuffle=False, batch_size=batch_size, epochs=epochs)
        )
        trainer = self.trainer or Trainer()
        records = []
        for _ in range(epochs):
            started = time.perf_counter()
            learning_rates = self._effective_lrs()
            train_metrics = trainer.finalize(self._run_epoch(train_batches, progress, train=True))
            val_metrics = (
                {}
                if val_batches is None
                else trainer.finalize(self._run_epoch(val_batches, progress, train=False))
            )
            scheduler = curriculum.scheduler
            if isinstance(scheduler, torch_schedulers.ReduceLROnPlateau):
                scheduler.step((val_metrics or train_metrics)["loss"])
            elif scheduler is not None:
                scheduler.step()
            self.epoch += 1
            record = {
                "epoch": self.epoch,
                "train": train_metrics,
                "val": val_metrics,
                "lr": learning_rates,
                "frozen": sorted(self._frozen_owner_layers()),
                "time": time.perf_counter() - started,
            }
            self.history.append(record)
            records.append(record)
            self._track_best(trainer, val_metrics or train_metrics)
            if checkpoint_path is not None and _is_main_process():
                self.save(checkpoint_path)
        return records

    def _run_epoch(
        self, batches: Iterable[Any], progress: bool, *, train: bool
    ) -> dict[str, float]:
        optimizer = self.optimizer
        assert optimizer is not None
        device = _device_of(self)
        was_training = self.training
        self.train(train)
        totals: dict[str, float] = {}
        count = 0
        description = f"epoch {self.epoch + 1} {'train' if train else 'val'}"
        bar = tqdm(batches, desc=description, disable=not progress, leave=False, dynamic_ncols=True)
        try:
            for batch in bar:
                batch = _to_device(batch, device)
                if train:
                    output = _as_metrics(self.training_step(batch))
                    optimizer.zero_grad(set_to_none=True)
                    output["loss"].backward()
                    optimizer.step()
                else:
                    with torch.no_grad():
                        output = _as_metrics(self.validation_step(batch))
                size = _batch_size(batch)
                count += size
                values = {key: _scalar(value) for key, value in output.items()}
                for key, value in values.items():
                    totals[key] = totals.get(key, 0.0) + value * size
                if progress:
                    bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
        finally:
            bar.close()
            self.train(was_training)
        if count == 0:
            raise ValueError("fit: the data yielded no batches")
        return {key: total / count for key, total in totals.items()}

    def _effective_lrs(self) -> dict[str, float]:
        """Per trainable layer that owns parameters: the lr of its optimizer group."""
        optimizer = self.optimizer
        if optimizer is None:
            return {}
        frozen = set(self._frozen_owner_layers())
        return {
            layer: float(group["lr"])
            for group in optimizer.param_groups
            for layer in group.get("layers", ())
            if layer not in frozen
        }

    def _frozen_owner_layers(self) -> list[str]:
        state = self.curriculum_state
        return [
            layer
            for layer, is_frozen in zip(state.layers, state.resolved_frozen())
            if is_frozen and layer in state.parameter_owners
        ]

    def _track_best(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        name = trainer.principal_metric if trainer.principal_metric in metrics else "loss"
        mode = trainer.mode if name == trainer.principal_metric else "min"
        value = metrics[name]
        best = self.best
        improved = best is None or (
            value > best["value"] if mode == "max" else value < best["value"]
        )
        if improved:
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

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint: weights, curriculum, optimizer, scheduler, history, best weights.

        Raises:
            ValueError: the model is sharded (FSDP2 DTensor weights): use
                :func:`mentor_fn.save_distributed_checkpoint` on every rank.
        """
        if any(_is_sharded(parameter) for parameter in self.parameters()):
            raise ValueError(
                "this model is sharded (FSDP2): one file cannot hold it; call "
                "mentor_fn.save_distributed_checkpoint(directory, model.curriculum) on every rank"
            )
        args, kwargs = self.__dict__.get("_mentee_constructor", ([], {}))
        constructor: dict[str, Any] | None = {"args": list(args), "kwargs": dict(kwargs)}
        if not _is_plain(constructor):
            constructor = None  # resume() then explains that the model must be built by hand
        save_checkpoint(
            path,
            {
                "model_class": qualified_name(_user_class(type(self))),
                "constructor": constructor,
                "model": self.state_dict(),
                "curriculum": self._curriculum().state_dict(),
                "scheduler_recipe": self.__dict__.get("_mentee_scheduler_recipe"),
                "epoch": self.epoch,
                "history": self.history,
                "best": self.best,
                "best_weights": self.__dict__.get("_mentee_best_weights"),
                "rng_state": torch.get_rng_state(),
                # Dropout on a GPU and Python-level augmentation draw from these.
                "cuda_rng_states": torch.cuda.get_rng_state_all()
                if torch.cuda.is_available()
                else [],
                "python_rng_state": random.getstate(),
                "numpy_rng_state": _numpy_rng_state(),
            },
        )

    @classmethod
    def resume(cls, path: str | os.PathLike[str]) -> Mentee:
        """Rebuild the model from a checkpoint: weights, curriculum state, history.

        No optimizer is built (use :meth:`resume_training` to continue training).

        Raises:
            CheckpointError: the file is unusable or does not fit the model class.
        """
        return cls._model_from(load_checkpoint(path), path)

    @classmethod
    def _model_from(cls, contents: Mapping[str, Any], path: str | os.PathLike[str]) -> Mentee:
        try:
            return cls._from_contents(contents, path)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {str(path)!r} is malformed: {error}") from None

    @classmethod
    def _from_contents(cls, contents: Mapping[str, Any], path: str | os.PathLike[str]) -> Mentee:
        model_class: type[Mentee] = cls
        if cls is Mentee:
            found = _REGISTRY.get(contents["model_class"])
            if found is None:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} holds a {contents['model_class']}, which is not "
                    "defined in this process: import it, or call YourClass.resume(path)"
                )
            model_class = found
        constructor = contents["constructor"]
        if constructor is None:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: the constructor arguments of "
                f"{contents['model_class']} were not plain data and could not be saved"
            )
        model = model_class(*constructor["args"], **constructor["kwargs"])
        check_checkpoint_layers(contents, _layers.layer_names(model), path)
        check_checkpoint_weights(contents["model"], model.state_dict(), path)
        model.load_state_dict(contents["model"])
        state = CurriculumState.from_dict(contents["curriculum"]["state"])
        object.__setattr__(
            model, "_mentee_curriculum", Curriculum(model, _PLACEHOLDER_LR, state=state)
        )
        model.epoch = int(contents["epoch"])
        model.history = list(contents["history"])
        model.best = contents["best"]
        object.__setattr__(model, "_mentee_best_weights", contents["best_weights"])
        return model

    @classmethod
    def resume_training(
        cls,
        path: str | os.PathLike[str],
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

        Returns:
            ``(model, optimizer, lr_scheduler)``
        """
        contents = load_checkpoint(path)  # read once: the model comes from the same contents
        model = cls._model_from(contents, path)
        if device is not None:
            model.to(device)
        saved = contents["curriculum"]
        if saved["optimizer"] is None:
            return model, None, None
        try:
            recipe = saved["recipe"]
            optimizer_class = optimizer or _torch_class(torch.optim, recipe["optimizer"], path)
            scheduler_recipe = contents["scheduler_recipe"]
            factory = scheduler
            if factory is None and scheduler_recipe is not None:
                factory = _scheduler_factory(scheduler_recipe, path)
            if factory is None and saved["scheduler"] is not None:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} was trained with a custom scheduler factory: "
                    "pass it again as resume_training(path, scheduler=...)"
                )
            curriculum = Curriculum(
                model,
                recipe["lr"],
                optimizer=optimizer_class,
                optimizer_kwargs=recipe["optimizer_kwargs"],
                scheduler=factory,
                coalesce=recipe["coalesce"],
            )
            curriculum.load_state_dict(saved)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be resumed: {error}") from None
        object.__setattr__(model, "_mentee_curriculum", curriculum)
        object.__setattr__(model, "_mentee_scheduler_recipe", scheduler_recipe)
        torch.set_rng_state(contents["rng_state"])
        cuda_states = contents.get("cuda_rng_states") or []
        if (
            cuda_states
            and torch.cuda.is_available()
            and len(cuda_states) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(cuda_states)
        if contents.get("python_rng_state") is not None:
            random.setstate(contents["python_rng_state"])
        _set_numpy_rng_state(contents.get("numpy_rng_state"))
        return model, curriculum.optimizer, curriculum.scheduler


def _numpy_rng_state() -> dict[str, Any] | None:
    """numpy's global RNG state as plain data, if numpy is in use (imported)."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None  # nothing can have drawn from it
    algorithm, keys, position, has_gauss, cached_gaussian = numpy.random.get_state()
    return {
        "algorithm": str(algorithm),
        # Its (624,) uint32 array, as a tensor: weights-only loading takes no numpy.
        "keys": torch.from_numpy(keys.astype(numpy.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _set_numpy_rng_state(saved: Mapping[str, Any] | None) -> None:
    if saved is None:
        return
    try:
        import numpy
    except ImportError:
        return  # this program cannot draw from it either
    numpy.random.set_state(
        (
            saved["algorithm"],
            saved["keys"].numpy().astype(numpy.uint32),
            saved["position"],
            saved["has_gauss"],
            saved["cached_gaussian"],
        )
    )


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


def _torch_class(namespace: Any, name: str, path: Any) -> Any:
    """A class of torch's own namespace by qualified name: never imports anything."""
    found = class_in_namespace(namespace, name)
    if found is None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} names {name!r}, which is not in {namespace.__name__}: "
            "pass the class or factory to resume_training"
        )
    return found


def _scheduler_factory(recipe: Mapping[str, Any], path: Any = None) -> Callable[[Any], Any]:
    scheduler_class = _torch_class(torch_schedulers, recipe["name"], path)
    kwargs = dict(recipe["kwargs"])
    return lambda optimizer: scheduler_class(optimizer, **kwargs)


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def _device_of(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _to_device(batch: Any, device: torch.device) -> Any:
    return optree.tree_map(
        lambda leaf: leaf.to(device, non_blocking=True) if isinstance(leaf, torch.Tensor) else leaf,
        batch,
        none_is_leaf=True,
    )


def _batch_size(batch: Any) -> int:
    for leaf in optree.tree_leaves(batch):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    return 1


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().item())
    return float(value)


def _as_metrics(output: Any) -> dict[str, Any]:
    if isinstance(output, torch.Tensor):
        return {"loss": output}
    if isinstance(output, Mapping) and "loss" in output:
        return dict(output)
    raise TypeError(
        f"training_step/validation_step must return a loss tensor or a dict with 'loss', "
        f"got {type(output).__name__}"
    )


def _batches(data: Any, *, shuffle: bool, batch_size: int, epochs: int) -> Iterable[Any]:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle)
    if not isinstance(data, Iterable):
        raise TypeError(f"expected a DataLoader, a Dataset or an iterable of batches, got {data!r}")
    if iter(data) is data and epochs > 1:
        raise TypeError(
            "an iterator is exhausted after one epoch: pass a list, a Dataset or a DataLoader"
        )
    return data
