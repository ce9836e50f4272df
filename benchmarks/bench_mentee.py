"""Benchmark: Mentee.fit against a hand-written loop, and checkpoint files against torch.save.

Issue 4 asks that ``fit`` on a small CNN cost at most 1.05x per epoch a
hand-written loop doing the same work (progress bars on), and that
``save_checkpoint`` / ``load_checkpoint`` cost at most 1.2x a plain
``torch.save`` / ``torch.load`` of the same model and optimizer tensors.

**fit.** A small CNN (3x3 convolutions of 8 and 16 channels, each with max
pooling, then Linear(784, 64) and Linear(64, 10); 52k parameters) on
synthetic 1x28x28 images, 1,024 for training and 256 for validation, batches
of 32, with one torch thread by default (``--threads``: timings on a shared
machine are far steadier). Both variants build the model from the same seed
and use Adam (lr 1e-3), StepLR(step_size=1, gamma=0.9) stepped once per
epoch, and training loaders that shuffle with their own generator from the
same seed, so they see the same batches in the same order:

- **fit**: ``model.create_train_objects(...)``, then per round
  ``model.fit(train, val, epochs=1)`` (progress bars on), timed from the call
  to its return: the per-call setup is counted in every epoch;
- **hand-written**: the loop one would write: a tqdm bar over the training
  batches, ``zero_grad`` / ``backward`` / ``step``, ``loss.item()`` and the
  batch accuracy, a ``set_postfix(loss=...)`` per batch, size-weighted epoch
  means; the same over the validation batches under ``torch.no_grad()``; then
  ``scheduler.step()``.

One untimed warm-up epoch each, then every round runs one epoch of each, back
to back, in an order that alternates from round to round. The table gives the
median epoch time of each (wall clock, and the process's CPU time, which a
busy machine disturbs less) and the median of the per-round ratios; the
target applies to the wall-clock ratio. Afterwards both models must hold
bit-identical weights: they did the same work.

**Checkpoints.** A Mentee MLP of four Linear(512, 512) (1.05M parameters,
4.2 MB of weights, 12.6 MB with Adam's moments) after 3 Adam steps. Each
variant writes to its own path in the same folder, overwriting it every
round as a training run does, and reads it back; per round every variant
runs once, order rotating; medians of several rounds:

- **torch**: ``torch.save({"model": sd, "optimizer": opt.state_dict()}, path)``
  then ``torch.load(path, weights_only=True)``: the baseline;
- **save_checkpoint**: ``save_checkpoint(path, same dict)`` then
  ``load_checkpoint(path)``. It writes a temporary file, fsyncs it, renames it
  over ``path`` and fsyncs the folder: the durability torch.save does not give
  (see ``mentor_fn._files.atomic_write`` for how that stays about as fast);
- **Mentee**: ``model.save(path)`` then ``Mentee.resume_training(path)``
  (model rebuilt, optimizer and scheduler restored), against a
  **hand-written resume**: ``torch.save`` of model, optimizer and scheduler
  state dicts, then ``torch.load`` + building the model, ``Adam`` and
  ``StepLR`` + their three ``load_state_dict`` calls.

Before timing, every loaded file is checked against what was saved. A last
table times the steps of ``save_checkpoint`` one by one (temporary file and
``torch.save`` with the writeback thread alongside, what the fsync of the file
has left, the second name for the previous file, rename, fsync of the folder,
and the removal of the previous file that a background thread does), then
the same durable save without those two aids, to show where its time goes.

Run from the repository root::

    python -m benchmarks.bench_mentee            # 31 fit rounds, 31 checkpoint rounds
    python -m benchmarks.bench_mentee --quick    # 1 and 2 (smoke test)
    python -m benchmarks.bench_mentee --dir PATH # checkpoints in PATH (default: a temp folder)

The exit status is 0 when both targets are met (fit <= 1.05x, save + load
<= 1.2x), 1 otherwise. It depends on timing and on the disk (fsync): a smoke
test should check that the benchmark runs, not its status.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

import mentor_fn as mf
from benchmarks._common import machine as common_machine
from mentor_fn._files import atomic_write
from mentor_fn._files.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

FIT_LIMIT = 1.05
"""Largest allowed fit / hand-written per-epoch ratio (issue 4)."""

CHECKPOINT_LIMIT = 1.2
"""Largest allowed (save_checkpoint + load_checkpoint) / (torch.save + torch.load) ratio."""

LR = 1e-3
GAMMA = 0.9
BATCH = 32
TRAIN_SIZE = 1024
VAL_SIZE = 256
DATA_SEED = 0
MODEL_SEED = 1
SHUFFLE_SEED = 2


# Models --------------------------------------------------------------------------------


class SmallCNN(mf.Mentee):
    """Two conv blocks and two Linear layers on 1x28x28 images, 10 classes."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, classes)
        self.trainer = mf.Classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.max_pool2d(functional.relu(self.conv1(x)), 2)
        x = functional.max_pool2d(functional.relu(self.conv2(x)), 2)
        return self.fc2(functional.relu(self.fc1(x.flatten(1))))


