"""``CurriculumMachine``: the invariant (docs/design.md) on a user's own configuration."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import hypothesis.strategies as st
import optree
import torch
from hypothesis import event
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from torch import nn
from torch.optim import lr_scheduler

from .._core.plan import NoChange, Patch, Rebuild
from .._core.state import CurriculumState
from .._core.transitions import Freeze, SetLrCoefficient, Transition, Unfreeze
from .._wrapper.curriculum import Curriculum
from ._checks import DEFAULT_REL_TOL, check_lrs, flags_agree, partition_agrees
from ._diff import first_difference
from ._resume import resume_from, run_record, scheduler_order_warning_off, seeded, snapshot_bytes
from ._strategies import TRANSITION_KINDS, transitions
from ._views import ModelView, view_model

__all__ = ["CurriculumMachine"]

SHORTCUT_KINDS = ("freeze", "unfreeze", "set_lr_coefficient")


def _transitions_for_runner(kinds: Sequence[str]) -> st.SearchStrategy[Transition]:
    # Rule arguments are fixed when the class is made, but transitions depend
    # on the model: st.runner() is the machine running the rule.
    return st.runner().flatmap(lambda machine: machine.transition_strategy(kinds=tuple(kinds)))


def _metrics_for_runner(count: int) -> st.SearchStrategy[Any]:
    def metrics(machine: CurriculumMachine) -> st.SearchStrategy[Any]:
        one = st.sampled_from(tuple(machine.metrics))
        return one if count == 1 else st.tuples(*[one] * count)

    return st.runner().flatmap(metrics)


@dataclass(frozen=True)
class _Before:
    """What a transition must keep (or, refused, leave exactly as it was)."""

    record: dict[str, Any]
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    scheduler_optimizer: Any


class CurriculumMachine(RuleBasedStateMachine):
    """A hypothesis state machine that property-tests a curriculum configuration.

    Subclass it with your model, optimizer and scheduler, and hypothesis
    drives a live :class:`~mentor_fn.Curriculum` through random runs: random
    transitions (from :func:`transitions`, with and without
    ``reset_optimizer_if_needed``, through ``update`` and the shortcut
    methods), optimizer steps on real gradients, scheduler steps, new phases
    (``build()``) and save/resume round trips into a fresh model and
    Curriculum. After every step it checks the invariant (docs/design.md):

    1. :func:`check_flags`, and frozen parameters never change in a step;
    2. :func:`check_partition` (and the reference group last, one layer per
       group unless ``coalesce``);
    3. :func:`check_lrs` against a flat one-parameter optimizer of the same
       class with a scheduler from the same factory, stepped in lockstep and
       never interrupted (``get_last_lr()`` too);
    4. a round trip continues bit for bit like the original run for two
       optimizer + scheduler steps.

    Transitions also check that a refused rebuild changes nothing (state,
    flags, optimizer groups and state, scheduler), that NoChange and Patch
    keep the optimizer object, that re-activated parameters start from fresh
    optimizer state and that parameters trainable before and after keep
    theirs. ``build()`` must give every trainable parameter fresh state.

    Configure with class attributes and methods:

    * ``make_model()`` (required, unless ``model_strategy`` draws models): a
      new model of the same architecture each call; its weights may differ.
    * ``optimizer_class`` (Adam), ``optimizer_kwargs`` ({}), ``lr`` (0.1),
      ``coalesce`` (False).
    * ``make_scheduler(optimizer)``: the scheduler factory (default: none).
      ``max_scheduler_steps``: how many scheduler steps it allows (OneCycleLR:
      ``total_steps - 1``); ``metrics``: values ReduceLROnPlateau is stepped with.
    * ``example_input`` and ``loss(model)``: the default loss is the mean
      square of every float tensor in ``model(example_input)`` (a tuple is
      passed as several arguments). A forward pass, not a function of the
      parameters alone: frozen layers sit inside the graph that trains the
      others (the check that they get no gradient and never move means
      something), gradients flow through them as in training, and norm
      layers update their running statistics. Override ``loss`` for models
      that need targets or return other objects. Each loss runs with torch's
      RNG seeded by the step, so dropout is reproducible across a resume.
    * ``transition_strategy(kinds)``: the transitions drawn (default
      :func:`transitions` of the model); ``model_strategy()``: draw the model
      itself (e.g. ``models()``) instead of calling ``make_model``.

    Example (pytest collects ``TestMyCurriculum``)::

        class MyMachine(CurriculumMachine):
            optimizer_class = torch.optim.SGD
            optimizer_kwargs = {"momentum": 0.9}
            example_input = torch.randn(4, 8)

            def make_model(self):
                return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

            def make_scheduler(self, optimizer):
                return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)

        TestMyCurriculum = MyMachine.TestCase
    """

    lr: ClassVar[float] = 0.1
    optimizer_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.Adam
    optimizer_kwargs: ClassVar[Mapping[str, Any]] = {}
    coalesce: ClassVar[bool] = False
    example_input: ClassVar[Any] = None
    max_scheduler_steps: ClassVar[int | None] = None
    # Repeated values give ReduceLROnPlateau plateaus as well as improvements.
    metrics: ClassVar[Sequence[float]] = (4.0, 2.0, 1.0, 1.0, 0.5)
    rel_tol: ClassVar[float] = DEFAULT_REL_TOL

    def __init__(self) -> None:
        super().__init__()
        self.curriculum: Curriculum
        self.built = False
        self.prototype: nn.Module | None = None
        self.seed = 0
        self.scheduler_steps = 0
        self.reference_scheduler: Any = None
        self._strategies: dict[tuple[str, ...], st.SearchStrategy[Transition]] = {}
        self._view: ModelView | None = None

    # What a subclass provides ------------------------------------------------------

    def make_model(self) -> nn.Module:
        """A new model; the same architecture every call."""
        raise NotImplementedError(
            f"{type(self).__name__} must define make_model(self) (or model_strategy(self))"
        )

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The scheduler factory; override it to test a scheduler."""
        raise NotImplementedError  # never called unless overridden: see _scheduler_factory

    def model_strategy(self) -> st.SearchStrategy[nn.Module] | None:
        """A strategy drawing the model (each run draws one); None: ``make_model()``."""
        return None

    def loss(self, model: nn.Module) -> torch.Tensor:
        """The mean square of every float tensor in ``model(example_input)``."""
        inputs = self.example_input
        if inputs is None:
            raise TypeError(
                f"{type(self).__name__} needs example_input (a batch the model accepts) or "
                "its own loss(self, model)"
            )
        output = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
        tensors = [
            leaf
            for leaf in optree.tree_leaves(output, none_is_leaf=False)
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
        ]
        if not tensors:
            raise TypeError(
                f"the model's output holds no float tensor ({type(output).__name__}); "
                f"define loss(self, model) on {type(self).__name__}"
            )
        return torch.stack([tensor.float().pow(2).mean() for tensor in tensors]).sum()

    def transition_strategy(
        self, *, kinds: Sequence[str] = TRANSITION_KINDS
    ) -> st.SearchStrategy[Transition]:
        """The transitions the rules apply: :func:`transitions` of the model."""
        key = tuple(kinds)
        if key not in self._strategies:
            self._strategies[key] = transitions(self.curriculum.model, kinds=key)
        return self._strategies[key]

    # Construction -----------------------------------------------------------------------

    def _drawn_models(self) -> st.SearchStrategy[nn.Module | None]:
        strategy = self.model_strategy()
        return st.just(None) if strategy is None else strategy

    def fresh_model(self) -> nn.Module:
        """A model for a new run: a copy of the drawn one, or ``make_model()``."""
        if self.prototype is not None:
            return copy.deepcopy(self.prototype)
        return self.make_model()

    def _scheduler_factory(self) -> Any:
        overridden = type(self).make_scheduler is not CurriculumMachine.make_scheduler
        return self.make_scheduler if overridden else None

    def new_curriculum(self, model: nn.Module) -> Curriculum:
        """A Curriculum on ``model`` with the machine's configuration (not built)."""
        return Curriculum(
            model,
            self.lr,
            optimizer=self.optimizer_class,
            optimizer_kwargs=dict(self.optimizer_kwargs),
            scheduler=self._scheduler_factory(),
            coalesce=self.coalesce,
        )

    def new_optimizer(self, parameters: list[torch.Tensor]) -> torch.optim.Optimizer:
        """An optimizer of the machine's class on ``parameters``, one flat group."""
        # Optimizer's own signature is (params, defaults); its subclasses take lr.
        make: Callable[..., torch.optim.Optimizer] = self.optimizer_class
        return make(parameters, lr=self.lr, **self.optimizer_kwargs)

    def view(self) -> ModelView:
        """The live model read through torch's registries (cached per model)."""
        if self._view is None:
            self._view = view_model(self.curriculum.model)
        return self._view

    def new_phase(self) -> None:
        """``build()``, and restart the flat reference schedule with it."""
        self.curriculum.build()
        self.reference_parameter = torch.zeros(1, requires_grad=True)
        self.reference_optimizer = self.new_optimizer([self.reference_parameter])
        factory = self._scheduler_factory()
        self.reference_scheduler = None if factory is None else factory(self.reference_optimizer)
        self.scheduler_steps = 0
        self.built = True
        # A new phase is a fresh optimizer: no parameter carries state over.
        self._assert_fresh(self.view().trainable(self.curriculum.state), "after build()")

    def steps_left(self) -> float:
        """Scheduler steps the schedule still allows."""
        if self.max_scheduler_steps is None:
            return math.inf
        return self.max_scheduler_steps - self.scheduler_steps

    # Rules ------------------------------------------------------------------------------

    @initialize(drawn_model=st.runner().flatmap(lambda machine: machine._drawn_models()))
    def start(self, drawn_model: nn.Module | None) -> None:
        """A Curriculum on a fresh model, not built yet (``drawn_model``: None unless drawn)."""
        self.prototype = drawn_model
        self.curriculum = self.new_curriculum(self.fresh_model())

    @rule(transition=_transitions_for_runner(TRANSITION_KINDS), reset=st.booleans())
    def update(self, transition: Transition, reset: bool) -> None:
        self.apply_transition(transition, reset=reset)

    @rule(transition=_transitions_for_runner(SHORTCUT_KINDS), reset=st.booleans())
    def shortcut(self, transition: Transition, reset: bool) -> None:
        """The same through ``curriculum.freeze/unfreeze/set_lr_coefficient``."""
        self.apply_transition(transition, reset=reset, shortcut=True)

    @precondition(lambda self: self.built)
    @rule()
    def optimizer_step(self) -> None:
        view, state = self.view(), self.curriculum.state
        trainable = view.trainable(state)
        still: dict[
            str, torch.Tensor
        ] = {  # what must not move: frozen parameters, statistics under "eval"
            f"parameter {name!r} (layer {view.owners[id(parameter)]!r})": parameter
            for name, parameter in view.parameters.items()
            if name not in trainable
        }
        still.update(
            (f"running statistic {name!r}", buffer)
            for name, buffer in view.frozen_statistics(state).items()
        )
        before = {what: tensor.detach().clone() for what, tensor in still.items()}
        self.seed += 1
        self.train_step(self.curriculum, self.seed)
        self.reference_optimizer.step()
        for what, tensor in still.items():
            found = first_difference(before[what], tensor.detach())
            if found is not None:
                raise AssertionError(
                    f"frozen {what} changed in an optimizer step (invariant 1): {found}"
                )

    @precondition(
        lambda self: self.built and self.reference_scheduler is not None and self.steps_left() >= 1
    )
    @rule(metric=_metrics_for_runner(1))
    def scheduler_step(self, metric: float) -> None:
        step_scheduler(self.curriculum.scheduler, metric)
        step_scheduler(self.reference_scheduler, metric)
        self.scheduler_steps += 1

    @rule(new_phase=st.sampled_from([True, False, False, False]))
    def build(self, new_phase: bool) -> None:
        """The first ``build()``; later a new phase one time in four (histories stay long)."""
        if new_phase or not self.built:
            self.new_phase()

    @precondition(lambda self: self.built and self.steps_left() >= 2)
    @rule(build_first=st.booleans(), metrics=_metrics_for_runner(2))
    def round_trip(self, build_first: bool, metrics: tuple[float, float]) -> None:
        """Save, resume into a fresh model, and continue like the uninterrupted run."""
        original = self.curriculum
        saved = snapshot_bytes(original)
        fresh = self.new_curriculum(self.fresh_model())
        if build_first:
            fresh.build()  # loading replaces whatever a Curriculum holds
        resumed = resume_from(saved, fresh)
        assert resumed.state == original.state, (resumed.state, original.state)
        for number, metric in enumerate(metrics, start=1):
            self.seed += 1
            for curriculum in (original, resumed):
                self.train_step(curriculum, self.seed)
                if curriculum.scheduler is not None:
                    step_scheduler(curriculum.scheduler, metric)
            self.reference_optimizer.step()
            if self.reference_scheduler is not None:
                step_scheduler(self.reference_scheduler, metric)
                self.scheduler_steps += 1
            found = first_difference(run_record(original), run_record(resumed))
            if found is not None:
                raise AssertionError(
                    f"saved, resumed and stepped {number} time(s), the resumed run differs "
                    f"from the original (invariant 4):\n  {found}\n"
                    "(expected: the original run; got: the resumed one)"
                )
        self.curriculum, self._view = resumed, None
        event("round trip")

    # Steps ------------------------------------------------------------------------------

    def train_step(self, curriculum: Curriculum, seed: int) -> None:
        """One optimizer step on ``loss`` (no backward when nothing trains)."""
        assert curriculum.optimizer is not None
        curriculum.model.zero_grad(set_to_none=True)
        with seeded(seed):
            loss = self.loss(curriculum.model)
        if loss.requires_grad:
            loss.backward()
        curriculum.optimizer.step()

    def apply_transition(
        self, transition: Transition, *, reset: bool, shortcut: bool = False
    ) -> NoChange | Patch | Rebuild | None:
        """Apply ``transition`` to the live Curriculum and check what it kept.

        Returns the executed plan, or None for a refused rebuild. A subclass
        with its own oracle extends this (call ``super()``).
        """
        curriculum = self.curriculum
        old = curriculum.state
        if not self.built:
            result = self._call(transition, reset, shortcut)
            assert result == NoChange(), (
                f"before build(), {transition!r} returned {result!r}, not NoChange()"
            )
            assert curriculum.optimizer is None, "a transition built an optimizer"
            return result
        before = self._before()
        try:
            result = self._call(transition, reset, shortcut)
        except RuntimeError as error:
            if reset or "rebuil" not in str(error):
                raise
            self._assert_unchanged(before, f"the refused {transition!r}")
            event("refused rebuild")
            return None
        event(f"{'shortcut' if shortcut else 'update'}: {type(result).__name__}")
        if not isinstance(result, Rebuild):
            assert curriculum.optimizer is before.optimizer, (
                f"{type(result).__name__} for {transition!r} replaced the optimizer object"
            )
        self._assert_state_carried(before, old, curriculum.state, transition)
        return result

    def _call(self, transition: Transition, reset: bool, shortcut: bool) -> Any:
        curriculum = self.curriculum
        if shortcut and isinstance(transition, Freeze):
            return curriculum.freeze(transition.patterns, reset_optimizer_if_needed=reset)
        if shortcut and isinstance(transition, Unfreeze):
            return curriculum.unfreeze(transition.patterns, reset_optimizer_if_needed=reset)
        if shortcut and isinstance(transition, SetLrCoefficient):
            return curriculum.set_lr_coefficient(
                transition.coefficient, transition.patterns, reset_optimizer_if_needed=reset
            )
        return curriculum.update(transition, reset_optimizer_if_needed=reset)

    # Checking -----------------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        """What a transition may change: state, flags, groups, optimizer and scheduler state."""
        curriculum = self.curriculum
        optimizer, scheduler = curriculum.optimizer, curriculum.scheduler
        assert optimizer is not None
        names = self.view().names
        return {
            "state": curriculum.state,
            "requires_grad": {
                name: parameter.requires_grad for name, parameter in self.view().parameters.items()
            },
            "param_groups": [
                {
                    **{key: value for key, value in group.items() if key != "params"},
                    "params": [names.get(id(p), "<not the model's>") for p in group["params"]],
                }
                for group in optimizer.param_groups
            ],
            "optimizer state": self._optimizer_state(),
            "scheduler.state_dict()": None if scheduler is None else scheduler.state_dict(),
        }

    def _optimizer_state(self) -> dict[str, dict[str, Any]]:
        """Per-parameter optimizer state by name (a parameter without any: absent)."""
        optimizer = self.curriculum.optimizer
        assert optimizer is not None
        names = self.view().names
        return {
            names[id(parameter)]: dict(values)
            for parameter, values in optimizer.state.items()
            if values and id(parameter) in names
        }

    def _before(self) -> _Before:
        curriculum = self.curriculum
        scheduler = curriculum.scheduler
        return _Before(
            record=_copied(self._record()),
            optimizer=curriculum.optimizer,
            scheduler=scheduler,
            scheduler_optimizer=None if scheduler is None else scheduler.optimizer,
        )

    def _assert_unchanged(self, before: _Before, what: str) -> None:
        curriculum = self.curriculum
        found = first_difference(before.record, self._record())
        if found is not None:
            raise AssertionError(f"{what} changed something:\n  {found}")
        assert curriculum.optimizer is before.optimizer, f"{what} replaced the optimizer"
        assert curriculum.scheduler is before.scheduler, f"{what} replaced the scheduler"
        if before.scheduler is not None:
            assert curriculum.scheduler.optimizer is before.scheduler_optimizer, (
                f"{what} re-targeted the scheduler"
            )

    def _assert_state_carried(
        self, before: _Before, old: CurriculumState, new: CurriculumState, transition: Transition
    ) -> None:
        """Re-activated parameters get fresh state; those trainable throughout keep theirs."""
        view = self.view()
        saved, now = before.record["optimizer state"], self._optimizer_state()
        reactivated = {}
        for name, parameter in view.parameters.items():
            layer = view.owners[id(parameter)]
            if not view.trains(new, layer):
                continue
            if not view.trains(old, layer):
                reactivated[name] = parameter
                continue
            found = first_difference(saved.get(name, {}), now.get(name, {}), f"[{name!r}]")
            if found is not None:
                raise AssertionError(
                    f"{name!r} (layer {layer!r}) stayed trainable through {transition!r}, but "
                    f"lost its optimizer state:\n  {found}"
                )
        self._assert_fresh(reactivated, f"re-activated by {transition!r}")

    def _assert_fresh(self, parameters: Mapping[str, torch.Tensor], when: str) -> None:
        """Each parameter's optimizer state is what a new optimizer would give it."""
        if not parameters:
            return
        scratch = {
            name: parameter.detach().clone().requires_grad_(True)
            for name, parameter in parameters.items()
        }
        optimizer = self.new_optimizer(list(scratch.values()))
        now = self._optimizer_state()
        for name, tensor in scratch.items():
            fresh = dict(optimizer.state.get(tensor, {}))
            found = first_difference(fresh, now.get(name, {}), f"[{name!r}]")
            if found is not None:
                raise AssertionError(
                    f"{name!r} {when} should have fresh optimizer state:\n  {found}"
                )

    @invariant()
    def the_invariant_holds(self) -> None:
        """The invariant's points 1-3 (4 is checked by each round trip)."""
        flags_agree(self.curriculum.state, self.view())
        if self.built:
            self.check_partition()
            self.check_lrs()

    def check_partition(self) -> None:
        """Invariant 2, the reference group last, one layer per group unless coalesced."""
        optimizer = self.curriculum.optimizer
        assert optimizer is not None
        partition_agrees(optimizer, self.curriculum.state, self.view())
        groups = optimizer.param_groups
        assert groups[-1]["layers"] == () and not groups[-1]["params"], (
            "the last group must be the parameter-less reference group"
        )
        if not self.coalesce:
            for index, group in enumerate(groups[:-1]):
                assert len(group["layers"]) == 1, (
                    f"group {index} covers layers {group['layers']} without coalesce"
                )

    def check_lrs(self) -> None:
        """Invariant 3 on the groups and on the scheduler's ``get_last_lr()``."""
        check_lrs(self.curriculum, self.reference_optimizer.param_groups[0], rel_tol=self.rel_tol)
        scheduler = self.curriculum.scheduler
        if scheduler is None:
            return
        groups = self.curriculum.optimizer.param_groups  # type: ignore[union-attr]
        last = scheduler.get_last_lr()
        flat = self.reference_scheduler.get_last_lr()[0]
        assert len(last) == len(groups), (
            f"the scheduler's get_last_lr() has {len(last)} entries for {len(groups)} groups"
        )
        state = self.curriculum.state
        for index, (group, value) in enumerate(zip(groups, last)):
            coefficient = state.coefficient(group["layers"][0]) if group["layers"] else 1.0
            assert math.isclose(value, flat * coefficient, rel_tol=self.rel_tol, abs_tol=0.0), (
                f"get_last_lr()[{index}] (group {index}, layers {group['layers']}) is {value!r}, "
                f"expected {flat!r} x {coefficient!r} = {flat * coefficient!r}"
            )


def _copied(value: Any) -> Any:
    """A copy of nested dicts, lists and tuples with every tensor cloned (the rest shared)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copied(item) for item in value]
    if isinstance(value, tuple):
        items = [_copied(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def step_scheduler(scheduler: Any, metric: float) -> None:
    """``scheduler.step()``, with ``metric`` for ReduceLROnPlateau."""
    with scheduler_order_warning_off():
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metric)
        else:
            scheduler.step()
