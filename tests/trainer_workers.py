"""transformers Trainer runs for tests/test_trainer_distributed.py, on one process or on each
rank of tests/distributed_harness.py's 2-process world (importable by the workers): DDP,
FSDP2, and the CurriculumTrainer under DeepSpeed ZeRO 2 and 3.

A tiny BERT built from a config (no dropout, so the ranks and the single
process draw no random numbers), trained without shuffling
(``train_sampling_strategy="sequential"``): on 2 ranks with 8 samples each per
step, accelerate gives rank r the batches r, r + 2, ... of the sequence, so
each optimizer step sees the same 16 samples as the single process with
batches of 16, which is the reference the ranks must equal.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

from distributed_harness import WORLD_SIZE, on_cuda  # noqa: E402
from framework_runs import Tokens  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as transformers_logging  # noqa: E402

import mentor_fn as mf  # noqa: E402
from mentor_fn.integrations.transformers import (  # noqa: E402
    CurriculumCallback,
    CurriculumTrainer,
)

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
PER_DEVICE = 8
SAMPLES = 48  # 3 optimizer steps per epoch
EPOCHS = 4
STEPS = 40  # the linear schedule's length: longer than any run here


def bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(bert_config())


def save_tiny_bert(folder: str) -> None:
    """The weights every run starts from, saved for ``from_pretrained``."""
    tiny_bert().save_pretrained(folder)


def schedule() -> mf.Schedule:
    """Every transition kind: the head alone; the top encoder layer unfrozen (a rebuild)
    with a warmup; the encoder with layer-wise decay while the head is frozen; the head
    again at its own coefficient. The embeddings never train."""
    return mf.Schedule(
        [
            mf.Phase("head", mf.freeze("bert"), until=mf.after_epochs(1)),
            mf.Phase(
                "top",
                mf.unfreeze([r"bert\.encoder\.layer\.1", "bert.pooler"]),
                until=mf.after_steps(3),
                warmup_steps=2,
            ),
            mf.Phase(
                "decay",
                mf.chain(
                    mf.unfreeze("bert.encoder"),
                    mf.freeze("classifier"),
                    mf.layerwise_lr_decay(
                        0.5, groups=[r"bert\.encoder\.layer\.0", r"bert\.encoder\.layer\.1"]
                    ),
                ),
                until=mf.after_steps(2),
            ),
            mf.Phase(
                "all", mf.chain(mf.unfreeze("classifier"), mf.set_lr_coefficient(0.3, "classifier"))
            ),
        ]
    )


class Probe(TrainerCallback):
    """After each optimizer step (after the curriculum's callback): the phase, the group
    lrs, every parameter, and under DeepSpeed whether the engine's ZeRO groups follow."""

    def __init__(self, callback: CurriculumCallback) -> None:
        self.callback = callback
        self.phases: list[str] = []
        self.lrs: list[list[float]] = []
        self.parameters: list[dict[str, torch.Tensor]] = []
        self.zero_groups_follow: list[bool] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        runner, curriculum = self.callback.runner, self.callback.curriculum
        assert runner is not None and runner.phase is not None
        assert curriculum.optimizer is not None
        self.phases.append(runner.phase.name)
        self.lrs.append([group["lr"] for group in curriculum.optimizer.param_groups])
        self.parameters.append(full_parameters(curriculum.model))
        # accelerate's wrapper holds, under DeepSpeed, the handle on the engine's ZeRO optimizer
        handle = getattr(kwargs.get("optimizer"), "optimizer", None)
        if type(handle).__name__ == "EngineOptimizer":
            self.zero_groups_follow.append(zero_groups_follow(curriculum, handle.live))


def zero_groups_follow(curriculum: mf.Curriculum, zero: Any) -> bool:
    """Whether each ZeRO group holds trainable parameters of one curriculum group, at that
    group's lr, and every trainable parameter is in one (frozen ones in none)."""
    assert curriculum.optimizer is not None
    stage3 = hasattr(zero, "fp32_partitioned_groups_flat")
    groups = zero.fp16_groups if stage3 else zero.bit16_groups
    source_of = {
        id(p): group for group in curriculum.optimizer.param_groups for p in group["params"]
    }
    placed = []
    for parameters, live in zip(groups, zero.param_groups, strict=True):
        sources = {id(source_of[id(p)]) for p in parameters}
        if len(sources) != 1 or not all(p.requires_grad for p in parameters):
            return False
        if live["lr"] != source_of[id(parameters[0])]["lr"]:
            return False
        placed += [id(p) for p in parameters]
    trainable = [id(p) for p in curriculum.model.parameters() if p.requires_grad]
    return sorted(placed) == sorted(trainable)


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole: FSDP2 shards gathered, ZeRO-3 partitions too (collective then)."""
    model = mf.unwrap_model(model)
    if any(hasattr(parameter, "ds_id") for parameter in model.parameters()):  # ZeRO-3
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
    result = {}
    for name, parameter in model.named_parameters():
        value = parameter.detach()
        if hasattr(value, "full_tensor"):  # an FSDP2 DTensor shard
            value = value.full_tensor()
        result[name] = value.cpu().clone()
    return result


def train(
    rank: int | None,
    folder: str,
    *,
    weights: str,
    fsdp: bool = False,
    deepspeed: dict[str, Any] | None = None,
    resume: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """One Trainer run on one process (rank None) or as rank ``rank``: the parameters
    after each step, the phases, the lrs, and what the Trainer logged. With a
    ``deepspeed`` config, a CurriculumTrainer under DeepSpeed."""
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    if fsdp:
        from transformers.distributed import DistributedConfig

        model = BertForSequenceClassification.from_pretrained(
            weights, distributed_config=DistributedConfig(fsdp_size=WORLD_SIZE)
        )
    else:
        model = BertForSequenceClassification.from_pretrained(weights)
    # SGD with momentum: its state is kept through rebuilds like Adam's, and an
    # error in a gradient stays an error of the same size in the parameters.
    # (Adam divides each gradient by its running magnitude, so on the gradients
    # that are zero up to rounding, the key biases of attention for one, it
    # turns reduction-order noise into steps of the full lr in either
    # direction: no tolerance could tell such a run from a wrong one.)
    curriculum = mf.Curriculum(
        model,
        0.05,
        optimizer=torch.optim.SGD,
        optimizer_kwargs={"momentum": 0.9, "weight_decay": 0.01},
        scheduler=lambda optimizer: get_linear_schedule_with_warmup(optimizer, 2, STEPS),
    )
    callback = CurriculumCallback(curriculum, schedule())
    probe = Probe(callback)
    settings: dict[str, Any] = {
        "output_dir": folder,
        "num_train_epochs": EPOCHS,
        "per_device_train_batch_size": PER_DEVICE if rank is not None else PER_DEVICE * WORLD_SIZE,
        "train_sampling_strategy": "sequential",
        "logging_strategy": "steps",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not on_cuda(),
        "deepspeed": deepspeed,
        "seed": 0,
        # transformers 5 multiplies the loss by the world size for models whose
        # forward takes **kwargs, to undo DDP's averaging of a loss summed over
        # the tokens of all ranks; BERT's classification loss is a mean that
        # ignores that count, so on 2 ranks every gradient came out twice the
        # single process's (measured). Without the option: a plain DDP mean.
        "average_tokens_across_devices": False,
        **options,
    }
    if deepspeed is None:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**settings),
            train_dataset=Tokens(SAMPLES, 1),
            optimizers=callback.optimizers(),
            callbacks=[callback, probe],
        )
    else:
        trainer = CurriculumTrainer(
            model=model,
            args=TrainingArguments(**settings),
            train_dataset=Tokens(SAMPLES, 1),
            callbacks=[callback, probe],
        )
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=resume)
    wrapper = trainer.model_wrapped
    return {
        "phases": probe.phases,
        "lrs": probe.lrs,
        "zero_groups_follow": probe.zero_groups_follow,
        "parameters": probe.parameters,
        "logged": [
            {key: value for key, value in entry.items() if key.startswith("learning_rate")}
            for entry in trainer.state.log_history
            if "learning_rate" in entry
        ],
        "wrapper": type(wrapper).__name__,
        "find_unused_parameters": getattr(wrapper, "find_unused_parameters", None),
        "reducer_rebuilds": _reducer_rebuilds(wrapper),
        "processes": trainer.accelerator.num_processes,
    }


def _reducer_rebuilds(wrapper: nn.Module) -> int:
    from mentor_fn._wrapper.ddp import reducer_rebuilds

    if isinstance(wrapper, nn.parallel.DistributedDataParallel):
        return reducer_rebuilds(wrapper)
    return -1


def _join_world(rank: int) -> None:
    # The process group is up already (FileStore rendezvous): accelerate uses
    # it, and reads its rank and size from the environment.
    os.environ.update(
        LOCAL_RANK=str(rank),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        LOCAL_WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29500",
    )


def trainer_runs(rank: int, folder: str, weights: str) -> dict[str, Any]:
    """Every Trainer scenario in one world: DDP without unused-parameter detection,
    uninterrupted and saving checkpoints, then resumed from two of them; FSDP2 (the
    model sharded at load time); DeepSpeed ZeRO 2 and 3 (see deepspeed_runs)."""
    _join_world(rank)
    whole = train(
        rank,
        str(Path(folder) / "ddp"),
        weights=weights,
        ddp_find_unused_parameters=False,
        save_strategy="steps",
        save_steps=3,
    )
    resumed = {
        step: train(
            rank,
            str(Path(folder) / f"resumed{step}"),
            weights=weights,
            ddp_find_unused_parameters=False,
            resume=str(Path(folder) / "ddp" / f"checkpoint-{step}"),
        )
        for step in (6, 9)
    }
    fsdp = train(rank, str(Path(folder) / "fsdp"), weights=weights, fsdp=True)
    return {
        "whole": whole,
        "resumed": resumed,
        "fsdp": fsdp,
        **(deepspeed_runs(rank, folder, weights) if HAS_DEEPSPEED else {}),
    }


def deepspeed_config(stage: int) -> dict[str, Any]:
    """ZeRO ``stage``, the rest from the Trainer's arguments ("auto", as the transformers
    docs write them); every parameter partitioned under ZeRO-3, however small."""
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
    }


# Where each stage's run is resumed from: mid-"top" (ZeRO-2), mid-"all" (ZeRO-3).
DEEPSPEED_RESUMES = {2: 6, 3: 9}


def deepspeed_runs(rank: int, folder: str, weights: str) -> dict[str, Any]:
    """The CurriculumTrainer under DeepSpeed ZeRO 2 and 3: each uninterrupted, saving
    checkpoints, then resumed from one of them."""
    if not on_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"
    results: dict[str, Any] = {}
    for stage, step in DEEPSPEED_RESUMES.items():
        run = str(Path(folder) / f"zero{stage}")
        whole = train(
            rank,
            run,
            weights=weights,
            deepspeed=deepspeed_config(stage),
            save_strategy="steps",
            save_steps=3,
        )
        resumed = train(
            rank,
            str(Path(folder) / f"zero{stage}_resumed"),
            weights=weights,
            deepspeed=deepspeed_config(stage),
            resume=str(Path(run) / f"checkpoint-{step}"),
        )
        results[f"zero{stage}"] = {"whole": whole, "resumed": {step: resumed}}
    return results