class WideMLP(mf.Mentee):
    """Four Linear(512, 512): 1.05M parameters, 4.2 MB of float32 weights."""

    def __init__(self, width: int = 512, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(width, width) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# fit vs a hand-written loop ---------------------------------------------------------


def make_data() -> tuple[TensorDataset, TensorDataset]:
    generator = torch.Generator().manual_seed(DATA_SEED)
    images = torch.randn(TRAIN_SIZE + VAL_SIZE, 1, 28, 28, generator=generator)
    # Learnable labels: the brightest of the first 10 image rows.
    labels = images[:, 0, :10, :].mean(dim=-1).argmax(dim=-1)
    return (
        TensorDataset(images[:TRAIN_SIZE], labels[:TRAIN_SIZE]),
        TensorDataset(images[TRAIN_SIZE:], labels[TRAIN_SIZE:]),
    )


def loaders(train: TensorDataset, val: TensorDataset) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(SHUFFLE_SEED)
    return (
        DataLoader(train, batch_size=BATCH, shuffle=True, generator=generator),
        DataLoader(val, batch_size=BATCH, shuffle=False),
    )


class HandWritten:
    """The loop one writes without mentor_fn: same model, optimizer, scheduler, bars."""

    def __init__(self, train: TensorDataset, val: TensorDataset) -> None:
        torch.manual_seed(MODEL_SEED)
        self.model = SmallCNN()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=GAMMA)
        self.train_loader, self.val_loader = loaders(train, val)
        self.epoch = 0

    def run_epoch(self) -> dict[str, float]:
        model, optimizer = self.model, self.optimizer
        model.train()
        loss_sum = correct_sum = 0.0
        count = 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1} train", leave=False)
        for inputs, targets in bar:
            outputs = model(inputs)
            loss = functional.cross_entropy(outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                accuracy = (outputs.argmax(dim=-1) == targets).float().mean().item()
            value = loss.item()
            size = len(targets)
            loss_sum += value * size
            correct_sum += accuracy * size
            count += size
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        bar.close()
        train_loss, train_accuracy = loss_sum / count, correct_sum / count

        model.eval()
        loss_sum = correct_sum = 0.0
        count = 0
        bar = tqdm(self.val_loader, desc=f"epoch {self.epoch + 1} val", leave=False)
        with torch.no_grad():
            for inputs, targets in bar:
                outputs = model(inputs)
                value = functional.cross_entropy(outputs, targets).item()
                accuracy = (outputs.argmax(dim=-1) == targets).float().mean().item()
                size = len(targets)
                loss_sum += value * size
                correct_sum += accuracy * size
                count += size
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        bar.close()
        model.train()
        self.scheduler.step()
        self.epoch += 1
        return {
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": loss_sum / count,
            "val_accuracy": correct_sum / count,
        }


class WithFit:
    def __init__(self, train: TensorDataset, val: TensorDataset) -> None:
        torch.manual_seed(MODEL_SEED)
        self.model = SmallCNN()
        self.model.create_train_objects(lr=LR, step_size=1, gamma=GAMMA)
        self.train_loader, self.val_loader = loaders(train, val)

    def run_epoch(self) -> dict[str, Any]:
        self.model.fit(self.train_loader, self.val_loader, epochs=1, progress=True)
        return self.model.history[-1]


@dataclass
class FitResult:
    rounds: int
    fit_ms: float
    hand_ms: float
    ratio: float
    fit_cpu_ms: float
    hand_cpu_ms: float
    cpu_ratio: float
    same_weights: bool
    fit_metrics: dict[str, float]
    hand_metrics: dict[str, float]


def _timed_ms(call: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = call()
    return (time.perf_counter() - start) * 1e3, result


def _timed_epoch(call: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall-clock and process CPU milliseconds of one epoch, and its result."""
    gc.collect()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = call()
    return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu_start) * 1e3, result


def measure_fit(rounds: int) -> FitResult:
    train, val = make_data()
    fit, hand = WithFit(train, val), HandWritten(train, val)
    fit.run_epoch()  # warm-up
    hand.run_epoch()
    fit_ms, hand_ms, ratios = [], [], []
    fit_cpu, hand_cpu, cpu_ratios = [], [], []
    record: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    for number in range(rounds):
        if number % 2 == 0:
            f, fc, record = _timed_epoch(fit.run_epoch)
            h, hc, metrics = _timed_epoch(hand.run_epoch)
        else:
            h, hc, metrics = _timed_epoch(hand.run_epoch)
            f, fc, record = _timed_epoch(fit.run_epoch)
        fit_ms.append(f)
        hand_ms.append(h)
        ratios.append(f / h)
        fit_cpu.append(fc)
        hand_cpu.append(hc)
        cpu_ratios.append(fc / hc)
        print(f"  fit round {number + 1}/{rounds}: ratio {f / h:.3f}", file=sys.stderr, flush=True)
    fit_state, hand_state = fit.model.state_dict(), hand.model.state_dict()
    same = all(torch.equal(fit_state[key], hand_state[key]) for key in hand_state)
    return FitResult(
        rounds=rounds,
        fit_ms=statistics.median(fit_ms),
        hand_ms=statistics.median(hand_ms),
        ratio=statistics.median(ratios),
        fit_cpu_ms=statistics.median(fit_cpu),
        hand_cpu_ms=statistics.median(hand_cpu),
        cpu_ratio=statistics.median(cpu_ratios),
        same_weights=same,
        fit_metrics={
            "train_loss": record["train"]["loss"],
            "val_accuracy": record["val"]["accuracy"],
        },
        hand_metrics={"train_loss": metrics["train_loss"], "val_accuracy": metrics["val_accuracy"]},
    )


# Checkpoints -----------------------------------------------------------------------------


def trained_mlp() -> WideMLP:
    """The Mentee MLP after 3 steps of its own Adam (per-layer groups) and StepLR."""
    torch.manual_seed(MODEL_SEED)
    model = WideMLP()
    model.create_train_objects(lr=LR, step_size=1, gamma=GAMMA)
    optimizer, scheduler = model.optimizer, model.lr_scheduler
    assert optimizer is not None and scheduler is not None
    _train(model, optimizer, scheduler)
    return model


def plain_mlp() -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """The same MLP as a plain module, with a flat Adam and StepLR, after the same 3 steps."""
    torch.manual_seed(MODEL_SEED)
    model = WideMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=GAMMA)
    _train(model, optimizer, scheduler)
    return model, optimizer, scheduler


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    inputs = torch.randn(32, 512, generator=torch.Generator().manual_seed(DATA_SEED))
    for _ in range(3):
        optimizer.zero_grad()
        model(inputs).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(f"benchmark check failed: {message}")


class CheckpointVariants:
    """The save and load calls of every variant, on one trained model."""

    def __init__(self, folder: Path) -> None:
        self.model = trained_mlp()
        optimizer, scheduler = self.model.optimizer, self.model.lr_scheduler
        assert optimizer is not None and scheduler is not None
        self.optimizer, self.scheduler = optimizer, scheduler
        self.plain, self.plain_optimizer, self.plain_scheduler = plain_mlp()
        self.paths = {
            name: folder / f"{name}.ckpt" for name in ("torch", "mentor_fn", "mentee", "hand")
        }

    def contents(self) -> dict[str, Any]:
        # What a training loop would save: taken fresh at each save, as it would be.
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def torch_save(self) -> None:
        torch.save(self.contents(), self.paths["torch"])

    def torch_load(self) -> Any:
        return torch.load(self.paths["torch"], weights_only=True)

    def checkpoint_save(self) -> None:
        mf.save_checkpoint(self.paths["mentor_fn"], self.contents())

    def checkpoint_load(self) -> Any:
        return mf.load_checkpoint(self.paths["mentor_fn"])

    def mentee_save(self) -> None:
        self.model.save(self.paths["mentee"])

    def mentee_resume(self) -> Any:
        return mf.Mentee.resume_training(self.paths["mentee"])

    def hand_save(self) -> None:
        torch.save(
            {
                "model": self.plain.state_dict(),
                "optimizer": self.plain_optimizer.state_dict(),
                "scheduler": self.plain_scheduler.state_dict(),
            },
            self.paths["hand"],
        )

    def hand_resume(self) -> Any:
        saved = torch.load(self.paths["hand"], weights_only=True)
        model = WideMLP()
        model.load_state_dict(saved["model"])
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=GAMMA)
        scheduler.load_state_dict(saved["scheduler"])
        return model, optimizer, scheduler

    def check(self) -> None:
        """Every variant reads back what it wrote."""
        weights = self.model.state_dict()
        self.torch_save()
        self.checkpoint_save()
        self.mentee_save()
        self.hand_save()
        for loaded in (self.torch_load(), self.checkpoint_load()):
            _require(
                all(torch.equal(loaded["model"][k], v) for k, v in weights.items()),
                "weights differ after a load",
            )
            _require(
                len(loaded["optimizer"]["state"]) == len(weights), "optimizer state incomplete"
            )
        model, optimizer, scheduler = self.mentee_resume()
        _require(
            all(torch.equal(model.state_dict()[k], v) for k, v in weights.items()),
            "resume_training: weights differ",
        )
        for name, parameter in model.named_parameters():
            original = dict(self.model.named_parameters())[name]
            _require(
                torch.equal(
                    optimizer.state[parameter]["exp_avg"],
                    self.optimizer.state[original]["exp_avg"],
                ),
                f"resume_training: Adam state of {name} differs",
            )
        _require(scheduler.last_epoch == self.scheduler.last_epoch, "scheduler progress differs")
        model, optimizer, scheduler = self.hand_resume()
        _require(
            all(torch.equal(model.state_dict()[k], v) for k, v in weights.items()),
            "hand-written resume: the plain model was not trained like the Mentee",
        )
        _require(scheduler.last_epoch == self.scheduler.last_epoch, "hand resume: scheduler")

    def sizes_mb(self) -> dict[str, float]:
        return {name: path.stat().st_size / 1e6 for name, path in self.paths.items()}


@dataclass
class CheckpointResult:
    rounds: int
    medians_ms: dict[str, float]
    ratios: dict[str, float]
    sizes_mb: dict[str, float]


# (pair name, baseline pair name): ratio rows; each pair is (save step, load step).
PAIRS = {
    "torch": ("torch_save", "torch_load"),
    "mentor_fn": ("checkpoint_save", "checkpoint_load"),
    "mentee": ("mentee_save", "mentee_resume"),
    "hand": ("hand_save", "hand_resume"),
}


def measure_checkpoints(rounds: int, folder: Path) -> CheckpointResult:
    variants = CheckpointVariants(folder)
    variants.check()  # also the warm-up: every call once
    samples: dict[str, list[float]] = {f"{pair}.{part}": [] for pair in PAIRS for part in "sl"}
    per_round: dict[str, list[float]] = {key: [] for key in ("save", "load", "both", "mentee")}
    names = list(PAIRS)
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        times: dict[str, float] = {}
        for pair in order:
            save, load = (getattr(variants, step) for step in PAIRS[pair])
            times[f"{pair}.s"], _ = _timed_ms(save)
            times[f"{pair}.l"], loaded = _timed_ms(load)
            del loaded
        for key, value in times.items():
            samples[key].append(value)
        per_round["save"].append(times["mentor_fn.s"] / times["torch.s"])
        per_round["load"].append(times["mentor_fn.l"] / times["torch.l"])
        per_round["both"].append(
            (times["mentor_fn.s"] + times["mentor_fn.l"]) / (times["torch.s"] + times["torch.l"])
        )
        per_round["mentee"].append(
            (times["mentee.s"] + times["mentee.l"]) / (times["hand.s"] + times["hand.l"])
        )
    return CheckpointResult(
        rounds=rounds,
        medians_ms={key: statistics.median(values) for key, values in samples.items()},
        ratios={key: statistics.median(values) for key, values in per_round.items()},
        sizes_mb=variants.sizes_mb(),
    )


STEPS = (
    "temp file + torch.save, writeback alongside",
    "fsync (file): what writeback left",
    "second name for the previous file",
    "rename",
    "fsync (folder)",
)
BACKGROUND_STEP = "removing the previous file (background)"
UNAIDED_STEPS = (
    "temp file + torch.save alone",
    "fsync (file) alone",
    "rename, freeing the previous",
)


def measure_save_steps(rounds: int, folder: Path) -> dict[str, float]:
    """Medians of the steps of ``save_checkpoint``, timed one by one.

    The same calls as ``mentor_fn._files.atomic_write.replace_file``, in its order;
    then the same save without its two aids (no writeback while writing, the
    rename frees the previous file), and ``torch.save`` to a path, in the same
    rounds, for reference.
    """
    variants = CheckpointVariants(folder)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **variants.contents()}
    expected_bytes = (
        sum(tensor.nbytes for tensor in variants.model.state_dict().values()) * 3
    )  # weights and Adam's two moments
    target = folder / "steps.ckpt"
    keys = ("torch.save", *STEPS, BACKGROUND_STEP, *UNAIDED_STEPS)
    samples: dict[str, list[float]] = {step: [] for step in keys}

    def temporary_file() -> Any:
        return tempfile.NamedTemporaryFile(
            dir=folder, prefix=f".{target.name}.", suffix=".tmp", delete=False
        )

    for _ in range(rounds):
        samples["torch.save"].append(_timed_ms(variants.torch_save)[0])
        gc.collect()
        times = [time.perf_counter()]
        handle = temporary_file()
        with handle:
            with atomic_write._writeback_while_writing(handle.fileno(), expected_bytes):
                torch.save(payload, handle)
                handle.flush()
            times.append(time.perf_counter())
            os.fsync(handle.fileno())
            times.append(time.perf_counter())
        previous = atomic_write._second_name(target)
        times.append(time.perf_counter())
        os.replace(handle.name, target)
        times.append(time.perf_counter())
        atomic_write._fsync_folder(folder)
        times.append(time.perf_counter())
        if previous is not None:
            samples[BACKGROUND_STEP].append(_timed_ms(previous.unlink)[0])
        for step, start, end in zip(STEPS, times, times[1:]):
            samples[step].append((end - start) * 1e3)

        gc.collect()
        times = [time.perf_counter()]
        handle = temporary_file()
        with handle:
            torch.save(payload, handle)
            handle.flush()
            times.append(time.perf_counter())
            os.fsync(handle.fileno())
            times.append(time.perf_counter())
        os.replace(handle.name, target)
        times.append(time.perf_counter())
        for step, start, end in zip(UNAIDED_STEPS, times, times[1:]):
            samples[step].append((end - start) * 1e3)
    return {
        step: statistics.median(values) if values else float("nan")
        for step, values in samples.items()
    }


# Report ----------------------------------------------------------------------------------


def format_fit(result: FitResult) -> str:
    lines = [
        "| variant | ms per epoch | ratio | CPU ms per epoch | CPU ratio |",
        "|---|---:|---:|---:|---:|",
        f"| hand-written loop | {result.hand_ms:.1f} | 1.00 | {result.hand_cpu_ms:.1f} | 1.00 |",
        f"| `Mentee.fit` | {result.fit_ms:.1f} | {result.ratio:.3f} "
        f"| {result.fit_cpu_ms:.1f} | {result.cpu_ratio:.3f} |",
    ]
    return "\n".join(lines)


def format_checkpoints(result: CheckpointResult) -> str:
    ms, mb, ratios = result.medians_ms, result.sizes_mb, result.ratios
    both = {pair: ms[f"{pair}.s"] + ms[f"{pair}.l"] for pair in PAIRS}
    lines = [
        "| variant | file MB | save ms | load ms | save + load ms | ratio |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `torch.save` + `torch.load(weights_only=True)` | {mb['torch']:.1f} "
        f"| {ms['torch.s']:.1f} | {ms['torch.l']:.1f} | {both['torch']:.1f} | 1.00 |",
        f"| `save_checkpoint` + `load_checkpoint` | {mb['mentor_fn']:.1f} "
        f"| {ms['mentor_fn.s']:.1f} | {ms['mentor_fn.l']:.1f} | {both['mentor_fn']:.1f} "
        f"| {ratios['both']:.2f} (save {ratios['save']:.2f}, load {ratios['load']:.2f}) |",
        f"| hand-written save + resume (torch, model, Adam, StepLR) | {mb['hand']:.1f} "
        f"| {ms['hand.s']:.1f} | {ms['hand.l']:.1f} | {both['hand']:.1f} | 1.00 |",
        f"| `Mentee.save` + `Mentee.resume_training` | {mb['mentee']:.1f} "
        f"| {ms['mentee.s']:.1f} | {ms['mentee.l']:.1f} | {both['mentee']:.1f} "
        f"| {ratios['mentee']:.2f} |",
    ]
    return "\n".join(lines)


def format_steps(steps: dict[str, float]) -> str:
    lines = ["| step | median ms |", "|---|---:|"]
    lines += [f"| {step} | {steps[step]:.1f} |" for step in STEPS]
    lines.append(f"| **on the caller's path** | **{sum(steps[step] for step in STEPS):.1f}** |")
    lines.append(f"| {BACKGROUND_STEP} | {steps[BACKGROUND_STEP]:.1f} |")
    lines += [f"| without the aids: {step} | {steps[step]:.1f} |" for step in UNAIDED_STEPS]
    lines.append(
        f"| without the aids: **on the caller's path** "
        f"| **{sum(steps[step] for step in UNAIDED_STEPS):.1f}** |"
    )
    lines.append(f"| (`torch.save` to a path, same rounds) | {steps['torch.save']:.1f} |")
    return "\n".join(lines)


def machine() -> str:
    return f"{common_machine()}, {torch.get_num_threads()} torch threads"


def main(argv: Sequence[str] | None = None) -> int:
    """Run both benchmarks, print the tables; 0 if both targets are met, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_mentee", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 fit and 2 checkpoint rounds")
    parser.add_argument("--fit-rounds", type=int, default=None, help="default 31 (1 with --quick)")
    parser.add_argument(
        "--checkpoint-rounds", type=int, default=None, help="default 31 (2 with --quick)"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="folder for the checkpoint files (default: temp)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable timings on a shared machine)",
    )
    args = parser.parse_args(argv)
    fit_rounds = args.fit_rounds or (1 if args.quick else 31)
    checkpoint_rounds = args.checkpoint_rounds or (2 if args.quick else 31)
    if fit_rounds < 1 or checkpoint_rounds < 1:
        parser.error("rounds must be >= 1")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        status = _run(fit_rounds, checkpoint_rounds, args.dir)
        # A round or two are a smoke test: the ratios are shown, not judged.
        return 0 if args.quick else status
    finally:
        torch.set_num_threads(threads)  # as it was: `python -m benchmarks` runs others after


def _run(fit_rounds: int, checkpoint_rounds: int, folder_parent: Path | None) -> int:
    print(f"Mentee.fit and checkpoints -- {machine()}\n", flush=True)
    fit = measure_fit(fit_rounds)
    print(
        f"fit vs a hand-written loop: small CNN, {TRAIN_SIZE:,} + {VAL_SIZE} images, "
        f"batch {BATCH}, progress bars on; medians of {fit.rounds} epochs each, "
        "ratio = median of per-round ratios\n"
    )
    print(format_fit(fit))
    print(
        f"\nSame work: weights bit-identical after {fit.rounds + 1} epochs each: "
        f"{'yes' if fit.same_weights else 'NO'} (last epoch: train loss "
        f"{fit.fit_metrics['train_loss']:.4f} / {fit.hand_metrics['train_loss']:.4f}, "
        f"val accuracy {fit.fit_metrics['val_accuracy']:.3f} / "
        f"{fit.hand_metrics['val_accuracy']:.3f})\n",
        flush=True,
    )

    with tempfile.TemporaryDirectory(dir=folder_parent, prefix="bench_mentee.") as folder:
        checkpoints = measure_checkpoints(checkpoint_rounds, Path(folder))
        steps = measure_save_steps(checkpoint_rounds, Path(folder))
    print(
        "Checkpoints: 4 x Linear(512, 512) after 3 Adam steps; medians of "
        f"{checkpoints.rounds} rounds, ratio = median of per-round ratios\n"
    )
    print(format_checkpoints(checkpoints))
    print("\nWhere save_checkpoint's time goes (its steps timed one by one):\n")
    print(format_steps(steps))

    fit_ok = fit.ratio <= FIT_LIMIT and fit.same_weights
    checkpoint_ok = checkpoints.ratios["both"] <= CHECKPOINT_LIMIT
    print(
        f"\nfit <= {FIT_LIMIT}x: {'yes' if fit_ok else 'NO'} ({fit.ratio:.3f}). "
        f"save_checkpoint + load_checkpoint <= {CHECKPOINT_LIMIT}x: "
        f"{'yes' if checkpoint_ok else 'NO'} ({checkpoints.ratios['both']:.2f})."
    )
    return 0 if fit_ok and checkpoint_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
