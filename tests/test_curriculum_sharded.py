"""A model sharded with fully_shard between Curriculum(...) and build() trains its shards.

FSDP2 replaces every parameter with a sharded one (and the module's class):
an optimizer must be built afterwards. ``Curriculum(model, lr)`` does not walk
the model, and a state derived before sharding still names the same layers,
so ``build()`` after ``fully_shard`` must hold the model's sharded parameters
and train them, on a real 2-process gloo world.
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

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


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
    }


@pytest.mark.parametrize("derive_state_first", [False, True], ids=["fresh", "state derived"])
@needs_fsdp2
def test_build_after_fully_shard_trains_the_shards(derive_state_first):
    for result in run_world(shard_after_construction, derive_state_first):
        assert result == {"holds_the_shards": True, "moved": True}
