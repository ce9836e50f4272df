"""Functions run on each rank by tests/test_distributed.py (importable by workers).

Each scenario also runs in one process on the combined batch (``rank=None``):
that is the reference the ranks must equal. Models and data live on
``current_device()``: the CPU, or a rank's GPU under MENTOR_FN_TEST_BACKEND=nccl.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from distributed_harness import device
from torch import nn
from torch.optim import lr_scheduler

import mentor_fn as mf
from mentor_fn._wrapper.ddp import reducer_rebuilds

GLOBAL_BATCH = 8


def current_device() -> torch.device:
    """This rank's device, or the single-process reference's outside a world."""
    return device(dist.get_rank() if dist.is_initialized() else None)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("backbone", nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8)))
    model.add_module("head", nn.Linear(8, 3))
    return model.to(current_device())


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(GLOBAL_BATCH, 4, generator=generator).to(current_device()),
            torch.randn(GLOBAL_BATCH, 3, generator=generator).to(current_device()),
        )
        for _ in range(count)
    ]


def local(batch: tuple[torch.Tensor, torch.Tensor], rank: int | None) -> tuple[torch.Tensor, ...]:
    if rank is None:
        return batch
    share = GLOBAL_BATCH // dist.get_world_size()
    return tuple(tensor[rank * share : (rank + 1) * share] for tensor in batch)


def train(curriculum: mf.Curriculum, forward: nn.Module, data: list, rank: int | None) -> None:
    for batch in data:
        inputs, targets = local(batch, rank)
        curriculum.optimizer.zero_grad()
        nn.functional.mse_loss(forward(inputs), targets).backward()
        curriculum.optimizer.step()
        curriculum.scheduler.step()


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    result = {}
    for name, parameter in mf.unwrap_model(model).named_parameters():
        value = parameter.detach()
        if hasattr(value, "full_tensor"):  # an FSDP2 DTensor shard
            value = value.full_tensor()
        result[name] = value.clone()
    return result


def phases(curriculum: mf.Curriculum, forward: nn.Module, rank: int | None) -> dict[str, Any]:
    """Head first; unfreeze (rebuild); freeze head (inert group); patch; fast-path unfreeze."""
    data = batches(12)
    curriculum.build()
    train(curriculum, forward, data[0:3], rank)
    assert isinstance(curriculum.unfreeze("backbone", reset_optimizer_if_needed=True), mf.Rebuild)
    train(curriculum, forward, data[3:6], rank)
    assert isinstance(curriculum.freeze("head"), mf.NoChange)
    train(curriculum, forward, data[6:8], rank)
    assert isinstance(curriculum.set_lr_coefficient(0.1, "backbone"), mf.Patch)
    train(curriculum, forward, data[8:10], rank)
    assert isinstance(curriculum.unfreeze("head"), mf.Patch)
    train(curriculum, forward, data[10:12], rank)
    return {
        "parameters": full_parameters(curriculum.model),
        "lrs": [group["lr"] for group in curriculum.optimizer.param_groups],
    }


def new_curriculum(model: nn.Module, state: mf.CurriculumState | None = None) -> mf.Curriculum:
    return mf.Curriculum(
        model,
        0.05,
        optimizer=torch.optim.Adam,
        scheduler=lambda optimizer: lr_scheduler.StepLR(optimizer, 2, 0.7),
        state=state,
    )


def reference_phases() -> dict[str, Any]:
    model = make_model()
    curriculum = new_curriculum(model, mf.CurriculumState.from_model(model).freeze("backbone"))
    return phases(curriculum, model, None)


def ddp_phases(rank: int) -> dict[str, Any]:
    model = make_model()
    # Frozen before wrapping: the trap wrap_ddp exists for.
    state = mf.CurriculumState.from_model(model).freeze("backbone")
    mf.apply_requires_grad(state, model)
    ddp = mf.wrap_ddp(model)
    result = phases(new_curriculum(ddp, state), ddp, rank)
    result["find_unused_parameters"] = ddp.find_unused_parameters
    result["rebuilds"] = reducer_rebuilds(ddp)
    return result


def ddp_adopted(rank: int) -> dict[str, Any]:
    """A plain DDP, built while a layer was frozen and without unused-parameter
    detection: the Curriculum makes its reducer follow the phases."""
    model = make_model()
    state = mf.CurriculumState.from_model(model).freeze("backbone")
    mf.apply_requires_grad(state, model)
    ddp = nn.parallel.DistributedDataParallel(model)
    result = phases(new_curriculum(ddp, state), ddp, rank)
    result["find_unused_parameters"] = ddp.find_unused_parameters
    result["rebuilds"] = reducer_rebuilds(ddp)
    return result


def ddp_refused(rank: int) -> dict[str, str]:
    """A DDP whose reducer cannot be rebuilt as it was made is refused."""
    messages = {}
    model = make_model()
    try:
        mf.Curriculum(nn.parallel.DistributedDataParallel(model, static_graph=True), 0.1)
    except ValueError as error:
        messages["static_graph"] = str(error)
    try:
        mf.wrap_ddp(model, static_graph=True)
    except ValueError as error:
        messages["wrap_static_graph"] = str(error)
    return messages


def fsdp_phases(rank: int) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    # backbone.0 is its own sharded unit; backbone.2 and head share the root
    # unit, so frozen and trainable parameters live in one unit.
    fully_shard(model.backbone[0])
    fully_shard(model)
    curriculum = new_curriculum(model, mf.CurriculumState.from_model(model).freeze("backbone"))
    return phases(curriculum, model, rank)


def fsdp_stale_optimizer(rank: int) -> dict[str, str]:
    """An optimizer built before fully_shard is refused, on update and on step."""
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    curriculum = new_curriculum(model)
    curriculum.build()
    fully_shard(model)
    messages = {}
    try:
        curriculum.freeze("head")
    except RuntimeError as error:
        messages["update"] = str(error)
    inputs, targets = local(batches(1)[0], rank)
    nn.functional.mse_loss(model(inputs), targets).backward()
    try:
        curriculum.optimizer.step()
    except RuntimeError as error:
        messages["step"] = str(error)
    messages["recovered"] = str(isinstance(curriculum.build(), torch.optim.Adam))
    return messages


def _sharded_model() -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    fully_shard(model.backbone[0])
    fully_shard(model)
    return model


def fsdp_checkpoint(rank: int, directory: str) -> dict[str, Any]:
    """Save mid-run with a layer frozen after the build; resume into a fresh
    sharded model; the resumed run equals the uninterrupted one exactly."""
    data = batches(10)
    model = _sharded_model()
    curriculum = new_curriculum(model)
    curriculum.build()
    train(curriculum, model, data[0:3], rank)
    curriculum.freeze("backbone.0")  # inert group; its Adam state must survive
    train(curriculum, model, data[3:5], rank)
    frozen_state = {
        key: value.full_tensor().clone() if hasattr(value, "full_tensor") else value.clone()
        for key, value in curriculum.optimizer.state[model.backbone[0].weight].items()
    }
    mf.save_distributed_checkpoint(directory, curriculum, extra={"step": 5})

    resumed_model = _sharded_model()
    for parameter in resumed_model.parameters():  # different values: the load must set them
        parameter.data.mul_(0)
    resumed = new_curriculum(resumed_model)
    extra = mf.load_distributed_checkpoint(directory, resumed)
    loaded_frozen_state = {
        key: value.full_tensor().clone() if hasattr(value, "full_tensor") else value.clone()
        for key, value in resumed.optimizer.state[resumed_model.backbone[0].weight].items()
    }
    for run_curriculum, run_model in ((curriculum, model), (resumed, resumed_model)):
        train(run_curriculum, run_model, data[5:7], rank)
        run_curriculum.unfreeze("backbone.0")
        run_curriculum.set_lr_coefficient(0.5, "head")
        train(run_curriculum, run_model, data[7:10], rank)
    return {
        "extra": extra,
        "state_equal": resumed.state == curriculum.state,
        "layout": [group["layers"] for group in resumed.optimizer.param_groups],
        "original_layout": [group["layers"] for group in curriculum.optimizer.param_groups],
        "frozen_state": frozen_state,
        "loaded_frozen_state": loaded_frozen_state,
        "original": full_parameters(model),
        "resumed": full_parameters(resumed_model),
        "lrs": (
            [g["lr"] for g in curriculum.optimizer.param_groups],
            [g["lr"] for g in resumed.optimizer.param_groups],
        ),
    }


class DistNet(mf.Mentee):
    """A Mentee for the distributed tests (module level: resume finds it)."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        reference = make_model()
        self.backbone = reference.backbone
        self.head = reference.head
        self.trainer = mf.Regressor()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(inputs))


