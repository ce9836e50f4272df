"""Curriculum: the thin stateful wrapper that executes plans.

It is the only place that mutates the model's ``requires_grad`` flags, the
optimizer and the scheduler. Every change is planned by the pure core first;
whatever can fail happens before anything is mutated, and the new state is
swapped in last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ._ddp import check_ddp_wrappers
from ._garbage_collector import collector_paused
from ._groups import (
    groups_of_walk,
    unit_groups_of_walk,
    validate_lr,
    walk_for_state,
)
from ._layers import (
    ModelLayers,
    Patterns,
    check_same_layers,
    lookups_hold,
    registration_lookups,
    walk_model,
)
from ._optimizer import (
    build_optimizer,
    fresh_state,
    load_optimizer_state,
    optimizer_on_one_group,
    optimizer_state_by_name,
)
from ._plan import NoChange, Patch, Plan, Rebuild, layout_of, plan
from ._qualified_names import qualified_name
from ._requires_grad import apply_requires_grad_of_walk
from ._schedulers import (
    GROUP_LR_KEYS,
    Scheduler,
    remap_scheduler_groups,
    retarget_scheduler,
    scale_group,
    scaled_copy,
)
from ._state import CurriculumState
from ._transitions import freeze, set_lr_coefficient, unfreeze

__all__ = ["Curriculum", "is_reference_group"]

_FORMAT_NAME = "mentor_fn.Curriculum"
_FORMAT_VERSION = 1
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
Target = CurriculumState | Callable[[CurriculumState], CurriculumState]


class Curriculum:
    """A model, its curriculum state, and the optimizer/scheduler derived from it.

    The optimizer is built by :meth:`build` from ``param_groups(state, model,
    lr)``: one group per trainable layer (or per coefficient with
    ``coalesce=True``), plus one last, parameter-less *reference group*
    (``layers == ()``, coefficient 1.0). The reference group follows the
    scheduler exactly like a single flat group with the global lr would, which
    is what every other group's lr is proportional to; rebuilds derive new
    groups from it, so they stay exact even when every coefficient is 0.

    Args:
        model: the model (bare, or wrapped in DDP / DataParallel / compile).
        lr: the global learning rate.
        optimizer: a ``torch.optim.Optimizer`` subclass (Adam by default).
        optimizer_kwargs: its other arguments (not ``lr``), plain data.
        scheduler: a factory ``optimizer -> LRScheduler`` (ReduceLROnPlateau
            included), called by :meth:`build`.
        coalesce: one group per distinct coefficient instead of per layer.
        state: the initial state (default: everything trainable at 1.0).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> curriculum = Curriculum(model, 0.1, optimizer=torch.optim.SGD)
        >>> curriculum.freeze("0")
        NoChange()
        >>> _ = curriculum.build()
        >>> curriculum.set_lr_coefficient(0.5, "1")
        Patch(scales=(GroupScale(group=0, old=1.0, new=0.5),), reactivated=())
        >>> [group["lr"] for group in curriculum.optimizer.param_groups]
        [0.05, 0.1]
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        scheduler: SchedulerFactory | None = None,
        coalesce: bool = False,
        state: CurriculumState | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer subclass, got {optimizer!r}"
            )
        kwargs = _checked_kwargs(optimizer_kwargs)
        if scheduler is not None and not callable(scheduler):
            raise TypeError(
                f"scheduler must be a factory optimizer -> LRScheduler, got {scheduler!r}"
            )
        if not isinstance(coalesce, bool):
            raise TypeError(f"coalesce must be a bool, got {coalesce!r}")
        check_ddp_wrappers(model)
        walked = walk_model(model)
        if state is None:
            initial = CurriculumState(walked.layers, parameter_owners=walked.parameter_owners)
        else:
            if not isinstance(state, CurriculumState):
                raise TypeError(f"state must be a CurriculumState, got {type(state).__name__}")
            check_same_layers(state.layers, walked.layers, "the model")
            initial = _with_owners(state, walked.parameter_owners)
        self._lr = validate_lr(lr)
        self._model = model
        self._optimizer_class = optimizer
        self._optimizer_kwargs = kwargs
        self._scheduler_factory = scheduler
        self._coalesce = coalesce
        self._state = initial
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: Any = None
        apply_requires_grad_of_walk(initial, walked)

    # Read-only views ------------------------------------------------------------

    @property
    def state(self) -> CurriculumState:
        return self._state

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The live optimizer, or None before :meth:`build`."""
        return self._optimizer

    @property
    def scheduler(self) -> Any:
        """The live scheduler, or None before :meth:`build` or without a factory."""
        return self._scheduler

    @property
    def lr(self) -> float:
        """The global learning rate the optimizer was (or will be) built with."""
        return self._lr

    @property
    def coalesce(self) -> bool:
        return self._coalesce

    # Building ---------------------------------------------------------------------

    @collector_paused
    def build(self) -> torch.optim.Optimizer:
        """Build a fresh optimizer (and scheduler) from the current state: a new phase.

        The groups are built at coefficient 1 and the scheduler constructed
        on them; then the coefficients are applied as a patch. So a scheduler
        that writes absolute values into every group (OneCycleLR with a scalar
        ``max_lr``, CyclicLR) cannot erase the coefficients.
        """
        # build_optimizer(groups) in one pass over the model: one walk for the
        # flags and the groups; torch's constructor once, on the trainable
        # parameters (unique: each is owned by one layer); then every group a
        # copy of its group, with the optimizer's defaults as add_param_group
        # would add them, without torch re-checking every earlier group for
        # each new one. The reference group is the template.
        walked = walk_for_state(self._state, self._model)
        trainable = apply_requires_grad_of_walk(self._state, walked)
        optimizer = optimizer_on_one_group(
            self._optimizer_class,
            trainable,
            group_count=2 if trainable else 1,  # with the reference group
            lr=self._lr,
            optimizer_kwargs=self._optimizer_kwargs,
        )
        reference = {**optimizer.param_groups[0], **_reference_group(self._lr)}
        groups, coefficients = unit_groups_of_walk(
            self._state, walked, coalesce=self._coalesce, template=reference
        )
        groups.append(reference)
        optimizer.param_groups = groups
        scheduler = self._make_scheduler(optimizer)
        for index, coefficient in enumerate(coefficients):
            if coefficient != 1.0:
                scale_group(optimizer, scheduler, index, coefficient)
                optimizer.param_groups[index]["coefficient"] = coefficient
        self._guard_against_stale_parameters(optimizer)
        self._optimizer, self._scheduler = optimizer, scheduler
        return optimizer

    def _make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        if self._scheduler_factory is None:
            return None
        scheduler = self._scheduler_factory(optimizer)
        if not isinstance(scheduler, Scheduler):
            raise TypeError(
                f"the scheduler factory must return a torch.optim.lr_scheduler.LRScheduler, "
                f"got {type(scheduler).__name__}"
            )
        if scheduler.optimizer is not optimizer:
            raise ValueError(
                "the scheduler factory must attach the scheduler to the optimizer it is given"
            )
        return scheduler

    def check_parameters(self) -> None:
        """Raise if the optimizer holds parameters that are no longer the model's.

        That happens when the model is sharded with ``fully_shard`` (or its
        parameters are replaced) after :meth:`build`: the optimizer would
        silently train tensors the model no longer uses.

        Raises:
            RuntimeError: naming a stale parameter and the fix.
        """
        if self._optimizer is None:
            return
        self._check_parameters_among({id(parameter) for parameter in self._model.parameters()})

    def _check_parameters_among(self, current: set[int]) -> None:
        """:meth:`check_parameters` once built, the model's parameters given as their ids."""
        assert self._optimizer is not None
        for group in self._optimizer.param_groups:
            for parameter in group["params"]:
                if id(parameter) not in current:
                    raise RuntimeError(
                        f"the optimizer holds a parameter (layers {group.get('layers')}) that is "
                        "no longer one of the model's: was the model sharded with fully_shard, or "
                        "its parameters replaced, after build()? Call build() again."
                    )

    def _guard_against_stale_parameters(self, optimizer: torch.optim.Optimizer) -> None:
        # A step pre-hook that checks one parameter: sharding or replacing
        # parameters after build() swaps all of them, so one suffices. The
        # check is the few registry lookups that lead to it (about 1 us); only
        # when one of them changed is the whole optimizer checked.
        for group in optimizer.param_groups:
            if group["params"] and group.get("layers"):
                sentinel, layer = group["params"][0], group["layers"][0]
                break
        else:
            return
        lookups = registration_lookups(self._model, layer, sentinel)

        def check_before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
            if lookups is None or not lookups_hold(lookups):
                self.check_parameters()

        optimizer.register_step_pre_hook(check_before_step)

    # Transitions --------------------------------------------------------------------

    @collector_paused
    def update(self, target: Target, *, reset_optimizer_if_needed: bool = False) -> Plan:
        """Move to a new state (or apply a transition) and bring the optimizer along.

        Returns the executed plan. Before :meth:`build`, only the state and the
        ``requires_grad`` flags change (the plan is NoChange).

        Raises:
            RuntimeError: the optimizer must be rebuilt and
                ``reset_optimizer_if_needed`` is False; nothing has changed.
            ValueError / TypeError: bad target; nothing has changed.
        """
        new = self._resolve(target)
        # One walk of the model serves the parameter check, the plan's
        # execution and the flags.
        walked = walk_for_state(new, self._model)
        if self._optimizer is None:
            apply_requires_grad_of_walk(new, walked)
            self._state = new
            return NoChange()
        self._check_parameters_among(
            {id(parameter) for parameters in walked.parameters for parameter in parameters}
        )
        decision = plan(layout_of(self._optimizer), self._state, new)
        if isinstance(decision, Rebuild):
            if not reset_optimizer_if_needed:
                raise RuntimeError(
                    "this change needs the optimizer to be rebuilt: "
                    + "; ".join(decision.reasons)
                    + ". Pass reset_optimizer_if_needed=True to rebuild it (optimizer state of "
                    "layers that stay trainable and the scheduler's progress are kept), or call "
                    "build() to start a fresh phase. Nothing was changed."
                )
            self._rebuild(new, walked)
        elif isinstance(decision, Patch):
            self._patch(decision, new, walked)
        apply_requires_grad_of_walk(new, walked)
        self._state = new
        return decision

    def freeze(self, patterns: Patterns, *, reset_optimizer_if_needed: bool = False) -> Plan:
        """``update(freeze(patterns))``."""
        return self.update(freeze(patterns), reset_optimizer_if_needed=reset_optimizer_if_needed)

    def unfreeze(self, patterns: Patterns, *, reset_optimizer_if_needed: bool = False) -> Plan:
        """``update(unfreeze(patterns))``."""
        return self.update(unfreeze(patterns), reset_optimizer_if_needed=reset_optimizer_if_needed)

    def set_lr_coefficient(
        self, coefficient: float, patterns: Patterns, *, reset_optimizer_if_needed: bool = False
    ) -> Plan:
        """``update(set_lr_coefficient(coefficient, patterns))``."""
        return self.update(
            set_lr_coefficient(coefficient, patterns),
            reset_optimizer_if_needed=reset_optimizer_if_needed,
        )

    def _resolve(self, target: Target) -> CurriculumState:
        if isinstance(target, CurriculumState):
            new = target
        elif callable(target):
            new = target(self._state)
            if not isinstance(new, CurriculumState):
                raise TypeError(
                    f"a transition must return a CurriculumState, {target!r} returned "
                    f"{type(new).__name__}"
                )
        else:
            raise TypeError(
                f"update takes a CurriculumState or a transition, got {type(target).__name__}"
            )
        check_same_layers(self._state.layers, new.layers, "the new state")
        return _with_owners(new, self._state.parameter_owners)

    def _patch(self, decision: Patch, new: CurriculumState, walked: ModelLayers) -> None:
        optimizer = self._optimizer
        assert optimizer is not None
        reactivated_parameters: list[torch.Tensor] = []
        if decision.reactivated:
            reactivated = set(decision.reactivated)
            reactivated_parameters = [
                parameter
                for layer, _, parameter in walked.named_parameters()
                if layer in reactivated
            ]
        fresh = fresh_state(
            self._optimizer_class,
            reactivated_parameters,
            lr=self._lr,
            optimizer_kwargs=self._optimizer_kwargs,
        )
        for scale in decision.scales:
            scale_group(optimizer, self._scheduler, scale.group, scale.ratio)
            optimizer.param_groups[scale.group]["coefficient"] = scale.new
        for parameter in reactivated_parameters:
            optimizer.state.pop(parameter, None)
            if parameter in fresh:
                optimizer.state[parameter] = fresh[parameter]

    def _rebuild(self, new: CurriculumState, walked: ModelLayers) -> None:
        """Rebuild the optimizer for ``new`` (``walked``: the model, walked for it)."""
        old_optimizer = self._optimizer
        assert old_optimizer is not None
        reference_index = _reference_index(old_optimizer)
        reference = old_optimizer.param_groups[reference_index]
        groups = groups_of_walk(new, walked, self._lr, coalesce=self._coalesce)
        template = {key: value for key, value in reference.items() if key != "params"}
        lr_keys = [key for key in GROUP_LR_KEYS if reference.get(key) is not None]
        derived = []
        for group in groups:
            coefficient = group["coefficient"]
            entry = {**template, **group}
            for key in lr_keys:
                entry[key] = scaled_copy(reference[key], coefficient)
            derived.append(entry)
        derived.append({**template, "params": []})
        optimizer = build_optimizer(
            self._optimizer_class, derived, lr=self._lr, optimizer_kwargs=self._optimizer_kwargs
        )
        # Committing from here on: nothing below can fail on valid objects.
        _carry_state(old_optimizer, optimizer, walked, self._state, new)
        if self._scheduler is not None:
            sources = [(reference_index, group["coefficient"]) for group in groups]
            sources.append((reference_index, 1.0))
            remap_scheduler_groups(self._scheduler, sources)
            retarget_scheduler(self._scheduler, optimizer)
        self._guard_against_stale_parameters(optimizer)
        self._optimizer = optimizer

    # Saving and loading -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors: state, optimizer recipe and state, scheduler state.

        Optimizer state is keyed by parameter name (the bare model's), not by
        position. Tensors are referenced, not copied (as in torch); save it
        with ``torch.save`` before training on.
        """
        self.check_parameters()
        optimizer_state = None
        if self._optimizer is not None:
            names = {
                id(parameter): name
                for _, name, parameter in walk_model(self._model).named_parameters()
            }
            optimizer_state = optimizer_state_by_name(self._optimizer, names)
        return {
            "format": _FORMAT_NAME,
            "version": _FORMAT_VERSION,
            "state": self._state.to_dict(),
            "recipe": {
                "optimizer": qualified_name(self._optimizer_class),
                "optimizer_kwargs": dict(self._optimizer_kwargs),
                "lr": self._lr,
                "coalesce": self._coalesce,
            },
            "optimizer": optimizer_state,
            "scheduler": None if self._scheduler is None else self._scheduler.state_dict(),
        }

    @collector_paused
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: state first, then the optimizer in its
        saved layout (groups, per-parameter state by name), then the scheduler.

        Works on a Curriculum that was never built. Linear in the number of
        parameters. Raises ValueError (nothing changed) for a malformed dict, a
        model with other layers, another optimizer class, or a scheduler
        factory that does not match the saved scheduler state.
        """
        if not isinstance(state_dict, Mapping) or state_dict.get("format") != _FORMAT_NAME:
            raise ValueError("not a mentor_fn Curriculum state dict (format key missing or wrong)")
        if state_dict.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"unsupported Curriculum state dict version {state_dict.get('version')!r}; "
                f"this mentor_fn reads version {_FORMAT_VERSION}"
            )
        new = CurriculumState.from_dict(state_dict["state"])
        walked = walk_model(self._model)
        check_same_layers(new.layers, walked.layers, "the model")
        new = _with_owners(new, walked.parameter_owners)
        recipe = state_dict["recipe"]
        if recipe["optimizer"] != qualified_name(self._optimizer_class):
            raise ValueError(
                f"the state dict was saved with optimizer {recipe['optimizer']}, this Curriculum "
                f"uses {qualified_name(self._optimizer_class)}"
            )
        lr = validate_lr(recipe["lr"])
        kwargs = _checked_kwargs(recipe["optimizer_kwargs"])
        coalesce = bool(recipe["coalesce"])
        saved_optimizer, saved_scheduler = state_dict["optimizer"], state_dict["scheduler"]
        if saved_scheduler is not None and self._scheduler_factory is None:
            raise ValueError(
                "the state dict holds scheduler state, but this Curriculum has no scheduler factory"
            )
        if saved_optimizer is not None and saved_scheduler is None and self._scheduler_factory:
            raise ValueError(
                "the state dict holds no scheduler state, but this Curriculum has a scheduler factory"
            )
        optimizer, scheduler = None, None
        if saved_optimizer is not None:
            parameters = {name: parameter for _, name, parameter in walked.named_parameters()}
            optimizer = load_optimizer_state(
                self._optimizer_class, saved_optimizer, parameters, lr=lr, optimizer_kwargs=kwargs
            )
            if saved_scheduler is not None:
                scheduler = self._make_scheduler(optimizer)
                scheduler.load_state_dict(saved_scheduler)
                # Constructing the scheduler rewrote lrs; the saved values win.
                for group, saved_group in zip(
                    optimizer.param_groups, saved_optimizer["param_groups"], strict=True
                ):
                    group.update({k: v for k, v in saved_group.items() if k != "params"})
        if optimizer is not None:
            self._guard_against_stale_parameters(optimizer)
        apply_requires_grad_of_walk(new, walked)
        self._state = new
        self._lr, self._optimizer_kwargs, self._coalesce = lr, kwargs, coalesce
        self._optimizer, self._scheduler = optimizer, scheduler

    def __repr__(self) -> str:
        built = "built" if self._optimizer is not None else "not built"
        return (
            f"Curriculum({type(self._model).__name__}, lr={self._lr:g}, "
            f"optimizer={self._optimizer_class.__name__}, {built}, state={self._state!r})"
        )


