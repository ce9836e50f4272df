"""Benchmark: the per-step cost of DDP that survives phase changes, two ways.

DDP registers with its reducer only the parameters that require grad when it
is built, so a curriculum that freezes and unfreezes layers needs one of:

- ``find_unused_parameters=True`` on a wrapper built with every parameter
  trainable (what ``wrap_ddp`` and the Lightning adapter did before): DDP then
  walks the autograd graph after every forward to find the parameters that
  will get no gradient (the frozen ones), at every step of the run;
- a reducer that follows the flags (``mentor_fn.wrap_ddp`` now, and the
  adapters' wrappers): before each forward a pass over the parameter list
  compares the ``requires_grad`` flags with those the reducer was built for,
  and rebuilds it when they changed (a few times a run).

Both are measured in one 2-process gloo world on 127.0.0.1, against plain DDP
built for the phase's trainable parameters (no mentor_fn, no detection: what
a run that never changes phase costs), as ratios per optimizer step (forward,
backward with the gradient all-reduce, optimizer step), medians of several
repetitions interleaved so that slow spells of a shared machine spread over
all three. The phase has the bottom half of the blocks frozen. Also the cost
of one reducer rebuild (what a phase change that changes the trainable set
adds once).

Two models: 24 blocks of ``Linear(64, 64) + LayerNorm + GELU`` (steps short,
so per-step overheads show most) and 24 blocks at width 512.

Run from the repository root::

    python -m benchmarks.bench_ddp            # 15 rounds of 10 steps of each kind, per model
    python -m benchmarks.bench_ddp --quick    # 1 round of 5 steps, the small model: a smoke test

The exit status is 1 when following the flags costs more per step than
``find_unused_parameters=True``, or when its check costs more than ``LIMIT``
of a plain DDP step (not with ``--quick``: too few steps to judge). The check
is timed on its own (what every step pays when nothing changed): on a shared
machine the whole-step ratios move by about 0.1 between runs, which is far
more than the check costs, so the check's share is the target and the
ratios are shown.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed
from torch import nn

import mentor_fn as mf
from benchmarks._common import machine, quick_and_repeats_arguments
from mentor_fn._wrapper.ddp import sync_reducer

LIMIT = 0.01
"""The largest allowed share of a plain DDP step that the follower's check may cost."""

WIDTHS = (64, 512)
BLOCKS = 24
BATCH = 32  # per rank
KINDS = ("plain", "find_unused", "follow")


def build_model(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    blocks = [
        nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU())
        for _ in range(BLOCKS)
    ]
    return nn.Sequential(nn.Linear(16, width), *blocks, nn.Linear(width, 4))


