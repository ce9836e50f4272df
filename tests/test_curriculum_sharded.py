"""A model sharded with fully_shard between Curriculum(...) and build() trains its shards.

FSDP2 replaces every parameter with a sharded one (and the module's class):
an optimizer must be built afterwards. ``Curriculum(model, lr)`` does not walk
the model, and a state derived before sharding still names the same layers,
so ``build()`` after ``fully_shard`` must hold the model's sharded parameters
and train them, on a real 2-process gloo world.

The same world checks a root unit whose parameters are all frozen: nothing
before it trains, so its backward never runs and FSDP2 leaves its unsharded
parameters registered after the forward; a rebuild must still hand the
optimizer the sharded ones.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
from distributed_harness import run_world
from torch import nn
from torch_features import needs_fsdp2

import mentor_fn as mf

pytestmark = [
    pytest.mark.distributed,  # 2-process worlds: python -m pytest -m distributed
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable"),
]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def shard_after_construction(rank: int, derive_state_first: bool) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    model = _model()
    curriculum = mf.Curriculum(model, 0.05, optimizer=torch.optim.SGD)
    if derive_state_first:
        assert curriculum.state.layers == ("0", "2")
    fully_shard(model[0])
    fully_shard(model)
    optimizer = curriculum.build()
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    before = [p.detach().full_tensor().clone() for p in model.parameters()]
    torch.manual_seed(rank)
    model(torch.randn(3, 4)).pow(2).mean().backward()
    optimizer.step()
    after = [p.detach().full_tensor() for p in model.parameters()]
    return {
        "holds_the_shards": held == {id(p) for p in model.parameters()},
        "moved": all(not torch.equal(a, b) for a, b in zip(after, before)),
        "frozen_root_unit": frozen_root_unit(rank),
    }


def frozen_root_unit(rank: int) -> dict[str, Any]:
    """Layers 0 and 2 are root units of their own (no unit over both); layer 0 is
    frozen for the first step, then a rebuild unfreezes it. Custom loop, no adapter."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    model = _model()
    fully_shard(model[0])
    fully_shard(model[2])
    state = mf.CurriculumState.from_model(model).freeze("0")
    curriculum = mf.Curriculum(model, 0.05, optimizer=torch.optim.SGD, state=state)
    curriculum.build()
    torch.manual_seed(rank)
    data = [torch.randn(3, 4) for _ in range(2)]
    model(data[0]).pow(2).mean().backward()
    # What FSDP2 left registered on the frozen root after its backward: the
    # unsharded parameter.
    left_unsharded = not isinstance(model[0].weight, DTensor)
    curriculum.optimizer.step()
    curriculum.optimizer.zero_grad()
    plan = curriculum.unfreeze("0", reset_optimizer_if_needed=True)
    held = [p for group in curriculum.optimizer.param_groups for p in group["params"]]
    before = model[0].weight.detach().full_tensor().clone()
    model(data[1]).pow(2).mean().backward()
    curriculum.optimizer.step()
    return {
        "left_unsharded": left_unsharded,
        "plan": type(plan).__name__,
        "holds_only_shards": all(isinstance(p, DTensor) for p in held),
        "layer_0_moved": not torch.equal(model[0].weight.detach().full_tensor(), before),
    }


@pytest.mark.parametrize("derive_state_first", [False, True], ids=["fresh", "state derived"])
@needs_fsdp2
def test_build_after_fully_shard_trains_the_shards(derive_state_first):
    for result in run_world(shard_after_construction, derive_state_first):
        frozen_root = result.pop("frozen_root_unit")
        assert result == {"holds_the_shards": True, "moved": True}
        # FSDP2 left the frozen root's unsharded parameters registered (the trap);
        # the rebuild resharded them first: the optimizer holds shards that train.
        assert frozen_root == {
            "left_unsharded": True,
            "plan": "Rebuild",
            "holds_only_shards": True,
            "layer_0_moved": True,
        }
