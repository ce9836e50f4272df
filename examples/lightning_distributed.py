"""Lightning: a curriculum under DDP and FSDP2 (pip install 'mentor_fn[lightning]').

The script a launcher starts once per process (CPU processes use gloo; with
GPUs, one process per GPU):

    torchrun --nproc-per-node 2 examples/lightning_distributed.py          # DDP
    torchrun --nproc-per-node 2 examples/lightning_distributed.py --fsdp   # FSDP2

Run as a plain script, it starts 2 local processes itself (a rendezvous
through a file, as torchrun would set them up) and trains under each
strategy. Under DDP the callback makes Lightning's wrapper follow the phases,
so no find_unused_parameters is needed; under FSDP2 the module shards itself
in configure_model, the curriculum is built on the shards, and
CurriculumModelParallelStrategy (ModelParallelStrategy, whose checkpoints hold
the run) lets Lightning save checkpoints to resume from.
"""

import datetime
import os
import sys
import tempfile

import lightning as L
import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

import mentor_fn as mf
from mentor_fn.integrations.lightning import (
    CurriculumCallback,
    CurriculumModelParallelStrategy,
    curriculum_optimizers,
)

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

    def configure_model(self):
        if self.device_mesh is not None:  # FSDP2: shard each block, then the whole
            mesh = self.device_mesh["data_parallel"]
            for block in (self.backbone[0], self.backbone[2], self.head):
                fully_shard(block, mesh=mesh)
            fully_shard(self, mesh=mesh)

    def configure_optimizers(self):
        return curriculum_optimizers(self)


schedule = mf.Schedule(
    [
        mf.Phase("head", mf.freeze("backbone"), until=mf.after_epochs(1)),
        mf.Phase("top", mf.unfreeze("backbone.2"), until=mf.after_epochs(1), warmup_steps=4),
        mf.Phase("all", mf.chain(mf.unfreeze("backbone"), mf.layerwise_lr_decay(0.5))),
    ]
)


def train(folder, fsdp):
    model = Classifier()
    callback = CurriculumCallback(
        mf.Curriculum(model, lr=1e-2, optimizer=torch.optim.AdamW), schedule
    )
    strategy = (
        CurriculumModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        if fsdp
        else "ddp"
    )
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[callback],
        devices=int(os.environ["LOCAL_WORLD_SIZE"]),
        strategy=strategy,
        # checkpoints at every epoch's end; resume with trainer.fit(..., ckpt_path=...)
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=os.path.join(folder, "fsdp" if fsdp else "ddp"),
    )
    torch.manual_seed(1)
    inputs = torch.randn(256, 16)
    data = DataLoader(TensorDataset(inputs, inputs[:, :4].argmax(dim=1)), batch_size=32)
    trainer.fit(model, data)  # each process gets its share of every epoch's batches
    if trainer.is_global_zero:
        logged = {
            k: f"{float(v):.1e}" for k, v in trainer.callback_metrics.items() if k.startswith("lr")
        }
        print(
            f"{'FSDP2' if fsdp else 'DDP'}: phase {callback.runner.phase.name!r}, logged {logged}"
        )


def run_locally(rank, folder, world_size):
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
    for fsdp in (False, True):
        train(folder, fsdp)
    dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        if "RANK" in os.environ:  # started by torchrun
            train(folder, fsdp="--fsdp" in sys.argv)
        else:
            # fork: this process has only imported the libraries, and the two
            # children start without importing them again
            multiprocessing.start_processes(
                run_locally, args=(folder, 2), nprocs=2, start_method="fork"
            )
