"""Lightning runs for tests/test_integration_lightning.py, on one process or on each rank of
tests/distributed_harness.py's 2-process gloo world (importable by the workers): DDP,
FSDP2 (ModelParallelStrategy) and DeepSpeed ZeRO 2 and 3 (DeepSpeedStrategy).

Each rank gets half of every global batch, the samples r, r + 2, ... (an
unshuffled DistributedSampler: Lightning's own would shuffle); the
single-process reference trains on the whole batches, so the ranks must equal it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from typing import Any

import torch
from distributed_harness import BACKEND, on_cuda
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import mentor_fn as mf
from mentor_fn._wrapper.ddp import reducer_rebuilds

warnings.filterwarnings("ignore", module="lightning")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.strategies import (  # noqa: E402
    DDPStrategy,
    DeepSpeedStrategy,
    ModelParallelStrategy,
)

from mentor_fn.integrations.lightning import (  # noqa: E402
    CurriculumCallback,
    CurriculumModelParallelStrategy,
    curriculum_optimizers,
)

GLOBAL_BATCH = 8
SAMPLES = 16
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


class Regression(pl.LightningModule):
    """A backbone and a head; logs ``train_loss`` (per epoch) and ``val_loss``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(inputs))

    def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
        inputs, targets = batch
        loss = nn.functional.mse_loss(self(inputs), targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_index: int) -> None:
        inputs, targets = batch
        self.log("val_loss", nn.functional.mse_loss(self(inputs), targets))

    def configure_optimizers(self) -> Any:
        return curriculum_optimizers(self)


