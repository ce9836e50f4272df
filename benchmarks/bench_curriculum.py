"""Benchmark: building, rebuilding, loading, patching and stepping a Curriculum's optimizer.

What a user pays before training is ``Curriculum(model, lr)`` plus
``build()``: the target is that the two together stay within 1.5x of torch's
constructor given one flat group of the same parameters (torch's own
constructor is quadratic in groups) at 1k, 4k and 10k layers. Loading must be
linear (torch's ``Optimizer.load_state_dict`` is quadratic in parameter
tensors), a coefficient patch must cost by the number of changed groups, not
by the model (at 10k layers: a call that changes nothing <= 0.2 ms, one
changed group <= 0.3 ms, ``ScheduleRunner.step()`` without a phase change <=
20 us), with ``coalesce=True`` a fused Adam step must cost at most 1.05x one
flat group for models of 50 layers or more (what torch's own optimizer costs
on the same groups), and unfreezing the top 4 blocks of a ViT-B must cost at
most what Lightning's ``BaseFinetuning.unfreeze_and_add_param_group`` costs.

The models for build / rebuild / load / patch are ``nn.Sequential`` blocks of
10 sub-blocks of 10 ``nn.Linear(16, 16)`` (names like ``"3.4.5"``). *Layers*
counts those Linear layers: the layers that own parameters, each getting one
optimizer group (2 parameter tensors each; the containers add 11% more layer
names that own nothing). Per size, in one run, medians over several rounds.
Compared variants are timed back to back (in alternating order), and a ratio
is the median of the per-round ratios, so machine noise hits both sides alike.
In a round, a variant's time is the fastest of up to 5 back-to-back calls
(fewer once 0.5 s went into them), each after its untimed setup: on a busy
machine, preemption adds a few ms to random calls, which would double a 2 ms
one.

- **flat**, the baseline: ``torch.optim.Adam(list(model.parameters()), lr)``
  (the traversal included: ``build()`` walks the model too);
- **Curriculum(model, lr) + build()**, the headline, timed as one call; the
  constructor alone is shown for information (it does not walk the model:
  the state is derived at the first use, here ``build()``);
- **build() again**: a new phase (``build()``) on a built Curriculum;
- ``build_optimizer`` (``mentor_fn._wrapper.optimizers.build_optimizer`` alone, on the
  precomputed groups ``build()`` gives it) is compared with the flat
  constructor on a precomputed parameter list;
- **torch per-layer**, for contrast: ``torch.optim.Adam(param_groups(state,
  model, lr))``, only up to 1,000 layers (it is quadratic: seconds at 4,000);
- **rebuild**: on a Curriculum built with one Linear frozen and stepped once
  (so there is optimizer state to carry), ``unfreeze(that layer,
  reset_optimizer_if_needed=True)``; it also plans the change, walks the
  model afresh and checks the optimizer's parameters, carries the state
  into the same optimizer and sets ``requires_grad``;
- **load**: ``Curriculum.load_state_dict(sd)`` on a fresh Curriculum, against
  ``Optimizer.load_state_dict`` on a fresh flat Adam; both state dicts were
  taken after one step, so every parameter has state. The Curriculum's load
  also validates every field (structure, kinds, state shapes) first;
- **patch**: ``set_lr_coefficient`` on one Linear, a sub-block, a block (1,
  10, 100 changed groups) and, from 10k layers, ten blocks (1,000); each call
  changes the coefficients (0.5 and 0.25 alternate). A call that changes
  nothing gives the floor every call pays (the pattern looked up, the state
  transition, the diff of the rules, the plan over the touched groups).
  The first transition after a build, rebuild or load also indexes the
  optimizer's groups (linear in them, once): the fastest of 5 calls leaves
  it out;
- **ScheduleRunner.step()**: per call, in batches of 1,000, on a built
  Curriculum whose phase ends at a plateau of a metric or after a million
  epochs (no phase change: the cursor advances); and, for information,
  during a warmup ramping one layer's coefficient (a 1-group patch per step),
  in batches of 50.

Unfreezing the top 4 blocks (8-11) of a model with ViT-B/16's module tree and
parameter shapes (embed dim 768, MLP 3,072, 12 blocks: 152 tensors, 86M
parameters), after 3 Adam steps, against Lightning's
``BaseFinetuning.unfreeze_and_add_param_group(blocks, optimizer, lr=lr)`` on a
``torch.optim.Adam`` (skipped with a note when lightning is not installed):

- **rebuild path**: the blocks were frozen when the optimizer was built;
  mentor_fn: ``curriculum.unfreeze(blocks, reset_optimizer_if_needed=True)``
  (a rebuild in place); Lightning adds them as a new group;
- **patch path**: the blocks had groups and were frozen after the build;
  mentor_fn: ``curriculum.unfreeze(blocks)`` (a patch: fresh optimizer state
  for them); Lightning finds them in the optimizer and only makes them
  trainable.

Each timed call follows its untimed setup (a new Curriculum or optimizer
holding the state 3 steps gave: the same tensors, which no timed call writes);
the two sides of a path are timed back to back, in alternating order.

Step timings use fused Adam (``optimizer_kwargs={"fused": True}``) with
``torch.set_num_threads(1)``, gradients set once, on: 50 ``Linear(256, 256)``;
parameters shaped like torchvision's resnet50 (161 tensors in 107 layers); 500
small ``Linear(64, 64)``. Variants: one flat group, per-layer groups
(``coalesce=False``) and coalesced groups (``coalesce=True``, 4 distinct
coefficients), both with mentor_fn's parameter-less reference group; and, to
show what any multi-group optimizer costs, torch's own ``Adam`` on the same 4
groups as the coalesced one (no reference group). A round times 12 steps of
each, interleaved step by step (cycling through the 24 orders of the four),
and keeps each variant's fastest step; the ratios are medians over the rounds.

The garbage collector stays enabled and runs before each timed call. What
exists before the timed rounds (torch's modules, the model, the saved state
dicts) is moved to its permanent generation (``gc.freeze``), so that a
collection triggered inside a timed call costs what it would in a small
program, not a function of everything imported.

Before timing, results are checked: the groups partition the trainable
parameters, a parameter in two groups is rejected, the rebuilds and patches
take the expected plans and keep the optimizer state, and a load restores the
saved state.

Run from the repository root::

    python -m benchmarks.bench_curriculum            # 200, 1k, 4k, 10k layers, ViT-B
    python -m benchmarks.bench_curriculum --quick    # a smoke test: seconds

``--quick`` runs every code path and prints every table on the smallest
sizes (200 and 300 layers, small step models, the ViT's tree at embed dim 16),
one round, one call per sample, no warm-up round: timings not judged.

The exit status is 0 when every target is met (Curriculum(model, lr) +
build() <= 1.5x flat from 1k layers; build, rebuild and load linear: their ms
per layer grows from 1k to 10k layers at most 2x more than the flat
constructor's; coalesced steps <= 1.05x flat; the transition costs above at
the largest size; the ViT paths <= 1.0x Lightning), 1 otherwise. It depends
on timing: a smoke test should check that the benchmark runs, not its status.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import mentor_fn as mf
from benchmarks import _vit_unfreeze as vit
from benchmarks._common import machine, quick_and_repeats_arguments
from mentor_fn._wrapper.optimizer_recipe import OptimizerRecipe
from mentor_fn._wrapper.optimizers import build_optimizer

BUILD_LIMIT = 1.5
"""Largest allowed (Curriculum(model, lr) + build()) / flat constructor ratio, from 1k layers."""

BUILD_LIMIT_FROM = 1_000
"""The build target applies from this many layers (below, fixed costs weigh)."""

STEP_LIMIT = 1.05
"""Largest allowed coalesced / flat fused-Adam step ratio (issue 4)."""

LINEARITY_SPREAD = 2.0
"""A cost counts as linear when its ms per layer grows across sizes (max / min)
at most this much more than the flat constructor's (a quadratic one: ~10x from
1k to 10k layers)."""

FULL_SIZES = (200, 1_000, 4_000, 10_000)
QUICK_SIZES = (200, 300)
TORCH_PER_LAYER_MAX = 1_000
"""torch's constructor with per-layer groups is quadratic: measured up to this size only."""

