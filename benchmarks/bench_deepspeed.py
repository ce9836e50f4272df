"""Benchmark: a curriculum on DeepSpeed ZeRO against frozen layers kept in the optimizer at lr 0.

Without mentor_fn, the way to freeze layers for a phase under ZeRO is to keep
every parameter in the optimizer and give the frozen ones lr 0 (DeepSpeed
issue #2615): ZeRO never sees a change of its groups, but the frozen layers
keep their full share of optimizer memory (fp32 master weights and Adam's two
moments) and are still differentiated and stepped. mentor_fn keeps frozen
layers out of the ZeRO optimizer and re-initializes it when the set of
trainable layers changes. This measures, per ZeRO stage, on the same model
with the lower half of its layers frozen:

- **optimizer memory per rank**: ZeRO's fp32 master partitions and optimizer
  state (``optimizer_state_bytes``), mentor_fn against lr 0; the target is a
  ratio of at most 0.55 (half the parameters are frozen, plus padding);
- **step time**: forward, ``engine.backward`` and ``engine.step`` (medians),
  the two engines stepped alternately;
- **rebuild cost**: one change of the trainable set (unfreezing a block, then
  freezing it again: each re-initializes the ZeRO optimizer, carrying the
  state), and one lr-only change (a coefficient, patched in place), both
  against a plain step of the same run. ZeRO-3's optimizer runs a full
  garbage collection each time it is built, whose cost grows with the
  objects the process holds (here: torch, DeepSpeed and torch's compiler,
  which DeepSpeed imports); the rebuilds are timed again after ``gc.freeze()``
  exempted those objects, to show the cost without it.

The model is an ``nn.Sequential`` of ``Linear(width, width)`` + ``ReLU``
blocks (8 blocks of width 512: 2.1M parameters; the lower 4 frozen), AdamW,
batches of 32 per rank, one torch thread per rank. Full runs use a world of
**2 processes** (gloo on 127.0.0.1, a FileStore rendezvous; started here,
killed after a deadline), the three stages one after the other; ``--quick``
runs a world of one process, in this process, on a small model with 2
repeats: every code path, timings not judged. DeepSpeed's first engine imports torch's compiler (its optimizer
check does), which costs seconds once per process, quick mode included.

Run from the repository root (DeepSpeed installed)::

    python -m benchmarks.bench_deepspeed            # 2 processes, all 3 stages
    python -m benchmarks.bench_deepspeed --quick    # 1 process, a small model

The exit status is 1 when a memory ratio exceeds the target (not with
``--quick``), else 0. Without DeepSpeed installed it prints why and exits 0.
"""

from __future__ import annotations

import datetime
import functools
import gc
import importlib.util
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._common import machine, quick_and_repeats_arguments

MEMORY_TARGET = 0.55
"""The largest allowed optimizer-memory ratio, mentor_fn / lr 0, with half the parameters frozen."""

STAGES = (1, 2, 3)
FULL = {"width": 512, "blocks": 8, "world": 2, "repeats": 15}
QUICK = {"width": 32, "blocks": 4, "world": 1, "repeats": 2}
BATCH = 32
LR = 1e-3
DEADLINE_SECONDS = 900


def make_model(width: int, blocks: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        *(nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(blocks))
    )


def config(stage: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": BATCH,
        "zero_optimization": {"stage": stage},
        "steps_per_print": 10**9,
    }


