"""transformers: a curriculum under DDP and FSDP2 (pip install 'mentor_fn[transformers]').

The script a launcher starts once per process (CPU processes use gloo; with
GPUs, one process per GPU):

    torchrun --nproc-per-node 2 examples/transformers_distributed.py          # DDP
    torchrun --nproc-per-node 2 examples/transformers_distributed.py --fsdp   # FSDP2
    accelerate launch --num_processes 2 examples/transformers_distributed.py

Run as a plain script, it starts 2 local processes itself (a rendezvous
through a file, as torchrun would set them up) and trains under each engine.
Under DDP accelerate wraps the model; the callback makes the wrapper follow
the phases, so DDP's search for unused parameters can stay off. Under FSDP2
the model is sharded when it is loaded (DistributedConfig), and the
curriculum is built on the shards.
"""

import datetime
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)
from transformers.distributed import DistributedConfig

import mentor_fn as mf
from mentor_fn.integrations.transformers import CurriculumCallback

torch.set_num_threads(1)  # a tiny model: more threads only wait on each other


class Tokens(Dataset):
    """Sequences of 8 tokens; the label says whether token 7 appears in them."""

    def __init__(self, size, seed):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 32, (size, 8), generator=generator)
        self.labels = (self.ids == 7).any(dim=1).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


schedule = mf.Schedule(
    [
        mf.Phase("classifier", mf.freeze("bert"), until=mf.after_epochs(1)),
        mf.Phase(
            "top layer",
            mf.unfreeze(r"bert\.encoder\.layer\.1"),
            until=mf.after_epochs(1),
            warmup_steps=4,
        ),
        mf.Phase(
            "all",
            mf.chain(
                mf.unfreeze("bert"),
                # one rank per block, lowest first: embeddings, each encoder layer, classifier
                mf.layerwise_lr_decay(
                    0.5,
                    groups=[
                        r"bert\.embeddings",
                        r"bert\.encoder\.layer\.0",
                        r"bert\.encoder\.layer\.1",
                        "classifier",
                    ],
                ),
            ),
        ),
    ]
)


def pretrained(folder):
    """A checkpoint to start from (in real use: the hub's, e.g. "bert-base-uncased"),
    written by each process for itself before the processes connect."""
    path = os.path.join(folder, f"pretrained-{os.environ.get('RANK', '0')}")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    return path


def train(path, folder, fsdp):
    if fsdp:  # FSDP2: every process loads its shards of the checkpoint
        world = int(os.environ["WORLD_SIZE"])
        model = BertForSequenceClassification.from_pretrained(
            path, distributed_config=DistributedConfig(fsdp_size=world)
        )
    else:
        model = BertForSequenceClassification.from_pretrained(path)
    curriculum = mf.Curriculum(
        model,
        lr=3e-3,
        optimizer=torch.optim.AdamW,
        optimizer_kwargs={"weight_decay": 0.01},
        scheduler=lambda optimizer: get_linear_schedule_with_warmup(optimizer, 2, 24),
    )
    callback = CurriculumCallback(curriculum, schedule)
    arguments = TrainingArguments(
        output_dir=os.path.join(folder, "fsdp" if fsdp else "ddp"),
        num_train_epochs=3,
        per_device_train_batch_size=16,
        logging_strategy="epoch",
        save_strategy="no",  # the Trainer saves no optimizer of a model sharded at load time
        ddp_find_unused_parameters=False,  # the callback keeps DDP in step with the phases
        # transformers 5 multiplies a loss by the number of processes for models whose
        # forward takes **kwargs, expecting a sum over tokens; BERT's classification
        # loss is a mean, and its gradients would come out that many times too large
        average_tokens_across_devices=False,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=Tokens(128, seed=1),
        optimizers=callback.optimizers(),
        callbacks=[callback],
    )
    trainer.train()  # logs learning_rate (the run's lr) and learning_rate/<layer> each epoch
    if trainer.is_world_process_zero():
        engine = "FSDP2" if fsdp else "DDP"
        print(f"{engine} on {arguments.world_size} processes: phase {callback.runner.phase.name!r}")


def run_locally(rank, folder, world_size):
    """What torchrun does for each process, on this machine only."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500", GLOO_SOCKET_IFNAME="lo")
    path = pretrained(folder)
    store = dist.FileStore(os.path.join(folder, "store"), world_size)
    timeout = datetime.timedelta(seconds=120)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    for fsdp in (False, True):
        train(path, folder, fsdp)
    dist.destroy_process_group()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        if "RANK" in os.environ:  # started by torchrun or accelerate launch
            train(pretrained(folder), folder, fsdp="--fsdp" in sys.argv)
        else:
            # fork: this process has only imported the libraries, and the two
            # children start without importing them again
            multiprocessing.start_processes(
                run_locally, args=(folder, 2), nprocs=2, start_method="fork"
            )