LR = 1e-3
WIDTH = 16
LEAVES = 10  # Linear layers per sub-block
SUB_BLOCKS = 10  # sub-blocks per block: a block holds 100 Linear layers

FROZEN_AT_BUILD = "0.0.0"
"""The layer frozen when the rebuild's Curriculum is built, then unfrozen."""


# Models ---------------------------------------------------------------------------


def build_model(layers: int) -> nn.Sequential:
    """``layers`` Linear(16, 16) in blocks of 10 sub-blocks of 10 (names like ``"3.4.5"``)."""
    if layers % (LEAVES * SUB_BLOCKS):
        raise ValueError(f"layers must be a multiple of {LEAVES * SUB_BLOCKS}, got {layers}")
    blocks = layers // (LEAVES * SUB_BLOCKS)
    return nn.Sequential(
        *(
            nn.Sequential(
                *(
                    nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(LEAVES)))
                    for _ in range(SUB_BLOCKS)
                )
            )
            for _ in range(blocks)
        )
    )


class _Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, downsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
            )


class ResNet50Shapes(nn.Module):
    """The module tree and parameter shapes of torchvision's resnet50 (no forward).

    ``width`` is the first stage's planes (64 in resnet50; ``--quick`` takes 8).
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        inplanes = width
        stages = ((width, 3), (2 * width, 4), (4 * width, 6), (8 * width, 3))
        for number, (planes, blocks) in enumerate(stages, 1):
            stage = []
            for block in range(blocks):
                stage.append(_Bottleneck(inplanes, planes, downsample=block == 0))
                inplanes = planes * 4
            setattr(self, f"layer{number}", nn.Sequential(*stage))
        self.fc = nn.Linear(32 * width, 1000 if width == 64 else 10)


def linear_stack(count: int, width: int) -> nn.Sequential:
    """``count`` Linear(width, width) in blocks of 10."""
    return nn.Sequential(
        *(nn.Sequential(*(nn.Linear(width, width) for _ in range(10))) for _ in range(count // 10))
    )


@dataclass(frozen=True)
class StepModel:
    name: str
    make: Callable[[], nn.Module]
    coefficients: tuple[tuple[str, float], ...]
    """``(pattern, coefficient)`` writes giving 4 distinct coefficients."""


STEP_MODELS = (
    StepModel(
        "50 x Linear(256, 256)",
        lambda: linear_stack(50, 256),
        (("0", 0.25), ("1", 0.5), ("2", 0.75)),
    ),
    StepModel(
        "resnet50 shapes (161 tensors)",
        ResNet50Shapes,
        (("conv1|bn1|layer1", 0.25), ("layer2", 0.5), ("layer3", 0.75)),
    ),
    StepModel(
        "500 x Linear(64, 64)",
        lambda: linear_stack(500, 64),
        ((r"\d", 0.25), (r"1\d", 0.5), (r"2\d", 0.75)),
    ),
)
QUICK_STEP_MODELS = (
    StepModel("50 x Linear(16, 16)", lambda: linear_stack(50, 16), STEP_MODELS[0].coefficients),
    StepModel(
        "resnet50 tree, width 8",
        lambda: ResNet50Shapes(width=8),
        STEP_MODELS[1].coefficients,
    ),
    StepModel("400 x Linear(8, 8)", lambda: linear_stack(400, 8), STEP_MODELS[2].coefficients),
)
"""The same code paths on small shapes: ``--quick`` is a smoke test."""


# Timing ---------------------------------------------------------------------------


BEST_OF = 5
"""Calls per sample: a sample is the fastest of up to this many (see _best_ms)."""

QUICK_BEST_OF = 1
"""``--quick``: one call per sample."""

_best_of = [BEST_OF]
"""The calls per sample of this run (``main`` sets it)."""

BEST_OF_BUDGET_S = 0.5
"""Stop repeating a call within a sample once this much time went into it."""


def _best_ms(make_call: Callable[[], Callable[[], Any]], best_of: int | None = None) -> float:
    """The fastest of up to ``best_of`` calls, in ms: one sample.

    ``make_call()`` (untimed) sets up and returns the call to time. On a busy
    machine the scheduler preempts a process for a few ms at a time, which
    doubles a 2 ms call at random; the fastest of a few back-to-back calls
    leaves that out. Calls that take long (where a preemption weighs little)
    are not repeated past ``BEST_OF_BUDGET_S``.
    """
    best = float("inf")
    spent = 0.0
    for _ in range(_best_of[0] if best_of is None else best_of):
        call = make_call()
        gc.collect()
        start = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - start
        del result
        best = min(best, elapsed)
        spent += elapsed
        if spent > BEST_OF_BUDGET_S:
            break
    return best * 1e3


def _same(call: Callable[[], Any]) -> Callable[[], Callable[[], Any]]:
    """A ``make_call`` for a call that needs no setup."""
    return lambda: call


class Samples:
    """Per-round timings of several variants, ratios taken round by round."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def median(self, key: str) -> float:
        values = self.values.get(key)
        return statistics.median(values) if values else float("nan")

    def ratio(self, key: str, baseline: str) -> float:
        """Median over rounds of ``key / baseline``."""
        values, bases = self.values.get(key), self.values.get(baseline)
        if not values or not bases:
            return float("nan")
        return statistics.median(value / base for value, base in zip(values, bases, strict=True))


