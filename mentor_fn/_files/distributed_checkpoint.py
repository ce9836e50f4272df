"""Distributed checkpoints of curriculum runs (DDP, FSDP2) through DCP.

``torch.distributed.checkpoint``'s optimizer helpers drop the saved state of
parameters that are frozen at load time. :func:`save_distributed_checkpoint`
and :func:`load_distributed_checkpoint` key optimizer state by parameter name
and prime the state of every parameter that has saved state before loading,
so a sharded run resumes exactly, whatever is frozen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._core.model_walk import walk_model
from .._core.wrappers import unwrap_model
from .._wrapper.curriculum import Curriculum
from .._wrapper.optimizers import prime_optimizer_state
from .checkpoint import CheckpointError
from .mentee_file import (
    DistributedPlainPart,
    read_distributed_plain_part,
    write_distributed_plain_part,
)

__all__ = ["load_distributed_checkpoint", "save_distributed_checkpoint"]
_PLAIN_FILE = "curriculum.pt"


def _split_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, Any]]:
    """A Curriculum state dict as (its plain part, the state's keys by name, the
    per-parameter optimizer state by name)."""
    optimizer = state_dict["optimizer"]
    if optimizer is None:
        return state_dict, {}, {}
    tensors = {name: dict(values) for name, values in optimizer["state"].items()}
    plain = {**state_dict, "optimizer": {**optimizer, "state": {}}}
    return plain, {name: sorted(values) for name, values in tensors.items()}, tensors


def save_distributed_checkpoint(
    directory: str | os.PathLike[str],
    curriculum: Curriculum,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a (possibly sharded) run with ``torch.distributed.checkpoint``.

    Call it on every rank. Tensors (model weights, optimizer state keyed by
    parameter name, DTensor shards included) go through DCP; the plain part
    (curriculum state, optimizer recipe and layout, scheduler, ``extra``) is
    written by rank 0 as ``curriculum.pt`` (loadable with weights_only=True).
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    target = Path(directory)
    model = unwrap_model(curriculum.model)
    plain, state_keys, optimizer_tensors = _split_optimizer_state(curriculum.state_dict())
    dcp.save({"model": model.state_dict(), "optimizer": optimizer_tensors}, checkpoint_id=target)
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_distributed_plain_part(
            target / _PLAIN_FILE, DistributedPlainPart(plain, state_keys, dict(extra or {}))
        )
    if dist.is_initialized():
        dist.barrier()
    return target


def load_distributed_checkpoint(
    directory: str | os.PathLike[str], curriculum: Curriculum
) -> dict[str, Any]:
    """Resume a run saved by :func:`save_distributed_checkpoint`, on every rank.

    The optimizer is rebuilt in the saved layout; every parameter that has
    saved state gets state allocated first (frozen ones included, which
    DCP's own optimizer helpers would drop), then DCP loads model weights and
    optimizer state in place, resharding as needed.

    Returns:
        The ``extra`` dict that was saved.

    Raises:
        CheckpointError: the plain part is missing, unreadable or malformed, or
            does not fit ``curriculum`` (nothing changed).
    """
    import torch.distributed.checkpoint as dcp

    target = Path(directory)
    part = read_distributed_plain_part(target / _PLAIN_FILE)
    state_keys = part.optimizer_state_keys
    model = unwrap_model(curriculum.model)
    parameters = {name: parameter for _, name, parameter in walk_model(model).named_parameters()}
    unknown = [name for name in state_keys if name not in parameters]
    if unknown:
        raise CheckpointError(
            f"{str(target)!r} does not fit this model: optimizer state of unknown "
            f"parameters {unknown[:8]}"
        )
    try:
        curriculum.load_state_dict(part.curriculum)
    except ValueError as error:
        raise CheckpointError(f"{str(target)!r} does not fit this curriculum: {error}") from None
    optimizer = curriculum.optimizer
    optimizer_tensors: dict[str, Any] = {}
    if optimizer is not None and state_keys:
        prime_optimizer_state(optimizer, [parameters[name] for name in state_keys])
        optimizer_tensors = {
            name: {key: optimizer.state[parameters[name]][key] for key in keys}
            for name, keys in state_keys.items()
        }
    dcp.load({"model": model.state_dict(), "optimizer": optimizer_tensors}, checkpoint_id=target)
    return dict(part.extra)
