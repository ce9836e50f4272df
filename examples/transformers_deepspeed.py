"""transformers: a curriculum under DeepSpeed ZeRO (pip install 'mentor_fn[transformers,deepspeed]').

The script a launcher starts once per process (one per GPU; without a GPU,
DeepSpeed's CPU accelerator):

    deepspeed --num_gpus 2 examples/transformers_deepspeed.py            # ZeRO-2
    deepspeed --num_gpus 2 examples/transformers_deepspeed.py --stage 3  # ZeRO-3
    torchrun --nproc-per-node 2 examples/transformers_deepspeed.py
    accelerate launch --num_processes 2 examples/transformers_deepspeed.py

Run as a plain script, it starts 2 local processes itself (a rendezvous
through a file, as torchrun would set them up). It trains three phases,
saving a checkpoint at every epoch's end, then resumes from the second one.
Under DeepSpeed the Trainer builds an optimizer of its own whatever
optimizers= it is given, so CurriculumTrainer takes the curriculum's from the
callback; DeepSpeed's engine holds the trainable layers' groups only, and
each checkpoint holds the run beside DeepSpeed's files.
"""

import argparse
import datetime
import os
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed looks for a GPU

import torch.distributed as dist
import torch.multiprocessing as multiprocessing
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)

import mentor_fn as mf
from mentor_fn.integrations.transformers import CurriculumCallback, CurriculumTrainer

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


def deepspeed_config(stage):
    """No optimizer or scheduler section: the curriculum's are used. "auto": the Trainer's."""
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": stage},
    }


def train(folder, stage, resume=None):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    model = BertForSequenceClassification(config)  # in real use: from_pretrained(...)
    curriculum = mf.Curriculum(
        model,
        lr=3e-3,
        optimizer=torch.optim.AdamW,
        optimizer_kwargs={"weight_decay": 0.01},
        scheduler=lambda optimizer: get_linear_schedule_with_warmup(optimizer, 2, 24),
    )
    callback = CurriculumCallback(curriculum, schedule)
    arguments = TrainingArguments(
        output_dir=folder,
        deepspeed=deepspeed_config(stage),
        num_train_epochs=3,
        per_device_train_batch_size=16,
        logging_strategy="epoch",
        save_strategy="epoch",
        # transformers 5 multiplies a loss by the number of processes for models whose
        # forward takes **kwargs, expecting a sum over tokens; BERT's classification
        # loss is a mean, and its gradients would come out that many times too large
        average_tokens_across_devices=False,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = CurriculumTrainer(
        model=model, args=arguments, train_dataset=Tokens(128, seed=1), callbacks=[callback]
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback


def main(folder, stage):
    trainer, callback = train(folder, stage)
    first = os.path.join(folder, "checkpoint-8")  # the second epoch's end
    _, resumed_callback = train(os.path.join(folder, "resumed"), stage, resume=first)
    if trainer.is_world_process_zero():
        layout = sorted(os.listdir(os.path.join(first, "global_step8")))
        print(f"ZeRO-{stage} on {trainer.args.world_size} processes: {layout}")
        print(
            f"phase {callback.runner.phase.name!r}; resumed from {os.path.basename(first)}: "
            f"phase {resumed_callback.runner.phase.name!r}"
        )


def run_locally(rank, folder, world_size, stage):
    """What torchrun does for each process, on this machine only."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500", GLOO_SOCKET_IFNAME="lo")
    store = dist.FileStore(os.path.join(folder, "store"), world_size)
    timeout = datetime.timedelta(seconds=120)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
    main(os.path.join(folder, "run"), stage)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2, 3))
    stage = parser.parse_known_args()[0].stage  # the deepspeed launcher adds --local_rank
    if "RANK" in os.environ:  # started by a launcher: the processes share this folder
        main("transformers_deepspeed_output", stage)
    else:
        with tempfile.TemporaryDirectory() as folder:
            # fork: this process has only imported the libraries, and the two
            # children start without importing them again
            multiprocessing.start_processes(
                run_locally, args=(folder, 2, stage), nprocs=2, start_method="fork"
            )