class ShardedRegression(Regression):
    """Regression sharded with FSDP2 in ``configure_model`` (ModelParallelStrategy):
    backbone.0 its own unit, the rest of the backbone another, the head a third."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        if self.device_mesh is None or hasattr(self.head, "reshard"):
            return  # no mesh (one process), or sharded already (a second fit)
        mesh = self.device_mesh["data_parallel"]
        fully_shard(self.backbone[0], mesh=mesh)
        fully_shard(self.backbone, mesh=mesh)
        fully_shard(self.head, mesh=mesh)


def data() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(SAMPLES, 4, generator=generator), torch.randn(SAMPLES, 3, generator=generator)
    )


def loader(rank: int | None) -> DataLoader:
    """The whole batches (rank None), or rank ``rank``'s half of each: samples r, r + 2, ..."""
    if rank is None:
        return DataLoader(data(), batch_size=GLOBAL_BATCH)
    sampler = DistributedSampler(data(), num_replicas=2, rank=rank, shuffle=False)
    return DataLoader(data(), batch_size=GLOBAL_BATCH // 2, sampler=sampler)


def unfreeze_schedule() -> mf.Schedule:
    """Head for an epoch; then the whole backbone (a rebuild), warming up over 3 steps."""
    return mf.Schedule(
        [
            mf.Phase("head", mf.freeze("backbone"), until=mf.after_epochs(1)),
            mf.Phase("all", mf.unfreeze("backbone"), warmup_steps=3),
        ]
    )


def distributed_schedule() -> mf.Schedule:
    """Every transition kind, 2 steps per epoch: the head alone for an epoch; the top
    block unfrozen (a rebuild) with a warmup, for 3 steps; the backbone with layer-wise
    decay while the head is frozen, for 2 steps; the head again at its own coefficient."""
    return mf.Schedule(
        [
            mf.Phase("head", mf.freeze("backbone"), until=mf.after_epochs(1)),
            mf.Phase("top", mf.unfreeze("backbone.2"), until=mf.after_steps(3), warmup_steps=2),
            mf.Phase(
                "decay",
                mf.chain(
                    mf.unfreeze("backbone"),
                    mf.freeze("head"),
                    mf.layerwise_lr_decay(0.5, patterns=r"backbone\.\d"),
                ),
                until=mf.after_steps(2),
            ),
            mf.Phase("all", mf.chain(mf.unfreeze("head"), mf.set_lr_coefficient(0.3, "head"))),
        ]
    )


def new_callback(model: Regression, schedule: mf.Schedule) -> CurriculumCallback:
    curriculum = mf.Curriculum(
        model,
        0.05,
        optimizer=torch.optim.Adam,
        scheduler=lambda optimizer: lr_scheduler.StepLR(optimizer, 1, 0.7),
    )
    return CurriculumCallback(curriculum, schedule)


def trainer(epochs: int, callbacks: list[pl.Callback], folder: str, **options: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "max_epochs": epochs,
        "accelerator": "gpu" if on_cuda() else "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": folder,
        **options,
    }
    return pl.Trainer(callbacks=callbacks, **settings)


class StepProbe(pl.Callback):
    """After each optimizer step (after the curriculum's callback): the phase, the
    group lrs and every parameter (gathered from the shards under FSDP2 and ZeRO-3),
    and under DeepSpeed whether the engine's ZeRO groups follow the curriculum."""

    def __init__(self, callback: CurriculumCallback) -> None:
        self.callback = callback
        self.phases: list[str] = []
        self.lrs: list[list[float]] = []
        self.parameters: list[dict[str, torch.Tensor]] = []
        self.wrapper: dict[str, Any] = {}
        self.zero_groups_follow: list[bool] = []

    def on_train_start(self, trainer: Any, module: Any) -> None:
        wrapper = trainer.strategy.model
        if isinstance(wrapper, nn.parallel.DistributedDataParallel):
            self.ddp = wrapper
            self.wrapper["find_unused_parameters"] = wrapper.find_unused_parameters

    def on_train_end(self, trainer: Any, module: Any) -> None:
        if "find_unused_parameters" in self.wrapper:
            self.wrapper["reducer_rebuilds"] = reducer_rebuilds(self.ddp)

    def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
        runner, curriculum = self.callback.runner, self.callback.curriculum
        assert runner is not None and runner.phase is not None
        assert curriculum is not None and curriculum.optimizer is not None
        self.phases.append(runner.phase.name)
        self.lrs.append([group["lr"] for group in curriculum.optimizer.param_groups])
        self.parameters.append(full_parameters(module))
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            from trainer_workers import zero_groups_follow

            engine = trainer.strategy.model
            self.zero_groups_follow.append(zero_groups_follow(curriculum, engine.optimizer))


def full_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole: FSDP2 shards gathered, ZeRO-3 partitions too (collective then)."""
    if any(hasattr(parameter, "ds_id") for parameter in module.parameters()):  # ZeRO-3
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            return {name: p.detach().cpu().clone() for name, p in module.named_parameters()}
    result = {}
    for name, parameter in module.named_parameters():
        value = parameter.detach()
        if hasattr(value, "full_tensor"):  # an FSDP2 DTensor shard
            value = value.full_tensor()
        result[name] = value.cpu().clone()
    return result


def outcome(model: Regression, callback: CurriculumCallback) -> dict[str, Any]:
    curriculum = callback.curriculum
    assert curriculum is not None and curriculum.optimizer is not None and callback.runner
    return {
        "parameters": full_parameters(model),
        "lrs": [group["lr"] for group in curriculum.optimizer.param_groups],
        "phase": callback.runner.phase.name,  # type: ignore[union-attr]
    }


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy without its CUDA-only check, for the gloo worlds here:
    DeepSpeed's CPU accelerator runs the engine, everything else is Lightning's. Its
    devices are numbered (``cpu:<local rank>``, which torch reads as the CPU), as
    DeepSpeedStrategy wants of GPUs. The worlds use DeepSpeedStrategy itself on CUDA
    (MENTOR_FN_TEST_BACKEND=nccl)."""

    def __init__(self, **options: Any) -> None:
        devices = [torch.device("cpu", index) for index in range(2)]
        super().__init__(parallel_devices=devices, **options)

    def setup_environment(self) -> None:
        super(DeepSpeedStrategy, self).setup_environment()  # all but the CUDA check


def strategy_of(kind: str) -> Any:
    backend = BACKEND
    if kind == "ddp":
        # no find_unused_parameters: the callback makes DDP follow the phases
        return DDPStrategy(process_group_backend=backend)
    if kind in ("fsdp", "fsdp_plain"):
        # the curriculum's strategy saves Lightning checkpoints; Lightning's own refuses them
        kind_of = CurriculumModelParallelStrategy if kind == "fsdp" else ModelParallelStrategy
        return kind_of(data_parallel_size=2, tensor_parallel_size=1, process_group_backend=backend)
    if kind.startswith("zero"):
        if not on_cuda():
            os.environ["DS_ACCELERATOR"] = "cpu"
        kind_of = DeepSpeedStrategy if on_cuda() else CPUDeepSpeedStrategy
        # every parameter partitioned under ZeRO-3, however small
        zero: dict[str, Any] = {"stage": int(kind[4]), "stage3_param_persistence_threshold": 0}
        if kind.endswith("offload"):
            zero["offload_optimizer"] = {"device": "cpu"}
        config = {"zero_optimization": zero, "zero_allow_untested_optimizer": True}
        return kind_of(config=config, process_group_backend=backend)
    raise ValueError(kind)


def fit(
    rank: int | None,
    folder: str,
    epochs: int = 5,
    *,
    kind: str = "ddp",
    ckpt_path: str | None = None,
    save: str = "",
    checkpoints: str = "",
) -> dict[str, Any]:
    """Fit with the distributed schedule on one process (rank None) or as rank ``rank`` of
    2 under ``kind`` ("ddp", "fsdp", "zero2", "zero3"); resume from ``ckpt_path``, save a
    checkpoint at the end to ``save``, and every 3 epochs into the folder ``checkpoints``
    (ModelCheckpoint). The parameters after each step, the phases, the lrs."""
    model = ShardedRegression() if kind.startswith("fsdp") else Regression()
    callback = new_callback(model, distributed_schedule())
    probe = StepProbe(callback)
    callbacks: list[pl.Callback] = [callback, probe]
    options: dict[str, Any] = {}
    if checkpoints:
        every = ModelCheckpoint(dirpath=checkpoints, every_n_epochs=3, save_top_k=-1)
        callbacks.append(every)
        options["enable_checkpointing"] = True
    if rank is None:
        run = trainer(epochs, callbacks, folder, devices=1)
    else:
        run = trainer(
            epochs,
            callbacks,
            folder,
            devices=2,
            strategy=strategy_of(kind),
            use_distributed_sampler=False,
            **options,
        )
    run.fit(model, loader(rank), ckpt_path=ckpt_path)
    if save:
        run.save_checkpoint(save)  # rank 0 writes; every rank takes part
    result = outcome(model, callback)
    result.update(
        global_rank=run.global_rank,
        phases=probe.phases,
        step_lrs=probe.lrs,
        step_parameters=probe.parameters,
        zero_groups_follow=probe.zero_groups_follow,
    )
    result.update(probe.wrapper)
    return result


def refused(rank: int, folder: str, kind: str, **options: Any) -> str:
    """The message of a strategy or setting the callback refuses ("not refused" if none)."""
    model = ShardedRegression() if kind.startswith("fsdp") else Regression()
    callback = new_callback(model, unfreeze_schedule())
    strategy = (
        DDPStrategy(process_group_backend=BACKEND, static_graph=True)
        if kind == "static_graph"
        else strategy_of(kind)
    )
    run = trainer(1, [callback], folder, devices=2, strategy=strategy, **options)
    try:
        run.fit(model, loader(rank))
    except ValueError as error:
        return str(error)
    return "not refused"


def distributed_runs(rank: int, folder: str) -> dict[str, Any]:
    """Every distributed scenario in one world (each world imports Lightning once per
    rank): under DDP, a fit through every transition, the same fit stopped, saved and
    resumed, a refusal; under FSDP2, the fit saving Lightning checkpoints every 3 epochs
    (CurriculumModelParallelStrategy), the fit resumed from the first (mid-"decay": the
    frozen head holds optimizer state), and ModelParallelStrategy's refusal of them;
    DeepSpeed (see deepspeed_runs)."""
    # The process group is already up (FileStore rendezvous); Lightning skips
    # initializing it and, seeing LOCAL_RANK, launches nothing: it takes this
    # process as rank `rank` of 2.
    os.environ.update(
        LOCAL_RANK=str(rank),
        RANK=str(rank),
        NODE_RANK="0",
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29500",
    )
    checkpoint = os.path.join(folder, "ddp.ckpt")
    whole = fit(rank, folder)
    fit(rank, folder, epochs=2, save=checkpoint)
    resumed = fit(rank, folder, ckpt_path=checkpoint)
    sharded = os.path.join(folder, "fsdp_checkpoints")
    results = {
        "whole": whole,
        "resumed": resumed,
        "fsdp": fit(rank, folder, kind="fsdp", checkpoints=sharded),
        "fsdp_resumed": fit(
            rank, folder, kind="fsdp", ckpt_path=os.path.join(sharded, "epoch=2-step=6.ckpt")
        ),
        "fsdp_files": sorted(os.listdir(sharded)),
        "static_graph": refused(rank, folder, "static_graph"),
        "fsdp_checkpoints": refused(rank, folder, "fsdp_plain", enable_checkpointing=True),
    }
    if HAS_DEEPSPEED:
        results.update(deepspeed_runs(rank, folder))
    return results


def deepspeed_runs(rank: int, folder: str) -> dict[str, Any]:
    """DeepSpeedStrategy, ZeRO 2 and 3: a fit through every transition saving a Lightning
    checkpoint (DeepSpeed's folder) at epoch 3's end, mid-"decay", and the fit resumed
    from it; a refusal."""
    results: dict[str, Any] = {}
    for kind in ("zero2", "zero3"):
        saved = os.path.join(folder, f"{kind}_checkpoints")
        checkpoint = os.path.join(saved, "epoch=2-step=6.ckpt")
        results[kind] = fit(rank, folder, kind=kind, checkpoints=saved)
        results[f"{kind}_resumed"] = fit(rank, folder, kind=kind, ckpt_path=checkpoint)
        results[f"{kind}_files"] = sorted(os.listdir(os.path.join(checkpoint, "checkpoint")))
    results["zero2_offload"] = refused(rank, folder, "zero2_offload")
    return results
