"""Benchmark: deriving param groups against ``list(model.named_parameters())``.

Issue 2 asks that ``param_groups(state, model, lr)`` be linear in the number of
layers and cost at most 2x one ``list(model.named_parameters())`` on the same
model, for models of 1k, 10k and 50k layers nested 4 deep.

Each model is an ``nn.Sequential`` of blocks of sub-blocks of groups of tiny
``nn.Linear(4, 4)`` layers, so names are 4 levels deep (``"12.3.4.0"``) and
the layer count (``len(layer_names(model))``, containers included) is exact.
The state is realistic: layer-wise lr decay over the top-level blocks, the
first block frozen except one of its sub-blocks, and coefficient rules at
depths 2, 3 and 4.

Per size, as medians over several repetitions (each repetition times every
call once, back to back, so slow spells of a shared machine spread over all):

- ``list(model.named_parameters())``: the floor;
- ``param_groups`` on a *fresh* state each repetition (the headline: what a
  transition followed by a derivation costs, since resolution is cached per
  state), on a reused state, and with ``coalesce=True`` (fresh state);
- ``select_layers`` with one regex over all layers, for information.

The transitions that make each fresh state run outside the timed region. The
garbage collector stays enabled (as in a training script) and is run before
each timed call. Before timing, the groups are checked to partition the
trainable parameters.

Run from the repository root::

    python -m benchmarks.bench_param_groups            # 1k, 10k, 50k layers
    python -m benchmarks.bench_param_groups --quick    # 200 and 1k, 2 repeats: seconds

The exit status is 1 when a param_groups ratio (fresh state, or coalesced)
exceeds the limit, else 0; ``--quick`` is a smoke test: every code path and the
table on the two smallest sizes, 2 repeats (too few on a noisy machine to
enforce a ratio, so it only checks correctness). A failed correctness check
raises AssertionError.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

import mentor_fn as mf
from benchmarks._common import machine, quick_and_repeats_arguments

LIMIT = 2.0
"""The largest allowed ratio param_groups / named_parameters (issue 2)."""

LINEARITY_SPREAD = 1.5
"""Per-layer cost counts as roughly constant when max / min across sizes <= this."""

FLOOR_TOLERANCE = 1.25
"""Otherwise it still tracks the floor when its max / min <= this x the floor's max / min."""

# layers -> (blocks, sub-blocks per block, groups per sub-block, Linear per group).
# A block holds 1 + s * (1 + g * (1 + n)) layers: 125 for (4, 5, 5).
SHAPES: dict[int, tuple[int, int, int, int]] = {
    200: (5, 3, 3, 3),
    1_000: (8, 4, 5, 5),
    10_000: (80, 4, 5, 5),
    50_000: (400, 4, 5, 5),
}
FULL_SIZES = (1_000, 10_000, 50_000)
# Small sizes are cheap, so more rounds make their medians steadier.
DEFAULT_REPEATS = {200: 41, 1_000: 41, 10_000: 25, 50_000: 11}
QUICK_SIZES = (200, 1_000)

LR = 1e-3
SELECT_PATTERN = r"\d+\.\d+\.\d+\.\d+"  # every leaf Linear; scans every layer name


def build_model(layers: int) -> nn.Sequential:
    """A model with exactly ``layers`` layers, nested 4 deep, of tiny Linear(4, 4)."""
    blocks, sub_blocks, groups, leaves = SHAPES[layers]
    model = nn.Sequential(
        *(
            nn.Sequential(
                *(
                    nn.Sequential(
                        *(
                            nn.Sequential(*(nn.Linear(4, 4) for _ in range(leaves)))
                            for _ in range(groups)
                        )
                    )
                    for _ in range(sub_blocks)
                )
            )
            for _ in range(blocks)
        )
    )
    count = len(mf.layer_names(model))
    if count != layers:
        raise AssertionError(f"built a model of {count} layers, expected {layers}")
    return model


