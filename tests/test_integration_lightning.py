"""mentor_fn.integrations.lightning: a curriculum run through Lightning's own loop.

Real Lightning Trainers on a tiny model (a few batches per epoch): resume from
Lightning's checkpoints equals the uninterrupted run bit for bit, frozen
layers never move, the invariant holds at every step and phase change, and
a 2-process DDP run through an unfreeze equals a single process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lightning")

import lightning_workers as workers
from framework_runs import assert_same_run
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.optim import lr_scheduler

import mentor_fn as mf
from mentor_fn.integrations.lightning import CurriculumCallback

pl = workers.pl

# Lightning's advice about tiny runs (few batches, no workers, no logger) is noise here.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning"
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]


def phased_schedule() -> mf.Schedule:
    """Head until val_loss plateaus; the top block with a warmup (a rebuild); then
    everything with layer-wise decay on a fresh optimizer, warming up over 6 steps."""
    return mf.Schedule(
        [
            mf.Phase(
                "head",
                mf.freeze("backbone"),
                until=mf.plateau("val_loss", patience=1, min_delta=0.05),
            ),
            mf.Phase("top", mf.unfreeze("backbone.2"), until=mf.after_steps(5), warmup_steps=3),
            mf.Phase(
                "all",
                mf.chain(mf.unfreeze("backbone"), mf.layerwise_lr_decay(0.5)),
                optimizer="fresh",
                lr=0.02,
                warmup_steps=6,
            ),
        ]
    )


class PhaseLog(pl.Callback):
    """Records (global step, phase) after every batch (after the curriculum's callback)."""

    def __init__(self, callback: CurriculumCallback) -> None:
        self.callback = callback
        self.phases: list[tuple[int, str]] = []

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        assert self.callback.runner is not None and self.callback.runner.phase is not None
        self.phases.append((trainer.global_step, self.callback.runner.phase.name))


def fit(
    folder: Path,
    epochs: int,
    *,
    schedule: mf.Schedule,
    ckpt_path: Path | None = None,
    save: bool = False,
    optimizer: type[torch.optim.Optimizer] = torch.optim.Adam,
    optimizer_kwargs: dict[str, Any] | None = None,
    probes: Callable[[CurriculumCallback], list[pl.Callback]] = lambda callback: [],
    **options: Any,
) -> tuple[workers.Regression, CurriculumCallback, list[pl.Callback]]:
    """Fit the Regression module with ``schedule``; ``probes`` are callbacks run after
    the curriculum's. Returns the module, the curriculum's callback and the probes."""
    model = workers.Regression()
    curriculum = mf.Curriculum(
        model,
        0.05,
        optimizer=optimizer,
        optimizer_kwargs=optimizer_kwargs,
        scheduler=lambda o: lr_scheduler.StepLR(o, 1, 0.7),
    )
    callback = CurriculumCallback(curriculum, schedule)
    extra = probes(callback)
    callbacks: list[pl.Callback] = [callback, *extra]
    if save:
        # One checkpoint per epoch at the epoch's end (Lightning's default
        # moment, after the curriculum's epoch end) and one right after
        # validation, before it.
        callbacks.append(ModelCheckpoint(folder / "end", save_top_k=-1, filename="{epoch}"))
        callbacks.append(
            ModelCheckpoint(
                folder / "val",
                save_top_k=-1,
                filename="{epoch}",
                save_on_train_epoch_end=False,
                mode="max",  # unused without a monitor: only another state key than the first
            )
        )
    trainer = workers.trainer(epochs, callbacks, str(folder), enable_checkpointing=save, **options)
    trainer.fit(
        model,
        workers.loader(None),
        workers.loader(None),
        ckpt_path=None if ckpt_path is None else str(ckpt_path),
    )
    return model, callback, extra


# Importing ------------------------------------------------------------------------------


def test_import_mentor_fn_imports_no_framework():
    # A fresh interpreter: this one has imported Lightning already.
    code = textwrap.dedent(
        """
        import sys
        import mentor_fn, mentor_fn.integrations
        heavy = [m for m in ("lightning", "pytorch_lightning", "transformers", "accelerate")
                 if m in sys.modules]
        print(heavy)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_without_lightning_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # what an uninstalled package looks like
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "mentor_fn.integrations.lightning")
    with pytest.raises(
        ImportError, match=r"pip install 'lightning>=2\.2' \(the 'lightning' extra of mentor_fn\)"
    ):
        import mentor_fn.integrations.lightning  # noqa: F401


# Resume -------------------------------------------------------------------------------------


def test_resumed_runs_equal_the_uninterrupted_run_bit_for_bit(tmp_path):
    schedule = phased_schedule()
    _, whole, _ = fit(tmp_path, 6, schedule=schedule, save=True)
    assert whole.runner.phase.name == "all"  # type: ignore[union-attr]
    # Where the uninterrupted run was at each epoch's end decides what each
    # checkpoint covers: the plateau, mid-warmup, the fresh phase.
    checkpoints = {
        # after validation, before the epoch end that fed the plateau its first
        # value: the resumed run applies it with the saved val_loss
        "val/epoch=0.ckpt",
        # at the end of the epoch where the plateau ended the head phase
        "end/epoch=1.ckpt",
        # after validation, mid-warmup of the top block
        "val/epoch=2.ckpt",
        # at an epoch end in the fresh phase, mid-warmup
        "end/epoch=3.ckpt",
    }
    for checkpoint in sorted(checkpoints):
        _, resumed, _ = fit(
            tmp_path / "resumed", 6, schedule=schedule, ckpt_path=tmp_path / checkpoint
        )
        assert_same_run(whole, resumed)


def test_the_checkpoint_loads_without_running_code_and_holds_the_run(tmp_path):
    fit(tmp_path, 4, schedule=phased_schedule(), save=True)
    checkpoint = torch.load(tmp_path / "end" / "epoch=3.ckpt", weights_only=True)
    (saved,) = checkpoint["optimizer_states"]
    assert saved["format"] == "mentor_fn.integrations.CurriculumRun"
    assert saved["schedule"]["cursor"]["phase"] == 1  # the top block, mid-phase
    # optimizer state by parameter name, not by position
    assert set(saved["curriculum"]["optimizer"]["state"]) == {
        "head.weight",
        "head.bias",
        "backbone.2.weight",
        "backbone.2.bias",
    }
    assert checkpoint["callbacks"]["CurriculumCallback"]["last_epoch_end"] == 3


def test_a_checkpoint_from_a_run_without_the_callback_is_refused(tmp_path):
    model = workers.Regression()
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters())  # type: ignore[method-assign]
    plain = workers.trainer(1, [], str(tmp_path), enable_checkpointing=True)
    plain.fit(model, workers.loader(None))
    plain.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="saved without the curriculum callback"):
        fit(tmp_path, 2, schedule=phased_schedule(), ckpt_path=tmp_path / "plain.ckpt")


# Frozen layers and the invariant ---------------------------------------------------------------


class InvariantProbe(pl.Callback):
    """After every batch and epoch end (after the curriculum's callback): the invariant,
    against one flat group with the same optimizer and scheduler stepped alongside."""

    def __init__(self, callback: CurriculumCallback) -> None:
        self.callback = callback
        self.checks = 0
        self.flat = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=0.05)
        self.flat_scheduler = lr_scheduler.StepLR(self.flat, 1, 0.7)

    def check(self, module: nn.Module) -> None:
        from mentor_fn.testing import check_flags, check_lrs, check_partition

        curriculum = self.callback.curriculum
        assert curriculum is not None and curriculum.optimizer is not None
        check_flags(curriculum.state, module)
        check_partition(curriculum.optimizer, curriculum.state, module)
        check_lrs(curriculum, self.flat.param_groups[0])
        self.checks += 1

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.flat.step()  # no gradient: only keeps the scheduler's step order
            self.flat_scheduler.step()  # Lightning stepped the epoch scheduler at this batch
        self.check(module)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        self.check(module)


class Snapshots(pl.Callback):
    """The parameters at each phase's start."""

    def __init__(self, callback: CurriculumCallback) -> None:
        self.callback = callback
        self.at_phase: dict[str, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer: Any, module: Any, *args: Any) -> None:
        name = self.callback.runner.phase.name  # type: ignore[union-attr]
        if name not in self.at_phase:
            self.at_phase[name] = {k: v.detach().clone() for k, v in module.named_parameters()}


def test_frozen_layers_never_move_and_the_invariant_holds_at_every_step(tmp_path):
    # AdamW with weight decay and gradient clipping: a frozen parameter that any
    # of them touched would move. backbone.0 never trains; the head trains,
    # then is frozen while the whole backbone (keeping its decay) goes on.
    schedule = mf.Schedule(
        [
            mf.Phase("top", mf.freeze("backbone.0"), until=mf.after_epochs(1)),
            mf.Phase(
                "no head",
                mf.chain(mf.freeze("head"), mf.layerwise_lr_decay(0.5, patterns="backbone.*")),
                until=mf.after_steps(3),
                warmup_steps=2,
            ),
            mf.Phase("head again", mf.unfreeze("head")),
        ]
    )
    initial = {k: v.detach().clone() for k, v in workers.Regression().named_parameters()}
    model, callback, (probe, snapshots) = fit(
        tmp_path,
        4,
        schedule=schedule,
        optimizer=torch.optim.AdamW,
        optimizer_kwargs={"weight_decay": 0.1},
        probes=lambda callback: [InvariantProbe(callback), Snapshots(callback)],
        gradient_clip_val=0.5,
    )

    assert callback.runner.phase.name == "head again"  # type: ignore[union-attr]
    assert probe.checks == 4 * 2 + 4  # every batch and every epoch end
    final = dict(model.named_parameters())
    for name in ("backbone.0.weight", "backbone.0.bias"):
        assert torch.equal(final[name], initial[name]), name
        assert final[name].grad is None
    # frozen from the start of "no head" to the start of "head again"
    for name in ("head.weight", "head.bias"):
        before, after = snapshots.at_phase["no head"][name], snapshots.at_phase["head again"][name]
        assert torch.equal(before, after), name
        assert not torch.equal(snapshots.at_phase["head again"][name], final[name])


# Steps, schedulers, misuse --------------------------------------------------------------------


def test_gradient_accumulation_counts_optimizer_steps_not_batches(tmp_path):
    schedule = mf.Schedule(
        [
            mf.Phase("head", mf.freeze("backbone"), until=mf.after_steps(2)),
            mf.Phase("all", mf.unfreeze("backbone"), warmup_steps=2),
        ]
    )
    _, callback, (log,) = fit(
        tmp_path,
        3,
        schedule=schedule,
        probes=lambda callback: [PhaseLog(callback)],
        accumulate_grad_batches=2,  # 2 batches per epoch: one optimizer step per epoch
    )
    assert log.phases == [
        (0, "head"),
        (1, "head"),
        (1, "head"),
        (2, "all"),  # after the second optimizer step, on the fourth batch
        (2, "all"),
        (3, "all"),
    ]
    assert callback.runner.cursor.steps == 1  # type: ignore[union-attr]


class ManualRegression(workers.Regression):
    """Manual optimization: two optimizer steps per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_index: int) -> None:
        optimizer = self.optimizers()
        inputs, targets = batch
        for _ in range(2):
            optimizer.zero_grad()
            self.manual_backward(nn.functional.mse_loss(self(inputs), targets))
            optimizer.step()


def test_manual_optimization_counts_its_optimizer_steps_at_each_batch_end(tmp_path):
    schedule = mf.Schedule(
        [
            mf.Phase("head", mf.freeze("backbone"), until=mf.after_steps(3)),
            mf.Phase("all", mf.unfreeze("backbone")),
        ]
    )
    model = ManualRegression()
    initial = model.backbone[0].weight.detach().clone()
    callback = CurriculumCallback(mf.Curriculum(model, 0.05), schedule)
    log = PhaseLog(callback)
    workers.trainer(2, [callback, log], str(tmp_path)).fit(model, workers.loader(None))
    # steps 3 and 4 were taken in batch 2; at its end the third ended the head
    # phase and the fourth counted in the next
    assert log.phases == [(2, "head"), (4, "all"), (6, "all"), (8, "all")]
    assert callback.runner.cursor.steps == 5  # type: ignore[union-attr]
    assert not torch.equal(model.backbone[0].weight, initial)


def plateau_scheduler(optimizer: torch.optim.Optimizer) -> lr_scheduler.ReduceLROnPlateau:
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=0, factor=0.5, eps=0)


def test_reduce_lr_on_plateau_is_stepped_by_lightning_with_the_monitored_metric(tmp_path):
    class Record(pl.Callback):
        def __init__(self) -> None:
            self.val_losses: list[float] = []

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            self.val_losses.append(float(trainer.callback_metrics["val_loss"]))

    model = workers.Regression()
    curriculum = mf.Curriculum(
        model,
        0.05,
        # mode "max" on a falling loss: no improvement, so a reduction per epoch
        scheduler=lambda o: plateau_scheduler(o),
    )
    callback = CurriculumCallback(
        curriculum,
        mf.Schedule([mf.Phase("decayed", mf.layerwise_lr_decay(0.5))]),
        lr_scheduler_config={"monitor": "val_loss"},
    )
    record = Record()
    trainer = workers.trainer(5, [callback, record], str(tmp_path))
    trainer.fit(model, workers.loader(None), workers.loader(None))

    (config,) = trainer.lr_scheduler_configs
    assert config.reduce_on_plateau and isinstance(config.scheduler, lr_scheduler.ReduceLROnPlateau)
    flat = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=0.05)
    flat_scheduler = plateau_scheduler(flat)
    for loss in record.val_losses:
        flat_scheduler.step(loss)
    assert flat.param_groups[0]["lr"] == 0.05 * 0.5**4  # reduced after epochs 2-5
    from mentor_fn.testing import check_lrs

    check_lrs(curriculum, flat.param_groups[0])


class Held(pl.Callback):
    """What Lightning holds as the optimizer and scheduler, and the curriculum's objects
    at the start of training."""

    def __init__(self, callback: CurriculumCallback) -> None:
        self.callback = callback

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.first_optimizer = self.callback.curriculum.optimizer  # type: ignore[union-attr]

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self.optimizer = trainer.optimizers[0]
        self.lightning_optimizer = trainer.strategy._lightning_optimizers[0]
        self.scheduler = trainer.lr_scheduler_configs[0].scheduler


def test_lightning_reaches_the_new_optimizer_and_scheduler_after_a_fresh_phase(tmp_path):
    _, callback, (held,) = fit(
        tmp_path, 6, schedule=phased_schedule(), probes=lambda callback: [Held(callback)]
    )
    curriculum = callback.curriculum
    assert curriculum is not None and curriculum.optimizer is not None
    assert callback.runner.phase.name == "all"  # type: ignore[union-attr]
    assert curriculum.optimizer is not held.first_optimizer  # the fresh phase made new objects
    for handle in (held.optimizer, held.lightning_optimizer):
        assert handle.param_groups is curriculum.optimizer.param_groups
        assert handle.state is curriculum.optimizer.state
    assert held.scheduler.get_last_lr() == curriculum.scheduler.get_last_lr()
    assert held.scheduler.last_epoch == curriculum.scheduler.last_epoch


def test_configure_optimizers_must_hand_lightning_the_curriculum(tmp_path):
    model = workers.Regression()
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters())  # type: ignore[method-assign]
    callback = CurriculumCallback(mf.Curriculum(model, 0.05))
    with pytest.raises(RuntimeError, match="curriculum_optimizers"):
        workers.trainer(1, [callback], str(tmp_path)).fit(model, workers.loader(None))


def test_a_curriculum_on_another_module_is_refused(tmp_path):
    model = workers.Regression()
    callback = CurriculumCallback(mf.Curriculum(workers.Regression(), 0.05))
    with pytest.raises(ValueError, match="on the LightningModule being fitted"):
        workers.trainer(1, [callback], str(tmp_path)).fit(model, workers.loader(None))


def test_a_factory_makes_the_curriculum_from_the_module(tmp_path):
    model = workers.Regression()
    callback = CurriculumCallback(lambda module: mf.Curriculum(module, 0.05))
    assert callback.curriculum is None
    workers.trainer(1, [callback], str(tmp_path)).fit(model, workers.loader(None))
    assert callback.curriculum is not None and callback.curriculum.model is model


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(TypeError, match="curriculum must be"):
        CurriculumCallback(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schedule must be"):
        CurriculumCallback(lambda module: None, "phases")  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="must not hold 'scheduler'"):
        CurriculumCallback(lambda module: None, lr_scheduler_config={"scheduler": 1})  # type: ignore[arg-type, return-value]


# Epoch ends, misuse, logs ----------------------------------------------------------------------


def epoch_schedule() -> mf.Schedule:
    return mf.Schedule(
        [
            mf.Phase("head", mf.freeze("backbone"), until=mf.after_epochs(1)),
            mf.Phase("top", mf.unfreeze("backbone.2"), until=mf.after_epochs(1)),
            mf.Phase("all", mf.unfreeze("backbone")),
        ]
    )


class StopAt(pl.Callback):
    """Ends training at a step, as early stopping does: trainer.should_stop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("stop", ["max_steps", "should_stop"])
def test_a_stop_in_the_middle_of_an_epoch_is_not_an_epoch_end(tmp_path, stop):
    # 2 steps per epoch; stopped at step 3, in the middle of "top"'s epoch.
    # Lightning still calls on_train_epoch_end, and ModelCheckpoint saves there.
    options: dict[str, Any] = {"max_steps": 3} if stop == "max_steps" else {}
    _, stopped, _ = fit(
        tmp_path,
        3,
        schedule=epoch_schedule(),
        save=True,
        probes=lambda callback: [] if stop == "max_steps" else [StopAt(3)],
        **options,
    )
    runner = stopped.runner
    assert runner is not None and runner.phase is not None
    assert (runner.phase.name, runner.cursor.epochs, runner.cursor.steps) == ("top", 0, 1)
    # Lightning resumes from that checkpoint with the next epoch (the rest of
    # epoch 1 is skipped); the schedule's epoch is still the unfinished one.
    _, resumed, (log,) = fit(
        tmp_path / "resumed",
        3,
        schedule=epoch_schedule(),
        ckpt_path=tmp_path / "end" / "epoch=1.ckpt",
        probes=lambda callback: [PhaseLog(callback)],
    )
    assert log.phases == [(4, "top"), (5, "top")]
    assert resumed.runner.phase.name == "all"  # type: ignore[union-attr]


def test_handles_given_to_lightning_without_the_callback_refuse_to_step(tmp_path):
    model = workers.Regression()
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    callback = CurriculumCallback(mf.Curriculum(model, 0.05), epoch_schedule())
    model.configure_optimizers = lambda: callback.configure_optimizers(model)  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match=r"callbacks=\[callback\]"):
        workers.trainer(1, [], str(tmp_path)).fit(model, workers.loader(None))
    for name, value in model.named_parameters():
        assert torch.equal(value, initial[name]), name


class LoggedLrs(pl.Callback):
    """The lrs logged at each batch (after the curriculum's callback logged them), and the
    live groups' lrs at each optimizer step."""

    def __init__(self, callback: CurriculumCallback) -> None:
        self.callback = callback
        self.logged: list[dict[str, float]] = []
        self.groups: list[list[tuple[tuple[str, ...], float]]] = []

    def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
        self.groups.append([(g["layers"], g["lr"]) for g in optimizer.param_groups])

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        metrics = trainer.callback_metrics
        self.logged.append({k: float(v) for k, v in metrics.items() if k.startswith("lr")})


def test_the_run_lr_is_logged_as_lr_and_each_layers_under_its_own_key(tmp_path):
    schedule = mf.Schedule(
        [
            mf.Phase("head", mf.freeze("backbone"), until=mf.after_steps(2)),
            mf.Phase(
                "all",
                mf.chain(mf.unfreeze("backbone"), mf.layerwise_lr_decay(0.5)),
                warmup_steps=2,
            ),
        ]
    )
    _, _, (logged,) = fit(
        tmp_path, 3, schedule=schedule, probes=lambda callback: [LoggedLrs(callback)]
    )
    assert len(logged.logged) == len(logged.groups) == 6
    for logs, groups in zip(logged.logged, logged.groups):
        (reference,) = [lr for layers, lr in groups if layers == ()]
        assert logs["lr"] == pytest.approx(reference, rel=1e-6)  # logged as float32
        for layers, lr in groups:
            for layer in layers:
                key = f"lr/{layer}"
                assert logs.get(key, logs["lr"]) == pytest.approx(lr, rel=1e-6), (key, logs)
    # steps 1-2 the head alone at the run's lr; then the decayed backbone keys
    assert set(logged.logged[0]) == {"lr"}
    # (the head, on top, keeps coefficient 1: it trains at the run's lr, no key of its own)
    assert set(logged.logged[-1]) == {"lr", "lr/backbone.0", "lr/backbone.2"}
    last = logged.logged[-1]
    assert last["lr/backbone.0"] == pytest.approx(last["lr"] * 0.25, rel=1e-6)


# DDP, FSDP2 and DeepSpeed ------------------------------------------------------------------------
#
# One world of 2 processes runs every scenario (lightning_workers.distributed_runs).
# Tolerance against the single process: rtol=1e-5, atol=1e-6. The runs differ
# only in the order of the gradient sums (two half-batch means averaged across
# ranks, by DDP's all-reduce, FSDP2's reduce-scatter or ZeRO's, against one
# mean of the whole batch) and, under DeepSpeed, of the gradient norm:
# float32 rounding, which Adam's normalized steps carry over the 10 steps of
# this tiny model to at most 6e-8 (measured, for DDP, FSDP2 and ZeRO 2 and 3
# alike).

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
needs_deepspeed = pytest.mark.skipif(not workers.HAS_DEEPSPEED, reason="needs deepspeed")
ZERO = [pytest.param("zero2", marks=needs_deepspeed), pytest.param("zero3", marks=needs_deepspeed)]


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from distributed_harness import run_world, skip_reason

    if skip_reason() is not None:
        pytest.skip(str(skip_reason()))
    folder = tmp_path_factory.mktemp("lightning_world")
    reference = workers.fit(None, str(folder / "reference"))
    results = run_world(workers.distributed_runs, str(folder), deadline=240.0)
    return {"reference": reference, "ranks": results}


def assert_same_steps(first: dict[str, Any], second: dict[str, Any], reference: dict[str, Any]):
    assert first["phases"] == second["phases"] == reference["phases"]
    assert first["step_lrs"] == second["step_lrs"] == reference["step_lrs"]
    for step, expected in enumerate(reference["step_parameters"]):
        for name, value in expected.items():
            # a parameter is the same on both ranks after every step
            assert torch.equal(
                first["step_parameters"][step][name], second["step_parameters"][step][name]
            )
            torch.testing.assert_close(first["step_parameters"][step][name], value, **TOLERANCE)


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["whole", "fsdp", *ZERO])
def test_ranks_stay_equal_and_equal_one_process_through_every_transition(distributed, kind):
    reference = distributed["reference"]
    assert reference["phases"] == ["head"] * 2 + ["top"] * 2 + ["decay"] * 2 + ["all"] * 4
    first, second = (result[kind] for result in distributed["ranks"])
    assert [first["global_rank"], second["global_rank"]] == [0, 1]
    assert_same_steps(first, second, reference)


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["whole", "fsdp", *ZERO])
def test_frozen_layers_never_move_under_every_engine(distributed, kind):
    initial = {k: v.detach() for k, v in workers.Regression().named_parameters()}
    for result in distributed["ranks"]:
        steps = dict(enumerate(result[kind]["step_parameters"]))
        for name in ("backbone.0.weight", "backbone.2.bias"):  # frozen for the first epoch
            assert torch.equal(steps[1][name], initial[name]), name
        for name in ("head.weight", "head.bias"):  # frozen in "decay" (steps 6 and 7)
            assert torch.equal(steps[6][name], steps[4][name]), name
            assert not torch.equal(steps[9][name], steps[6][name]), name


