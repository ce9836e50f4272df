"""Curriculum under random runs: DESIGN.md's invariant, checked after every step.

A hypothesis ``RuleBasedStateMachine`` drives a live :class:`mentor_fn.Curriculum`
on a tiny model with random freeze / unfreeze / set_lr_coefficient (with and
without ``reset_optimizer_if_needed``), optimizer steps on real gradients,
scheduler steps, new phases (``build()``) and save/resume round trips through
``torch.save`` / ``torch.load(weights_only=True)`` into a freshly constructed
model and Curriculum. It runs once per torch lr scheduler, with and without
``coalesce``, on Adam, SGD with momentum and Adagrad (whose constructor writes
per-parameter state).

Expected values never come from mentor_fn itself. The machine keeps its own
model of the curriculum:

* the resolved frozen flag and coefficient of every layer, replayed naively
  (a write on a layer sets its whole dotted subtree);
* when a change needs a rebuild, from the live optimizer's groups and the
  design's rule (a trainable layer with no group, a group whose layers'
  coefficients now differ, a group going from coefficient 0 to non-zero);
* the lr schedule, from a separate one-parameter torch optimizer with one flat
  group at the global lr and its own scheduler from the same factory, stepped
  in lockstep and never interrupted by rebuilds or round trips;
* what "fresh" optimizer state is, from a scratch optimizer of the same class.

After every step it checks the invariant: (1) requires_grad iff the owning
layer is not frozen, and frozen parameters never move; (2) every trainable
parameter is in exactly one group, whose ``layers`` / ``coefficient`` agree
with the state, and the parameter-less reference group comes last; (3) every
group's lr (and every other lr-like value torch keeps per group) is the flat
reference's times the group's coefficient. A round trip checks (4): the
resumed run and the uninterrupted one take two identical optimizer + scheduler
steps and must agree bit for bit. Transitions also check that a refused
rebuild changes nothing, that re-activated parameters get fresh optimizer state
and that parameters trainable before and after keep theirs. Hypothesis events
count the plans taken, refused rebuilds and round trips.
"""

from __future__ import annotations

import copy
import io
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from torch import nn
from torch.nn import functional as F
from torch.optim import lr_scheduler

import mentor_fn as mf

# The model ------------------------------------------------------------------------

LR = 0.1
# The Tanh owns nothing, so it is not a layer: "backbone.1.1" does not exist.
LAYERS = ("backbone", "backbone.0", "backbone.1", "backbone.1.0", "backbone.1.2", "head")
OWNERS = ("backbone.0", "backbone.1.0", "backbone.1.2", "head")
PATTERNS = (
    *(re.escape(layer) for layer in LAYERS),
    r"backbone\..*",
    r"backbone\.1\.\d",
    r"head|backbone\.0",
)
COEFFICIENTS = (0.0, 0.1, 0.3, 0.5, 1.0, 2.0)
# Repeated values give ReduceLROnPlateau plateaus as well as improvements.
METRICS = (4.0, 2.0, 1.0, 1.0, 0.5)

_data = torch.Generator().manual_seed(7)
INPUTS = torch.randn(8, 3, generator=_data)
TARGETS = torch.randn(8, 2, generator=_data)


def make_model(seed: int) -> nn.Module:
    """backbone (a Linear and a nested Sequential of two Linears) and a head."""
    model = nn.Sequential(
        OrderedDict(
            backbone=nn.Sequential(
                nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
            ),
            head=nn.Linear(4, 2),
        )
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def owner(name: str) -> str:
    """The layer that owns parameter ``name`` (no tied weights in this model)."""
    return name.rpartition(".")[0]


# Schedulers and optimizers --------------------------------------------------------

SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def _cycles_momentum(optimizer: torch.optim.Optimizer) -> bool:
    # OneCycleLR / CyclicLR cycle momentum only on optimizers that have one.
    return "momentum" in optimizer.defaults or "betas" in optimizer.defaults


def _inverse_decay(epoch: int) -> float:
    return 1.0 / (1.0 + 0.5 * epoch)


def _every_other(epoch: int) -> float:
    return 0.8 if epoch % 2 else 1.0


ONE_CYCLE_STEPS = 24

SCHEDULERS: dict[str, SchedulerFactory] = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.8),
    # eta_min 0: with eta_min > 0 the cosine schedules are not proportional to the base lr.
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=3, T_mult=2
    ),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, _inverse_decay),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, _every_other),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=3),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=12, power=1.5),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(
        o, max_lr=0.5, total_steps=ONE_CYCLE_STEPS, cycle_momentum=_cycles_momentum(o)
    ),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(
        o,
        base_lr=0.01,
        max_lr=0.2,
        step_size_up=3,
        mode="triangular2",
        cycle_momentum=_cycles_momentum(o),
    ),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o,
        [
            lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=2),
            lr_scheduler.ExponentialLR(o, gamma=0.9),
        ],
        milestones=[3],
    ),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [
            lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
            lr_scheduler.ExponentialLR(o, gamma=0.9),
        ]
    ),
    # eps=0: torch skips a reduction smaller than eps (an absolute threshold),
    # which would make small groups stop decaying before the flat reference does.
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(
        o, factor=0.5, patience=0, min_lr=0.0, eps=0.0
    ),
}