def curriculum() -> mf.Transition:
    """A realistic phase: LLRD over the blocks, block 0 frozen but for 0.1, rules at depth 2-4."""
    return mf.chain(
        mf.layerwise_lr_decay(0.98, patterns=r"\d+"),
        mf.freeze("0"),
        mf.unfreeze("0.1"),
        mf.set_lr_coefficient(0.5, r"1\.2"),
        mf.set_lr_coefficient(0.25, r"1\.2\.1"),
        mf.set_lr_coefficient(2.0, r"2\.0\.1\.2"),
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_groups(state: mf.CurriculumState, model: nn.Module) -> None:
    """Check that param_groups (plain and coalesced) partition the trainable parameters.

    The expectation is computed independently of the library's traversal: from
    ``named_modules`` and the state's per-layer lookups.
    """
    expected: list[nn.Parameter] = []
    coefficient_of: dict[int, float] = {}
    frozen_count = 0
    for name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            if state.is_frozen(name):
                frozen_count += 1
            else:
                expected.append(parameter)
                coefficient_of[id(parameter)] = state.coefficient(name)
    _require(frozen_count > 0, "the benchmark state should freeze some parameters")
    _require(len(set(coefficient_of.values())) > 2, "the state should use several coefficients")

    for coalesce in (False, True):
        groups = mf.param_groups(state, model, LR, coalesce=coalesce)
        got = [parameter for group in groups for parameter in group["params"]]
        _require(
            len({id(p) for p in got}) == len(got), f"a parameter is in two groups ({coalesce=})"
        )
        if coalesce:
            _require(
                {id(p) for p in got} == {id(p) for p in expected},
                "coalesced groups do not cover exactly the trainable parameters",
            )
            coefficients = [group["coefficient"] for group in groups]
            _require(
                len(set(coefficients)) == len(coefficients), "two coalesced groups share a coeff"
            )
        else:
            _require(
                [id(p) for p in got] == [id(p) for p in expected],
                "groups do not hold exactly the trainable parameters in layer order",
            )
            _require(
                all(len(group["layers"]) == 1 for group in groups), "one layer per group expected"
            )
        for group in groups:
            coefficient = group["coefficient"]
            _require(group["lr"] == LR * coefficient, f"lr of {group['layers']} is wrong")
            for layer in group["layers"]:
                _require(state.coefficient(layer) == coefficient, f"coefficient of {layer}")
            for parameter in group["params"]:
                _require(coefficient_of[id(parameter)] == coefficient, "param in wrong group")


@dataclass
class Row:
    layers: int
    baseline_ms: float
    fresh_ms: float
    reused_ms: float
    coalesce_ms: float
    select_ms: float

    @property
    def ratio(self) -> float:
        return self.fresh_ms / self.baseline_ms

    @property
    def reused_ratio(self) -> float:
        return self.reused_ms / self.baseline_ms

    @property
    def coalesce_ratio(self) -> float:
        return self.coalesce_ms / self.baseline_ms

    @property
    def select_ratio(self) -> float:
        return self.select_ms / self.baseline_ms


def _timed_ms(call: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - start
    del result
    return elapsed * 1e3


def measure(layers: int, repeats: int) -> Row:
    """Median timings for one model size (the model is built, checked, then timed)."""
    model = build_model(layers)
    base = mf.CurriculumState.from_model(model)
    transition = curriculum()
    reused = transition(base)
    check_groups(reused, model)
    names = reused.layers

    # One untimed warm-up of each, then `repeats` rounds of all of them.
    list(model.named_parameters())
    mf.param_groups(reused, model, LR)
    mf.param_groups(transition(base), model, LR, coalesce=True)
    mf.select_layers(names, SELECT_PATTERN)

    samples: dict[str, list[float]] = {
        key: [] for key in ("baseline", "fresh", "reused", "coalesce", "select")
    }
    for _ in range(repeats):
        fresh, fresh_for_coalesce = transition(base), transition(base)
        samples["baseline"].append(_timed_ms(lambda: list(model.named_parameters())))
        samples["fresh"].append(_timed_ms(lambda: mf.param_groups(fresh, model, LR)))  # noqa: B023
        samples["reused"].append(_timed_ms(lambda: mf.param_groups(reused, model, LR)))
        samples["coalesce"].append(
            _timed_ms(
                lambda: mf.param_groups(fresh_for_coalesce, model, LR, coalesce=True)  # noqa: B023
            )
        )
        samples["select"].append(_timed_ms(lambda: mf.select_layers(names, SELECT_PATTERN)))
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return Row(
        layers=layers,
        baseline_ms=medians["baseline"],
        fresh_ms=medians["fresh"],
        reused_ms=medians["reused"],
        coalesce_ms=medians["coalesce"],
        select_ms=medians["select"],
    )


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        "| layers | named_parameters ms | param_groups ms | ratio | coalesce ratio "
        "| reused-state ratio | select_layers ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.layers:,} | {row.baseline_ms:.2f} | {row.fresh_ms:.2f} | {row.ratio:.2f} "
            f"| {row.coalesce_ratio:.2f} | {row.reused_ratio:.2f} | {row.select_ratio:.2f} |"
        )
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> tuple[bool, str]:
    """Whether every ratio is within LIMIT, and the verdict lines (limit, linearity)."""
    ratios = [ratio for row in rows for ratio in (row.ratio, row.coalesce_ratio)]
    within = all(ratio <= LIMIT for ratio in ratios)
    worst = max(ratios)
    per_k = [row.fresh_ms / row.layers * 1e3 for row in rows]
    base_per_k = [row.baseline_ms / row.layers * 1e3 for row in rows]
    spread = max(per_k) / min(per_k)
    base_spread = max(base_per_k) / min(base_per_k)
    if spread <= LINEARITY_SPREAD:
        verdict = f"roughly constant (max/min <= {LINEARITY_SPREAD})"
    elif spread <= FLOOR_TOLERANCE * base_spread:
        verdict = (
            f"not constant (max/min > {LINEARITY_SPREAD}), but it grows like the floor's: "
            "memory effects of bigger models, not the algorithm"
        )
    else:
        verdict = "NOT roughly constant: it grows faster than the floor's"
    lines = [
        f"Every ratio <= {LIMIT}: {'yes' if within else 'NO'} (worst {worst:.2f}; "
        "param_groups on a fresh state and coalesced).",
        "Linearity, ms per 1k layers: param_groups "
        + " / ".join(f"{value:.2f}" for value in per_k)
        + f" (max/min {spread:.2f}), named_parameters "
        + " / ".join(f"{value:.2f}" for value in base_per_k)
        + f" (max/min {base_spread:.2f}): {verdict}.",
    ]
    return within, "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 if a ratio exceeds the limit (not with --quick)."""
    args = quick_and_repeats_arguments(
        "benchmarks.bench_param_groups",
        __doc__ or "",
        argv,
        quick_help="sizes 200 and 1,000 only, 2 repeats (smoke test)",
        repeats_help="repetitions per size (default: 2 with --quick, else 41 / 25 / 11 for "
        "1k / 10k / 50k)",
    )
    sizes = QUICK_SIZES if args.quick else FULL_SIZES

    print(f"param_groups vs list(model.named_parameters()) -- {machine()}")
    print("medians; ratio = param_groups on a fresh state / named_parameters\n", flush=True)
    rows = []
    for layers in sizes:
        if args.repeats is not None:
            repeats = args.repeats
        elif args.quick:
            repeats = 2
        else:
            repeats = DEFAULT_REPEATS[layers]
        rows.append(measure(layers, repeats))
        print(f"  {layers:,} layers: {repeats} repeats done", file=sys.stderr, flush=True)
    print(format_table(rows))
    within, verdict = summary(rows)
    print()
    print(verdict)
    if args.quick:
        return 0  # 2 repeats are a smoke test: the ratios are shown, not enforced
    return 0 if within else 1


if __name__ == "__main__":
    raise SystemExit(main())
