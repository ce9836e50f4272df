"""Lightning: a curriculum under DeepSpeed ZeRO (pip install 'mentor_fn[lightning,deepspeed]').

The script a launcher starts once per process, one per GPU:

    torchrun --nproc-per-node 2 examples/lightning_deepspeed.py            # ZeRO-2
    torchrun --nproc-per-node 2 examples/lightning_deepspeed.py --stage 3  # ZeRO-3

Run as a plain script, it starts 2 local processes itself (a rendezvous
through a file, as torchrun would set them up). It trains three phases,
saving a checkpoint at every epoch's end, then resumes from the second one.
DeepSpeedStrategy builds DeepSpeed's engine from what configure_optimizers
returns, here the curriculum's trainable groups; each checkpoint (DeepSpeed's
folder) holds the run beside DeepSpeed's files.
"""

import argparse
import datetime
import os
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed looks for a GPU

import lightning as L
import torch.distributed as dist
import torch.multiprocessing as multiprocessing
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

import mentor_fn as mf
from mentor_fn.integrations.lightning import CurriculumCallback, curriculum_optimizers

torch.set_num_threads(1)  # a tiny model: more threads only wait on each other


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # the same initial weights in every process
        self.backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return functional.cross_entropy(self(inputs), targets)

    def configure_optimizers(self):
        return curriculum_optimizers(self)


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Only to try this without a GPU: Lightning's DeepSpeedStrategy runs on CUDA only;
    with its checks lifted, DeepSpeed's CPU accelerator runs the engine."""

    def __init__(self, processes, **options):
        devices = [torch.device("cpu", index) for index in range(processes)]  # numbered, as GPUs
        super().__init__(parallel_devices=devices, **options)

    def setup_environment(self):
        super(DeepSpeedStrategy, self).setup_environment()  # all but the CUDA check


schedule = mf.Schedule(
    [
        mf.Phase("head", mf.freeze("backbone"), until=mf.after_epochs(1)),
        mf.Phase("top", mf.unfreeze("backbone.2"), until=mf.after_epochs(1), warmup_steps=4),
        mf.Phase("all", mf.chain(mf.unfreeze("backbone"), mf.layerwise_lr_decay(0.5))),
    ]
)


def fit(folder, stage, resume=None):
    model = Classifier()
    callback = CurriculumCallback(
        mf.Curriculum(model, lr=1e-2, optimizer=torch.optim.AdamW),
        schedule,
        lr_scheduler_config={"interval": "step"},
    )
    # No optimizer or scheduler in DeepSpeed's config: the curriculum's are used.
    processes = int(os.environ["LOCAL_WORLD_SIZE"])
    if torch.cuda.is_available():
        strategy = DeepSpeedStrategy(stage=stage)
    else:
        strategy = CPUDeepSpeedStrategy(processes, stage=stage)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[callback, ModelCheckpoint(dirpath=folder, save_top_k=-1)],
        devices=processes,
        accelerator="gpu" if torch.cuda.is_available() else "cpu",
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    torch.manual_seed(1)
    inputs = torch.randn(256, 16)
    data = DataLoader(TensorDataset(inputs, inputs[:, :4].argmax(dim=1)), batch_size=32)
    trainer.fit(model, data, ckpt_path=resume)  # each process gets its share of the batches
    return trainer, callback


def main(folder, stage):
    trainer, callback = fit(folder, stage)
    second = os.path.join(folder, "epoch=1-step=8.ckpt")  # the second epoch's end
    _, resumed = fit(os.path.join(folder, "resumed"), stage, resume=second)
    if trainer.is_global_zero:
        files = sorted(os.listdir(os.path.join(second, "checkpoint")))
        print(f"ZeRO-{stage}: {files}")
        print(
            f"phase {callback.runner.phase.name!r}; resumed from {os.path.basename(second)}: "
            f"phase {resumed.runner.phase.name!r}"
        )


def run_locally(rank, folder, world_size, stage):
    """What torchrun does for each process, on this machine only."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    os.environ.update(
        NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500", GLOO_SOCKET_IFNAME="lo"
    )
    store = dist.FileStore(os.path.join(folder, "store"), world_size)
    timeout = datetime.timedelta(seconds=120)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    main(os.path.join(folder, "run"), stage)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2, 3))
    stage = parser.parse_args().stage
    if "RANK" in os.environ:  # started by torchrun: the processes share this folder
        main("lightning_deepspeed_output", stage)
    else:
        with tempfile.TemporaryDirectory() as folder:
            # fork: this process has only imported the libraries, and the two
            # children start without importing them again
            multiprocessing.start_processes(
                run_locally, args=(folder, 2, stage), nprocs=2, start_method="fork"
            )