# How many scheduler steps a schedule allows after construction (None: unbounded).
MAX_SCHEDULER_STEPS = {"OneCycleLR": ONE_CYCLE_STEPS - 1}

OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "Adam": (torch.optim.Adam, {}),
    "SGD": (torch.optim.SGD, {"momentum": 0.9}),
    "Adagrad": (torch.optim.Adagrad, {"initial_accumulator_value": 0.1, "lr_decay": 0.01}),
}


@dataclass(frozen=True)
class Variant:
    scheduler: str
    optimizer: str
    coalesce: bool

    @property
    def id(self) -> str:
        return f"{self.scheduler}-{self.optimizer}-{'coalesce' if self.coalesce else 'per_layer'}"


# Every scheduler on Adam, and on SGD or Adagrad in turn, each once with coalesce.
VARIANTS = tuple(
    variant
    for number, name in enumerate(SCHEDULERS)
    for variant in (
        Variant(name, "Adam", coalesce=number % 2 == 0),
        Variant(name, "SGD" if number % 2 else "Adagrad", coalesce=number % 2 == 1),
    )
)


def step_scheduler(scheduler: Any, metric: float) -> None:
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(metric)
    else:
        scheduler.step()


def train_step(curriculum: mf.Curriculum) -> None:
    """One optimizer step on the fixed batch (no backward when nothing trains)."""
    curriculum.model.zero_grad(set_to_none=True)
    loss = F.mse_loss(curriculum.model(INPUTS), TARGETS)
    if loss.requires_grad:
        loss.backward()
    curriculum.optimizer.step()


# Comparing ------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Exact (bitwise for tensors) equality of nested plain data."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def close(actual: float, expected: float) -> bool:
    return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-15)


def named_parameters(curriculum: mf.Curriculum) -> dict[str, torch.Tensor]:
    return dict(curriculum.model.named_parameters())


def optimizer_state(curriculum: mf.Curriculum) -> dict[str, dict[str, Any]]:
    """Per-parameter optimizer state by name, copied (absent and empty are the same)."""
    optimizer = curriculum.optimizer
    return {
        name: {key: copy.deepcopy(value) for key, value in optimizer.state.get(p, {}).items()}
        for name, p in named_parameters(curriculum).items()
    }


def snapshot(curriculum: mf.Curriculum) -> dict[str, Any]:
    """Everything a refused change must leave as it was."""
    names = {id(p): name for name, p in named_parameters(curriculum).items()}
    optimizer, scheduler = curriculum.optimizer, curriculum.scheduler
    return {
        "state": curriculum.state,
        "requires_grad": {n: p.requires_grad for n, p in named_parameters(curriculum).items()},
        "optimizer": optimizer,
        "groups": [
            {
                **{k: copy.deepcopy(v) for k, v in group.items() if k != "params"},
                "params": [names[id(p)] for p in group["params"]],
            }
            for group in optimizer.param_groups
        ],
        "optimizer_state": optimizer_state(curriculum),
        "scheduler": None if scheduler is None else copy.deepcopy(scheduler.state_dict()),
        "scheduler_optimizer": None if scheduler is None else scheduler.optimizer,
    }