def mentee_phases(rank: int | None, mode: str = "plain", directory: str | None = None) -> dict:
    """Mentee's object API: head first, then everything (rebuild), with fit."""
    data = [local(batch, rank) for batch in batches(6)]
    model = DistNet()
    model.freeze("backbone")
    if mode == "ddp":
        model.wrap_ddp()
    elif mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.backbone[0])
        fully_shard(model)
    model.create_train_objects(lr=0.05, step_size=1, gamma=0.5)
    checkpoint = None if directory is None or mode == "fsdp" else f"{directory}/mentee.pt"
    model.fit(data[:3], epochs=2, checkpoint_path=checkpoint, progress=False)
    model.unfreeze("backbone", reset_optimizer_if_needed=True)
    model.fit(data[3:], epochs=1, progress=False)
    saved_error = ""
    if mode == "fsdp":
        try:
            model.save(f"{directory}/refused.pt")
        except ValueError as error:
            saved_error = str(error)
    return {
        "parameters": full_parameters(model),
        "history_lrs": [record["lr"] for record in model.history],
        "saved_error": saved_error,
    }


def mentee_ddp(rank: int, directory: str) -> dict:
    return mentee_phases(rank, "ddp", directory)


def mentee_fsdp(rank: int, directory: str) -> dict:
    return mentee_phases(rank, "fsdp", directory)
