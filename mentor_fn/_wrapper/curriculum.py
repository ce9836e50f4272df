"""Curriculum: the thin stateful wrapper that executes plans.

It is the only place that mutates the model's ``requires_grad`` flags, the
optimizer and the scheduler. Every change is planned by the pure core first;
whatever can fail happens before anything is mutated, and the new state is
swapped in last.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.hooks import RemovableHandle

from .._core.group_index import GroupIndex, LayerChanges, layer_changes
from .._core.groups import Halves, decay_halves, is_reference_group, unit_groups_of_walk
from .._core.messages import check_same_layers
from .._core.model_walk import ModelLayers, walk_model
from .._core.plan import NoChange, Patch, Plan, Rebuild, layout_of, plan
from .._core.selection import Patterns
from .._core.state import CurriculumState
from .._core.transitions import freeze, set_lr_coefficient, unfreeze
from .._core.validation import validate_coefficient, validate_positive
from .._core.weight_decay import NoWeightDecayRule
from .._core.wrappers import bare_named_modules, unwrap_model, wrappers_around
from .ddp import adopt_ddp_wrappers
from .fresh_starts import FreshStarts
from .garbage_collector import collector_paused
from .kept_walk import KeptWalk
from .lr_schedulers import Scheduler, scale_group
from .norm_hooks import attach_norm_policy, modules_with_running_statistics
from .optimizer_recipe import OptimizerRecipe
from .optimizers import optimizer_on_one_group
from .plan_execution import (
    apply_patch,
    in_place_obstacles,
    rebuild_in_place,
    rebuilt_optimizer,
    reference_group,
    reference_index,
)
from .requires_grad import apply_requires_grad_at, apply_requires_grad_of_walk
from .stale_parameters import check_parameters_among, guard_against_stale_parameters
from .state_dict import curriculum_state_dict, restore, saved_state
from .structure_watch import structure_generation

__all__ = ["Curriculum", "is_reference_group", "reshard_sharded_modules"]

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

    Without ``state``, the state is derived from the model at the first use
    (:attr:`state`, a transition, :meth:`build`, saving or loading): every
    layer trainable at coefficient 1.0, ``requires_grad`` set accordingly. So
    ``Curriculum(model, lr).build()`` walks the model once, and a model changed
    between the two calls (a module added, a parameter replaced, sharded with
    ``fully_shard``) is taken as it is at :meth:`build`. With ``state``, the
    model is checked against it and the flags are set right away.

    Args:
        model: the model (bare, or wrapped in DDP / DataParallel / compile).
        lr: the global learning rate.
        optimizer: a ``torch.optim.Optimizer`` subclass (Adam by default).
        optimizer_kwargs: its other arguments (not ``lr``), plain data.
        scheduler: a factory ``optimizer -> LRScheduler`` (ReduceLROnPlateau
            included), called by :meth:`build`.
        coalesce: one group per distinct coefficient instead of per layer.
        state: the initial state (default: everything trainable at 1.0).
        weight_decay: the weight decay of the parameters no
            ``no_weight_decay`` rule excludes: ``optimizer_kwargs["weight_decay"]``
            by another name (give it once), kept in :attr:`recipe`.
        no_weight_decay: rules naming the parameters that get no weight decay
            (``"bias"``, ``"norm"``, ``"embedding"``, ``"1d"``, a regex on the
            full parameter name, or a callable; see :func:`param_groups`).
            Each group then splits into a decay half and a no-decay half
            (``weight_decay`` 0.0). Kept in :attr:`recipe` and saved; a
            callable is saved by name only and must be passed again to load.

    The state's norm policy is enforced here too: under ``"eval"``, the
    normalization modules with running statistics inside frozen layers
    compute as in eval mode (forward hooks that read this Curriculum's live
    state, installed once per model; see
    :meth:`CurriculumState.set_norm_policy`).

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
        weight_decay: float | None = None,
        no_weight_decay: Iterable[NoWeightDecayRule] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if weight_decay is not None:
            decay = validate_coefficient(weight_decay, what="weight_decay")
            if optimizer_kwargs is not None and "weight_decay" in optimizer_kwargs:
                raise ValueError(
                    f"weight_decay={weight_decay!r} and optimizer_kwargs['weight_decay']="
                    f"{optimizer_kwargs['weight_decay']!r} are the same setting: give it once"
                )
            optimizer_kwargs = {**(optimizer_kwargs or {}), "weight_decay": decay}
        if isinstance(no_weight_decay, str) or not isinstance(no_weight_decay, Iterable):
            raise TypeError(
                "no_weight_decay must be a collection of rules (kinds, regexes or callables), "
                f"got {no_weight_decay!r}; write ({no_weight_decay!r},) for a single rule"
            )
        recipe = OptimizerRecipe(
            optimizer,
            lr,
            optimizer_kwargs,  # type: ignore[arg-type]
            coalesce,
            tuple(no_weight_decay),
        )
        if scheduler is not None and not callable(scheduler):
            raise TypeError(
                f"scheduler must be a factory optimizer -> LRScheduler, got {scheduler!r}"
            )
        if state is not None and not isinstance(state, CurriculumState):
            raise TypeError(f"state must be a CurriculumState, got {type(state).__name__}")
        self._model = model
        self._bare_model = unwrap_model(model)  # what the norm hooks are keyed by
        self._recipe = recipe
        self._scheduler_factory = scheduler
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: Any = None
        self._fresh_starts: FreshStarts | None = None
        self._guard: RemovableHandle | None = None  # the step guard on the optimizer
        self._walk = KeptWalk(model)
        # The groups covering each layer, for plans over the touched groups
        # only; trusted once the layout is known to fit the state (see
        # _group_index): by construction after build() and a rebuild.
        self._index: GroupIndex | None = None
        self._layout_trusted = False
        # A DDP wrapper is judged on the flags it was built with, before any
        # phase changes them: at once when it wraps the model (the usual
        # case, and the check covers nested ones too), else at the first walk.
        self._ddp_checked = False
        if any(isinstance(wrapper, DistributedDataParallel) for wrapper in wrappers_around(model)):
            adopt_ddp_wrappers(model)
            self._ddp_checked = True
        self._state: CurriculumState | None = None
        if state is not None:
            reshard_sharded_modules(model)
            generation = structure_generation()
            walked = walk_model(model)
            self._check_ddp(walked)
            check_same_layers(state.layers, walked.layers, "the model")
            state = state.with_kinds_of(walked)
            apply_requires_grad_of_walk(state, walked)
            self._walk.keep(walked, generation)
            self._set_state(state)

    # Read-only views ------------------------------------------------------------

    @property
    def state(self) -> CurriculumState:
        """The curriculum state (derived from the model at the first use, see the class)."""
        return self._ensure_state()[0]

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
    def recipe(self) -> OptimizerRecipe:
        """The optimizer class, global lr, other arguments and group layout, as one value."""
        return self._recipe

    @property
    def lr(self) -> float:
        """The global learning rate: what :meth:`build` uses, :meth:`set_lr` sets."""
        return self._recipe.lr

    @property
    def coalesce(self) -> bool:
        return self._recipe.coalesce

    def _ensure_state(
        self, *, apply_flags: bool = True
    ) -> tuple[CurriculumState, ModelLayers | None]:
        """The state and, on its first use, the walk of the model it was derived from.

        Deriving it checks DDP wrappers and (unless ``apply_flags`` is False,
        for a caller that sets them itself) sets ``requires_grad``.
        """
        if self._state is not None:
            return self._state, None
        reshard_sharded_modules(self._model)
        generation = structure_generation()
        walked = walk_model(self._model)
        self._walk.keep(walked, generation)
        self._check_ddp(walked)
        state = CurriculumState(
            walked.layers,
            parameter_owners=walked.parameter_owners,
            norm_layers=walked.norm_layers,
        )
        if apply_flags:
            apply_requires_grad_of_walk(state, walked)
        self._set_state(state)
        return state, walked

    def _set_state(self, state: CurriculumState, changes: LayerChanges | None = None) -> None:
        """Swap in ``state``, and make this Curriculum the one the norm hooks read.

        ``changes``: what differs from the previous state (None: anything may).
        """
        self._state = state
        changed = None if changes is None else zip(changes.names, changes.new_frozen)
        attach_norm_policy(self._bare_model, self, self._norm_modules, changed)

    def _norm_modules(self) -> list[tuple[nn.Module, str]]:
        assert self._state is not None
        return modules_with_running_statistics(bare_named_modules(self._model), self._state.layers)

    def _decay_halves(self, walked: ModelLayers) -> Halves | None:
        """The walked model's parameters split by ``no_weight_decay``, or None without rules."""
        rules = self._recipe.rules
        return decay_halves(walked, rules) if rules else None

    def _check_ddp(self, walked: ModelLayers) -> None:
        if self._ddp_checked:
            return
        if any(isinstance(wrapper, DistributedDataParallel) for wrapper in walked.wrappers):
            adopt_ddp_wrappers(self._model)
        self._ddp_checked = True

    # Building ---------------------------------------------------------------------

    @collector_paused
    def build(self) -> torch.optim.Optimizer:
        """Build a fresh optimizer (and scheduler) from the current state: a new phase.

        The groups are built at coefficient 1 and the scheduler constructed
        on them; then the coefficients are applied as a patch. So a scheduler
        that writes absolute values into every group (OneCycleLR with a scalar
        ``max_lr``, CyclicLR) cannot erase the coefficients.

        Raises:
            ValueError: the model's layers are no longer the state's (a module
                added or removed after the state was derived or given).
        """
        # One walk of the model serves the state (derived here on first use),
        # the flags and the groups; torch's constructor runs once, on the
        # trainable parameters (unique: each is owned by one layer); then
        # every group is a copy of the reference group, which holds the
        # optimizer's defaults as add_param_group would add them, without
        # torch re-checking every earlier group for each new one.
        reshard_sharded_modules(self._model)
        state, walked = self._ensure_state(apply_flags=False)
        if walked is None:
            walked = self._walk.walk(state)
            state = state.with_kinds_of(walked)
        halves = self._decay_halves(walked)
        trainable = apply_requires_grad_of_walk(state, walked)
        recipe = self._recipe
        optimizer = optimizer_on_one_group(
            recipe,
            trainable,
            group_count=2 if trainable else 1,  # with the reference group
        )
        reference = {**optimizer.param_groups[0], **reference_group(recipe.lr)}
        groups, coefficients = unit_groups_of_walk(
            state, walked, coalesce=recipe.coalesce, template=reference, halves=halves
        )
        groups.append(reference)
        optimizer.param_groups = groups
        scheduler = self._make_scheduler(optimizer)
        for index, coefficient in enumerate(coefficients):
            if coefficient != 1.0:
                scale_group(optimizer, scheduler, index, coefficient)
                optimizer.param_groups[index]["coefficient"] = coefficient
        self._optimizer, self._scheduler = optimizer, scheduler
        self._watch(optimizer, layout_trusted=True, state_carried=False)
        self._set_state(state)
        return optimizer

    def _unwatch(self) -> None:
        """Remove this Curriculum's step hooks from its optimizer (which it is letting go)."""
        if self._guard is not None:
            self._guard.remove()
            self._guard = None
        if self._fresh_starts is not None:
            self._fresh_starts.close()
            self._fresh_starts = None
        self._index = None

    def _watch(
        self, optimizer: torch.optim.Optimizer, *, layout_trusted: bool, state_carried: bool
    ) -> None:
        """Install this Curriculum's step hooks on ``optimizer``, whose groups are new.

        The previous ones go (on a rebuild in place, they are on the same
        object): the step guard, and the fresh starts of fused groups.

        Args:
            optimizer: the optimizer, its groups new.
            layout_trusted: whether the groups are known to fit the state
                (derived from it here); otherwise the pure plan checks them
                once, before the first plan over the touched groups only.
            state_carried: whether some parameters may have state while
                others in their group have none (a rebuild carried it, or a
                load restored it from between an unfreeze and the next
                step); those without step apart while their fused group's
                others have state.
        """
        self._unwatch()
        self._guard = guard_against_stale_parameters(optimizer, self._model, self.check_parameters)
        self._fresh_starts = FreshStarts(optimizer)
        self._layout_trusted = layout_trusted
        if state_carried:
            self._fresh_starts.add(
                parameter for group in optimizer.param_groups for parameter in group["params"]
            )

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
        reshard_sharded_modules(self._model)
        check_parameters_among(
            self._optimizer, {id(parameter) for parameter in self._model.parameters()}
        )

    # Transitions --------------------------------------------------------------------

    @collector_paused
    def update(self, target: Target, *, reset_optimizer_if_needed: bool = False) -> Plan:
        """Move to a new state (or apply a transition) and bring the optimizer along.

        Returns the executed plan. Before :meth:`build`, only the state and the
        ``requires_grad`` flags change (the plan is NoChange). A rebuild keeps
        the optimizer and scheduler objects (``Rebuild.new_objects`` says when
        an optimizer could not be rebuilt in place).

        A transition that changes k groups costs O(k + rules): only the
        layers under the rules that changed are resolved, only the groups
        covering them are read, only their flags are set, and the model's
        walk is the one kept since the last (walked again when a module or
        parameter was registered since: see ``_structure_watch``). A rebuild
        walks the model afresh.

        Raises:
            RuntimeError: the optimizer must be rebuilt and
                ``reset_optimizer_if_needed`` is False; nothing has changed.
                Or the optimizer holds parameters that are no longer the
                model's (found by a new walk); nothing has changed.
            ValueError / TypeError: bad target, or a model whose layers are no
                longer the state's; nothing has changed.
        """
        self._settle()
        current, walked = self._ensure_state()
        new = self._resolve(target, current)
        changes = layer_changes(current, new)
        if walked is None:
            walked = self._kept_walk(new)
        optimizer = self._optimizer
        if optimizer is None:
            self._apply_flags(new, walked, changes)
            self._set_state(new, changes)
            return NoChange()
        decision = self._plan(current, new, changes)
        if isinstance(decision, Rebuild):
            if not reset_optimizer_if_needed:
                raise RuntimeError(
                    "this change needs the optimizer to be rebuilt: "
                    + "; ".join(decision.reasons)
                    + ". Pass reset_optimizer_if_needed=True to rebuild it (optimizer state of "
                    "layers that stay trainable and the scheduler's progress are kept), or call "
                    "build() to start a fresh phase. Nothing was changed."
                )
            decision, walked = self._rebuild(current, new, decision)
            changes = None  # a fresh walk: every flag is set
        elif isinstance(decision, Patch):
            self._patch(decision, walked, new)
        self._apply_flags(new, walked, changes)
        self._set_state(new, changes)
        return decision

    def _kept_walk(self, state: CurriculumState) -> ModelLayers:
        """The kept walk of the model, or a new one checked against ``state`` and the optimizer.

        Raises:
            ValueError: the model's layers are no longer the state's.
            RuntimeError: the optimizer holds parameters that are no longer the model's.
        """
        walked = self._walk.kept()
        if walked is None:
            reshard_sharded_modules(self._model)
            optimizer = self._optimizer
            walked = self._walk.walk(
                state,
                None if optimizer is None else functools.partial(_check_walked, optimizer),
            )
        return walked

    def _plan(
        self, current: CurriculumState, new: CurriculumState, changes: LayerChanges | None
    ) -> Plan:
        """``plan(layout_of(optimizer), current, new)``, over the touched groups where it can."""
        optimizer = self._optimizer
        assert optimizer is not None
        if changes is not None:
            index = self._group_index(current)
            if index is not None:
                decision = index.plan(changes, new.parameter_owners)
                if decision is not None:
                    return decision
        return plan(layout_of(optimizer), current, new)

    def _group_index(self, state: CurriculumState) -> GroupIndex | None:
        """The index of the optimizer's groups, built on first use; None when not usable.

        Usable when the groups fit ``state`` (see ``_group_index``): known
        after build() and rebuilds, checked once with the pure plan after a
        load or once other code added or removed groups.
        """
        optimizer = self._optimizer
        assert optimizer is not None
        index = self._index
        if index is not None and index.fits(optimizer):
            return index
        if index is not None:  # groups added or removed by other code
            self._layout_trusted = False
        self._index = None
        if not self._layout_trusted:
            if plan(layout_of(optimizer), state, state) != NoChange():
                return None
            self._layout_trusted = True
        self._index = GroupIndex(optimizer)
        return self._index

    def _apply_flags(
        self, state: CurriculumState, walked: ModelLayers, changes: LayerChanges | None
    ) -> None:
        if changes is None:
            apply_requires_grad_of_walk(state, walked)
        else:
            apply_requires_grad_at(walked, changes.positions, changes.new_trainable)

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

    def _resolve(self, target: Target, current: CurriculumState) -> CurriculumState:
        if isinstance(target, CurriculumState):
            new = target
        elif callable(target):
            new = target(current)
            if not isinstance(new, CurriculumState):
                raise TypeError(
                    f"a transition must return a CurriculumState, {target!r} returned "
                    f"{type(new).__name__}"
                )
        else:
            raise TypeError(
                f"update takes a CurriculumState or a transition, got {type(target).__name__}"
            )
        check_same_layers(current.layers, new.layers, "the new state")
        return new.with_layer_kinds(
            parameter_owners=current.parameter_owners, norm_layers=current.norm_layers
        )

    def _patch(self, decision: Patch, walked: ModelLayers, new: CurriculumState) -> None:
        assert self._optimizer is not None and self._fresh_starts is not None
        positions = new.layer_positions
        layer_parameters = walked.parameters
        reactivated = [
            parameter
            for layer in decision.reactivated
            for parameter in layer_parameters[positions[layer]]
        ]
        apply_patch(
            self._optimizer,
            self._scheduler,
            decision,
            reactivated=reactivated,
            recipe=self._recipe,
        )
        if reactivated:
            index, groups = self._index, None
            if index is not None and index.fits(self._optimizer):
                groups = index.groups_covering(decision.reactivated)
            self._fresh_starts.add(reactivated, groups)

    def _rebuild(
        self, old: CurriculumState, new: CurriculumState, decision: Rebuild
    ) -> tuple[Rebuild, ModelLayers]:
        """Rebuild the optimizer for ``new``, in place where it can; the executed plan and the walk.

        The model is walked afresh: a structure change since the last walk
        (a module added or replaced, parameters replaced by sharding) is
        caught here, before anything changes.
        """
        optimizer = self._optimizer
        assert optimizer is not None
        reshard_sharded_modules(self._model)
        walked = self._walk.walk(new, functools.partial(_check_walked, optimizer))
        halves = self._decay_halves(walked)
        obstacles = in_place_obstacles(optimizer)
        arguments: dict[str, Any] = {
            "recipe": self._recipe,
            "old": old,
            "new": new,
            "walked": walked,
            "halves": halves,
        }
        if obstacles:
            optimizer = rebuilt_optimizer(optimizer, self._scheduler, **arguments)
            self._optimizer = optimizer
        else:
            rebuild_in_place(optimizer, self._scheduler, **arguments)
        self._watch(optimizer, layout_trusted=True, state_carried=True)
        return Rebuild(decision.reasons, obstacles), walked

    # The global lr ----------------------------------------------------------------------

    def set_lr(self, lr: float) -> None:
        """Set the global learning rate, keeping every coefficient.

        Before :meth:`build`, this is the lr :meth:`build` will use. Once
        built, the live optimizer and scheduler are rescaled by ``lr / live``,
        where *live* is the reference group's current lr (what one flat group
        at the global lr has now, under the scheduler): every group, the
        reference group included, and every lr-like value the optimizer and
        the scheduler hold for it (``initial_lr``, ``base_lrs``, ``max_lr``,
        ``min_lrs``, ..., nested schedulers too). So the reference group's lr
        becomes ``lr``, every group stays at its coefficient times it, and the
        schedule goes on from there, as a flat optimizer and scheduler
        rescaled the same way would. The recipe's lr (:attr:`lr`, saved by
        :meth:`state_dict`) becomes ``lr``.

        Raises:
            TypeError: ``lr`` is not a real number.
            ValueError: ``lr`` is not finite and > 0 (a global lr of 0 could
                never be rescaled again). Nothing has changed.
            RuntimeError: the reference group's lr is 0 (a scheduler drove it
                there, or it was built at lr 0): no ratio takes it to ``lr``.
                Nothing has changed.
        """
        new_lr = validate_positive(
            lr, what="lr", why=" (a global lr of 0 cannot be rescaled later)"
        )
        optimizer = self._optimizer
        if optimizer is None:
            self._recipe = self._recipe.with_lr(new_lr)
            return
        self._settle()
        live = float(optimizer.param_groups[reference_index(optimizer)]["lr"])
        if live == 0:
            raise RuntimeError(
                "set_lr: the reference group's lr is 0 (a scheduler drove it there, or the "
                "optimizer was built at lr 0), so no ratio rescales it to the new lr; call "
                "build() after set_lr() to start a fresh phase at that lr. Nothing was changed."
            )
        ratio = new_lr / live
        for index in range(len(optimizer.param_groups)):
            scale_group(optimizer, self._scheduler, index, ratio)
        self._recipe = self._recipe.with_lr(new_lr)

    # Saving and loading -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors: state, optimizer recipe and state, scheduler state.

        Optimizer state is keyed by parameter name (the bare model's), not by
        position. Tensors are referenced, not copied (as in torch); save it
        with ``torch.save`` before training on. ``scheduler_classes`` names
        the scheduler's class (and its nested schedulers'), so loading into
        another kind of scheduler is refused. A callable ``no_weight_decay``
        rule is recorded by its qualified name: loading needs it passed again.
        """
        self._settle()
        self.check_parameters()
        return curriculum_state_dict(
            self.state,
            recipe=self._recipe,
            optimizer=self._optimizer,
            scheduler=self._scheduler,
            walked=walk_model(self._model) if self._optimizer is not None else None,
        )

    @collector_paused
    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: state first, then the optimizer in its
        saved layout (groups, per-parameter state by name), then the scheduler.

        Works on a Curriculum that was never built. Linear in the number of
        parameters. The saved recipe replaces this Curriculum's (lr, optimizer
        arguments, ``coalesce``, ``no_weight_decay``), except that callable
        ``no_weight_decay`` rules, saved by name only, come from this one.

        Raises:
            ValueError: naming the field, and nothing changed, for a malformed
                dict (a field missing or of the wrong kind), a model with other
                layers, another optimizer class, optimizer state of other
                shapes than the model's parameters (saved from another model),
                a layout that leaves a trainable parameter out, scheduler
                state that the scheduler factory's scheduler does not have
                (another class, other fields, junk), or saved callable
                ``no_weight_decay`` rules that this Curriculum was not given
                (the same qualified names, in the same order).
        """
        new = saved_state(state_dict)
        reshard_sharded_modules(self._model)
        generation = structure_generation()
        walked = walk_model(self._model)
        self._check_ddp(walked)
        check_same_layers(new.layers, walked.layers, "the model")
        new = new.with_kinds_of(walked)
        restored = restore(
            state_dict,
            state=new,
            walked=walked,
            recipe=self._recipe,
            make_scheduler=None if self._scheduler_factory is None else self._make_scheduler,
        )
        apply_requires_grad_of_walk(new, walked)
        self._walk.keep(walked, generation)
        self._recipe = restored.recipe
        optimizer = restored.optimizer
        self._optimizer, self._scheduler = optimizer, restored.scheduler
        if optimizer is not None:
            # The saved layout is checked against the state before the first
            # plan over touched groups only; state saved between an unfreeze
            # and the next step gets the same split as in the run that saved it.
            self._watch(optimizer, layout_trusted=False, state_carried=True)
        else:
            self._unwatch()
        self._set_state(new)

    def _settle(self) -> None:
        """Undo what an optimizer step that raised may have left (see FreshStarts)."""
        if self._fresh_starts is not None:
            self._fresh_starts.restore()

    def __repr__(self) -> str:
        built = "built" if self._optimizer is not None else "not built"
        state = repr(self._state) if self._state is not None else "from the model at first use"
        return (
            f"Curriculum({type(self._model).__name__}, lr={self._recipe.lr:g}, "
            f"optimizer={self._recipe.optimizer_class.__name__}, {built}, state={state})"
        )


def reshard_sharded_modules(model: nn.Module) -> None:
    """Put the sharded parameters back in every FSDP2 module of ``model``, before a walk.

    A module sharded with ``fully_shard`` registers its unsharded parameters
    from its forward until its backward reshards them; a unit whose parameters
    are all frozen (a root unit above all) sees no backward and keeps them. A
    walk would then find those unsharded copies, which FSDP2 replaces at the
    next forward: an optimizer built on them trains tensors nobody uses, and
    the optimizer's real parameters look stale. Resharding a sharded module is
    a no-op. FSDP2 is found in ``sys.modules``: a process that never imported
    it has nothing sharded, and pays nothing.
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")
    sharded = getattr(fsdp, "FSDPModule", None)
    if sharded is None:
        return
    for module in model.modules():
        if isinstance(module, sharded):
            module.reshard()


def _check_walked(optimizer: torch.optim.Optimizer, walked: ModelLayers) -> None:
    """Raise RuntimeError unless every parameter of ``optimizer`` is one the walk found."""
    check_parameters_among(
        optimizer,
        {id(parameter) for parameters in walked.parameters for parameter in parameters},
    )
