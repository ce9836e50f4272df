"""Finding the DDP wrapper a framework puts around the model inside its own loop.

accelerate (under the transformers ``Trainer``) wraps the model in
``DistributedDataParallel`` inside ``train()``, after every callback event
that could see the wrapper is past: the events are handed the bare model. The
wrapper must follow the curriculum's phases (``follow_trainable_parameters``:
its reducer is rebuilt when the trainable parameters change), so it is found
where it shows itself: at the first forward with gradients, through a global
forward pre-hook that removes itself as soon as it has decided. Forwards
without gradients (an evaluation before training) are passed over: they
reduce nothing, and may run the bare model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.nn.parallel import DistributedDataParallel
from torch.utils.hooks import RemovableHandle

from .._core.wrappers import unwrap_model, wrappers_around
from .._wrapper.ddp import follow_trainable_parameters, sync_reducer

__all__ = ["WrapperFinder"]


class WrapperFinder:
    """Watches for the first forward with gradients of ``model`` (bare or wrapped).

    Through a ``DistributedDataParallel``: that wrapper is made to follow the
    phases, its reducer brought in line before this forward runs. Directly
    (no DDP: one process, or a model sharded with FSDP2): nothing to do. Either
    way the watch ends.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = unwrap_model(model)
        self._handle: RemovableHandle | None = None
        self.found: DistributedDataParallel | None = None

    @property
    def watching(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Watch from now on (again, if it was stopped)."""
        if self._handle is None:
            self._handle = register_module_forward_pre_hook(self._look)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _look(self, module: nn.Module, inputs: Any) -> None:
        if not torch.is_grad_enabled() or unwrap_model(module) is not self._model:
            return
        self.stop()
        for wrapper in wrappers_around(module):
            if isinstance(wrapper, DistributedDataParallel):
                follow_trainable_parameters(wrapper)
                # Its own pre-hook was registered during this call's hooks: run it now.
                sync_reducer(wrapper)
                self.found = wrapper
                return
