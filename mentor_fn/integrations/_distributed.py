"""What the adapters need of the process group: its size, and one rank's metrics for all.

A schedule's phase decisions read metrics at epoch ends. Metrics a framework
does not synchronize (a value logged without ``sync_dist``, a training loss
averaged on each rank) differ between ranks; were each rank to decide on its
own, one could change phase while another does not, and DDP would fail (or,
worse, FSDP would train different parameter sets per rank). Rank 0's metrics
decide for every rank instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.distributed as dist

__all__ = ["rank_zero_metrics", "world_size"]


def world_size() -> int:
    """The default process group's size (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank_zero_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Rank 0's ``metrics`` on every rank (a collective: every rank must call it); the
    metrics themselves without a process group of more than one rank."""
    if world_size() == 1:
        return dict(metrics)
    shared: list[object] = [dict(metrics)]
    dist.broadcast_object_list(shared, src=0)
    received = shared[0]
    assert isinstance(received, dict)
    return received
