"""Features of torch newer than the oldest torch mentor_fn supports (2.4).

A test of such a feature skips on an older torch, naming the version that
brought it (tools/check_torch_versions.sh runs the suite on torch 2.4.1).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int(minor)


TORCH_VERSION = _version(torch.__version__)


def _missing_optimizer(name: str, since: str) -> type[torch.optim.Optimizer]:
    """A stand-in for an optimizer class this torch lacks: constructing it skips
    the test. It has no fused form, like the optimizers it stands in for, so a
    module that probes for one at collection time still collects."""

    def __init__(self: torch.optim.Optimizer, params: Any, **options: Any) -> None:
        if options.get("fused"):
            raise TypeError(f"{name} has no fused form")
        pytest.skip(f"torch.optim.{name} is new in torch {since}")

    return type(name, (torch.optim.Optimizer,), {"__init__": __init__})


ADAFACTOR: type[torch.optim.Optimizer] = getattr(
    torch.optim, "Adafactor", None
) or _missing_optimizer("Adafactor", since="2.5")

# FSDP2's fully_shard is public (torch.distributed.fsdp) from torch 2.6, but
# runs on CPU (gloo) only from torch 2.7: 2.6's all-gather records an event on
# a CPU stream, which has none.
needs_fsdp2 = pytest.mark.skipif(
    not torch.distributed.is_available() or TORCH_VERSION < (2, 7),
    reason="FSDP2 (fully_shard) runs on CPU from torch 2.7",
)

# Compared with one process within 1e-6, FSDP2 on torch 2.7 and 2.8 ends one
# weight of 32 4.5e-6 away (the reduction order differs); from torch 2.13 the
# runs agree within it. Older versions between were not measured.
needs_fsdp2_reduction_of_torch_2_13 = pytest.mark.skipif(
    TORCH_VERSION < (2, 13),
    reason="FSDP2 before torch 2.13 reduces in another order (one weight 4.5e-6 off one process)",
)


# torch 2.4's torch._dynamo.explain reports no graph at all for a model whose
# forward hooks dynamo traces (graph_count 0, graph_break_count -1): nothing to
# read the graph breaks and guards from.
needs_dynamo_explain = pytest.mark.skipif(
    TORCH_VERSION < (2, 5),
    reason="torch 2.4's torch._dynamo.explain reports no graph for a hooked model",
)

# Converting torch_mentor checkpoints reads them with the weights-only
# unpickler and a few allowed globals: measured on torch 2.13 and 2.14; torch
# 2.4 and 2.5 refuse what the files hold (defaultdict state, sets). Versions
# between were not measured.
needs_torch_mentor_reading = pytest.mark.skipif(
    TORCH_VERSION < (2, 13),
    reason="reading torch_mentor files is measured from torch 2.13 (2.4 and 2.5 refuse them)",
)