def _rounds(
    repeats: int,
    variants: Sequence[tuple[str, Callable[[], float | dict[str, float]]]],
    samples: Samples,
) -> None:
    """Run ``repeats`` rounds of every variant, rotating their order each round.

    A variant returns its time in ms, or a dict of named times (several keys).
    """
    for round_number in range(repeats):
        shift = round_number % len(variants)
        for key, measure in [*variants[shift:], *variants[:shift]]:
            result = measure()
            if isinstance(result, dict):
                for name, value in result.items():
                    samples.add(name, value)
            else:
                samples.add(key, result)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _set_grads(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for parameter in model.parameters():
        parameter.grad = torch.randn(parameter.shape, generator=generator) * 1e-3


# Build, rebuild, load, patch ------------------------------------------------------


def _unit_groups(model: nn.Module, state: mf.CurriculumState) -> list[dict[str, Any]]:
    """The groups ``Curriculum.build`` gives ``build_optimizer``: at coefficient 1, plus
    the parameter-less reference group."""
    groups = [
        {**group, "lr": LR, "coefficient": 1.0} for group in mf.param_groups(state, model, LR)
    ]
    groups.append({"params": [], "lr": LR, "layers": (), "coefficient": 1.0})
    return groups


def check_build(model: nn.Module) -> None:
    """The built groups partition the trainable parameters; duplicates are rejected."""
    curriculum = mf.Curriculum(model, LR)
    curriculum.freeze(FROZEN_AT_BUILD)
    optimizer = curriculum.build()
    groups = optimizer.param_groups
    expected = [
        parameter
        for name, parameter in model.named_parameters()
        if not name.startswith(FROZEN_AT_BUILD + ".")
    ]
    got = [parameter for group in groups for parameter in group["params"]]
    _require([id(p) for p in got] == [id(p) for p in expected], "groups != trainable params")
    _require(all(len(group["params"]) == 2 for group in groups[:-1]), "one Linear per group")
    _require(groups[-1]["params"] == [] and groups[-1]["layers"] == (), "no reference group")
    _require(all(group["lr"] == LR for group in groups), "lr at coefficient 1")
    _require(all(group["betas"] == (0.9, 0.999) for group in groups), "defaults missing")
    curriculum.unfreeze(FROZEN_AT_BUILD, reset_optimizer_if_needed=True)

    unit = _unit_groups(model, curriculum.state)
    duplicated = [*unit[:-1], {**unit[0], "layers": ("again",)}, unit[-1]]
    try:
        build_optimizer(OptimizerRecipe(torch.optim.Adam, LR), duplicated)
    except ValueError:
        pass
    else:
        raise AssertionError("build_optimizer accepted a parameter in two groups")


def _stepped_curriculum(model: nn.Module, frozen: str | None) -> mf.Curriculum:
    curriculum = mf.Curriculum(model, LR)
    if frozen is not None:
        curriculum.freeze(frozen)
    optimizer = curriculum.build()
    _set_grads(model)
    optimizer.step()
    return curriculum


def _patch_targets(layers: int) -> dict[int, str]:
    """changed groups -> a pattern selecting that many Linear layers (disjoint subtrees)."""
    if layers >= 1_200:  # blocks 0-9 hold 1,000 Linear layers
        return {1: "11.1.0", 10: "11.0", 100: "10", 1_000: r"\d"}
    return {1: "1.1.0", 10: "1.0", 100: "0"}


@dataclass
class SizeRow:
    layers: int
    repeats: int
    samples: Samples = field(default_factory=Samples)


def _in_turn(
    round_number: int, calls: Sequence[tuple[str, Callable[[], float | dict[str, float]]]]
) -> dict[str, float]:
    """Time ``calls`` back to back, in reverse order every other round.

    A call returns its time in ms, or a dict of named times.
    """
    ordered = calls if round_number % 2 == 0 else list(reversed(calls))
    times: dict[str, float] = {}
    for key, call in ordered:
        result = call()
        if isinstance(result, dict):
            times.update(result)
        else:
            times[key] = result
    return times


def measure_size(layers: int, repeats: int, *, warm_up: bool = True) -> SizeRow:
    """Every build / rebuild / load / patch timing for one model size, in one run.

    Each compared pair is timed back to back, so noise hits both alike.
    ``warm_up``: one untimed round first.
    """
    model = build_model(layers)
    check_build(model)
    parameters = list(model.parameters())
    state = mf.CurriculumState.from_model(model)
    unit_groups = _unit_groups(model, state)
    row = SizeRow(layers, repeats)
    counter = {"build": 0, "rebuild": 0, "load": 0, "per-layer": 0}

    def turn(name: str) -> int:
        counter[name] += 1
        return counter[name]

    def flat() -> float:
        return _best_ms(_same(lambda: torch.optim.Adam(list(model.parameters()), lr=LR)))

    # Load: a saved Curriculum and a saved flat Adam, both after one step.
    source = _stepped_curriculum(model, frozen=None)
    saved = source.state_dict()
    flat_source = torch.optim.Adam(parameters, lr=LR)
    flat_source.step()
    flat_saved = flat_source.state_dict()
    check = mf.Curriculum(model, LR)
    check.load_state_dict(saved)
    loaded = check.optimizer
    assert loaded is not None and source.optimizer is not None
    _require(len(loaded.state) == len(parameters), "load lost optimizer state")
    _require(
        all(
            torch.equal(loaded.state[p]["exp_avg"], source.optimizer.state[p]["exp_avg"])
            for p in parameters
        ),
        "load changed the optimizer state",
    )
    del check, loaded, flat_source

    # Patch: one built Curriculum; each target's coefficient alternates 0.5 / 0.25.
    patched = mf.Curriculum(model, LR)
    patched.build()
    targets = _patch_targets(layers)
    current = dict.fromkeys(targets, 1.0)

    def patch_call(changed: int) -> Callable[[], Any]:
        new = 0.25 if current[changed] == 0.5 else 0.5
        current[changed] = new
        return lambda: _expect_patch(patched.set_lr_coefficient(new, targets[changed]), changed)

    def no_change_call() -> Callable[[], Any]:
        return lambda: _expect_no_change(patched.set_lr_coefficient(current[1], targets[1]))

    plain, warming = _runners(model, targets[1])

    def patches() -> dict[str, float]:
        times = {"no change": _best_ms(no_change_call)}
        for changed in targets:
            times[f"patch {changed}"] = _best_ms(lambda changed=changed: patch_call(changed))
        largest = max(targets)
        times["us per group"] = (times[f"patch {largest}"] - times["patch 1"]) / (largest - 1) * 1e3
        # us per call: the best batch of calls, divided (one call is too short to time).
        times["runner step"] = _best_ms(_same(plain)) / RUNNER_BATCH * 1e3
        times["warmup step"] = _best_ms(_same(warming)) / WARMUP_BATCH * 1e3
        return times

    def init_and_build() -> dict[str, float]:
        both = _best_ms(_same(lambda: mf.Curriculum(model, LR).build()))
        init = _best_ms(_same(lambda: mf.Curriculum(model, LR)))
        built = mf.Curriculum(model, LR)
        built.build()
        again = _best_ms(_same(built.build))
        return {"init+build": both, "init": init, "build again": again}

    def builds() -> dict[str, float]:
        return _in_turn(
            turn("build"),
            [
                ("flat", flat),
                ("init+build", init_and_build),
                ("flat ctor", lambda: _best_ms(_same(lambda: torch.optim.Adam(parameters, lr=LR)))),
                (
                    "build_optimizer",
                    lambda: _best_ms(
                        _same(
                            lambda: build_optimizer(
                                OptimizerRecipe(torch.optim.Adam, LR), unit_groups
                            )
                        )
                    ),
                ),
            ],
        )

    def rebuild_call() -> Callable[[], Any]:
        curriculum = _stepped_curriculum(model, frozen=FROZEN_AT_BUILD)

        def rebuild() -> None:
            plan = curriculum.unfreeze(FROZEN_AT_BUILD, reset_optimizer_if_needed=True)
            _require(isinstance(plan, mf.Rebuild), f"expected a Rebuild, got {plan!r}")
            optimizer = curriculum.optimizer
            assert optimizer is not None
            _require(len(optimizer.state) == len(parameters) - 2, "the rebuild lost state")

        return rebuild

    def rebuilds() -> dict[str, float]:
        return _in_turn(
            turn("rebuild"),
            [("rebuild flat", flat), ("rebuild", lambda: _best_ms(rebuild_call))],
        )

    def load_call() -> Callable[[], Any]:
        fresh = mf.Curriculum(model, LR)
        return lambda: fresh.load_state_dict(saved)

    def torch_load_call() -> Callable[[], Any]:
        fresh = torch.optim.Adam(parameters, lr=LR)
        return lambda: fresh.load_state_dict(flat_saved)

    def loads() -> dict[str, float]:
        return _in_turn(
            turn("load"),
            [
                ("torch load", lambda: _best_ms(torch_load_call)),
                ("load", lambda: _best_ms(load_call)),
            ],
        )

    def per_layer() -> dict[str, float]:
        return _in_turn(
            turn("per-layer"),
            [
                ("per-layer flat", flat),
                (
                    "torch per-layer",
                    lambda: _best_ms(
                        _same(lambda: torch.optim.Adam(mf.param_groups(state, model, LR), lr=LR))
                    ),
                ),
            ],
        )

    variants: list[tuple[str, Callable[[], float | dict[str, float]]]] = [
        ("build", builds),
        ("rebuild", rebuilds),
        ("load", loads),
        ("patch", patches),
    ]
    if layers <= TORCH_PER_LAYER_MAX:
        variants.append(("torch per-layer", per_layer))

    # One untimed warm-up round, then the timed rounds.
    if warm_up:
        _rounds(1, variants, Samples())
    gc.collect()
    gc.freeze()
    try:
        _rounds(repeats, variants, row.samples)
    finally:
        gc.unfreeze()
    return row


RUNNER_BATCH = 1_000
"""ScheduleRunner.step() calls per timed batch (no phase change: about 1 us each)."""

WARMUP_BATCH = 50
"""ScheduleRunner.step() calls per timed batch during a warmup (a 1-group patch each)."""


def _runners(model: nn.Module, layer: str) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Batches of ``ScheduleRunner.step()`` calls: with no phase change, and during a warmup.

    Each runner drives its own built Curriculum of ``model``. The plain one is
    in a phase that ends at a plateau of a metric or after a million epochs
    (a step only counts); the warming one is in a phase that ramps ``layer``'s
    coefficient over a million steps (each step patches its one group).
    """
    ends = mf.any_of(mf.plateau("val_loss", patience=3), mf.after_epochs(1_000_000))
    plain = mf.ScheduleRunner(
        mf.Curriculum(model, LR),
        mf.Schedule(
            [
                mf.Phase("probe", mf.set_lr_coefficient(1.0, layer), until=ends),
                mf.Phase("all", mf.unfreeze(".*")),
            ]
        ),
    )
    plain.start()
    plain.curriculum.build()
    warming = mf.ScheduleRunner(
        mf.Curriculum(model, LR),
        mf.Schedule(
            [
                mf.Phase("head", mf.freeze(layer), until=mf.after_steps(1)),
                mf.Phase("warm", mf.unfreeze(layer), warmup_steps=1_000_000),
            ]
        ),
    )
    warming.start()
    warming.curriculum.build()
    _require(isinstance(warming.step(), mf.Rebuild), "the warmup phase starts with a rebuild")
    _require(plain.step() is None, "a plain step changes nothing")
    _require(isinstance(warming.step(), mf.Patch), "a warmup step is a patch")

    def plain_steps() -> None:
        for _ in range(RUNNER_BATCH):
            plain.step()

    def warming_steps() -> None:
        for _ in range(WARMUP_BATCH):
            warming.step()

    return plain_steps, warming_steps


def _expect_patch(plan: Any, changed: int) -> None:
    _require(
        isinstance(plan, mf.Patch) and len(plan.scales) == changed,
        f"expected a Patch of {changed} groups, got {plan!r}",
    )


def _expect_no_change(plan: Any) -> None:
    _require(isinstance(plan, mf.NoChange), f"expected NoChange, got {plan!r}")


# Step ---------------------------------------------------------------------------------


@dataclass
class StepRow:
    name: str
    tensors: int
    layers: int
    coalesced_groups: int
    samples: Samples = field(default_factory=Samples)


def measure_step(spec: StepModel, repeats: int, steps: int) -> StepRow:
    """ms per fused Adam step: flat vs per-layer groups vs coalesced groups."""
    model = spec.make()
    parameters = list(model.parameters())
    state = mf.CurriculumState.from_model(model)
    for pattern, coefficient in spec.coefficients:
        state = state.set_lr_coefficient(coefficient, pattern)
    _set_grads(model)
    kwargs = {"fused": True}
    flat = torch.optim.Adam(parameters, lr=LR, **kwargs)
    per_layer = mf.Curriculum(model, LR, optimizer_kwargs=kwargs, state=state).build()
    coalesced = mf.Curriculum(
        model, LR, optimizer_kwargs=kwargs, state=state, coalesce=True
    ).build()
    _require(
        len(coalesced.param_groups) == 5,
        f"expected 4 coefficients + reference group, got {len(coalesced.param_groups)} groups",
    )
    row = StepRow(
        spec.name,
        tensors=len(parameters),
        layers=len(per_layer.param_groups) - 1,
        coalesced_groups=len(coalesced.param_groups),
    )

    same_groups = torch.optim.Adam(
        [
            {"params": list(group["params"]), "lr": group["lr"]}
            for group in coalesced.param_groups
            if group["params"]
        ],
        lr=LR,
        **kwargs,
    )
    optimizers = {
        "flat": flat,
        "per-layer": per_layer,
        "coalesced": coalesced,
        "torch, same groups": same_groups,
    }
    for optimizer in optimizers.values():  # allocate the state, warm up
        for _ in range(2):
            optimizer.step()
    gc.collect()
    names = list(optimizers)
    orders = list(itertools.permutations(names))
    turns = itertools.cycle(orders)
    for _ in range(repeats):
        # One round: `steps` steps of each, interleaved step by step, cycling
        # through every order across rounds (each variant follows each other
        # one equally often: the one before leaves the caches to the next); a
        # sample is the fastest step of each (steps preempted by other
        # processes left out).
        fastest = dict.fromkeys(names, float("inf"))
        for _ in range(steps):
            for name in next(turns):
                optimizer = optimizers[name]
                start = time.perf_counter()
                optimizer.step()
                fastest[name] = min(fastest[name], time.perf_counter() - start)
        for name, seconds in fastest.items():
            row.samples.add(name, seconds * 1e3)
    return row


# ViT-B: unfreezing the top blocks, mentor_fn and Lightning --------------------------------


@dataclass
class ViTRow:
    tensors: int
    samples: Samples = field(default_factory=Samples)
    lightning_skipped: int = 0
    """Parameters of the top blocks Lightning left out (equal by value to one it holds)."""


def measure_vit(repeats: int, *, quick: bool) -> ViTRow | None:
    """Unfreezing blocks 8-11 of a ViT-B, both paths, against Lightning; None without it."""
    if not vit.lightning_available():
        return None
    vit.quiet_lightning()
    case = vit.make_case(quick=quick)
    row = ViTRow(case.tensors)
    # Checked once, untimed: each call does what it says.
    vit.mentor_rebuild(case)()
    vit.mentor_patch(case)()
    lightning = vit.lightning_rebuild(case)()
    top = {id(p) for name in vit.TOP for p in case.model.get_submodule(name).parameters()}
    added = {id(p) for p in lightning.param_groups[-1]["params"]}
    _require(len(lightning.param_groups) == 2 and added <= top, "Lightning added one group")
    row.lightning_skipped = len(top - added)
    vit.lightning_patch(case)()
    pairs = [
        ("rebuild", vit.lightning_rebuild, vit.mentor_rebuild),
        ("patch", vit.lightning_patch, vit.mentor_patch),
    ]
    for round_number in range(repeats):
        for path, theirs, ours in pairs:
            times = _in_turn(
                round_number,
                [
                    (f"lightning {path}", lambda theirs=theirs: _best_ms(lambda: theirs(case))),
                    (f"mentor_fn {path}", lambda ours=ours: _best_ms(lambda: ours(case))),
                ],
            )
            for key, value in times.items():
                row.samples.add(key, value)
    return row


# Report -------------------------------------------------------------------------------


def _ratio(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"


def _ms(value: float) -> str:
    if value != value:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def build_table(rows: Sequence[SizeRow]) -> str:
    lines = [
        "| layers | flat ms | Curriculum(model, lr) + build() ms | ratio | of which constructor ms "
        "| build() again ms | ratio | build_optimizer / flat ctor | rebuild ms | ratio "
        "| torch per-layer ms | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row.samples
        lines.append(
            f"| {row.layers:,} | {_ms(s.median('flat'))} | {_ms(s.median('init+build'))} "
            f"| **{_ratio(s.ratio('init+build', 'flat'))}** | {_ms(s.median('init'))} "
            f"| {_ms(s.median('build again'))} | {_ratio(s.ratio('build again', 'flat'))} "
            f"| {_ratio(s.ratio('build_optimizer', 'flat ctor'))} "
            f"| {_ms(s.median('rebuild'))} | {_ratio(s.ratio('rebuild', 'rebuild flat'))} "
            f"| {_ms(s.median('torch per-layer'))} "
            f"| {_ratio(s.ratio('torch per-layer', 'per-layer flat'))} |"
        )
    return "\n".join(lines)


def load_table(rows: Sequence[SizeRow]) -> str:
    lines = [
        "| layers | tensors | torch load ms | Curriculum load ms | ratio "
        "| torch ms per 1k layers | ours ms per 1k layers |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row.samples
        lines.append(
            f"| {row.layers:,} | {2 * row.layers:,} | {_ms(s.median('torch load'))} "
            f"| {_ms(s.median('load'))} | {_ratio(s.ratio('load', 'torch load'))} "
            f"| {_ms(s.median('torch load') / row.layers * 1e3)} "
            f"| {_ms(s.median('load') / row.layers * 1e3)} |"
        )
    return "\n".join(lines)


PATCH_COLUMNS = (1, 10, 100, 1_000)


def patch_table(rows: Sequence[SizeRow]) -> str:
    lines = [
        "| layers | no-change call ms | "
        + " | ".join(f"{changed:,} changed ms" for changed in PATCH_COLUMNS)
        + " | us per extra changed group | ScheduleRunner.step() us | warmup step us |",
        "|---:|---:|" + "---:|" * len(PATCH_COLUMNS) + "---:|---:|---:|",
    ]
    for row in rows:
        s = row.samples
        per_group = s.median("us per group")
        lines.append(
            f"| {row.layers:,} | {_ms(s.median('no change'))} | "
            + " | ".join(_ms(s.median(f"patch {changed}")) for changed in PATCH_COLUMNS)
            + f" | {per_group:.1f} | {s.median('runner step'):.2f} "
            + f"| {s.median('warmup step'):.1f} |"
        )
    return "\n".join(lines)


def step_table(rows: Sequence[StepRow]) -> str:
    lines = [
        "| model | tensors | groups per-layer / coalesced | flat ms | per-layer ms | ratio "
        "| coalesced ms | ratio | torch, same 4 groups ms | ratio | coalesced / torch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row.samples
        lines.append(
            f"| {row.name} | {row.tensors} | {row.layers + 1} / {row.coalesced_groups} "
            f"| {_ms(s.median('flat'))} | {_ms(s.median('per-layer'))} "
            f"| {_ratio(s.ratio('per-layer', 'flat'))} | {_ms(s.median('coalesced'))} "
            f"| {_ratio(s.ratio('coalesced', 'flat'))} "
            f"| {_ms(s.median('torch, same groups'))} "
            f"| {_ratio(s.ratio('torch, same groups', 'flat'))} "
            f"| {_ratio(s.ratio('coalesced', 'torch, same groups'))} |"
        )
    return "\n".join(lines)


def vit_table(row: ViTRow, *, quick: bool) -> str:
    shapes = "ViT-B/16 shapes, tiny (dim 16, MLP 64)" if quick else "ViT-B/16 shapes"
    lines = [
        "| model | tensors | unfreeze blocks 8-11 | Lightning ms | mentor_fn ms | ratio |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for path, what in (
        ("rebuild", "frozen at build: a rebuild"),
        ("patch", "frozen after build: a patch"),
    ):
        s = row.samples
        lines.append(
            f"| {shapes} | {row.tensors} | {what} | {_ms(s.median(f'lightning {path}'))} "
            f"| {_ms(s.median(f'mentor_fn {path}'))} "
            f"| **{_ratio(s.ratio(f'mentor_fn {path}', f'lightning {path}'))}** |"
        )
    return "\n".join(lines)


VIT_NOTE = """\
Lightning: `BaseFinetuning.unfreeze_and_add_param_group(blocks, optimizer, lr=lr)` on
`torch.optim.Adam`; mentor_fn: `curriculum.unfreeze(blocks)` (with
`reset_optimizer_if_needed=True` on the rebuild path). Both after 3 Adam steps.
What Lightning's call skips that mentor_fn's guarantees: fresh optimizer state for
parameters trainable again (on the patch path Lightning keeps their stale Adam
moments: it only sets `requires_grad`); the scheduler (its new group gets no
`initial_lr` and no entry in `base_lrs`, so a `LambdaLR` or cosine schedule
refuses or ignores it; mentor_fn remaps every scheduler's per-group lists, nested
ones included, and derives the group's lr from the reference group, so the
schedule's progress applies); per-layer groups and lr coefficients (one group
for all the blocks); a check that the optimizer's parameters are still the
model's (mentor_fn walks the model afresh at a rebuild); fused optimizers'
mixed stateful/stateless groups; and identity: Lightning tells the
parameters already in the optimizer by value (`torch.equal`, one comparison per
pair), not by identity, so a parameter equal to one it holds is left out
of the optimizer ({skipped} of the blocks' parameters here)."""


def _per_k(rows: Sequence[SizeRow], key: str) -> list[float]:
    return [row.samples.median(key) / row.layers * 1e3 for row in rows]


def _spread(values: Sequence[float]) -> float:
    return max(values) / min(values)


NO_CHANGE_LIMIT_MS = 0.2
"""Largest allowed NoChange update on a built Curriculum of the largest size (10k layers)."""

PATCH_LIMIT_MS = 0.3
"""Largest allowed 1-group patch on a built Curriculum of the largest size."""

RUNNER_STEP_LIMIT_US = 20.0
"""Largest allowed ``ScheduleRunner.step()`` with no phase change, at the largest size."""

LIGHTNING_LIMIT = 1.0
"""Largest allowed mentor_fn / Lightning ratio unfreezing the top blocks of a ViT-B."""


def summary(
    rows: Sequence[SizeRow], step_rows: Sequence[StepRow], vit_row: ViTRow | None = None
) -> tuple[bool, str]:
    """Whether every target is met, and the verdict lines."""
    judged = [row for row in rows if row.layers >= BUILD_LIMIT_FROM] or list(rows)
    build = [row.samples.ratio("init+build", "flat") for row in judged]
    rebuild = [row.samples.ratio("rebuild", "rebuild flat") for row in rows]
    steps = [row.samples.ratio("coalesced", "flat") for row in step_rows]
    # Linearity from 1,000 layers up (at 200, fixed costs weigh). Even torch's
    # flat constructor (linear) costs more per layer at 10k layers than at 1k
    # (caches), so a cost's growth per layer is taken relative to flat's: about
    # 1 when linear, about 10 for a quadratic cost from 1k to 10k layers.
    large = [row for row in rows if row.layers >= 1_000] or list(rows)
    flat_growth = _spread(_per_k(large, "flat"))
    keys = ("init+build", "rebuild", "load", "torch load")
    growth = {key: _spread(_per_k(large, key)) / flat_growth for key in keys}
    largest = max(rows, key=lambda row: row.layers)
    transition = {
        key: largest.samples.median(key) for key in ("no change", "patch 1", "runner step")
    }
    vit_ratios = (
        []
        if vit_row is None
        else [
            vit_row.samples.ratio(f"mentor_fn {path}", f"lightning {path}")
            for path in ("rebuild", "patch")
        ]
    )
    checks = {
        "build": all(ratio <= BUILD_LIMIT for ratio in build),
        "linear": all(growth[key] <= LINEARITY_SPREAD for key in ("init+build", "rebuild", "load")),
        "step": all(ratio <= STEP_LIMIT for ratio in steps),
        "transition": transition["no change"] <= NO_CHANGE_LIMIT_MS
        and transition["patch 1"] <= PATCH_LIMIT_MS
        and transition["runner step"] <= RUNNER_STEP_LIMIT_US,
        "lightning": all(ratio <= LIGHTNING_LIMIT for ratio in vit_ratios),
    }

    def verdict(ok: bool) -> str:
        return "yes" if ok else "NO"

    def listing(values: Sequence[float]) -> str:
        return " / ".join(f"{value:.2f}" for value in values)

    sizes = " / ".join(f"{row.layers:,}" for row in large)
    lines = [
        f"Curriculum(model, lr) + build() <= {BUILD_LIMIT}x flat at "
        f"{' / '.join(f'{row.layers:,}' for row in judged)} layers: {verdict(checks['build'])} "
        f"({listing(build)}); "
        f"rebuild / flat, for information: {listing(rebuild)}.",
        f"Linear (growth of ms per layer over {sizes} layers, relative to flat's "
        f"{flat_growth:.2f}, <= {LINEARITY_SPREAD}): {verdict(checks['linear'])}: "
        + "; ".join(
            f"{key} {listing(_per_k(large, key))} ms per 1k layers ({growth[key]:.2f})"
            for key in keys
        )
        + ".",
        f"Coalesced fused-Adam step <= {STEP_LIMIT}x flat: {verdict(checks['step'])} "
        f"({listing(steps)}); torch's Adam on the same groups, for information: "
        f"{listing([row.samples.ratio('torch, same groups', 'flat') for row in step_rows])}.",
        f"Transitions at {largest.layers:,} layers, built: NoChange <= {NO_CHANGE_LIMIT_MS} ms, "
        f"1-group patch <= {PATCH_LIMIT_MS} ms, ScheduleRunner.step() (no phase change) <= "
        f"{RUNNER_STEP_LIMIT_US:g} us: {verdict(checks['transition'])} "
        f"({transition['no change']:.3f} ms / {transition['patch 1']:.3f} ms / "
        f"{transition['runner step']:.2f} us).",
        (
            "ViT-B, unfreezing blocks 8-11: Lightning not installed, not measured."
            if vit_row is None
            else f"ViT-B, unfreezing blocks 8-11, mentor_fn <= {LIGHTNING_LIMIT}x Lightning: "
            f"{verdict(checks['lightning'])} (rebuild path {vit_ratios[0]:.2f}, patch path "
            f"{vit_ratios[1]:.2f})."
        ),
    ]
    return all(checks.values()), "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the tables; 0 if every target is met, else 1."""
    args = quick_and_repeats_arguments(
        "benchmarks.bench_curriculum",
        __doc__ or "",
        argv,
        quick_help="200 and 300 layers, small step models, a tiny ViT, 1 round, 1 call per "
        "sample (a smoke test: every code path and table, timings not judged)",
        repeats_help="rounds per size, per step model and for the ViT (default: 1 with "
        "--quick, else 9, and 5 at 10k layers)",
    )
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    _best_of[0] = QUICK_BEST_OF if args.quick else BEST_OF

    print(f"Curriculum optimizer costs -- {machine()}")
    print(
        "medians over rounds; a ratio is the median of per-round ratios; layers = Linear "
        "layers = optimizer groups per layer\n",
        flush=True,
    )
    rows = []
    for layers in sizes:
        if args.repeats is not None:
            repeats = args.repeats
        elif args.quick:
            repeats = 1
        else:
            repeats = 5 if layers >= 10_000 else 9
        rows.append(measure_size(layers, repeats, warm_up=not args.quick))
        print(f"  {layers:,} layers: {repeats} rounds done", file=sys.stderr, flush=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step_rows = []
        for spec in QUICK_STEP_MODELS if args.quick else STEP_MODELS:
            repeats = args.repeats or (1 if args.quick else 15)
            step_rows.append(measure_step(spec, repeats, steps=3 if args.quick else 12))
            print(f"  step, {spec.name}: {repeats} rounds done", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    repeats = args.repeats or (1 if args.quick else 9)
    vit_row = measure_vit(repeats, quick=args.quick)
    print(f"  ViT: {repeats} rounds done", file=sys.stderr, flush=True)

    print(
        f"Build and rebuild vs flat (`torch.optim.Adam(list(model.parameters()), lr)`); "
        f"torch per-layer measured up to {TORCH_PER_LAYER_MAX:,} layers only (quadratic)\n"
    )
    print(build_table(rows))
    print("\nLoad: `Curriculum.load_state_dict` vs `Optimizer.load_state_dict` (flat Adam)\n")
    print(load_table(rows))
    print(
        "\nTransitions on a built Curriculum: `set_lr_coefficient` per call, by number of changed "
        "groups; `ScheduleRunner.step()` per call, with no phase change and during a warmup\n"
    )
    print(patch_table(rows))
    print("\nStep: fused Adam, 1 thread, ms per step\n")
    print(step_table(step_rows))
    print("\nUnfreezing the top 4 blocks of a ViT-B: mentor_fn vs Lightning's BaseFinetuning\n")
    if vit_row is None:
        print("(skipped: lightning is not installed)")
    else:
        print(vit_table(vit_row, quick=args.quick))
        print()
        print(VIT_NOTE.format(skipped=vit_row.lightning_skipped))
    within, verdict = summary(rows, step_rows, vit_row)
    print()
    print(verdict)
    return 0 if within else 1


if __name__ == "__main__":
    raise SystemExit(main())