@pytest.mark.distributed
def test_ddp_follows_the_phases_without_unused_parameter_detection(distributed):
    for result in distributed["ranks"]:
        whole = result["whole"]
        assert whole["find_unused_parameters"] is False
        # once at the first forward (adopted after Lightning wrapped it), then at
        # each change of the trainable set: top, decay, all
        assert whole["reducer_rebuilds"] == 4


@pytest.mark.distributed
def test_ddp_resumed_from_lightnings_checkpoint_equals_the_uninterrupted_run(distributed):
    for result in distributed["ranks"]:
        # stopped after 2 epochs, saved by rank 0, resumed on both: the same run
        whole, resumed = result["whole"], result["resumed"]
        assert resumed["phases"] == whole["phases"][4:]
        for name, value in whole["parameters"].items():
            assert torch.equal(value, resumed["parameters"][name]), name
        assert resumed["lrs"] == whole["lrs"]


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ZERO)
def test_the_zero_groups_hold_the_trainable_parameters_at_their_groups_lr(distributed, kind):
    for result in distributed["ranks"]:
        assert result[kind]["zero_groups_follow"] == [True] * 10
        assert result[f"{kind}_resumed"]["zero_groups_follow"] == [True] * 4


@pytest.mark.distributed
def test_fsdp2_resumed_from_lightnings_checkpoint_equals_the_uninterrupted_run(distributed):
    for result in distributed["ranks"]:
        # saved by ModelCheckpoint at epoch 3's end, mid-"decay": the frozen head
        # holds Adam state (an inert group), which DCP's optimizer API would drop
        assert result["fsdp_files"] == ["epoch=2-step=6.ckpt"]
        whole, resumed = result["fsdp"], result["fsdp_resumed"]
        assert whole["phases"][5] == "decay"  # the phase at the checkpoint (step 6)
        assert resumed["phases"] == whole["phases"][6:]
        assert resumed["step_lrs"] == whole["step_lrs"][6:]
        for step, parameters in enumerate(resumed["step_parameters"]):
            for name, value in parameters.items():
                assert torch.equal(value, whole["step_parameters"][6 + step][name]), (step, name)


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ZERO)
def test_deepspeed_resumed_from_lightnings_checkpoint_equals_the_uninterrupted_run(
    distributed, kind
):
    for result in distributed["ranks"]:
        # saved through DeepSpeed's engine by ModelCheckpoint at epoch 3's end,
        # mid-"decay" (the head frozen: in no ZeRO group), resumed on both
        whole, resumed = result[kind], result[f"{kind}_resumed"]
        assert whole["phases"][5] == "decay"
        assert resumed["phases"] == whole["phases"][6:]
        assert resumed["step_lrs"] == whole["step_lrs"][6:]
        for step, parameters in enumerate(resumed["step_parameters"]):
            for name, value in parameters.items():
                assert torch.equal(value, whole["step_parameters"][6 + step][name]), (step, name)
        # the run beside DeepSpeed's own files in the checkpoint's tag folder
        assert "mentor_fn_curriculum.pt" in result[f"{kind}_files"]