def _checked_kwargs(optimizer_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if optimizer_kwargs is None:
        return {}
    if not isinstance(optimizer_kwargs, Mapping):
        raise TypeError(f"optimizer_kwargs must be a mapping, got {optimizer_kwargs!r}")
    if "lr" in optimizer_kwargs:
        raise ValueError("pass the global lr as Curriculum(model, lr), not in optimizer_kwargs")
    if "params" in optimizer_kwargs:
        raise ValueError("optimizer_kwargs must not contain 'params': groups are derived")
    return dict(optimizer_kwargs)


def _with_owners(state: CurriculumState, owners: frozenset[str]) -> CurriculumState:
    if state.parameter_owners == owners:
        return state
    return CurriculumState(
        state.layers,
        frozen=state.frozen,
        coefficients=state.coefficients,
        parameter_owners=owners,
    )


def _reference_group(lr: float) -> dict[str, Any]:
    return {"params": [], "lr": lr, "layers": (), "coefficient": 1.0}


def is_reference_group(group: Mapping[str, Any]) -> bool:
    """Whether an optimizer group (live, or saved with parameter names) is the reference group.

    The reference group covers no layer and holds no parameter; it follows the
    scheduler like one flat group at the global lr would.
    """
    layers = group.get("layers")
    return layers is not None and len(layers) == 0 and not group.get("params")


def _reference_index(optimizer: torch.optim.Optimizer) -> int:
    for index in range(len(optimizer.param_groups) - 1, -1, -1):
        if is_reference_group(optimizer.param_groups[index]):
            return index
    raise RuntimeError(
        "the optimizer has no mentor_fn reference group (was it replaced or rebuilt by hand?); "
        "call build() to derive a new one"
    )


def _carry_state(
    old: torch.optim.Optimizer,
    new: torch.optim.Optimizer,
    walked: ModelLayers,
    old_state: CurriculumState,
    new_state: CurriculumState,
) -> None:
    """Keep the per-parameter state of parameters trainable before and after."""
    old_frozen, new_frozen = old_state.resolved_frozen(), new_state.resolved_frozen()
    for position, parameters in enumerate(walked.parameters):
        if old_frozen[position] or new_frozen[position]:
            continue
        for parameter in parameters:
            values = old.state.get(parameter)
            if values:
                new.state[parameter] = values
