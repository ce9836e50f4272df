"""Run a function on a 2-process gloo world on 127.0.0.1, failing fast.

- rendezvous through a FileStore (a TCP store listens on every interface);
- GLOO_SOCKET_IFNAME=lo so gloo binds the loopback only;
- forkserver start method with torch and torch.distributed preloaded (spawn
  costs ~7 s per world here, forkserver ~0.2 s after the first);
- a gloo timeout, and a deadline after which the parent kills every worker by
  PID, so a hung rank fails the test in seconds instead of hanging CI.

Workers write their result (plain data and tensors) with torch.save, or their
traceback as text; the parent raises with every rank's traceback.

``MENTOR_FN_TEST_BACKEND=nccl`` runs the worlds on NCCL, rank r on cuda:r
(skipped with fewer than 2 GPUs); workers put their models and data on
:func:`device` and use :func:`on_cuda` to pick the frameworks' accelerator.
The default is gloo on the CPU. Results come back on the CPU either way.
"""

from __future__ import annotations

import datetime
import importlib.util
import multiprocessing
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

WORLD_SIZE = 2
BACKEND = os.environ.get("MENTOR_FN_TEST_BACKEND", "gloo")
if BACKEND not in ("gloo", "nccl"):
    raise ValueError(f"MENTOR_FN_TEST_BACKEND must be 'gloo' or 'nccl', got {BACKEND!r}")
_CONTEXT: Any = None


def on_cuda() -> bool:
    """Whether the worlds run on NCCL and CUDA (MENTOR_FN_TEST_BACKEND=nccl)."""
    return BACKEND == "nccl"


def device(rank: int | None = None) -> torch.device:
    """Where a rank's (or, for None, the single-process reference's) tensors live."""
    if not on_cuda():
        return torch.device("cpu")
    return torch.device("cuda", 0 if rank is None else rank)


def skip_reason() -> str | None:
    """Why the worlds cannot run here (None: they can)."""
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed unavailable"
    if on_cuda() and torch.cuda.device_count() < WORLD_SIZE:
        return f"MENTOR_FN_TEST_BACKEND=nccl needs {WORLD_SIZE} GPUs"
    return None


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        context = multiprocessing.get_context("forkserver")
        preload = [
            "torch",
            "torch.distributed",
            "torch.distributed.fsdp",
            "mentor_fn",
            "distributed_workers",
        ]
        # Lightning's and transformers' imports cost seconds in each rank;
        # imported once in the server, every world forks with them (the suite
        # runs worlds of both).
        if importlib.util.find_spec("lightning") is not None:
            preload += ["lightning.pytorch", "lightning_workers"]
        if importlib.util.find_spec("transformers") is not None:
            preload += ["transformers", "trainer_workers"]
        context.set_forkserver_preload(preload)
        _CONTEXT = context
    return _CONTEXT


def _worker(
    function: Callable[..., Any], rank: int, folder: str, arguments: tuple[Any, ...]
) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    os.environ["TMPDIR"] = folder
    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        if on_cuda():
            torch.cuda.set_device(rank)
        store = dist.FileStore(os.path.join(folder, "store"), WORLD_SIZE)
        dist.init_process_group(
            BACKEND,
            store=store,
            rank=rank,
            world_size=WORLD_SIZE,
            timeout=datetime.timedelta(seconds=30),
        )
        try:
            result = function(rank, *arguments)
        finally:
            dist.destroy_process_group()
        torch.save(result, os.path.join(folder, f"result{rank}.pt"))
    except BaseException:
        Path(folder, f"error{rank}.txt").write_text(traceback.format_exc())
        raise SystemExit(1) from None


def run_world(function: Callable[..., Any], *arguments: Any, deadline: float = 90.0) -> list[Any]:
    """Run ``function(rank, *arguments)`` on each rank; return the results by rank.

    ``function`` must be importable by the workers (defined at module level in
    an importable module) and return plain data and tensors.
    """
    context = _context()
    with tempfile.TemporaryDirectory(prefix="mentor_fn_world_") as folder:
        processes = [
            context.Process(target=_worker, args=(function, rank, folder, arguments), daemon=True)
            for rank in range(WORLD_SIZE)
        ]
        for process in processes:
            process.start()
        end = time.monotonic() + deadline
        for process in processes:
            process.join(timeout=max(0.0, end - time.monotonic()))
        hung = [process for process in processes if process.is_alive()]
        for process in hung:
            os.kill(process.pid, 9)
            process.join(5)
        errors = [
            f"rank {rank}:\n{Path(folder, f'error{rank}.txt').read_text()}"
            for rank in range(WORLD_SIZE)
            if Path(folder, f"error{rank}.txt").exists()
        ]
        if hung:
            errors.insert(0, f"{len(hung)} rank(s) still running after {deadline} s were killed")
        if errors or any(process.exitcode != 0 for process in processes):
            codes = [process.exitcode for process in processes]
            raise AssertionError(
                f"distributed run failed (exit codes {codes}):\n" + "\n".join(errors)
            )
        return [
            torch.load(
                os.path.join(folder, f"result{rank}.pt"), weights_only=True, map_location="cpu"
            )
            for rank in range(WORLD_SIZE)
        ]
