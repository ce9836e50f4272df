"""Functions run on each rank by tests/test_deepspeed.py (importable by the workers).

One world runs every check: for each ZeRO stage, a hand-made sequence of every
transition kind and a schedule (phase changes, warmups, a fresh phase) saved
mid-run and resumed; then refusals, memory, and the example. Each scenario
also runs in one process on the whole batch (``rank=None``, plain
``Curriculum``): the reference the ranks must equal.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from distributed_harness import device, on_cuda
from torch import nn
from torch.optim import lr_scheduler

import mentor_fn as mf

GLOBAL_BATCH = 8
STAGES = (1, 2, 3)
# Where each stage's schedule run is saved and resumed: mid-warmup of "top",
# one step into the fresh phase, mid-warmup of "all".
SAVE_AT = {1: 3, 2: 11, 3: 7}
SCHEDULE_STEPS = 13
EPOCH_END_AFTER = 5  # one epoch end, after this many steps (it ends phase "top")
CLIP = 1.0


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8)))
    model.add_module("head", nn.Linear(8, 3))
    return model


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(GLOBAL_BATCH, 4, generator=generator),
            torch.randn(GLOBAL_BATCH, 3, generator=generator),
        )
        for _ in range(count)
    ]


def config(stage: int, **extra: Any) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": GLOBAL_BATCH // 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": CLIP,  # DeepSpeed's default, written out: the reference clips too
        # Every parameter partitioned under ZeRO-3, however small.
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        **extra,
    }


def new_curriculum(model: nn.Module, *, frozen: str | None = "backbone") -> mf.Curriculum:
    state = mf.CurriculumState.from_model(model)
    return mf.Curriculum(
        model,
        0.05,
        optimizer=torch.optim.AdamW,
        weight_decay=0.01,
        no_weight_decay=("bias",),  # groups split by decay: more ZeRO groups
        scheduler=lambda optimizer: lr_scheduler.StepLR(optimizer, 2, 0.7),
        state=state if frozen is None else state.freeze(frozen),
    )


def new_schedule() -> mf.Schedule:
    return mf.Schedule(
        [
            mf.Phase("head", mf.freeze("backbone"), until=mf.after_steps(2)),
            mf.Phase(
                "top",
                mf.unfreeze("backbone.2"),
                until=mf.any_of(mf.after_epochs(1), mf.after_steps(20)),
                warmup_steps=3,
            ),
            mf.Phase(
                "all",
                mf.chain(mf.unfreeze("backbone"), mf.layerwise_lr_decay(0.5)),
                until=mf.after_steps(4),
                warmup_steps=3,
                lr_scale=0.5,
            ),
            mf.Phase("fresh", mf.freeze("backbone.0"), optimizer="fresh", lr=0.02),
        ]
    )


# Snapshots ----------------------------------------------------------------------------------


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Every parameter whole (ZeRO-3 partitions them; a no-op otherwise). Collective."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        yield


def parameters_of(model: nn.Module) -> dict[str, torch.Tensor]:
    with gathered(model):
        return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}


def frozen_names(model: nn.Module) -> list[str]:
    return [name for name, parameter in model.named_parameters() if not parameter.requires_grad]


def local(batch: tuple[torch.Tensor, ...], rank: int | None) -> tuple[torch.Tensor, ...]:
    if rank is None:
        return batch
    share = GLOBAL_BATCH // dist.get_world_size()
    return tuple(tensor[rank * share : (rank + 1) * share].to(device(rank)) for tensor in batch)


class Trainer:
    """One optimizer step at a time, in one process or on the engine, with a record of each."""

    def __init__(self, model: nn.Module, rank: int | None, run: Any = None) -> None:
        self.model, self.rank, self.run = model, rank, run
        self.records: list[dict[str, Any]] = []

    def step(self, batch: tuple[torch.Tensor, torch.Tensor], curriculum: mf.Curriculum) -> None:
        frozen = frozen_names(self.model)
        inputs, targets = local(batch, self.rank)
        if self.run is None:
            curriculum.optimizer.zero_grad()
            nn.functional.mse_loss(self.model(inputs), targets).backward()
            trained = [p for p in self.model.parameters() if p.grad is not None]
            nn.utils.clip_grad_norm_(trained, CLIP)  # as DeepSpeed's gradient_clipping
            curriculum.optimizer.step()
            if curriculum.scheduler is not None:
                curriculum.scheduler.step()
        else:
            engine = self.run.engine
            engine.backward(nn.functional.mse_loss(engine(inputs), targets))
            engine.step()
        record: dict[str, Any] = {"frozen": frozen, "parameters": parameters_of(self.model)}
        record["lrs"] = [group["lr"] for group in curriculum.optimizer.param_groups]
        if self.run is not None:
            record["zero"] = zero_groups_of(self.run)
        self.records.append(record)


def zero_groups_of(run: Any) -> list[dict[str, Any]]:
    """Each ZeRO group: its curriculum group, its lr, its parameters by name, and whether
    those are exactly the curriculum group's trainable parameters."""
    names = {id(p): n for n, p in run.curriculum.model.named_parameters()}
    groups = []
    for (source, parameters), live in zip(
        run.zero_groups, run.engine.optimizer.param_groups, strict=True
    ):
        curriculum_group = run.curriculum.optimizer.param_groups[source]
        trainable = [names[id(p)] for p in curriculum_group["params"] if p.requires_grad]
        groups.append(
            {
                "source": source,
                "lr": live["lr"],
                "curriculum_lr": curriculum_group["lr"],
                "parameters": list(parameters),
                "curriculum_trainable": trainable,
            }
        )
    return groups


