"""Lightning runs for tests/test_integration_lightning.py, on one process or on each rank of
tests/distributed_harness.py's 2-process gloo world (importable by the workers).

Under DDP each rank gets half of every global batch, the samples r, r + 2, ...
(an unshuffled DistributedSampler: Lightning's own would shuffle); the
single-process reference trains on the whole batches, so the ranks must equal it.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import mentor_fn as mf

warnings.filterwarnings("ignore", module="lightning")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402

from mentor_fn.integrations.lightning import (  # noqa: E402
    CurriculumCallback,
    curriculum_optimizers,
)

GLOBAL_BATCH = 8
SAMPLES = 16


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
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": folder,
        **options,
    }
    return pl.Trainer(callbacks=callbacks, **settings)


def outcome(model: Regression, callback: CurriculumCallback) -> dict[str, Any]:
    curriculum = callback.curriculum
    assert curriculum is not None and curriculum.optimizer is not None and callback.runner
    return {
        "parameters": {name: value.detach().clone() for name, value in model.named_parameters()},
        "lrs": [group["lr"] for group in curriculum.optimizer.param_groups],
        "phase": callback.runner.phase.name,  # type: ignore[union-attr]
    }


def fit(
    rank: int | None, folder: str, epochs: int = 3, *, ckpt_path: str | None = None, save: str = ""
) -> dict[str, Any]:
    """Fit with the unfreeze schedule on one process (rank None) or as rank ``rank`` of 2;
    resume from ``ckpt_path``, save a checkpoint at the end to ``save``."""
    model = Regression()
    callback = new_callback(model, unfreeze_schedule())
    if rank is None:
        run = trainer(epochs, [callback], folder, devices=1)
    else:
        strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="gloo")
        run = trainer(
            epochs, [callback], folder, devices=2, strategy=strategy, use_distributed_sampler=False
        )
    run.fit(model, loader(rank), ckpt_path=ckpt_path)
    if save:
        run.save_checkpoint(save)  # rank 0 writes; every rank takes part
    result = outcome(model, callback)
    result["global_rank"] = run.global_rank
    return result


def ddp_refused(rank: int, folder: str) -> str:
    """The message of a DDP strategy without unused-parameter detection."""
    model = Regression()
    callback = new_callback(model, unfreeze_schedule())
    run = trainer(
        1, [callback], folder, devices=2, strategy=DDPStrategy(process_group_backend="gloo")
    )
    try:
        run.fit(model, loader(rank))
    except ValueError as error:
        return str(error)
    return "not refused"


def ddp_runs(rank: int, folder: str) -> dict[str, Any]:
    """Every DDP scenario in one world (each world imports Lightning once per rank):
    a fit through an unfreeze, the same fit stopped, saved and resumed, and a refusal."""
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
    return {"whole": whole, "resumed": resumed, "refused": ddp_refused(rank, folder)}