def assert_same_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["state"] == before["state"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["optimizer"] is before["optimizer"]
    assert after["scheduler_optimizer"] is before["scheduler_optimizer"]
    for key in ("groups", "optimizer_state", "scheduler"):
        assert same(after[key], before[key]), key


def fresh_state(variant: Variant, parameter: torch.Tensor) -> dict[str, Any]:
    """The state a new optimizer of the variant's class gives a parameter like this one."""
    optimizer_class, kwargs = OPTIMIZERS[variant.optimizer]
    scratch = parameter.detach().clone().requires_grad_(True)
    return dict(optimizer_class([scratch], lr=LR, **kwargs).state.get(scratch, {}))


# The machine ----------------------------------------------------------------------


class CurriculumMachine(RuleBasedStateMachine):
    """One live Curriculum against an independent model of what it must hold."""

    variant: ClassVar[Variant]

    def __init__(self) -> None:
        super().__init__()
        self.frozen = dict.fromkeys(LAYERS, False)
        self.coefficients = dict.fromkeys(LAYERS, 1.0)
        self.curriculum = self.new_curriculum(make_model(seed=0))
        self.built = False

    # Construction ---------------------------------------------------------------

    def new_curriculum(self, model: nn.Module) -> mf.Curriculum:
        optimizer_class, kwargs = OPTIMIZERS[self.variant.optimizer]
        return mf.Curriculum(
            model,
            LR,
            optimizer=optimizer_class,
            optimizer_kwargs=kwargs,
            scheduler=SCHEDULERS[self.variant.scheduler],
            coalesce=self.variant.coalesce,
        )

    def new_phase(self) -> None:
        """``build()`` and restart the flat reference schedule with it."""
        self.curriculum.build()
        optimizer_class, kwargs = OPTIMIZERS[self.variant.optimizer]
        self.reference_parameter = torch.zeros(1, requires_grad=True)
        self.reference_optimizer = optimizer_class([self.reference_parameter], lr=LR, **kwargs)
        self.reference_scheduler = SCHEDULERS[self.variant.scheduler](self.reference_optimizer)
        self.scheduler_steps = 0
        self.built = True
        # A new phase is a fresh optimizer: no parameter carries state over.
        parameters = named_parameters(self.curriculum)
        for name, values in optimizer_state(self.curriculum).items():
            if not self.frozen[owner(name)]:
                assert same(values, fresh_state(self.variant, parameters[name])), name

    def steps_left(self) -> float:
        limit = MAX_SCHEDULER_STEPS.get(self.variant.scheduler)
        return math.inf if limit is None else limit - self.scheduler_steps

    # Rules ----------------------------------------------------------------------

    @initialize(
        writes=st.lists(
            st.tuples(
                st.sampled_from(["freeze", "unfreeze", "set_lr_coefficient"]),
                st.sampled_from(PATTERNS),
                st.sampled_from(COEFFICIENTS),
            ),
            max_size=3,
        )
    )
    def start(self, writes: list[tuple[str, str, float]]) -> None:
        """Writes before ``build()`` change only the state and the flags."""
        for operation, pattern, coefficient in writes:
            self.transition(operation, pattern, coefficient, reset=False)
        self.new_phase()

    @rule(pattern=st.sampled_from(PATTERNS), reset=st.booleans())
    def freeze(self, pattern: str, reset: bool) -> None:
        self.transition("freeze", pattern, 1.0, reset)

    @rule(pattern=st.sampled_from(PATTERNS), reset=st.booleans())
    def unfreeze(self, pattern: str, reset: bool) -> None:
        self.transition("unfreeze", pattern, 1.0, reset)

    @rule(
        coefficient=st.sampled_from(COEFFICIENTS),
        pattern=st.sampled_from(PATTERNS),
        reset=st.booleans(),
    )
    def set_lr_coefficient(self, coefficient: float, pattern: str, reset: bool) -> None:
        self.transition("set_lr_coefficient", pattern, coefficient, reset)

    @rule()
    def optimizer_step(self) -> None:
        before = {n: p.detach().clone() for n, p in named_parameters(self.curriculum).items()}
        train_step(self.curriculum)
        self.reference_optimizer.step()
        for name, parameter in named_parameters(self.curriculum).items():
            if self.frozen[owner(name)]:
                assert torch.equal(parameter, before[name]), f"frozen {name} changed"

    @precondition(lambda self: self.steps_left() >= 1)
    @rule(metric=st.sampled_from(METRICS))
    def scheduler_step(self, metric: float) -> None:
        step_scheduler(self.curriculum.scheduler, metric)
        step_scheduler(self.reference_scheduler, metric)
        self.scheduler_steps += 1

    @rule(draw=st.integers(0, 3))
    def build(self, draw: int) -> None:
        # A new phase one time in four: histories stay long enough to need rebuilds.
        if draw == 0:
            self.new_phase()

    @precondition(lambda self: self.steps_left() >= 2)
    @rule(
        build_first=st.booleans(),
        metrics=st.tuples(st.sampled_from(METRICS), st.sampled_from(METRICS)),
    )
    def round_trip(self, build_first: bool, metrics: tuple[float, float]) -> None:
        """Save, resume into a fresh model, and continue like the uninterrupted run."""
        original = self.curriculum
        buffer = io.BytesIO()
        torch.save(
            {"model": original.model.state_dict(), "curriculum": original.state_dict()}, buffer
        )
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        resumed = self.new_curriculum(make_model(seed=1))
        if build_first:
            resumed.build()  # loading replaces whatever a Curriculum holds
        resumed.model.load_state_dict(saved["model"])
        resumed.load_state_dict(saved["curriculum"])
        assert resumed.state == original.state

        for metric in metrics:
            for curriculum in (original, resumed):
                train_step(curriculum)
                step_scheduler(curriculum.scheduler, metric)
            self.reference_optimizer.step()
            step_scheduler(self.reference_scheduler, metric)
            self.scheduler_steps += 1
            self.assert_bit_identical(original, resumed)
        self.curriculum = resumed
        event("round trip")

    # Transitions ----------------------------------------------------------------

    def transition(self, operation: str, pattern: str, coefficient: float, reset: bool) -> None:
        curriculum = self.curriculum
        selected = [layer for layer in LAYERS if re.fullmatch(pattern, layer)]
        new_frozen, new_coefficients = dict(self.frozen), dict(self.coefficients)
        for layer in LAYERS:
            if any(layer == s or layer.startswith(s + ".") for s in selected):
                if operation == "set_lr_coefficient":
                    new_coefficients[layer] = coefficient
                else:
                    new_frozen[layer] = operation == "freeze"
        call = getattr(curriculum, operation)
        arguments = (coefficient, pattern) if operation == "set_lr_coefficient" else (pattern,)

        if not self.built:
            assert call(*arguments, reset_optimizer_if_needed=reset) == mf.NoChange()
            assert curriculum.optimizer is None
            self.frozen, self.coefficients = new_frozen, new_coefficients
            return

        expected = self.expected_plan(new_frozen, new_coefficients)
        before = snapshot(curriculum)
        if expected is mf.Rebuild and not reset:
            with pytest.raises(RuntimeError, match="rebuilt"):
                call(*arguments, reset_optimizer_if_needed=False)
            assert_same_snapshot(before, snapshot(curriculum))
            event("refused rebuild")
            return
        result = call(*arguments, reset_optimizer_if_needed=reset)
        event(f"{operation}: {type(result).__name__}")
        assert type(result) is expected, (result, expected)
        if expected is not mf.Rebuild:
            assert curriculum.optimizer is before["optimizer"]

        parameters = named_parameters(curriculum)
        after = optimizer_state(curriculum)
        for name, values in after.items():
            layer = owner(name)
            if self.frozen[layer] and not new_frozen[layer]:
                assert same(values, fresh_state(self.variant, parameters[name])), (
                    f"re-activated {name} has stale optimizer state"
                )
            elif not self.frozen[layer] and not new_frozen[layer]:
                assert same(values, before["optimizer_state"][name]), (
                    f"{name} lost its optimizer state"
                )
        self.frozen, self.coefficients = new_frozen, new_coefficients

    def expected_plan(
        self, new_frozen: dict[str, bool], new_coefficients: dict[str, float]
    ) -> type:
        """The design's plan rule, read off the live optimizer's groups."""
        grouped: set[str] = set()
        patch = False
        for group in self.curriculum.optimizer.param_groups[:-1]:
            coefficients = {new_coefficients[layer] for layer in group["layers"]}
            if len(coefficients) > 1:
                return mf.Rebuild  # a coalesced group must split
            (target,) = coefficients
            if target != group["coefficient"]:
                if group["coefficient"] == 0:
                    return mf.Rebuild  # 0 -> non-zero: the ratio is undefined
                patch = True
            grouped.update(group["layers"])
        for layer in OWNERS:
            if not new_frozen[layer]:
                if layer not in grouped:
                    return mf.Rebuild
                if self.frozen[layer]:
                    patch = True  # re-activated: fresh state
        return mf.Patch if patch else mf.NoChange

    # Checks ---------------------------------------------------------------------

    def assert_bit_identical(self, original: mf.Curriculum, resumed: mf.Curriculum) -> None:
        a, b = named_parameters(original), named_parameters(resumed)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{name} differs after resume"
            assert a[name].requires_grad == b[name].requires_grad
        names_a = {id(p): n for n, p in a.items()}
        names_b = {id(p): n for n, p in b.items()}
        assert len(original.optimizer.param_groups) == len(resumed.optimizer.param_groups)
        for group_a, group_b in zip(
            original.optimizer.param_groups, resumed.optimizer.param_groups
        ):
            assert group_a["lr"] == group_b["lr"]
            others_a = {k: v for k, v in group_a.items() if k != "params"}
            others_b = {k: v for k, v in group_b.items() if k != "params"}
            assert same(others_a, others_b), (others_a, others_b)
            assert [names_a[id(p)] for p in group_a["params"]] == [
                names_b[id(p)] for p in group_b["params"]
            ]
        assert same(optimizer_state(original), optimizer_state(resumed))
        assert same(original.scheduler.state_dict(), resumed.scheduler.state_dict())

    @invariant()
    def state_matches_the_replayed_writes(self) -> None:
        state = self.curriculum.state
        assert state.layers == LAYERS
        for layer in LAYERS:
            assert state.is_frozen(layer) == self.frozen[layer], layer
            assert state.coefficient(layer) == self.coefficients[layer], layer

    @invariant()
    def requires_grad_iff_not_frozen(self) -> None:
        expected = mf.requires_grad_map(self.curriculum.state, self.curriculum.model)
        for name, parameter in named_parameters(self.curriculum).items():
            trainable = not self.frozen[owner(name)]
            assert expected[name] == trainable, name
            assert parameter.requires_grad == trainable, name
            if not trainable:
                assert parameter.grad is None, f"frozen {name} keeps a gradient"

    @invariant()
    def every_trainable_parameter_in_exactly_one_group(self) -> None:
        if not self.built:
            return
        parameters = named_parameters(self.curriculum)
        groups = self.curriculum.optimizer.param_groups
        reference = groups[-1]
        assert reference["layers"] == () and reference["params"] == []
        assert reference["coefficient"] == 1.0
        count = dict.fromkeys(map(id, parameters.values()), 0)
        seen_layers: set[str] = set()
        for group in groups[:-1]:
            layers = group["layers"]
            assert isinstance(layers, tuple) and layers, group
            assert set(layers) <= set(OWNERS), layers
            assert not seen_layers & set(layers), f"{layers} in two groups"
            seen_layers.update(layers)
            if not self.variant.coalesce:
                assert len(layers) == 1, layers
            for layer in layers:
                assert group["coefficient"] == self.coefficients[layer], (layer, group)
            owned = [id(p) for n, p in parameters.items() if owner(n) in layers]
            assert sorted(map(id, group["params"])) == sorted(owned), layers
            for parameter in group["params"]:
                count[id(parameter)] += 1
        for name, parameter in parameters.items():
            expected = (1,) if not self.frozen[owner(name)] else (0, 1)
            assert count[id(parameter)] in expected, (name, count[id(parameter)])

    @invariant()
    def every_lr_is_the_flat_lr_times_the_coefficient(self) -> None:
        if not self.built:
            return
        flat = self.reference_optimizer.param_groups[0]
        groups = self.curriculum.optimizer.param_groups
        scheduler = self.curriculum.scheduler
        last_lrs = scheduler.get_last_lr()
        assert len(last_lrs) == len(groups)
        flat_last_lr = self.reference_scheduler.get_last_lr()[0]
        for index, group in enumerate(groups):
            coefficient = group["coefficient"]
            # Every lr-like value torch keeps in the group, not just "lr": the
            # schedulers recompute from initial_lr / max_lr / min_lr later.
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if key in flat:
                    assert key in group, (key, group["layers"])
                    assert close(group[key], flat[key] * coefficient), (
                        key,
                        group["layers"],
                        group[key],
                        flat[key],
                        coefficient,
                    )
            assert close(last_lrs[index], flat_last_lr * coefficient), (
                "get_last_lr",
                group["layers"],
            )


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda variant: variant.id)
def test_curriculum_invariant(variant: Variant) -> None:
    machine = type(f"CurriculumMachine_{variant.id}", (CurriculumMachine,), {"variant": variant})
    run_state_machine_as_test(machine, settings=settings(max_examples=25, stateful_step_count=50))
