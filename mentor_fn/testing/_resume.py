"""Invariant 4: a run saved and resumed continues bit-for-bit like the uninterrupted one."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from .._wrapper.curriculum import Curriculum
from ._diff import first_difference

__all__ = [
    "check_resume",
    "resume_from",
    "run_record",
    "scheduler_order_warning_off",
    "seeded",
    "snapshot_bytes",
]

Step = Callable[[Curriculum], object]

# make_run() runs seeded: the uninterrupted and the saving run start alike
# (random initial weights included); resumed runs start elsewhere, so a load
# that leaves anything out cannot pass by chance.
_RUN_SEED = 1_000_003
_RESUMED_SEED = 1_000_033


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run with torch's global RNG seeded by ``seed``, the caller's RNG untouched.

    A resumed run must see the random numbers the uninterrupted one saw at
    the same step (dropout, sampled batches); seeding each step by its index
    makes them a function of the step, as a checkpoint that saves the RNG does.
    """
    if torch.cuda.is_initialized():
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            torch.manual_seed(seed)
            yield
        return
    # The CPU generator alone, directly: torch.manual_seed costs 100x more
    # (it also seeds every other backend), and runs take thousands of steps.
    saved = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved)


def snapshot_bytes(curriculum: Curriculum) -> bytes:
    """The model's and the Curriculum's state dicts, through ``torch.save``."""
    buffer = io.BytesIO()
    torch.save(
        {"model": curriculum.model.state_dict(), "curriculum": curriculum.state_dict()}, buffer
    )
    return buffer.getvalue()


def resume_from(saved: bytes, fresh: Curriculum) -> Curriculum:
    """Load ``saved`` (``snapshot_bytes``) into a fresh Curriculum, as a new process would."""
    loaded = torch.load(io.BytesIO(saved), weights_only=True)
    fresh.model.load_state_dict(loaded["model"])
    fresh.load_state_dict(loaded["curriculum"])
    return fresh


def run_record(curriculum: Curriculum) -> dict[str, Any]:
    """What two runs that agree bit for bit hold: weights and buffers, flags,
    the state, the optimizer's groups and per-parameter state (by name), the
    scheduler's state."""
    model = curriculum.model
    return {
        "model.state_dict()": model.state_dict(),
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "curriculum.state_dict()": curriculum.state_dict(),
    }


def check_resume(
    make_run: Callable[[], Curriculum],
    steps: Sequence[Step],
    *,
    split_points: Iterable[int] | None = None,
) -> None:
    """Invariant 4: saving after any step and resuming changes nothing, bit for bit.

    The contract: ``make_run()`` returns a fresh :class:`~mentor_fn.Curriculum`
    on a fresh model, configured the same way every call (built or not). It
    runs with torch's RNG seeded: the uninterrupted and the saving run get one
    seed (random initial weights agree), resumed runs another (loading must
    replace their weights). Each step is a
    callable ``step(curriculum)`` that trains, steps the scheduler, applies
    transitions, calls ``build()``, ...: whatever a run does, deterministic
    given the curriculum (each step runs with torch's RNG seeded by its index;
    gradients are not part of a checkpoint, so a training step zeroes them).

    The check runs all steps on one run, uninterrupted. Then, for each split
    point ``k`` (default: every ``k`` from 0 to ``len(steps)``), it saves
    ``model.state_dict()`` and ``curriculum.state_dict()`` after step ``k``
    through ``torch.save`` / ``torch.load(weights_only=True)``, loads them into
    a new ``make_run()``, checks that it holds exactly what was saved, runs
    the remaining steps there and compares the end of both runs: weights and
    buffers, ``requires_grad`` flags, the state, the optimizer's groups and
    per-parameter state, the scheduler's state.

    Raises:
        AssertionError: naming the split point and the first differing entry
            (a parameter, an optimizer-state key, a scheduler field).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> def make_run():
        ...     curriculum = Curriculum(nn.Linear(2, 1), 0.1, optimizer=torch.optim.Adam)
        ...     curriculum.build()
        ...     return curriculum
        >>> def train(curriculum):  # gradients are not saved: start each step from none
        ...     curriculum.optimizer.zero_grad()
        ...     curriculum.model(torch.ones(1, 2)).sum().backward()
        ...     curriculum.optimizer.step()
        >>> check_resume(make_run, [train, train, lambda c: c.freeze("weight"), train])
    """
    steps = list(steps)
    points = range(len(steps) + 1) if split_points is None else sorted(set(split_points))
    for point in points:
        if not 0 <= point <= len(steps):
            raise ValueError(f"split point {point} is outside 0..{len(steps)}")
    with seeded(_RUN_SEED):
        uninterrupted = make_run()
    _run(uninterrupted, steps, 0, len(steps))
    expected = run_record(uninterrupted)

    # One run saves at every split point without stopping; each save then
    # continues in a run of its own.
    saves: dict[int, bytes] = {}
    with seeded(_RUN_SEED):
        saving = make_run()
    done = 0
    for point in points:
        _run(saving, steps, done, point)
        done = point
        saves[point] = snapshot_bytes(saving)
    for point in points:
        with seeded(_RESUMED_SEED):
            fresh = make_run()
        resumed = resume_from(saves[point], fresh)
        found = first_difference(
            torch.load(io.BytesIO(saves[point]), weights_only=True),
            {"model": resumed.model.state_dict(), "curriculum": resumed.state_dict()},
        )
        if found is not None:
            raise AssertionError(
                f"check_resume: saved after step {point} of {len(steps)} and resumed, before any "
                f"further step the resumed run differs from what was saved (invariant 4):\n"
                f"  {found}\n(expected: what was saved; got: the resumed run)"
            )
        _run(resumed, steps, point, len(steps))
        found = first_difference(expected, run_record(resumed))
        if found is not None:
            raise AssertionError(
                f"check_resume: saved after step {point} of {len(steps)} and resumed, the run "
                f"ends differently from the uninterrupted one (invariant 4):\n  {found}\n"
                "(expected: the uninterrupted run; got: the resumed one)"
            )


def _run(curriculum: Curriculum, steps: Sequence[Step], start: int, stop: int) -> None:
    for index in range(start, stop):
        with seeded(index), scheduler_order_warning_off():
            steps[index](curriculum)


@contextlib.contextmanager
def scheduler_order_warning_off() -> Iterator[None]:
    """Silence torch's warning for a scheduler step before any optimizer step.

    A resumed run (and a random one) legitimately starts with a scheduler
    step on an optimizer that has not stepped since it was made.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before"
        )
        yield
