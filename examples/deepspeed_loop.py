"""A schedule on a DeepSpeed ZeRO engine, in your own training loop, saved and resumed.

Run: deepspeed --num_gpus 2 examples/deepspeed_loop.py
 or: torchrun --nproc_per_node 2 examples/deepspeed_loop.py
 or: python examples/deepspeed_loop.py   (one process; DeepSpeed's CPU accelerator without a GPU)
"""

import argparse
import os
import shutil
import tempfile

import deepspeed
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional

import mentor_fn as mf
from mentor_fn.integrations import deepspeed as mf_deepspeed


def join_world() -> int:
    """This process's rank; a world of one when started without a launcher."""
    if "RANK" not in os.environ:  # no launcher: a world of one process, in memory
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed()  # reads the launcher's RANK, WORLD_SIZE, MASTER_ADDR...
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank()


def new_run(stage: int) -> mf_deepspeed.DeepSpeedCurriculum:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32)))
    model.add_module("head", nn.Linear(32, 4))
    schedule = mf.Schedule(
        [
            mf.Phase("head", mf.freeze("encoder"), until=mf.after_steps(20)),
            mf.Phase("top", mf.unfreeze("encoder.2"), until=mf.after_steps(20), warmup_steps=10),
            mf.Phase("all", mf.chain(mf.unfreeze("encoder"), mf.layerwise_lr_decay(0.5))),
        ]
    )
    curriculum = mf.Curriculum(
        model,
        lr=3e-3,
        optimizer=torch.optim.AdamW,  # not a config "optimizer" section: the curriculum's
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 25, 0.5),
    )
    config = {"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": stage}}
    return mf_deepspeed.initialize(curriculum, config=config, schedule=schedule)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--local_rank", type=int, default=0)  # the deepspeed launcher's
    args = parser.parse_args(argv)
    rank = join_world()
    run = new_run(args.stage)
    engine = run.engine
    generator = torch.Generator().manual_seed(rank)  # each rank its own batches
    for step in range(60):
        inputs = torch.randn(16, 16, generator=generator).to(engine.device)
        targets = inputs[:, :4].argmax(dim=1)
        loss = functional.cross_entropy(engine(inputs), targets)
        engine.backward(loss)
        engine.step()
        plan = run.step()  # warmups and phase changes; a rebuild keeps the optimizer state
        if plan is not None and rank == 0 and not isinstance(plan, mf.Patch):
            print(f"step {step + 1}: phase {run.runner.phase.name} ({type(plan).__name__})")
    # Every rank saves into the same folder (by default a scratch one of rank 0's).
    shared = [args.checkpoint_dir or (tempfile.mkdtemp() if rank == 0 else None)]
    dist.broadcast_object_list(shared, src=0)
    folder = shared[0]
    tag = run.save_checkpoint(folder)  # DeepSpeed's checkpoint + mentor_fn_curriculum.pt
    resumed = new_run(args.stage)
    resumed.load_checkpoint(folder)  # layout, optimizer state, cursor: as saved
    dist.barrier()
    if args.checkpoint_dir is None and rank == 0:
        shutil.rmtree(folder)
    if rank == 0:
        print(
            f"saved {tag} at loss {loss.item():.3f}; resumed in phase {resumed.runner.phase.name}"
        )
    return {
        "phase": run.runner.phase.name,
        "resumed_phase": resumed.runner.phase.name,
        "loss": loss.item(),
        "zero_groups": len(run.zero_groups),
    }


if __name__ == "__main__":
    main()