@pytest.mark.distributed
def test_configurations_that_cannot_work_are_refused_naming_the_alternative(distributed):
    for result in distributed["ranks"]:
        assert "static_graph=True" in result["static_graph"]
        assert "mentor_fn.wrap_ddp" in result["static_graph"]
        message = result["fsdp_checkpoints"]
        assert "ModelParallelStrategy (FSDP2)" in message
        assert "CurriculumModelParallelStrategy in its place" in message
        if workers.HAS_DEEPSPEED:
            assert "DeepSpeedStrategy: DeepSpeed config" in result["zero2_offload"]
            assert "offload_optimizer" in result["zero2_offload"]


def test_full_fsdp2_checkpoints_are_refused_when_the_strategy_is_built():
    from mentor_fn.integrations.lightning import CurriculumModelParallelStrategy

    with pytest.raises(ValueError, match=r"save_distributed_checkpoint=False\) is not"):
        CurriculumModelParallelStrategy(data_parallel_size=2, save_distributed_checkpoint=False)
    strategy = CurriculumModelParallelStrategy(2, 1)  # ModelParallelStrategy's arguments
    assert strategy._data_parallel_size == 2 and strategy._tensor_parallel_size == 1


def test_the_fsdp1_strategy_and_deepspeed_configs_that_cannot_work_are_refused():
    from lightning.pytorch.strategies import FSDPStrategy

    from mentor_fn.integrations.lightning import _unsupported_strategy

    assert "FSDP2: ModelParallelStrategy" in _unsupported_strategy(FSDPStrategy())
    pytest.importorskip("deepspeed")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    for stage in (1, 2, 3):
        assert _unsupported_strategy(DeepSpeedStrategy(stage=stage)) == ""
    assert "offload_param" in _unsupported_strategy(
        DeepSpeedStrategy(stage=3, offload_parameters=True)
    )
    assert "'scheduler' section" in _unsupported_strategy(
        DeepSpeedStrategy(config={"zero_optimization": {"stage": 2}, "scheduler": {}})
    )