def _timed_ms(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def measure(rank: int, stage: int, width: int, blocks: int, repeats: int) -> dict[str, Any]:
    """One stage on this rank: both engines, their steps, and the curriculum's rebuilds."""
    import deepspeed

    import mentor_fn as mf
    from mentor_fn.integrations import deepspeed as mf_deepspeed

    frozen = [str(index) for index in range(blocks // 2)]
    # mentor_fn: the frozen blocks hold no optimizer state.
    ours_model = make_model(width, blocks)
    state = mf.CurriculumState.from_model(ours_model).freeze(frozen)
    curriculum = mf.Curriculum(ours_model, LR, optimizer=torch.optim.AdamW, state=state)
    ours = mf_deepspeed.initialize(curriculum, config=config(stage), dist_init_required=False)
    # DeepSpeed issue #2615's workaround: everything trains, the frozen half at lr 0.
    lr0_model = make_model(width, blocks)
    lower = [p for name in frozen for p in lr0_model[int(name)].parameters()]
    upper = [p for block in lr0_model[blocks // 2 :] for p in block.parameters()]
    optimizer = torch.optim.AdamW([{"params": upper}, {"params": lower, "lr": 0.0}], lr=LR)
    lr0, *_ = deepspeed.initialize(
        model=lr0_model, optimizer=optimizer, config=config(stage), dist_init_required=False
    )
    generator = torch.Generator().manual_seed(rank)
    inputs = torch.randn(BATCH, width, generator=generator)

    def step(engine: Any, run: Any = None) -> None:
        engine.backward(engine(inputs).pow(2).mean())
        engine.step()
        if run is not None:
            run.step()

    for _ in range(2):  # warm-up: Adam's state exists, first-call costs are paid
        step(ours.engine, ours)
        step(lr0)
    ours_ms, lr0_ms = [], []
    for round_ in range(repeats):
        pair = [("ours", lambda: step(ours.engine, ours)), ("lr0", lambda: step(lr0))]
        for name, call in pair if round_ % 2 == 0 else reversed(pair):
            (ours_ms if name == "ours" else lr0_ms).append(_timed_ms(call))
    memory = {
        "ours": mf_deepspeed.optimizer_state_bytes(ours.engine),
        "lr0": mf_deepspeed.optimizer_state_bytes(lr0),
    }
    parameters = sum(p.numel() for p in ours_model.parameters())
    trainable = sum(p.numel() for p in ours_model.parameters() if p.requires_grad)
    # A change of the trainable set (re-initializes ZeRO), and a patch (lrs only).
    top_frozen = frozen[-1]

    def change(round_: int) -> None:
        if round_ % 2 == 0:
            ours.unfreeze(top_frozen, reset_optimizer_if_needed=True)
        else:
            ours.freeze(top_frozen)

    rebuild_ms, patch_ms, plain_ms = [], [], []
    for round_ in range(repeats):
        rebuild_ms.append(_timed_ms(functools.partial(change, round_)))
        step(ours.engine, ours)
        coefficient = 0.5 if round_ % 2 == 0 else 1.0
        patch = functools.partial(ours.set_lr_coefficient, coefficient, str(blocks - 1))
        patch_ms.append(_timed_ms(patch))
        plain_ms.append(_timed_ms(lambda: step(ours.engine, ours)))
    # ZeRO-3's optimizer runs a full garbage collection when it is built, which
    # costs as much as the process has objects; exempting those alive now
    # (gc.freeze) shows what the rebuild itself costs.
    frozen_gc_ms = []
    gc.freeze()
    try:
        for round_ in range(repeats, 2 * repeats):
            frozen_gc_ms.append(_timed_ms(functools.partial(change, round_)))
            step(ours.engine, ours)
    finally:
        gc.unfreeze()
    return {
        "ours_ms": statistics.median(ours_ms),
        "lr0_ms": statistics.median(lr0_ms),
        "memory": memory,
        "rebuild_ms": statistics.median(rebuild_ms),
        "patch_ms": statistics.median(patch_ms),
        "plain_ms": statistics.median(plain_ms),
        "frozen_gc_ms": statistics.median(frozen_gc_ms),
        "parameters": parameters,
        "trainable": trainable,
    }


# Worlds -------------------------------------------------------------------------------------------


_ENVIRONMENT = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")


def _join(rank: int, world: int) -> None:
    """What DeepSpeed reads from a launcher's environment (the process group exists already)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29500",  # read, never listened on
        DS_ACCELERATOR="cpu",
    )
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


def run_in_this_process(function: Callable[..., Any], *arguments: Any) -> Any:
    """``function(0, *arguments)`` in a world of one process, this one."""
    import torch.distributed as dist

    saved = {name: os.environ.get(name) for name in _ENVIRONMENT}
    threads = torch.get_num_threads()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.set_num_threads(1)
        _join(0, 1)
        return function(0, *arguments)
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker(
    function: Callable[..., Any], rank: int, world: int, folder: str, arguments: tuple[Any, ...]
) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        store = dist.FileStore(os.path.join(folder, "store"), world)
        dist.init_process_group(
            "gloo",
            store=store,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=120),
        )
        try:
            _join(rank, world)
            result = function(rank, *arguments)
        finally:
            dist.destroy_process_group()
        torch.save(result, os.path.join(folder, f"result{rank}.pt"))
    except BaseException:
        Path(folder, f"error{rank}.txt").write_text(traceback.format_exc())
        raise SystemExit(1) from None


def run_world(function: Callable[..., Any], world: int, *arguments: Any) -> list[Any]:
    """``function(rank, *arguments)`` on ``world`` new processes; the results by rank.

    Raises:
        RuntimeError: a rank failed (with its traceback) or outlived the deadline (killed).
    """
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mentor_fn_bench_world_") as folder:
        processes = [
            context.Process(target=_worker, args=(function, rank, world, folder, arguments))
            for rank in range(world)
        ]
        for process in processes:
            process.start()
        end = time.monotonic() + DEADLINE_SECONDS
        for process in processes:
            process.join(timeout=max(0.0, end - time.monotonic()))
        hung = [process for process in processes if process.is_alive()]
        for process in hung:
            os.kill(process.pid, 9)
            process.join(5)
        errors = [
            Path(folder, f"error{rank}.txt").read_text()
            for rank in range(world)
            if Path(folder, f"error{rank}.txt").exists()
        ]
        if hung or errors or any(process.exitcode != 0 for process in processes):
            raise RuntimeError(
                f"the benchmark's world failed ({len(hung)} rank(s) killed after "
                f"{DEADLINE_SECONDS} s):\n" + "\n".join(errors)
            )
        return [
            torch.load(os.path.join(folder, f"result{rank}.pt"), weights_only=True)
            for rank in range(world)
        ]


def measure_stages(rank: int, width: int, blocks: int, repeats: int) -> dict[int, dict[str, Any]]:
    """Every stage, one after the other, in one world (DeepSpeed keeps its process groups)."""
    results = {}
    for stage in STAGES:
        results[stage] = measure(rank, stage, width, blocks, repeats)
        if rank == 0:
            print(f"  ZeRO-{stage} done", file=sys.stderr, flush=True)
    return results


# Reporting ------------------------------------------------------------------------------------------


def format_tables(results: dict[int, dict[str, Any]]) -> str:
    memory = [
        "| ZeRO stage | lr 0 MB | mentor_fn MB | memory ratio | lr 0 step ms | mentor_fn step ms "
        "| step ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rebuild = [
        "| ZeRO stage | plain step ms | rebuild ms | rebuild / step "
        "| rebuild ms, gc.freeze() | patch ms | patch / step |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, result in results.items():
        ours, lr0 = result["memory"]["ours"], result["memory"]["lr0"]
        memory.append(
            f"| {stage} | {lr0 / 2**20:.2f} | {ours / 2**20:.2f} | {ours / lr0:.2f} "
            f"| {result['lr0_ms']:.1f} | {result['ours_ms']:.1f} "
            f"| {result['ours_ms'] / result['lr0_ms']:.2f} |"
        )
        rebuild.append(
            f"| {stage} | {result['plain_ms']:.1f} | {result['rebuild_ms']:.1f} "
            f"| {result['rebuild_ms'] / result['plain_ms']:.1f} | {result['frozen_gc_ms']:.1f} "
            f"| {result['patch_ms']:.2f} | {result['patch_ms'] / result['plain_ms']:.3f} |"
        )
    return "\n".join(memory) + "\n\n" + "\n".join(rebuild)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables; 1 if a memory ratio exceeds the target."""
    args = quick_and_repeats_arguments(
        "benchmarks.bench_deepspeed",
        __doc__ or "",
        argv,
        quick_help="a world of one process, in this one, on a small model, 2 repeats (smoke test)",
        repeats_help="timed steps and rebuilds per engine (default: 2 with --quick, else 15)",
    )
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or sizes["repeats"]
    if importlib.util.find_spec("deepspeed") is None:
        print("DeepSpeed is not installed (pip install 'mentor_fn[deepspeed]'): nothing measured")
        print("\n| ZeRO stage | skipped |\n|---|---|\n| 1, 2, 3 | DeepSpeed not installed |")
        return 0
    parameters = sizes["blocks"] * (sizes["width"] ** 2 + sizes["width"])
    print(f"DeepSpeed ZeRO: mentor_fn against frozen layers at lr 0 -- {machine()}")
    print(
        f"{sizes['blocks']} blocks Linear({sizes['width']}, {sizes['width']}) "
        f"({parameters:,} parameters), the lower half frozen; a world of {sizes['world']} "
        f"process(es), gloo, CPU; medians of {repeats}; memory per rank\n",
        flush=True,
    )
    arguments = (sizes["width"], sizes["blocks"], repeats)
    if sizes["world"] == 1:
        results = run_in_this_process(measure_stages, *arguments)
    else:
        results = run_world(measure_stages, sizes["world"], *arguments)[0]  # rank 0's
    print(format_tables(results))
    ratios = [result["memory"]["ours"] / result["memory"]["lr0"] for result in results.values()]
    within = max(ratios) <= MEMORY_TARGET
    print()
    print(
        f"Every memory ratio <= {MEMORY_TARGET}: {'yes' if within else 'NO'} "
        f"(worst {max(ratios):.2f}; trainable share of the parameters "
        f"{results[1]['trainable'] / results[1]['parameters']:.2f})."
    )
    if args.quick:
        return 0
    return 0 if within else 1


if __name__ == "__main__":
    raise SystemExit(main())
