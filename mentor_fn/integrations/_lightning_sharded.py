"""Lightning checkpoints of a curriculum run under FSDP2 (``ModelParallelStrategy``).

Lightning's ``ModelParallelStrategy`` saves and loads optimizers through
``torch.distributed.checkpoint``'s optimizer API, which cannot carry a
curriculum: it steps an optimizer that holds no state yet (creating state the
run never had), it reads the optimizer's ``state_dict`` as torch's, and it
loads state only into the parameter groups the optimizer has when loading
(the first phase's, in a fresh process) and only for parameters that require
grad then. :class:`CurriculumModelParallelStrategy` saves the curriculum's
optimizer handle otherwise, in the same checkpoint folder:

* its optimizer state tensors, keyed by parameter name, go through DCP with
  the model's weights (sharded as they are: each rank writes its shards);
* the rest of the run (the curriculum's state and layout, the scheduler, the
  schedule's cursor, the adapter's bookkeeping, the names of the state
  tensors) is plain data, written by rank 0 as ``mentor_fn_run.pt``
  (atomically, loadable with ``torch.load(weights_only=True)``) before
  Lightning's own files.

Loading puts the run back first (its layout, flags and scheduler), allocates
optimizer state for exactly the parameters that had some (an optimizer step
at lr 0 on zero gradients: nothing moves), then DCP loads the weights and the
state in place, resharding as needed. Other optimizers are Lightning's as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import ModelParallelStrategy

from .. import CheckpointError, load_checkpoint, save_checkpoint
from .._wrapper.optimizers import prime_optimizer_state
from ._handles import LiveOptimizer

__all__ = ["RUN_FILE", "CurriculumModelParallelStrategy"]

RUN_FILE = "mentor_fn_run.pt"
"""The plain part of the run, in each checkpoint folder."""

_KEY, _FORMAT_NAME, _FORMAT_VERSION = "sharded_run", "mentor_fn.integrations.lightning.sharded", 1


class CurriculumModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2), with checkpoints that hold a curriculum run.

    Use it in place of ``ModelParallelStrategy`` with a
    :class:`~mentor_fn.integrations.lightning.CurriculumCallback` to save
    Lightning checkpoints (``ModelCheckpoint``, ``trainer.save_checkpoint``)
    and resume from them (``trainer.fit(..., ckpt_path=...)``): the resumed
    run continues as the saved one would have, in the saved phase, with the
    saved optimizer state of every parameter (frozen ones included). The
    checkpoint is the strategy's distributed one (a folder); its arguments
    are ``ModelParallelStrategy``'s.

    Example:
        >>> strategy = CurriculumModelParallelStrategy(data_parallel_size=2)  # doctest: +SKIP
        >>> L.Trainer(strategy=strategy, callbacks=[callback]).fit(model)  # doctest: +SKIP

    Raises:
        ValueError: ``save_distributed_checkpoint=False``: a full checkpoint
            gathers every tensor on rank 0 through the optimizer API above.
    """

    def __init__(
        self,
        data_parallel_size: Any = "auto",
        tensor_parallel_size: Any = "auto",
        save_distributed_checkpoint: bool = True,
        **kwargs: Any,
    ) -> None:
        if not save_distributed_checkpoint:
            raise ValueError(
                "CurriculumModelParallelStrategy(save_distributed_checkpoint=False) is not "
                "supported: a full checkpoint goes through torch.distributed.checkpoint's "
                "optimizer API, which cannot carry a curriculum's phases. Keep the default "
                "(distributed checkpoints, a folder per checkpoint)."
            )
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=True,
            **kwargs,
        )

    def _curriculum_handle(self) -> tuple[int, LiveOptimizer] | None:
        """The curriculum's optimizer handle among the strategy's optimizers, with its index."""
        for index, optimizer in enumerate(self.optimizers):
            if isinstance(optimizer, LightningOptimizer):
                optimizer = optimizer._optimizer
            if isinstance(optimizer, LiveOptimizer):
                return index, optimizer
        return None

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """The curriculum's optimizer state tensors by parameter name (saved through DCP,
        sharded); other optimizers' state as Lightning saves it."""
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        if not isinstance(optimizer, LiveOptimizer):
            return super().optimizer_state(optimizer)
        return {"state": optimizer.run.curriculum.state_dict()["optimizer"]["state"]}

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        filepath: str | Path,
        storage_options: Any | None = None,
    ) -> None:
        """Lightning's distributed checkpoint, with the run's plain part written first."""
        found = self._curriculum_handle()
        if found is not None:
            path = Path(self.broadcast(filepath))
            if self.global_rank == 0:
                save_checkpoint(path / RUN_FILE, {_KEY: _plain_run(found[1])})
            if dist.is_initialized():
                dist.barrier()
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(
        self, checkpoint_path: str | Path, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load a checkpoint this strategy saved: the run first, then weights and optimizer
        state through DCP; returns Lightning's other contents.

        Raises:
            CheckpointError: not a distributed checkpoint folder, no run file in
                it (a checkpoint saved without this strategy), or a run that
                does not fit this one.
        """
        found = self._curriculum_handle()
        if found is None:
            return super().load_checkpoint(checkpoint_path, weights_only)
        from torch.distributed.checkpoint import load as dcp_load
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        index, handle = found
        path = Path(self.broadcast(checkpoint_path))
        if not (path / RUN_FILE).is_file():
            raise CheckpointError(
                f"{str(path)!r} holds no {RUN_FILE}: not a checkpoint of a curriculum run saved "
                "by CurriculumModelParallelStrategy"
            )
        saved = load_checkpoint(path / RUN_FILE).get(_KEY)
        if not isinstance(saved, Mapping) or saved.get("format") != _FORMAT_NAME:
            raise CheckpointError(f"{str(path / RUN_FILE)!r} holds no sharded curriculum run")
        run, curriculum = handle.run, handle.run.curriculum
        try:
            run.load_state_dict(saved["run"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{str(path)!r} does not fit this run: {error}") from None
        parameters = dict(curriculum.model.named_parameters())
        keys: Mapping[str, list[str]] = saved["state_tensors"]
        optimizer = curriculum.optimizer
        assert optimizer is not None
        prime_optimizer_state(optimizer, [parameters[name] for name in keys])
        tensors = {
            name: {key: optimizer.state[parameters[name]][key] for key in names}
            for name, names in keys.items()
        }
        assert self.model is not None
        weights = get_model_state_dict(self.model)
        dcp_load(
            {"state_dict": weights, f"optimizer_{index}": {"state": tensors}}, checkpoint_id=path
        )
        assert self.lightning_module is not None
        self.model.load_state_dict(weights, strict=self.lightning_module.strict_loading)
        metadata: dict[str, Any] = torch.load(path / _METADATA_FILENAME, weights_only=weights_only)
        return metadata


def _plain_run(handle: LiveOptimizer) -> dict[str, Any]:
    """The run's state dict without its optimizer state tensors (which DCP saves), and the
    names of those tensors."""
    run = handle.run.state_dict()
    curriculum = run["curriculum"]
    optimizer = curriculum["optimizer"]
    keys = {}
    if optimizer is not None:
        keys = {name: sorted(values) for name, values in optimizer["state"].items()}
        curriculum = {**curriculum, "optimizer": {**optimizer, "state": {}}}
    return {
        "format": _FORMAT_NAME,
        "version": _FORMAT_VERSION,
        "run": {**run, "curriculum": curriculum},
        "state_tensors": keys,
    }