def carried_state(run: Any, names: list[str]) -> dict[str, Any]:
    """fp32 master weights, Adam's moments and the group's step of each named parameter,
    read with DeepSpeed's own accessors. Collective."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    from mentor_fn.integrations._deepspeed_zero import link_state

    # DeepSpeed 0.19 links ZeRO-1/2's per-parameter views of the state right
    # after the first group's first step, when the other groups have none:
    # its accessors then fail on every group but the first. Link them again.
    link_state(run.engine.optimizer)
    parameters = dict(run.curriculum.model.named_parameters())
    steps = zero_group_steps(run.engine.optimizer)
    step_of = {
        name: steps[index] for index, (_, group) in enumerate(run.zero_groups) for name in group
    }
    state = {}
    for name in names:
        parameter = parameters[name]
        state[name] = {
            "fp32": safe_get_full_fp32_param(parameter).to("cpu", copy=True),
            "exp_avg": safe_get_full_optimizer_state(parameter, "exp_avg").to("cpu", copy=True),
            "exp_avg_sq": safe_get_full_optimizer_state(parameter, "exp_avg_sq").to(
                "cpu", copy=True
            ),
            "step": step_of[name],
        }
    return state


def zero_group_steps(zero: Any) -> list[float | None]:
    """Adam's step of each ZeRO group (None: no state yet), read from DeepSpeed's base optimizer."""
    if hasattr(zero, "fp32_partitioned_groups_flat"):  # ZeRO-3
        flats = {}
        for index, flat in enumerate(zero.fp32_partitioned_groups_flat):
            flats.setdefault(zero.sub_group_to_group_id[index], flat)
        flats_in_order = [flats[index] for index in sorted(flats)]
    else:
        flats_in_order = [group["params"][0] for group in zero.optimizer.param_groups]
    steps: list[float | None] = []
    for flat in flats_in_order:
        values = zero.optimizer.state.get(flat)
        steps.append(float(values["step"]) if values else None)
    return steps


# The transitions scenario ----------------------------------------------------------------------

Step = Callable[[Any], Any]


def transitions(target: Any, curriculum: mf.Curriculum, trainer: Trainer) -> dict[str, Any]:
    """Every transition kind, between optimizer steps. ``target`` is the Curriculum or the run."""
    data = iter(batches(12))
    plans: list[str] = []
    checks: dict[str, Any] = {}

    def train(count: int) -> None:
        for _ in range(count):
            trainer.step(next(data), curriculum)

    def change(name: str, make: Step, carried: list[str] | None = None) -> None:
        before = (
            None if carried is None or trainer.run is None else carried_state(trainer.run, carried)
        )
        plans.append(type(make(target)).__name__)
        if before is not None:
            checks[name] = {"before": before, "after": carried_state(trainer.run, carried)}

    head = ["head.weight", "head.bias"]
    backbone = ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight", "backbone.2.bias"]
    train(2)
    change(
        "unfreeze",
        lambda t: t.update(mf.unfreeze("backbone"), reset_optimizer_if_needed=True),
        head,
    )
    train(2)
    change("freeze", lambda t: t.freeze("head"), backbone)
    train(1)
    change("coefficient", lambda t: t.set_lr_coefficient(0.5, "backbone.2"))
    train(1)
    change("unfreeze again", lambda t: t.unfreeze("head"))  # the fast path in one process
    train(2)
    change("layerwise decay", lambda t: t.update(mf.layerwise_lr_decay(0.5)))
    train(1)
    change("set_lr", lambda t: t.set_lr(0.02) or mf.NoChange())
    train(2)
    return {"plans": plans, "carried": checks, "records": trainer.records}


def reference_transitions() -> dict[str, Any]:
    model = make_model()
    curriculum = new_curriculum(model)
    curriculum.build()
    return transitions(curriculum, curriculum, Trainer(model, None))


def deepspeed_transitions(rank: int, stage: int) -> dict[str, Any]:
    from mentor_fn.integrations import deepspeed as mf_deepspeed

    model = make_model().to(device(rank))
    curriculum = new_curriculum(model)
    run = mf_deepspeed.initialize(curriculum, config=config(stage), dist_init_required=False)
    first = weakref.ref(run.engine.optimizer)
    result = transitions(run, curriculum, Trainer(model, rank, run))
    result["first_optimizer_freed"] = first() is None  # no full garbage collection ran
    return result


# Coalesced groups: a ZeRO group never mixes carried and fresh parameters ---------------------


def coalesced(rank: int | None, stage: int = 2) -> dict[str, Any]:
    """With ``coalesce=True`` the head (trained) and the backbone (unfrozen) share one
    curriculum group after the rebuild; on the engine they are two ZeRO groups, since the
    base optimizer keeps one Adam step per flat group."""
    model = make_model()
    state = mf.CurriculumState.from_model(model).freeze("backbone")
    curriculum = mf.Curriculum(model, 0.05, optimizer=torch.optim.Adam, coalesce=True, state=state)
    run = None
    if rank is None:
        curriculum.build()
    else:
        from mentor_fn.integrations import deepspeed as mf_deepspeed

        model.to(device(rank))
        run = mf_deepspeed.initialize(curriculum, config=config(stage), dist_init_required=False)
    trainer = Trainer(model, rank, run)
    target = curriculum if run is None else run
    data = batches(4)
    for batch in data[:2]:
        trainer.step(batch, curriculum)
    target.unfreeze("backbone", reset_optimizer_if_needed=True)
    for batch in data[2:]:
        trainer.step(batch, curriculum)
    result: dict[str, Any] = {"records": trainer.records}
    if run is not None:
        result["steps"] = zero_group_steps(run.engine.optimizer)
    return result


def accumulation(rank: int) -> dict[str, Any]:
    """With gradient accumulation, ``run.step()`` advances the schedule at boundaries only."""
    from mentor_fn.integrations import deepspeed as mf_deepspeed

    model = make_model().to(device(rank))
    settings = config(1, gradient_accumulation_steps=2)
    settings["train_micro_batch_size_per_gpu"] = GLOBAL_BATCH // 4
    run = mf_deepspeed.initialize(
        new_curriculum(model, frozen=None),
        config=settings,
        schedule=new_schedule(),
        dist_init_required=False,
    )
    plans = []
    for batch in batches(3):
        inputs, targets = local(batch, rank)
        for half in (slice(0, 2), slice(2, 4)):  # two micro-batches per optimizer step
            loss = nn.functional.mse_loss(run.engine(inputs[half]), targets[half])
            run.engine.backward(loss)
            run.engine.step()
            plans.append(type(run.step()).__name__)
    assert run.runner is not None
    return {"plans": plans, "steps": run.runner.cursor.steps, "phase": run.runner.phase.name}


# The schedule scenario, saved and resumed ------------------------------------------------------


def schedule_run(
    trainer: Trainer,
    curriculum: mf.Curriculum,
    runner: Any,
    steps: range,
    *,
    save: Callable[[], None] | None = None,
    save_at: int | None = None,
) -> list[str]:
    """Steps ``steps`` of the schedule; ``runner`` is a ScheduleRunner or the run."""
    data = batches(SCHEDULE_STEPS)
    phases = []
    for index in steps:
        if index == save_at and save is not None:
            save()
        trainer.step(data[index], curriculum)
        runner.step()
        if index + 1 == EPOCH_END_AFTER:
            runner.epoch_end({"val_loss": 1.0})
        phases.append(_phase(runner))
    return phases


def _phase(runner: Any) -> str:
    inner = getattr(runner, "runner", runner)
    return inner.phase.name


def reference_schedule() -> dict[str, Any]:
    model = make_model()
    curriculum = new_curriculum(model, frozen=None)
    runner = mf.ScheduleRunner(curriculum, new_schedule())
    runner.start()
    curriculum.build()
    trainer = Trainer(model, None)
    phases = schedule_run(trainer, curriculum, runner, range(SCHEDULE_STEPS))
    return {"phases": phases, "records": trainer.records}


def deepspeed_schedule(rank: int, stage: int, folder: str) -> dict[str, Any]:
    from mentor_fn.integrations import deepspeed as mf_deepspeed

    save_at = SAVE_AT[stage]
    model = make_model().to(device(rank))
    curriculum = new_curriculum(model, frozen=None)
    run = mf_deepspeed.initialize(
        curriculum, config=config(stage), schedule=new_schedule(), dist_init_required=False
    )
    trainer = Trainer(model, rank, run)
    saved_lrs: list[float] = []

    def save() -> None:
        saved_lrs.extend(group["lr"] for group in run.engine.optimizer.param_groups)
        run.save_checkpoint(folder, client_state={"note": "mine"})

    phases = schedule_run(
        trainer, curriculum, run, range(SCHEDULE_STEPS), save=save, save_at=save_at
    )
    # Resume into a new model with other weights and a new engine.
    resumed_model = make_model(seed=7).to(device(rank))
    resumed_curriculum = new_curriculum(resumed_model, frozen=None)
    resumed_run = mf_deepspeed.initialize(
        resumed_curriculum, config=config(stage), schedule=new_schedule(), dist_init_required=False
    )
    client_state = resumed_run.load_checkpoint(folder)
    loaded_lrs = [group["lr"] for group in resumed_run.engine.optimizer.param_groups]
    resumed_trainer = Trainer(resumed_model, rank, resumed_run)
    resumed_phases = schedule_run(
        resumed_trainer, resumed_curriculum, resumed_run, range(save_at, SCHEDULE_STEPS)
    )
    tag_folder = os.path.join(folder, f"global_step{save_at}")
    side_file = torch.load(
        os.path.join(tag_folder, mf_deepspeed.CHECKPOINT_FILE), weights_only=True
    )
    return {
        "phases": phases,
        "records": trainer.records,
        "resumed_phases": resumed_phases,
        "resumed_records": resumed_trainer.records,
        "client_state": client_state,
        "saved_lrs": saved_lrs,
        "loaded_lrs": loaded_lrs,
        "cursor": repr(run.runner.cursor),
        "resumed_cursor": repr(resumed_run.runner.cursor),
        "tag_files": sorted(os.listdir(tag_folder)),
        "side_file_fields": sorted(side_file["deepspeed_run"]),
    }


# Mixed precision: the rebuild carries master weights and moments exactly ---------------------


def mixed_precision_carry(rank: int, stage: int, precision: str) -> dict[str, Any]:
    from mentor_fn.integrations import deepspeed as mf_deepspeed

    model = make_model().to(device(rank))
    curriculum = new_curriculum(model)
    extra = {precision: {"enabled": True}}
    if precision == "fp16":
        extra[precision]["initial_scale_power"] = 8
    run = mf_deepspeed.initialize(
        curriculum, config=config(stage, **extra), dist_init_required=False
    )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    data = batches(4)
    for batch in data[:2]:
        inputs, targets = local(batch, rank)
        run.engine.backward(nn.functional.mse_loss(run.engine(inputs.to(dtype)).float(), targets))
        run.engine.step()
        run.step()
    head = ["head.weight", "head.bias"]
    before = carried_state(run, head)
    run.unfreeze("backbone", reset_optimizer_if_needed=True)
    after = carried_state(run, head)
    for batch in data[2:]:
        inputs, targets = local(batch, rank)
        run.engine.backward(nn.functional.mse_loss(run.engine(inputs.to(dtype)).float(), targets))
        run.engine.step()
        run.step()
    return {
        "before": before,
        "after": after,
        "trained": parameters_of(model),
        "model_dtype": str(next(model.parameters()).dtype),
    }


def fp16_overflow_skips(rank: int) -> dict[str, Any]:
    """An fp16 step the engine skips (overflow) advances neither the scheduler nor the schedule."""
    from mentor_fn.integrations import deepspeed as mf_deepspeed

    model = make_model().to(device(rank))
    curriculum = new_curriculum(model, frozen=None)
    run = mf_deepspeed.initialize(
        curriculum,
        config=config(2, fp16={"enabled": True, "initial_scale_power": 8}),
        schedule=new_schedule(),
        dist_init_required=False,
    )
    inputs, targets = local(batches(1)[0], rank)
    half = inputs.to(torch.float16)
    lrs = [group["lr"] for group in curriculum.optimizer.param_groups]
    cursor = run.runner.cursor
    run.engine.backward(nn.functional.mse_loss(run.engine(half).float(), targets) * float("inf"))
    run.engine.step()
    plan = run.step()
    return {
        "applied": run.engine.was_step_applied(),
        "plan": repr(plan),
        "lrs_kept": lrs == [group["lr"] for group in curriculum.optimizer.param_groups],
        "cursor_kept": cursor == run.runner.cursor,
    }


# Refusals, memory, the guard ----------------------------------------------------------------------


def engine_checks(rank: int) -> dict[str, Any]:
    import deepspeed

    from mentor_fn.integrations import deepspeed as mf_deepspeed

    messages: dict[str, Any] = {}
    # An engine with an lr scheduler of its own.
    model = make_model().to(device(rank))
    run = mf_deepspeed.DeepSpeedCurriculum(new_curriculum(model))
    optimizer = run.client_optimizer()
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler.StepLR(optimizer, 1),
        config=config(1),
        dist_init_required=False,
    )
    messages["own_scheduler"] = _error(lambda: run.attach(engine))
    # An engine of another model.
    other = mf_deepspeed.DeepSpeedCurriculum(new_curriculum(make_model().to(device(rank))))
    messages["other_model"] = _error(lambda: other.attach(engine))
    # A ReduceLROnPlateau scheduler: refused before DeepSpeed starts.
    plateau = mf.Curriculum(
        make_model().to(device(rank)), 0.1, scheduler=lr_scheduler.ReduceLROnPlateau
    )
    messages["plateau"] = _error(
        lambda: mf_deepspeed.initialize(plateau, config=config(1), dist_init_required=False)
    )
    # A pipeline engine.
    pipe = deepspeed.pipe.PipelineModule(
        layers=[nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)], num_stages=1
    )
    pipe_run = mf_deepspeed.DeepSpeedCurriculum(mf.Curriculum(pipe.to(device(rank)), 0.1))
    pipe_engine, *_ = deepspeed.initialize(
        model=pipe,
        optimizer=pipe_run.client_optimizer(),
        config=config(1),
        dist_init_required=False,
    )
    messages["pipeline"] = _error(lambda: pipe_run.attach(pipe_engine))
    # An engine built with another optimizer is taken over before its first step.
    adopted_model = make_model().to(device(rank))
    adopted = mf_deepspeed.DeepSpeedCurriculum(new_curriculum(adopted_model))
    adopted_engine, *_ = deepspeed.initialize(
        model=adopted_model,
        optimizer=torch.optim.AdamW(adopted_model.parameters(), lr=0.05),
        config=config(2),
        dist_init_required=False,
    )
    adopted.attach(adopted_engine)
    messages["adopted_groups"] = [list(names) for _, names in adopted.zero_groups]
    # A transition made on the Curriculum directly is caught at the next forward.
    adopted.curriculum.unfreeze("backbone", reset_optimizer_if_needed=True)
    inputs, _ = local(batches(1)[0], rank)
    messages["unfollowed"] = _error(lambda: adopted.engine(inputs))
    messages["synced"] = type(adopted.sync()).__name__
    adopted.engine(inputs)  # fine now
    messages["synced_groups"] = len(adopted.zero_groups)
    # Optimizer memory: half the layers frozen (head and backbone.0 train)
    # against DeepSpeed with every layer in the optimizer at lr 0.
    half_model = make_model().to(device(rank))
    half = mf_deepspeed.initialize(
        new_curriculum(half_model, frozen="backbone.2"), config=config(2), dist_init_required=False
    )
    everything_model = make_model().to(device(rank))
    everything = mf_deepspeed.initialize(
        new_curriculum(everything_model, frozen=None), config=config(2), dist_init_required=False
    )
    for run_ in (half, everything):  # one step, so that Adam's moments exist
        inputs, targets = local(batches(1)[0], rank)
        run_.engine.backward(nn.functional.mse_loss(run_.engine(inputs), targets))
        run_.engine.step()
        run_.step()
    messages["bytes"] = {
        "half": mf_deepspeed.optimizer_state_bytes(half.engine),
        "everything": mf_deepspeed.optimizer_state_bytes(everything.engine),
    }
    messages["trainable"] = {
        "half": sum(p.numel() for p in half_model.parameters() if p.requires_grad),
        "everything": sum(p.numel() for p in everything_model.parameters()),
    }
    return messages


def _error(call: Callable[[], Any]) -> str:
    try:
        call()
    except (ValueError, TypeError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


# The example, as its launcher would run it ------------------------------------------------------


EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "deepspeed_loop.py")


def example(rank: int, folder: str) -> dict[str, Any]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("deepspeed_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--stage", "3", "--checkpoint-dir", folder])


# The world ----------------------------------------------------------------------------------------------


def everything(rank: int, folder: str) -> dict[str, Any]:
    """Every scenario, one after the other, in one world (DeepSpeed's first engine costs
    seconds per process: its optimizer check imports torch's compiler)."""
    started = time.perf_counter()
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(dist.get_world_size()),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29500",  # read, never listened on: the process group exists already
    )
    if not on_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
    # DeepSpeed's optimizer check imports torch's compiler (seconds, once), and
    # ZeRO-3 runs a full garbage collection at each optimizer construction,
    # whose cost grows with every object alive (this world forks with
    # Lightning and transformers imported). Import it now, then exempt all
    # that from collection.
    import deepspeed.runtime.zero.muon.muon_optimizer

    gc.freeze()
    scenarios: dict[str, Callable[[], Any]] = {}
    for stage in STAGES:
        scenarios[f"transitions{stage}"] = functools.partial(deepspeed_transitions, rank, stage)
        scenarios[f"schedule{stage}"] = functools.partial(
            deepspeed_schedule, rank, stage, os.path.join(folder, f"schedule{stage}")
        )
        scenarios[f"bf16_{stage}"] = functools.partial(mixed_precision_carry, rank, stage, "bf16")
    scenarios["coalesced"] = functools.partial(coalesced, rank)
    scenarios["accumulation"] = functools.partial(accumulation, rank)
    scenarios["fp16_2"] = functools.partial(mixed_precision_carry, rank, 2, "fp16")
    scenarios["fp16_overflow"] = functools.partial(fp16_overflow_skips, rank)
    scenarios["engine_checks"] = functools.partial(engine_checks, rank)
    scenarios["example"] = functools.partial(example, rank, os.path.join(folder, "example"))
    results: dict[str, Any] = {"seconds": {"start": time.perf_counter() - started}}
    for name, scenario in scenarios.items():
        started = time.perf_counter()
        results[name] = scenario()
        results["seconds"][name] = time.perf_counter() - started
    return results
