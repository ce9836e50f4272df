"""DDP and FSDP2 through phase changes, and a distributed checkpoint, on 2 CPU processes.

Two ranks (gloo, one process each) train the head first, then everything:
once under DDP (mentor_fn.wrap_ddp), once sharded with FSDP2's fully_shard.
After every phase the ranks hold the same weights. The sharded run is saved
with torch.distributed.checkpoint and resumed into a new sharded model, and
the resumed run ends equal to the uninterrupted one.
"""

import datetime
import os
import tempfile
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing
from torch import nn
from torch.distributed.fsdp import fully_shard  # FSDP2 on CPU: torch 2.7 or newer

import mentor_fn as mf

WORLD_SIZE = 2


def build_model():
    torch.manual_seed(0)  # the same initial weights on every rank
    backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    return nn.Sequential(OrderedDict(backbone=backbone, head=nn.Linear(16, 2)))


def train(curriculum, model, rank, steps=3):
    """Each rank trains on its own batches; the engine keeps the weights in step."""
    data = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        loss = model(torch.randn(16, 8, generator=data)).pow(2).mean()
        curriculum.optimizer.zero_grad()
        loss.backward()
        curriculum.optimizer.step()


def weights(model):
    """The model's full weights (a sharded parameter is gathered from every rank)."""
    return [
        p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in model.parameters()
    ]


def same_on_every_rank(model):
    gathered = [None] * WORLD_SIZE
    dist.all_gather_object(gathered, weights(model))
    return all(torch.equal(a, b) for other in gathered for a, b in zip(gathered[0], other))


def run(rank, folder):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo binds the loopback only
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(folder, "store"), WORLD_SIZE)
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE, timeout=timeout)
    say = print if rank == 0 else lambda *_: None

    # DDP: the wrapper's reducer follows the trainable parameters, so later
    # phases may freeze and unfreeze with the same wrapper and optimizer.
    ddp = mf.wrap_ddp(build_model())
    curriculum = mf.Curriculum(ddp, lr=1e-2)
    curriculum.freeze("backbone")
    curriculum.build()
    train(curriculum, ddp, rank)  # forward through the wrapper
    say("DDP, head only: ranks equal:", same_on_every_rank(ddp))
    curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    train(curriculum, ddp, rank)
    say("DDP, everything: ranks equal:", same_on_every_rank(ddp))

    # FSDP2: shard first, then build the curriculum on the sharded parameters.
    model = build_model()
    fully_shard(model.backbone)
    fully_shard(model)
    curriculum = mf.Curriculum(model, lr=1e-2)
    curriculum.freeze("backbone")
    curriculum.build()
    train(curriculum, model, rank)
    curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    train(curriculum, model, rank)
    say("FSDP2, head then everything: ranks equal:", same_on_every_rank(model))

    # Every rank saves its shards; a new sharded model resumes from them.
    checkpoint = os.path.join(folder, "checkpoint")
    mf.save_distributed_checkpoint(checkpoint, curriculum)
    resumed_model = build_model()
    fully_shard(resumed_model.backbone)
    fully_shard(resumed_model)
    resumed = mf.Curriculum(resumed_model, lr=1e-2)
    mf.load_distributed_checkpoint(checkpoint, resumed)
    train(curriculum, model, rank)
    train(resumed, resumed_model, rank)
    equal = all(torch.equal(a, b) for a, b in zip(weights(model), weights(resumed_model)))
    say("FSDP2, resumed from the checkpoint equals the uninterrupted run:", equal)
    # No rank tears its process group down while the other's last work is in flight.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        multiprocessing.spawn(run, args=(folder,), nprocs=WORLD_SIZE)