def frozen_names(model: nn.Module) -> list[str]:
    """The phase: the input layer and the bottom half of the blocks frozen."""
    return ["0", *(str(index) for index in range(1, BLOCKS // 2 + 1))]


def wrapped(kind: str, width: int) -> tuple[nn.Module, Any, torch.optim.Optimizer]:
    """(model, DDP wrapper, optimizer) of one kind, in the phase, warmed up by nothing yet."""
    model = build_model(width)
    frozen = frozen_names(model)
    state = mf.CurriculumState.from_model(model).freeze(frozen)
    if kind == "plain":
        mf.apply_requires_grad(state, model)
        wrapper = nn.parallel.DistributedDataParallel(model)
    elif kind == "find_unused":
        wrapper = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        mf.apply_requires_grad(state, model)
    else:
        wrapper = mf.wrap_ddp(model)
        mf.apply_requires_grad(state, model)  # the reducer is rebuilt at the first forward
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return model, wrapper, torch.optim.SGD(trainable, lr=1e-3)


def steps(wrapper: nn.Module, optimizer: torch.optim.Optimizer, count: int, rank: int) -> float:
    """Seconds per optimizer step over ``count`` steps."""
    generator = torch.Generator().manual_seed(rank)
    inputs = torch.randn(BATCH, 16, generator=generator)
    targets = torch.randn(BATCH, 4, generator=generator)
    torch.distributed.barrier()
    started = time.perf_counter()
    for _ in range(count):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(wrapper(inputs), targets).backward()
        optimizer.step()
    return (time.perf_counter() - started) / count


def rebuild_seconds(width: int, count: int) -> float:
    """Median seconds of one reducer rebuild (a change of the trainable set), alternating
    between two phases."""
    model = build_model(width)
    wrapper = mf.wrap_ddp(model)
    times = []
    for index in range(count):
        model[1 + index % BLOCKS].requires_grad_(index % 2 == 1)
        started = time.perf_counter()
        sync_reducer(wrapper)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def check_seconds(wrapper: nn.Module, count: int = 2000) -> float:
    """Seconds of the follower's check before a forward when nothing changed (its whole
    per-step cost): the flags compared with those the reducer was built for."""
    started = time.perf_counter()
    for _ in range(count):
        sync_reducer(wrapper)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / count


def run_rank(rank: int, folder: str, repeats: int, count: int, widths: Sequence[int]) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist = torch.distributed
    try:
        torch.set_num_threads(1)
        store = dist.FileStore(os.path.join(folder, "store"), 2)
        dist.init_process_group(
            "gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
        )
        results: dict[str, Any] = {}
        for width in widths:
            runs = {kind: wrapped(kind, width) for kind in KINDS}
            for kind in KINDS:  # warm-up (and the follower's first rebuild)
                steps(runs[kind][1], runs[kind][2], 3, rank)
            times: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for round_ in range(repeats):
                # each kind first, second and third in turn: no order favours one
                shift = round_ % len(KINDS)
                for kind in KINDS[shift:] + KINDS[:shift]:
                    times[kind].append(steps(runs[kind][1], runs[kind][2], count, rank))
            results[str(width)] = {
                "step": {kind: statistics.median(values) for kind, values in times.items()},
                "rebuild": rebuild_seconds(width, max(3, repeats)),
                "check": check_seconds(runs["follow"][1]),
            }
        dist.destroy_process_group()
        if rank == 0:
            torch.save(results, os.path.join(folder, "results.pt"))
    except BaseException:
        Path(folder, f"error{rank}.txt").write_text(traceback.format_exc())
        raise SystemExit(1) from None


def measure(repeats: int, count: int, widths: Sequence[int]) -> dict[str, Any]:
    """Run the 2-process world; rank 0's medians by width."""
    import torch._dynamo  # DDP imports it: once here, not in each rank

    # fork: the parent has only imported torch (no threads, no tensors), and the
    # children skip importing it again (seconds each, with spawn)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with tempfile.TemporaryDirectory(prefix="mentor_fn_bench_ddp_") as folder:
        processes = [
            context.Process(target=run_rank, args=(rank, folder, repeats, count, tuple(widths)))
            for rank in range(2)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=900)
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, 9)
        errors = [path.read_text() for path in Path(folder).glob("error*.txt")]
        if errors or any(process.exitcode != 0 for process in processes):
            raise RuntimeError("the benchmark's world failed:\n" + "\n".join(errors))
        return torch.load(os.path.join(folder, "results.pt"), weights_only=True)


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "| model | plain DDP ms/step | find_unused_parameters=True ms/step | ratio "
        "| following the flags ms/step | ratio | its check us/step | one reducer rebuild ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for width, row in results.items():
        step = row["step"]
        plain = step["plain"]
        lines.append(
            f"| {BLOCKS} blocks, width {width} | {plain * 1e3:.2f} "
            f"| {step['find_unused'] * 1e3:.2f} | {step['find_unused'] / plain:.2f} "
            f"| {step['follow'] * 1e3:.2f} | {step['follow'] / plain:.2f} "
            f"| {row['check'] * 1e6:.1f} | {row['rebuild'] * 1e3:.2f} |"
        )
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> tuple[bool, str]:
    shares = [row["check"] / row["step"]["plain"] for row in results.values()]
    cheaper = all(row["step"]["follow"] <= row["step"]["find_unused"] for row in results.values())
    within = all(share <= LIMIT for share in shares)
    return cheaper and within, (
        f"Following the flags <= find_unused_parameters=True per step: {'yes' if cheaper else 'no'}; "
        f"its check <= {LIMIT:.0%} of a plain DDP step: {'yes' if within else 'no'} "
        f"(worst {max(shares):.2%})."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; 1 if a target is missed (not with --quick)."""
    args = quick_and_repeats_arguments(
        "benchmarks.bench_ddp",
        __doc__ or "",
        argv,
        quick_help="1 repeat of 5 steps on the small model (smoke test)",
        repeats_help="rounds of each measurement (default: 1 with --quick, else 15)",
    )
    repeats = args.repeats or (1 if args.quick else 15)
    count = 5 if args.quick else 10
    widths = WIDTHS[:1] if args.quick else WIDTHS
    print(f"DDP through phase changes, 2 gloo processes on 127.0.0.1 -- {machine()}")
    print(
        f"medians of {repeats} x {count} steps (per-rank batch {BATCH}, SGD, bottom half frozen); "
        "ratio = ms/step / plain DDP's\n",
        flush=True,
    )
    results = measure(repeats, count, widths)
    print(format_table(results))
    ok, message = verdict(results)
    print()
    print(message)
    if args.quick:
        return 0  # too few steps to judge the timings
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
